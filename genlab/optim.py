"""Learning-rate schedules built from config (``scheduler`` group, ``_partial_: true``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int | float, warmup_steps: int = 0, min_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_ratio * lr`` at
    ``total_steps`` (the trainer's estimated number of optimizer steps). With an unknown
    budget (``total_steps = inf``, e.g. a ``max_time`` run) the rate stays constant after warm-up.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not math.isfinite(total_steps):
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
