"""Channels-last memory format for the conv nets of a run (a speed option, results unchanged).

PyTorch's CPU convolutions (oneDNN) and GPU tensor cores run faster on NHWC tensors than on the
default NCHW layout; converting the weights is enough, every conv then computes (and returns) its
activations in NHWC. On this project's 2-core CPU, ``experiment=gan_mnist`` (bf16 autocast) trains
about 19% more steps in the same time with it (docs/benchmarks.md). Use it from an experiment::

    callbacks:
      channels_last:
        _target_: genlab.callbacks.memory.ChannelsLast

Only the layout changes: outputs, gradients and checkpoints hold the same numbers (up to
floating-point summation order), and a checkpoint loads into a net of either layout.
"""

from __future__ import annotations

import lightning as L
import torch


class ChannelsLast(L.Callback):
    """Converts the module's 4-D parameters and buffers to ``torch.channels_last`` at setup,
    before the optimizers exist (the parameters stay the same objects, so optimizer state made
    later follows their layout)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
