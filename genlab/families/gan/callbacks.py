"""GAN callbacks: sample-quality metrics during validation (e.g. mode coverage on ``dataset=mixture2d``)
and the calibration of discriminator rejection sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch

from genlab.families.gan.family import GAN

if TYPE_CHECKING:
    from genlab.module import GenerativeModule


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


def calibration_images(dm, n: int = 1000, seed: int = 8765) -> torch.Tensor:
    """The held-out real images that calibrate rejection sampling: ``n`` of the validation split
    (a seeded subset; never the test images that samples are scored against)."""
    from genlab.metrics.quality import split_subset

    return split_subset(dm.splits["val"], n, seed)


def calibration_labels(dm, n: int = 1000, seed: int = 8765) -> torch.Tensor | None:
    """The labels of :func:`calibration_images` (the same seeded subset), None where the split has none:
    a class-conditional GAN scores each held-out image with its own label."""
    split = dm.splits["val"]
    if getattr(split, "y", None) is None:
        return None
    return split.y[torch.randperm(len(split.y), generator=torch.Generator().manual_seed(seed))[:n]]


class RejectionCalibrator(L.Callback):
    """Calibrates a GAN's discriminator rejection sampler (``model.sampler.rejection``; the
    calibration is ``nets["rejection"]``) whenever samples or a checkpoint may follow a change of
    the discriminator: at the start of every validation (so the validation's samples and the
    checkpoints written after it use a calibration for the current discriminator), at the end of
    every training epoch (checkpoints written there) and at the end of training. ``n`` validation
    images (with their labels, for a class-conditional GAN) against ``n`` draws of the configured
    sampler's steps before rejection (:meth:`GAN.calibrate_rejection`); skipped while the calibration
    is still for the current weights and proposals. Logs ``val/drs_acceptance`` (the expected share of proposals kept).
    Does nothing for other families or without a rejection step (the GAN model configs add it as
    ``callbacks.gan_rejection``)."""

    def __init__(self, n: int = 1000, seed: int = 8765) -> None:
        self.n, self.seed = n, seed
        self.images: torch.Tensor | None = None  # the calibration images, selected once
        self.labels: torch.Tensor | None = None  # their labels (conditional GANs)

    def _calibrate(self, trainer: L.Trainer, pl_module: GenerativeModule, log: bool = False) -> None:
        family, dm = pl_module.family, trainer.datamodule
        if trainer.sanity_checking or not isinstance(family, GAN) or family.sampler.rejection is None or dm is None:
            return
        nets = pl_module.nets
        rejection = nets["rejection"]
        if not rejection.ready_for(nets["discriminator"], family.sampler.proposal_key()):
            if self.images is None:
                self.images = calibration_images(dm, self.n, self.seed).to(pl_module.device)
                labels = calibration_labels(dm, self.n, self.seed) if family.condition is not None else None
                self.labels = None if labels is None else labels.to(pl_module.device)
            with pl_module.inference(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                family.calibrate_rejection(nets, self.images, y=self.labels)
        if log:
            _, acceptance = rejection.bound_for(family.sampler.rejection.quantile)
            pl_module.log("val/drs_acceptance", float(acceptance), sync_dist=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: GenerativeModule) -> None:
        self._calibrate(trainer, pl_module, log=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GenerativeModule) -> None:
        self._calibrate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: GenerativeModule) -> None:
        self._calibrate(trainer, pl_module)
