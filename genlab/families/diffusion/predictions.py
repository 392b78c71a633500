"""What the network predicts (stable names ``eps``, ``x0``, ``v``), and how to read it back.

With ``x_t = a x0 + s eps``, ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)`` (so ``a^2 + s^2 = 1``):

* ``eps`` (Ho et al. 2020, Eq. 11): the net predicts the noise; ``x0 = (x_t - s eps) / a``.
* ``x0``: the net predicts the clean data; ``eps = (x_t - a x0) / s``.
* ``v`` (Salimans & Ho 2022, Sec. 4 / App. D): ``v = a eps - s x0``; ``x0 = a x_t - s v``,
  ``eps = s x_t + a v``.

The regression target of ``loss=simple`` is the prediction's own quantity (the eps-MSE ``L_simple``
of Ho et al. Eq. 14 for ``eps``). For an error ``d`` in the implied ``x0``, the target's squared error
is ``k(SNR) |d|^2`` with ``SNR = alpha_bar / (1 - alpha_bar)`` and ``k = SNR`` (eps), ``1`` (x0),
``SNR + 1`` (v): :meth:`Prediction.x0_mse_factor`, used by the losses' Min-SNR weighting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.families.diffusion.process import GaussianDiffusion


class Prediction:
    """Base class: the network's regression target and its inverse map to ``(x0, eps)``."""

    name: str = "base"

    def target(self, process: GaussianDiffusion, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        """The quantity the network regresses at ``x_t = q_sample(x0, t, eps)``."""
        raise NotImplementedError

    def to_x0_eps(self, process: GaussianDiffusion, t: Tensor, x_t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """``(x0, eps)`` implied by the network output ``out`` at ``x_t``."""
        raise NotImplementedError

    def x0_mse_factor(self, snr: Tensor) -> Tensor:
        """``k(SNR)``: the target's squared error per squared error of the implied ``x0``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Prediction):
    """Predict the noise ``eps`` (DDPM)."""

    name = "eps"

    def target(self, process: GaussianDiffusion, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        return eps

    def x0_mse_factor(self, snr: Tensor) -> Tensor:  # eps = (x_t - a x0) / s: error scaled by a / s
        return snr

    def to_x0_eps(self, process: GaussianDiffusion, t: Tensor, x_t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        return process.x0_from_eps(x_t, t, out), out


class X0Prediction(Prediction):
    """Predict the clean data ``x0``."""

    name = "x0"

    def target(self, process: GaussianDiffusion, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        return x0

    def x0_mse_factor(self, snr: Tensor) -> Tensor:
        return torch.ones_like(snr)

    def to_x0_eps(self, process: GaussianDiffusion, t: Tensor, x_t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        return out, process.eps_from_x0(x_t, t, out)


class VPrediction(Prediction):
    """Predict the velocity ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0``."""

    name = "v"

    def target(self, process: GaussianDiffusion, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        return process.at("sqrt_ab", t, x0) * eps - process.at("sqrt_1m_ab", t, x0) * x0

    def x0_mse_factor(self, snr: Tensor) -> Tensor:  # x0 = a x_t - s v: error scaled by 1 / s^2 = SNR + 1
        return snr + 1

    def to_x0_eps(self, process: GaussianDiffusion, t: Tensor, x_t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        a, s = process.at("sqrt_ab", t, x_t), process.at("sqrt_1m_ab", t, x_t)
        return a * x_t - s * out, s * x_t + a * out


PREDICTIONS: dict[str, type[Prediction]] = {cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction)}
