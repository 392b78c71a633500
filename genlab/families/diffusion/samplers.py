"""Samplers of the reverse process (stable names ``ddpm``, ``ddim``), selected in config.

Both run on the process respaced to ``steps`` steps (:meth:`GaussianDiffusion.respace`; all
``T`` by default for ``ddpm``) from ``x_{T-1} ~ N(0, I)`` down to the data, and return ``x0`` in
the scaled space ``[-1, 1]`` (the family maps it to discrete data). Every step draws one
``z ~ N(0, I)`` (also where it is multiplied by 0), so that samplers that define the same
chain produce the same samples from the same seed: DDIM with ``eta = 1`` on all ``T`` steps
*is* ancestral DDPM with the posterior variance ``beta~_t``. With ``model.guidance`` (and its
snapshot taken) both use the autoguided prediction (:mod:`genlab.families.diffusion.guidance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from genlab.families.diffusion.process import GaussianDiffusion

if TYPE_CHECKING:
    from genlab.families.diffusion.family import Diffusion


class Sampler:
    """Base class: ``sampler(family, nets, n, x_T=None) -> x0`` in ``[-1, 1]``, ``(n, *shape)``.

    Args:
        steps: reverse steps (evenly spaced over the ``T`` training steps); None: all ``T``.
    """

    name: str = "base"

    def __init__(self, steps: int | None = None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"sampler steps must be >= 1 (or null for all T), got {steps}")
        self.steps = steps

    @torch.no_grad()
    def __call__(self, family: Diffusion, nets: nn.ModuleDict, n: int, x_T: Tensor | None = None) -> Tensor:
        process = family.process.respace(min(self.steps or family.process.T, family.process.T))
        p = next(nets.parameters())
        x = torch.randn(n, *family.info.shape, device=p.device, dtype=p.dtype) if x_T is None else x_T
        for k in reversed(range(process.T)):
            t = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
            x = self.step(family, nets, process, x, t, torch.randn_like(x))
        return x

    def step(self, family: Diffusion, nets: nn.ModuleDict, process: GaussianDiffusion, x: Tensor, t: Tensor,
             z: Tensor) -> Tensor:
        """One reverse step ``x_t -> x_{t-1}`` on ``process`` with standard-normal noise ``z``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class Ancestral(Sampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): ``x_{t-1} = mu_theta(x_t, t) + sigma_t z``
    with the model's variance (fixed ``beta~_t`` / ``beta_t``, or learned) and no noise at the last step."""

    name = "ddpm"

    def step(self, family: Diffusion, nets: nn.ModuleDict, process: GaussianDiffusion, x: Tensor, t: Tensor,
             z: Tensor) -> Tensor:
        rev = family.reverse(nets, process, x, t, clip=family.clip_denoised, guide=True)
        last = (t == 0).view(-1, *([1] * (x.ndim - 1)))
        return rev.mean + torch.where(last, 0.0, torch.exp(0.5 * rev.logvar)) * z


class DDIM(Sampler):
    """DDIM (Song et al. 2021, Eq. 12) on ``steps`` steps ``t -> s``::

        x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)   (Eq. 16)

    ``eta = 0``: deterministic (a discretised probability-flow ODE); ``eta = 1``: ancestral DDPM
    with variance ``beta~``.
    """

    name = "ddim"

    def __init__(self, steps: int | None = 50, eta: float = 0.0) -> None:
        super().__init__(steps)
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = eta

    def step(self, family: Diffusion, nets: nn.ModuleDict, process: GaussianDiffusion, x: Tensor, t: Tensor,
             z: Tensor) -> Tensor:
        rev = family.reverse(nets, process, x, t, clip=family.clip_denoised, guide=True)
        ab, ab_prev = process.at("alpha_bar", t, x), process.at("alpha_bar_prev", t, x)
        sigma2 = self.eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        return ab_prev.sqrt() * rev.x0 + (1 - ab_prev - sigma2).clamp_min(0).sqrt() * rev.eps + sigma2.sqrt() * z


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (Ancestral, DDIM)}
