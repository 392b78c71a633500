"""The callback that makes every run end in a known, checkpointed state.

* **Signals** (SIGTERM from a scheduler or ``timeout``, SIGINT from Ctrl-C): after the training
  step in progress, the current state is written to ``checkpoints/last.ckpt`` and
  :class:`genlab.interrupt.RunInterrupted` ends the run (``genlab-train`` then records
  ``status: "interrupted"`` and exits with 128 + the signal number). The resume from that
  checkpoint continues bit for bit.
* **The end of training is validated**: when ``max_steps`` ends a run mid-epoch, the last step
  asks Lightning to stop, which validates (and so checkpoints) that final state, as at an epoch
  end; ``max_time`` stops the same way through Lightning's ``Timer``.

genlab-train adds it to every run (it is not a config option: a run without it could lose data).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from genlab import interrupt


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the latest state goes: the ``last`` checkpoint callback's file, else ``<root>/checkpoints``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.filename == "last" and cb.dirpath:
            return Path(cb.dirpath) / f"last{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class RunGuard(Callback):
    """Acts on stop requests between steps and validates the final step (see the module doc)."""

    def __init__(self) -> None:
        self.interrupt_checkpoint: str | None = None

    # Lightning registers its own SIGTERM notifier when a stage starts (after on_fit_start); it
    # would raise a SystemExit(0) between evaluation batches. Ours replaces it at each stage start.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.install()
        interrupt.check("before testing")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        signum = interrupt.requested()
        if trainer.world_size > 1:  # DDP: a signal that reached any rank stops every rank at this step
            stop = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
            signum = (signum or signal.SIGTERM) if stop else None
        if signum is not None:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            self.interrupt_checkpoint = str(path)
            raise interrupt.RunInterrupted(signum, f"after step {trainer.global_step}")
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates (and checkpoints) a run that is asked to stop

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written at the end of an epoch (Lightning's ``on_train_epoch_end`` saves, also
        of an epoch cut short by ``max_steps`` / ``max_time``) is stored as "inside the epoch, after
        its last trained batch": processed = started - 1, the form of a checkpoint written at
        validation end.

        Lightning 2.6 resumes the epoch-end form wrongly for step-based runs: it counts the epoch as
        processed twice and skips the next epoch's data order (and an epoch cut short would not be
        continued at all). From the stored form it finishes the epoch in progress — the resumable
        train loader serves its remaining batches, none for a complete epoch — and goes on exactly
        as an uninterrupted run.
        """
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs = loop.get("epoch_progress")
        if not epochs or "epoch_loop.batch_progress" not in loop:
            return
        for counts in (epochs["total"], epochs["current"]):
            if counts["processed"] == counts["started"] and counts["completed"] == counts["processed"] - 1:
                counts["processed"] -= 1
