"""Sample grids: PNG files on disk, and images in the W&B / TensorBoard dashboards."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.io import ImageReadMode, read_image
from torchvision.utils import make_grid, save_image

from genlab.data.base import DataInfo


def image_grid(x: Tensor, levels: int, nrow: int | None = None, min_tile: int = 32) -> Tensor:
    """Discrete images ``(N, C, H, W)`` -> a float ``(3|1, H', W')`` grid in ``[0, 1]``.

    Small images are enlarged (nearest neighbour) to tiles of at least ``min_tile`` pixels.
    """
    x = x.float() / (levels - 1)
    scale = max(1, min_tile // x.shape[-1])
    if scale > 1:
        x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=scale, pad_value=0.5)


def write_samples(x: Tensor, info: DataInfo, path: str | Path, nrow: int | None = None) -> Path:
    """Write samples in data space: a PNG grid for images (``nrow`` images a row; default square),
    a text file for text.

    Returns the path written (``.png`` or ``.txt`` suffix, chosen from the data kind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if info.kind == "text":
        path = path.with_suffix(".txt")
        sep = "\n" + "-" * 40 + "\n"
        path.write_text(sep.join(info.decode_text(row) for row in x.cpu()), encoding="utf-8")
        return path
    path = path.with_suffix(".png")
    if info.kind == "points":
        scatter_png(x.cpu(), info.levels, path)
        return path
    save_image(image_grid(x.cpu(), info.levels, nrow=nrow), path)
    return path


def draw_grid(module: L.LightningModule, n: int, seed: int) -> tuple[Tensor, int | None]:
    """About ``n`` samples for a grid and the images per row: a conditional model's with one row per
    class (``n // K`` of each), an unconditional model's ``n`` in a square."""
    y = module.grid_labels(n)
    if y is None:
        return module.sample(n, seed=seed), None
    return module.sample(len(y), seed=seed, y=y), len(y) // module.family.condition.num_classes


def scatter_png(x: Tensor, levels: int, path: Path) -> None:
    """Scatter plot of 2-D points (bin indices ``0..levels-1``) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(x[:, 0].float(), x[:, 1].float(), s=2, alpha=0.5)
    ax.set(xlim=(0, levels - 1), ylim=(0, levels - 1), aspect="equal", title=f"{len(x)} samples")
    fig.savefig(path)
    plt.close(fig)


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` validation epochs, draw ``n`` samples with a fixed seed, write
    ``<run>/samples/epoch=XXXX.png`` and log the grid to W&B / TensorBoard if attached."""

    def __init__(self, n: int = 64, every_n_epochs: int = 1, seed: int = 1234) -> None:
        self.n, self.every_n_epochs, self.seed = n, every_n_epochs, seed
        self.drawn_epoch: int | None = None  # once per epoch, also with several validations in it

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs or self.drawn_epoch == trainer.current_epoch:
            return
        self.drawn_epoch = trainer.current_epoch
        with torch.random.fork_rng(devices=[]):
            x, nrow = draw_grid(pl_module, self.n, self.seed)
        path = write_samples(x, pl_module.info, Path(trainer.default_root_dir) / "samples" / f"epoch={trainer.current_epoch:04d}",
                             nrow)
        self._log(trainer, path, x, pl_module.info)

    @staticmethod
    def _log(trainer: L.Trainer, path: Path, x: Tensor, info: DataInfo) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and path.suffix == ".png":
                logger.log_image("samples", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_text("samples", columns=["text"], data=[[path.read_text()[:2000]]], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger) and path.suffix == ".png":
                logger.experiment.add_image("samples", read_image(str(path), ImageReadMode.RGB), trainer.global_step)
