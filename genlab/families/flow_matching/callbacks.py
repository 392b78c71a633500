"""Callbacks of the flow-matching configs: NFE logging (EMA: :mod:`genlab.callbacks.ema`)."""

from __future__ import annotations

import lightning as L


class NFEMonitor(L.Callback):
    """Log ``{val,test}/nfe``: the velocity evaluations of the last likelihood ODE solve of each
    evaluation epoch (``family.nfe``; constant for fixed-grid solvers, adaptive for dopri5)."""

    def _log(self, stage: str, pl_module: L.LightningModule) -> None:
        nfe = getattr(pl_module.family, "nfe", {}).get(stage)
        if nfe is not None:
            pl_module.log(f"{stage}/nfe", float(nfe), sync_dist=False)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("val", pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("test", pl_module)
