"""Diffusion callback (added by ``configs/model/ddpm*.yaml``): the autoguidance snapshot. (The bound's
standard errors travel in :class:`~genlab.metrics.likelihood.LogLikelihood` ``extras``, see
:meth:`Diffusion.summarize_likelihood <genlab.families.diffusion.family.Diffusion.summarize_likelihood>`.)"""

from __future__ import annotations

from typing import Any

import lightning as L

from genlab.callbacks.ema import EMAWeightAveraging
from genlab.families.diffusion.guidance import GuideNet, guide_source


class GuideSnapshot(L.Callback):
    """Freeze the guide of autoguidance (:mod:`genlab.families.diffusion.guidance`) once training
    has spent the share ``model.guidance.at`` (the guide's :attr:`GuideNet.at`) of its budget: the
    larger of the step share (``global_step / trainer.estimated_stepping_batches``) and the time
    share (``trainer.max_time``).

    The guide copies the EMA weights when an EMA callback averages the model (else the raw ones),
    into the live model and into the average alike, so that the average of the frozen copy stays
    exactly that copy (with the label table of a conditional model: the guide keeps the labels it had
    then, :func:`~genlab.families.diffusion.guidance.guide_source`). It is taken once per run (the step
    is saved with it, so a resumed run does not take it again). A no-op for models without a guide
    (``model.guidance=null``). Whether a snapshot is due is decided at the start of training, so the
    training steps pay only a comparison.
    """

    def __init__(self) -> None:
        self._at: float | None = None  # the share at which the snapshot is still to be taken
        self._total = 1.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        guide = pl_module.nets["guide"] if "guide" in pl_module.nets else None
        due = isinstance(guide, GuideNet) and guide.at is not None and not guide.ready
        self._at = guide.at if due else None
        self._total = max(float(trainer.estimated_stepping_batches), 1.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._at is None or max(trainer.global_step / self._total, pl_module.time_progress()) < self._at:
            return
        averaged = next((c.average for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)), None)
        source = guide_source((averaged or pl_module).nets)
        for module in (pl_module, averaged):
            if module is not None:
                module.nets["guide"].copy_from(source, trainer.global_step)
        self._at = None
