"""Logging of the standard error of the diffusion bound (added by ``configs/model/ddpm*.yaml``)."""

from __future__ import annotations

import lightning as L
import torch

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
