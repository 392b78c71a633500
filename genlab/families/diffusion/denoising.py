"""Denoising with a diffusion chain (the :class:`~genlab.families.base.Denoiser` capability).

The input is ``y = x + sigma * eps`` in the model's ``[-1, 1]`` scale. The forward marginal is
``q(x_t | x) = N(sqrt(alpha_bar_t) x, (1 - alpha_bar_t) I)`` (Ho et al. 2020, Eq. 4), and
``sqrt(alpha_bar) y = sqrt(alpha_bar) x + sqrt(alpha_bar) sigma eps`` has that law when
``alpha_bar sigma^2 = 1 - alpha_bar``, i.e. ``alpha_bar = 1 / (1 + sigma^2)``: take the step ``t``
whose ``alpha_bar_t`` is closest (:func:`match_timestep`), start at ``x_t = sqrt(alpha_bar_t) y`` and
run the reverse process from ``t`` down to the data on ``steps`` evenly spaced steps of ``0..t``
(the chain truncated at ``t`` and respaced as in Nichol & Dhariwal 2021, Sec. 4:
:func:`truncated_chain`):

* ``ddim``: deterministic DDIM (Song et al. 2021, Eq. 12, ``eta = 0``), the default;
* ``ddpm``: ancestral sampling (Ho et al. 2020, Alg. 2) with the model's variances;
* ``mean``: one network call, the posterior mean ``x0_hat = E[x0 | x_t]`` (Tweedie's formula;
  Efron 2011): the least-squares estimate, highest PSNR, blurry where the others draw detail.

This is the "denoise from an intermediate step" use of diffusion models (SDEdit, Meng et al. 2022;
Kawar et al. 2022). The generative methods are autoguided where the model's sampling is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.process import GaussianDiffusion
from genlab.families.diffusion.samplers import DDIM, Ancestral, Sampler

METHODS: tuple[str, ...] = ("ddim", "ddpm", "mean")


def match_timestep(process: GaussianDiffusion, sigma: float) -> int:
    """The step ``t`` whose ``alpha_bar_t`` is closest to ``1 / (1 + sigma^2)``: then
    ``sqrt(alpha_bar_t) (x + sigma eps)`` has (nearly) the law of ``q(x_t | x)`` (module docstring)."""
    target = 1.0 / (1.0 + sigma**2)
    return int((process.tables["alpha_bar"] - target).abs().argmin())


def truncated_chain(process: GaussianDiffusion, t: int, steps: int) -> GaussianDiffusion:
    """The chain's steps ``0..t`` (same ``alpha_bar``, same network times) respaced to ``steps``."""
    head = GaussianDiffusion(process.tables["betas"][: t + 1], process.timesteps[: t + 1], process.train_timesteps)
    return head.respace(min(steps, t + 1))


def denoise_plan(process: GaussianDiffusion, sigma: float, steps: int | None) -> dict[str, Any]:
    """Where the chain starts for noise ``sigma``: the matching step ``t`` of ``timesteps``, its
    ``alpha_bar`` against the target ``1 / (1 + sigma^2)``, the input's ``scale`` ``sqrt(alpha_bar_t)``
    and the reverse ``steps`` (default ``min(t + 1, 50)``)."""
    t = match_timestep(process, sigma)
    ab = float(process.tables["alpha_bar"][t])
    return {"t": t, "timesteps": process.T, "alpha_bar": ab, "target_alpha_bar": 1 / (1 + sigma**2),
            "scale": math.sqrt(ab), "steps": min(50 if steps is None else steps, t + 1)}


def describe_plan(plan: dict[str, Any], method: str) -> str:
    """``step t=... of T (alpha_bar ..., target ...), <how>`` for reports."""
    how = "one step to the posterior mean" if method == "mean" else f"{plan['steps']} {method} steps"
    return (f"step t={plan['t']} of {plan['timesteps']} (alpha_bar {plan['alpha_bar']:.4f}, target "
            f"{plan['target_alpha_bar']:.4f}), {how}")


@torch.no_grad()
def denoise(model: DiffusionModel, y: Tensor, plan: dict[str, Any], method: str) -> Tensor:
    """Noisy ``y`` (model scale) -> denoised (model scale) from the plan's step (module docstring)."""
    x = plan["scale"] * y
    if method == "mean":  # one network call: x0_hat = E[x0 | x_t] (Tweedie)
        t = torch.full((len(x),), plan["t"], device=x.device, dtype=torch.long)
        return model.reverse(x, t, clip=model.clip_denoised).x0
    if method not in METHODS:
        raise ValueError(f"denoising method {method!r} is not one of {', '.join(METHODS)}")
    sampler: Sampler = DDIM(steps=None, eta=0.0) if method == "ddim" else Ancestral()
    return sampler(model.on(truncated_chain(model.process, plan["t"], plan["steps"])), len(x), x_T=x)
