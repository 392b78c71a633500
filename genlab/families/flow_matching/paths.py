"""Probability paths of conditional flow matching: ``x_t`` and its velocity ``u_t`` in closed form.

Time runs from noise to data: ``x_0 ~ N(0, I)`` at ``t = 0``, data ``x_1 ~ q`` at ``t = 1``
(Lipman et al. 2023, "Flow Matching for Generative Modeling", Sec. 2). Every path here is
*affine* in its endpoints (Lipman et al. 2023, Eq. 10-11, with ``mu_t = alpha_t x_1``)::

    x_t = alpha_t x_1 + sigma_t x_0                         (the conditional flow psi_t(x_0))
    u_t = d/dt x_t = alpha'_t x_1 + sigma'_t x_0           (Lipman et al. 2023, Eq. 13)

Eq. 13 writes the same velocity as a function of ``x_t``:
``u_t(x | x_1) = sigma'_t / sigma_t (x - alpha_t x_1) + alpha'_t x_1``; written with ``x_0`` it
has no division by ``sigma_t``, so it stays finite where ``sigma_t = 0``.

Paths (stable names, selected in config with ``_target_``):

* :class:`OTPath` (``ot``): ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t``, the
  conditional optimal-transport path (Lipman et al. 2023, Eq. 20-23); with ``sigma_min = 0``
  the straight line of rectified flow (Liu et al. 2023, Eq. 1).
* :class:`VPPath` (``vp``): the *trigonometric* variance-preserving path
  ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``, so ``alpha_t^2 + sigma_t^2 = 1``
  for every ``t`` (the cosine interpolant of Albergo & Vanden-Eijnden 2023, Eq. 2.4; Nichol &
  Dhariwal's cosine schedule in continuous time). Unlike Lipman et al.'s VP path (Eq. 19,
  ``alpha_t = exp(-T(1-t)/2)`` from the VP-SDE), its endpoints are exact: ``x_0`` is pure
  noise and ``x_1`` is the data, so sampling and likelihoods need no truncation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PathSample:
    """A point on a conditional path: times ``t`` (B,), endpoints ``x0``, ``x1``, the point
    ``x_t`` and the target velocity ``u_t`` (all ``(B, ...)``)."""

    t: Tensor
    x0: Tensor
    x1: Tensor
    x_t: Tensor
    u_t: Tensor


def _expand(c: Tensor, x: Tensor) -> Tensor:
    """Broadcast per-example coefficients ``(B,)`` over the remaining dims of ``x`` ``(B, ...)``."""
    return c.view(-1, *([1] * (x.dim() - 1)))


class AffinePath:
    """``x_t = alpha_t x_1 + sigma_t x_0`` (module docstring); subclasses give ``alpha``,
    ``sigma`` and their time derivatives as functions of ``t`` (B,)."""

    name = "affine"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def x_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """The conditional flow ``psi_t(x_0) = alpha_t x_1 + sigma_t x_0``."""
        return _expand(self.alpha(t), x1) * x1 + _expand(self.sigma(t), x0) * x0

    def u_t(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Its velocity ``d/dt psi_t(x_0) = alpha'_t x_1 + sigma'_t x_0`` (Lipman et al. 2023, Eq. 13)."""
        return _expand(self.d_alpha(t), x1) * x1 + _expand(self.d_sigma(t), x0) * x0

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """``x_t`` and ``u_t`` at times ``t`` (B,) between noise ``x0`` and data ``x1``."""
        return PathSample(t, x0, x1, self.x_t(x0, x1, t), self.u_t(x0, x1, t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class OTPath(AffinePath):
    """Conditional OT path ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t`` (Lipman et al.
    2023, Eq. 20), velocity ``u_t = x_1 - (1 - sigma_min) x_0`` (Eq. 23 with ``x = psi_t(x_0)``).

    Args:
        sigma_min: the width of the path at the data (``t = 1``); 0 gives rectified flow's
            straight lines (Liu et al. 2023), where the data end is the data itself.
    """

    name = "ot"

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"OTPath sigma_min={sigma_min} must be in [0, 1): it is the noise std left at t = 1")
        self.sigma_min = sigma_min

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.sigma_min))

    def __repr__(self) -> str:
        return f"OTPath(sigma_min={self.sigma_min})"


class VPPath(AffinePath):
    """Trigonometric variance-preserving path ``alpha_t = sin(pi t/2)``, ``sigma_t = cos(pi t/2)``
    (module docstring): ``u_t = (pi/2) (cos(pi t/2) x_1 - sin(pi t/2) x_0)``."""

    name = "vp"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
