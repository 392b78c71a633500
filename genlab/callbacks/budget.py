"""A training budget in CPU seconds of the run's own process: fair budgets on a shared machine.

``trainer.max_time`` is wall-clock: on a machine shared with other jobs (a 2-core laptop running a
sweep and tests, a busy node) two runs with the same ``max_time`` get different amounts of compute, and a
comparison of families or seeds measures the load, not the models. ``callbacks.cpu_budget.seconds=N``
stops training once this process has used ``N`` seconds of CPU time (user + system, all its threads;
with ``threads=1`` that is the compute the run received), checked after every training step. The CPU
time spent before an interruption is saved in the checkpoint and counts after a resume. Evaluation
(validation, test, sampling) is not counted. With both budgets, the first one reached stops training.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class CPUBudget(Callback):
    """Stop training after ``seconds`` of this process's CPU time in training (None: no budget)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        self.used = 0.0  # CPU seconds of training so far, this process and the runs it resumes
        self._mark: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._mark = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._mark is not None:
            self.used += time.process_time() - self._mark
            self._mark = None
        if self.seconds is not None and self.used >= self.seconds:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"used": self.used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.used = float(state_dict.get("used", 0.0))
