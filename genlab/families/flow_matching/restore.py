"""Inverse problems with a flow-matching prior (the :class:`~genlab.families.base.Restorer` capability).

The model's ODE from noise (``t = 0``) to data (``t = 1``), :func:`~genlab.families.flow_matching.ode.transport`
with the model's solver on ``steps`` steps, integrates a *posterior* velocity: on the affine path
``x_t = alpha_t x_1 + sigma_t x_0`` (:mod:`.paths`) the velocity is ``alpha'_t x1_hat + sigma'_t x0_hat`` with
``x1_hat = E[x_1 | x_t]`` (:func:`.denoise.posterior_mean`) and ``x0_hat = (x_t - alpha_t x1_hat) / sigma_t``;
:class:`PosteriorVelocity` puts ``E[x_1 | x_t, y]`` in place of ``x1_hat``
(:func:`genlab.tasks.posterior.corrected_x0`: ``pigdm``, ``dps`` or ``projection``, with ``kappa =
sigma_t^2 / alpha_t`` and ``r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)``): the probability-flow ODE of
the posterior where the correction is exact. ``dps`` with a step ``dps_scale`` follows DPS's Algorithm 1
instead (:func:`dps_euler`: Euler steps of the unguided velocity, each followed by the guidance step). Where ``alpha_t < 1e-3`` (the pure-noise end, where
``p(y | x_t)`` does not depend on ``x_t``) the gradient methods add no correction. Solved in the model's
``[-1, 1]`` bin scale, guided with ``model.solver.guidance`` as the samples are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Nets, Restorer
from genlab.families.flow_matching.ode import transport
from genlab.families.flow_matching.paths import AffinePath
from genlab.tasks.operators import Measurement, affine_of
from genlab.tasks.posterior import METHODS, SAMPLERS, check_method, corrected_x0, dps_direction

ALPHA_MIN, SIGMA_MIN = 1e-3, 1e-4


class PosteriorVelocity:
    """``v(x, t)`` of the posterior (module docstring) from the velocity net ``net(x, t (B,))``."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], path: AffinePath, problem: Measurement, method: str,
                 dps_scale: float | None) -> None:
        self.net, self.path, self.problem, self.method, self.dps_scale = net, path, problem, method, dps_scale

    def coefficients(self, t: Tensor) -> tuple[float, float, float, float]:
        """``alpha_t, sigma_t, alpha'_t, sigma'_t`` at the batch's time (float64)."""
        tt = t[:1].detach().double()
        p = self.path
        return tuple(float(f(tt)) for f in (p.alpha, p.sigma, p.d_alpha, p.d_sigma))  # type: ignore[return-value]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self.coefficients(t)
        denom = ds * a - s * da
        x1_of = lambda v: (ds * v - s * self.net(v, t)) / denom  # noqa: E731  E[x_1 | x_t] (posterior_mean)
        s_pos = max(s, SIGMA_MIN)
        if a < ALPHA_MIN and self.method != "projection":
            with torch.no_grad():
                x1 = x1_of(x)
        else:
            x1 = corrected_x0(self.method, self.problem, x1_of, x, s_pos**2 / max(a, ALPHA_MIN),
                              s_pos**2 / (a**2 + s_pos**2), self.dps_scale)
        return da * x1 + ds * (x - a * x1) / s_pos


class FlowMatchingRestorer(Restorer):
    """:class:`Restorer` of the flow-matching family (module docstring)."""

    restore_methods = METHODS
    restore_samplers = SAMPLERS

    @torch.no_grad()
    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        p = next(nets.parameters())
        problem = Measurement(problem.operator, problem.y.to(p.dtype), problem.noise)
        scale, shift = affine_of(lambda v: self.to_unit(nets, v), problem.y)
        velocity = self.velocity(nets, self.method_labels(len(problem.y), y, p.device), self.solver.weight)
        field = PosteriorVelocity(velocity, self.objective.path, problem.rescaled(scale, shift), method,
                                  options.dps_scale)
        steps = self.solver.steps if options.steps is None else options.steps
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1 (ODE steps from noise to data)")
        x0 = torch.randn(len(problem.y), *nets.info.shape, device=p.device, dtype=p.dtype)
        if method == "dps" and options.dps_scale is not None:
            return self.to_unit(nets, dps_euler(field, x0, steps, float(options.dps_scale)))
        return self.to_unit(nets, transport(field, x0, 0.0, 1.0, self.solver.with_steps(steps)).y)


def dps_euler(field: PosteriorVelocity, x: Tensor, steps: int, zeta: float) -> Tensor:
    """DPS's Algorithm 1 on the flow's ODE: ``steps`` Euler steps of the unguided velocity from noise to data,
    each followed by ``- zeta grad_{x_t} ||y - A x1_hat(x_t)||`` (:func:`~genlab.tasks.posterior.dps_direction`;
    none where ``alpha_t < 1e-3``, where ``y`` says nothing about ``x_t``)."""
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        t = torch.full((len(x),), t0, device=x.device, dtype=x.dtype)
        a, s, da, ds = field.coefficients(t)
        x1_of = lambda v: (ds * v - s * field.net(v, t)) / (ds * a - s * da)  # noqa: E731  E[x_1 | x_t]
        if a < ALPHA_MIN:
            with torch.no_grad():
                x1, direction = x1_of(x), None
        else:
            x1, direction = dps_direction(field.problem, x1_of, x)
        x = x + (t1 - t0) * (da * x1 + ds * (x - a * x1) / max(s, SIGMA_MIN))
        x = x if direction is None else x - zeta * direction
    return x
