"""Inpainting with a flow-matching model (the :class:`~genlab.families.base.Inpainter` capability):
replacement along the probability path.

The ODE ``dx/dt = v(x, t)`` is integrated from ``t = 0`` (noise) to ``t = 1`` (data) on ``steps``
equal intervals, and after each the known region is set to its point on the conditional path,
``x_t = alpha_t x_1 + sigma_t x_0`` (:mod:`.paths`), with ``x_1`` the (dequantised) real image and
``x_0`` one fixed noise draw, the one the ODE started from in the missing region: the flow analogue
of RePaint's replacement (Lugmayr et al. 2022, Eq. 8-9), without resampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genlab.families.flow_matching.ode import ODESolver, Solution, transport
from genlab.families.flow_matching.paths import AffinePath


@torch.no_grad()
def fill_along_path(net: Callable[[Tensor, Tensor], Tensor], path: AffinePath, solver: ODESolver, x1: Tensor,
                    missing: Tensor, steps: int) -> Solution:
    """The ODE from noise to data on ``steps`` intervals (each by ``solver``'s method), the known region of
    ``x1`` ``(B, ...)`` (where ``missing`` is False) reset to ``alpha_t x_1 + sigma_t x_0`` after each;
    returns the model-scale end state and the NFE of all intervals."""
    one_step = solver.with_steps(1)
    noise = torch.randn_like(x1)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()

    def on_path(t: float) -> Tensor:
        return path.x_t(noise, x1, torch.full((len(x1),), t, device=x1.device, dtype=x1.dtype))

    y, nfe = torch.where(missing, noise, on_path(0.0)), 0
    for t0, t1 in zip(grid[:-1], grid[1:]):
        step = transport(net, y, t0, t1, one_step)
        y, nfe = torch.where(missing, step.y, on_path(t1)), nfe + step.nfe
    return Solution(y, nfe)
