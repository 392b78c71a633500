"""Diffusion callbacks (added by ``configs/model/ddpm*.yaml``): the standard error of the bound, and
the autoguidance snapshot."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from genlab.callbacks.ema import EMAWeightAveraging
from genlab.metrics.likelihood import LN2


class BoundStandardError(L.Callback):
    """At the end of every validation / test epoch, log the standard errors of the mean bound that
    :meth:`~genlab.families.diffusion.family.Diffusion.log_likelihood` accumulated, in bits/dim:

    * ``{stage}/nll_bpd_se``: spread of the per-example bounds, ``sd / sqrt(n)`` (data and
      Monte Carlo variation together: how far the mean is from that of the whole distribution);
    * ``{stage}/nll_bpd_se_timesteps``: Monte Carlo error of the timestep subsample alone (0
      when every timestep is evaluated).

    Sums are reduced over DDP ranks. A module whose family keeps no bound statistics is skipped.
    """

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(pl_module, "test")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    @staticmethod
    def _reset(pl_module: L.LightningModule, stage: str) -> None:
        stats = getattr(pl_module.family, "bound_stats", None)
        if stats is not None:
            stats(stage, reset=True)

    @staticmethod
    def _log(trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        get = getattr(pl_module.family, "bound_stats", None)
        if get is None:
            return
        s = get(stage, reset=True)
        sums = torch.tensor([s.n, s.total, s.total_sq, s.mc_var], dtype=torch.float64, device=pl_module.device)
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        s.n, s.total, s.total_sq, s.mc_var = int(sums[0]), *(float(v) for v in sums[1:])
        if s.n == 0:
            return
        to_bpd = 1.0 / (pl_module.info.dims * LN2)
        se = s.standard_errors()
        pl_module.log(f"{stage}/nll_bpd_se", se["examples"] * to_bpd, sync_dist=False)
        pl_module.log(f"{stage}/nll_bpd_se_timesteps", se["timesteps"] * to_bpd, sync_dist=False)


class GuideSnapshot(L.Callback):
    """Freeze the guide of autoguidance (:mod:`genlab.families.diffusion.guidance`) once training
    has spent the share ``model.guidance.at`` of its budget: the larger of the step share
    (``global_step / trainer.estimated_stepping_batches``) and the time share (``trainer.max_time``).

    The guide copies the EMA weights when an EMA callback averages the model (else the raw ones),
    into the live model and into the average alike, so that the average of the frozen copy stays
    exactly that copy. It is taken once per run (the step is saved with it, so a resumed run does
    not take it again). A no-op for families without ``model.guidance``. Whether a snapshot is due is
    decided at the start of training, so the training steps pay only a comparison.
    """

    def __init__(self) -> None:
        self._at: float | None = None  # the share at which the snapshot is still to be taken
        self._total = 1.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        guidance, nets = getattr(pl_module.family, "guidance", None), pl_module.nets
        due = guidance is not None and "guide" in nets and not nets["guide"].ready
        self._at = guidance.at if due else None
        self._total = max(float(trainer.estimated_stepping_batches), 1.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._at is None or max(trainer.global_step / self._total, pl_module.time_progress()) < self._at:
            return
        averaged = next((c.average for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)), None)
        source = (averaged or pl_module).nets["net"]
        for module in (pl_module, averaged):
            if module is not None:
                module.nets["guide"].copy_from(source, trainer.global_step)
        self._at = None
