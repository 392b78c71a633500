"""Learning-rate schedules built from config (``scheduler`` group, ``_partial_: true``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int | float, warmup_steps: int = 0, min_ratio: float = 0.1,
                  time_progress: Callable[[], float] | None = None) -> LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_ratio * lr`` at the end
    of the budget: ``total_steps`` (the trainer's estimated number of optimizer steps) or, for
    a run with a time budget (``trainer.max_time``), ``time_progress()`` (the share of that time
    spent, 0..1; :class:`genlab.module.GenerativeModule` passes it) when that comes sooner.
    With neither (``total_steps = inf``, no time budget) the rate stays constant after warm-up.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps) if math.isfinite(total_steps) else 0.0
        if time_progress is not None:
            progress = max(progress, time_progress())
        elif not math.isfinite(total_steps):
            return 1.0
        progress = min(1.0, progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
