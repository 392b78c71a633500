"""Denoising with a flow-matching model (the :class:`~genlab.families.base.Denoiser` capability).

The path ``x_t = alpha_t x_1 + sigma_t x_0`` (Lipman et al. 2023, Eq. 10; ``x_1`` data,
``x_0 ~ N(0, I)``, :mod:`.paths`) gives ``x_t / alpha_t = x_1 + (sigma_t / alpha_t) x_0``. A noisy
input ``y = x + sigma eps`` in the model's ``[-1, 1]`` scale is therefore the path's point at the
time ``t`` with ``sigma_t / alpha_t = sigma`` (:func:`match_time`: bisection; ``t = 1 / (1 + sigma)``
on the straight OT path), rescaled: start at ``x_t = alpha_t y`` and

* ``method=ode``: integrate ``dx/dt = v(x, t)`` from ``t`` to 1 with the model's solver method on
  ``steps`` steps (the "denoise from an intermediate time" use, as SDEdit, Meng et al. 2022);
* ``method=mean``: one velocity evaluation to the posterior mean ``E[x_1 | x_t]`` (Tweedie's
  formula; Efron 2011): :func:`posterior_mean`, the least-squares estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from genlab.families.flow_matching.ode import CountedVelocity, ODESolver, Solution, transport
from genlab.families.flow_matching.paths import AffinePath
from genlab.tasks.base import TaskError

METHODS: tuple[str, ...] = ("ode", "mean")


def _at(f: Callable[[Tensor], Tensor], t: float) -> float:
    """A path coefficient ``f(t)`` as a float (evaluated in float64)."""
    return float(f(torch.tensor([t], dtype=torch.float64)))


def match_time(path: AffinePath, sigma: float, iters: int = 100) -> float:
    """The time ``t in (0, 1]`` with ``sigma_t / alpha_t = sigma`` on an affine path whose ratio
    falls from ``+inf`` at ``t = 0`` (pure noise) to ``sigma_1 / alpha_1`` at ``t = 1`` (bisection
    in float64). Raises :class:`~genlab.tasks.base.TaskError` when ``sigma`` is below the ratio at
    the data end."""
    def ratio(t: float) -> float:
        tt = torch.tensor([t], dtype=torch.float64)
        return float(path.sigma(tt) / path.alpha(tt))

    if sigma <= ratio(1.0):
        raise TaskError(f"sigma={sigma} is below the noise the flow's path keeps at the data end "
                        f"(sigma_1 / alpha_1 = {ratio(1.0):.3g}); use a larger sigma")
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) > sigma else (lo, mid)
    return 0.5 * (lo + hi)


def posterior_mean(path: AffinePath, x_t: Tensor, v: Tensor, t: float) -> Tensor:
    """``E[x_1 | x_t]`` from the velocity ``v = E[alpha'_t x_1 + sigma'_t x_0 | x_t]`` and
    ``x_t = alpha_t x_1 + sigma_t x_0`` (two linear equations in the two conditional means):
    ``(sigma'_t x_t - sigma_t v) / (sigma'_t alpha_t - sigma_t alpha'_t)``; ``x_t + (1 - t) v``
    on the straight OT path."""
    a, s, da, ds = (_at(f, t) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    return (ds * x_t - s * v) / (ds * a - s * da)


def denoise_plan(path: AffinePath, solver: ODESolver, sigma: float, steps: int | None) -> dict[str, Any]:
    """Where the ODE starts for noise ``sigma`` (the matching time ``t``, ``alpha_t``, ``sigma_t``, their
    ratio, the input's ``scale = alpha_t``) and how it runs (``steps`` of the sampling ``solver``'s
    method; None: its own steps)."""
    t = match_time(path, sigma)
    alpha, sig = _at(path.alpha, t), _at(path.sigma, t)
    return {"t": t, "path": repr(path), "alpha_t": alpha, "sigma_t": sig, "ratio": sig / alpha,
            "scale": alpha, "steps": solver.steps if steps is None else steps, "solver": solver.method}


def describe_plan(plan: dict[str, Any], method: str) -> str:
    """``time t=... (sigma_t/alpha_t ...), <steps> <solver> steps`` (or the one posterior-mean step)."""
    how = "one step to the posterior mean" if method == "mean" else f"{plan['steps']} {plan['solver']} steps"
    return f"time t={plan['t']:.4f} (sigma_t/alpha_t {plan['ratio']:.4f}), {how}"


@torch.no_grad()
def denoise(net: Callable[[Tensor, Tensor], Tensor], path: AffinePath, solver: ODESolver, y: Tensor,
            plan: dict[str, Any], method: str) -> Solution:
    """Noisy ``y`` (model scale) -> denoised, from ``x_t = alpha_t y`` at the plan's time (module docstring)."""
    x_t = plan["scale"] * y
    if method == "mean":
        velocity = CountedVelocity(net)
        v = velocity(torch.tensor(plan["t"], device=x_t.device, dtype=x_t.dtype), x_t)
        return Solution(posterior_mean(path, x_t, v, plan["t"]), velocity.nfe)
    return transport(net, x_t, plan["t"], 1.0, solver.with_steps(plan["steps"]))
