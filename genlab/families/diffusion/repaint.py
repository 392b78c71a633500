"""RePaint inpainting (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
Probabilistic Models", Alg. 1): the :class:`~genlab.families.base.Inpainter` capability.

Ancestral reverse steps on the chain respaced to ``steps`` steps; after each step ``x_t -> x_{t-1}``
the known region is replaced by a fresh draw of ``q(x_{t-1} | x0) = N(sqrt(alpha_bar_{t-1}) x0,
(1 - alpha_bar_{t-1}) I)`` of the real image (Eq. 8-9 of the paper: the hook of
:func:`~genlab.families.diffusion.samplers.run_chain`). With ``resample = r > 1`` the chain jumps
``jump`` steps back up by the forward process ``r - 1`` times at every ``jump``-th step (their
resampling schedule, Sec. 4.2: :func:`repaint_schedule`), which harmonises the two regions at ``r``
times the cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.samplers import Ancestral, Hook, run_chain

METHOD = "RePaint (Lugmayr et al. 2022)"


def repaint_schedule(steps: int, jump: int, resample: int) -> list[int]:
    """States visited by RePaint (Lugmayr et al. 2022, Sec. 4.2; their ``get_schedule_jump``):
    from ``steps - 1`` (pure noise) down to ``-1`` (the data), and ``resample - 1`` times at
    every ``jump``-th state back up ``jump`` states. A step down from state ``k`` is the reverse
    step at ``t = k``; a step up from ``k`` is one forward noising step."""
    if jump < 1 or resample < 1:
        raise ValueError(f"jump={jump} and resample={resample} must be >= 1 (resample=1: plain RePaint, no jumps)")
    pending = {j: resample - 1 for j in range(0, max(steps - jump, 0), jump)}
    t, states = steps, []
    while t >= 1:
        t -= 1
        states.append(t)
        if pending.get(t, 0) > 0:
            pending[t] -= 1
            for _ in range(jump):
                t += 1
                states.append(t)
    return [*states, -1]


def known_region(model: DiffusionModel, x0: Tensor, missing: Tensor) -> Hook:
    """The hook that, after the reverse step at ``t``, sets the observed pixels to a draw of
    ``q(x_{t-1} | x0)`` (exactly ``x0`` after the last step, ``alpha_bar_{-1} = 1``)."""
    p = model.process

    def replace(x: Tensor, t: Tensor) -> Tensor:
        known = p.at("sqrt_ab_prev", t, x0) * x0 + p.at("sqrt_1m_ab_prev", t, x0) * torch.randn_like(x0)
        return torch.where(missing, x, known)

    return replace


@torch.no_grad()
def repaint(model: DiffusionModel, x0: Tensor, missing: Tensor, steps: int | None, jump: int,
            resample: int) -> Tensor:
    """RePaint of ``x0`` (``[-1, 1]``, ``(B, ...)``) where ``missing`` (bool, same shape) on the chain
    respaced to ``steps`` steps (None: ``min(T, 100)``); model scale out (module docstring)."""
    big_t = model.process.T
    steps = min(big_t, 100) if steps is None else steps
    if not 1 <= steps <= big_t:
        raise ValueError(f"steps={steps} must be in 1..{big_t} (the model's diffusion timesteps)")
    model = model.on(model.process.respace(steps))
    states = repaint_schedule(model.process.T, jump, resample)
    return run_chain(model, torch.randn_like(x0), Ancestral().step, states, known_region(model, x0, missing))
