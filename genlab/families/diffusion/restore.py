"""Inverse problems with a diffusion prior (the :class:`~genlab.families.base.Restorer` capability).

The reverse chain of the sampler (:func:`~genlab.families.diffusion.samplers.run_chain`, the chain
respaced to ``steps`` steps) with DDIM's update (Song et al. 2021, Eq. 12; ``eta = 1``: ancestral with
``beta~``, ``eta = 0``: deterministic), in which the denoiser's ``x0_hat = E[x0 | x_t]`` is replaced by an
estimate of ``E[x0 | x_t, y]`` (:func:`genlab.tasks.posterior.corrected_x0`: ``pigdm``, ``projection``, or
``dps`` with ``dps_scale=null``; ``dps`` with a step ``dps_scale`` follows DPS's Algorithm 1: the step from
the unguided ``x0_hat``, then ``- zeta grad_{x_t} ||y - A x0_hat||``; ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, so ``kappa = (1 - alpha_bar_t) /
sqrt(alpha_bar_t)`` and ``r_t^2 = 1 - alpha_bar_t``), and ``eps_hat`` recomputed from it. The problem is
solved in the model's ``[-1, 1]`` scale (:meth:`~genlab.tasks.operators.Measurement.rescaled`);
``x0_hat`` is guided where the model's sampling is, and clipped to ``[-1, 1]`` after the correction
where ``model.clip_denoised``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Nets, Restorer
from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.samplers import Step, run_chain
from genlab.tasks.operators import Measurement, affine_of
from genlab.tasks.posterior import METHODS, SAMPLERS, check_method, corrected_x0, dps_direction


def posterior_step(problem: Measurement, method: str, eta: float, dps_scale: float | None) -> Step:
    """DDIM's step ``x_t -> x_{t-1}`` on ``E[x0 | x_t, y]`` instead of ``x0_hat`` (module docstring)."""
    def step(model: DiffusionModel, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        k = int(t[0])
        ab, ab_prev = (float(model.process.tables[n][k]) for n in ("alpha_bar", "alpha_bar_prev"))
        x0_of = lambda v: model.reverse(v, t, clip=False, guide=True).x0  # noqa: E731
        if method == "dps" and dps_scale is not None:  # Chung et al.'s Algorithm 1: step, then guide
            x0, direction = dps_direction(problem, x0_of, x)
        else:
            x0, direction = corrected_x0(method, problem, x0_of, x, (1 - ab) / math.sqrt(ab), 1 - ab, dps_scale), None
        x0 = x0.clamp(-1, 1) if model.clip_denoised else x0
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sigma2 = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma2, 0.0)) * eps + math.sqrt(sigma2) * z
        return x if direction is None else x - dps_scale * direction

    return step


def restore_chain(model: DiffusionModel, problem: Measurement, method: str, steps: int | None, eta: float,
                  dps_scale: float | None) -> Tensor:
    """``x0`` in the model scale from ``x_{T-1} ~ N(0, I)`` on the chain respaced to ``steps`` (None:
    ``min(T, 100)``), the problem in that scale."""
    big_t = model.process.T
    steps = min(big_t, 100) if steps is None else steps
    if not 1 <= steps <= big_t:
        raise ValueError(f"steps={steps} must be in 1..{big_t} (the model's diffusion timesteps)")
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0 (0: deterministic DDIM, 1: ancestral)")
    model = model.on(model.process.respace(steps))
    x = model.noise(len(problem.y)).to(problem.y.dtype)
    return run_chain(model, x, posterior_step(problem, method, eta, dps_scale))


class DiffusionRestorer(Restorer):
    """:class:`Restorer` of the diffusion family (module docstring)."""

    restore_methods = METHODS
    restore_samplers = SAMPLERS

    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        dtype = next(nets.parameters()).dtype
        problem = Measurement(problem.operator, problem.y.to(dtype), problem.noise)
        scale, shift = affine_of(lambda v: self.to_unit(nets, v), problem.y)
        model = self.model(nets, self.method_labels(len(problem.y), y, problem.y.device))
        x0 = restore_chain(model, problem.rescaled(scale, shift), method, options.steps, options.eta,
                           options.dps_scale)
        return self.to_unit(nets, x0)
