"""Sample-quality metrics during validation (e.g. mode coverage on ``dataset=mixture2d``)."""

from __future__ import annotations

import lightning as L
import torch


class SampleMetrics(L.Callback):
    """Every ``every_n_epochs`` validation epochs, draw ``n`` samples with a fixed seed and log
    the datamodule's ``sample_metrics(x)`` as ``val/<name>`` (``val/modes_covered``, ...).

    Datasets without sample metrics (``{}``) log nothing; the samples are then not drawn again
    (the first empty answer switches the callback off).
    """

    def __init__(self, n: int = 1000, every_n_epochs: int = 1, seed: int = 4321) -> None:
        self.n, self.every_n_epochs, self.seed = n, every_n_epochs, seed
        self.active = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or not self.active or dm is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        with torch.random.fork_rng(devices=[]):
            metrics = dm.sample_metrics(pl_module.sample(self.n, seed=self.seed))
        self.active = bool(metrics)
        if metrics:
            pl_module.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, sync_dist=False)
