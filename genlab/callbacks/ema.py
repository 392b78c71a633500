"""EMA of the weights for validation, test, sampling and checkpoints (Lightning's callback, fixed).

Use it from a model config::

    callbacks:
      ema:
        _target_: genlab.callbacks.ema.EMAWeightAveraging
        decay: 0.999
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging as _LightningEMA
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor


def warm_decay(decay: float, num_averaged: float) -> float:
    """The EMA decay after ``n`` updates, ramped up as ``min(decay, (1 + n) / (10 + n))``."""
    n = float(num_averaged)
    return min(decay, (1.0 + n) / (10.0 + n))


def warm_ema(averaged: Tensor, current: Tensor, num_averaged: Tensor, decay: float) -> Tensor:
    """One EMA update with the decay warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so that short runs are not dominated by their first, untrained weights (with a
    fixed 0.999, 14% of the average after 2,000 steps would still be the first steps' weights)."""
    return torch.lerp(averaged, current, 1.0 - warm_decay(decay, num_averaged))


class EMAWarmup:
    """``multi_avg_fn`` of :class:`~torch.optim.swa_utils.AveragedModel`: :func:`warm_ema` on a whole
    group of tensors in one ``torch._foreach_lerp_`` (not one Python call per tensor), with the warmed-up
    weight computed on the tensors' device (no host-device synchronisation per step). Integer buffers
    (BatchNorm's counter) are copied."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    @torch.no_grad()
    def __call__(self, ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        if not ema[0].is_floating_point():
            torch._foreach_copy_(ema, current)
            return
        n = n_averaged.to(ema[0].device, torch.float64)
        decay = torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        torch._foreach_lerp_(ema, current, (1.0 - decay).to(ema[0].dtype))


class EMAWeightAveraging(_LightningEMA):
    """Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` (EMA weights for
    validation, in the checkpoint's ``state_dict`` and in the model after training) with two fixes.

    * Lightning 2.6 restores ``checkpoint["current_model_state"]`` (the raw, non-averaged weights)
      whenever it has an average model, also in ``trainer.test(ckpt_path="best")`` after ``fit``:
      the test NLL and the final samples would come from the raw weights while validation and
      :func:`genlab.builders.load_run` use the EMA ones. Here that restore happens only while
      fitting (a resume); otherwise the checkpoint's ``state_dict`` (the EMA weights) stays.
    * ``warmup``: the decay ramps up as in :func:`warm_ema`.

    Args:
        decay: the EMA decay once warmed up.
        warmup: ramp the decay up from 0.1 (see :func:`warm_ema`).
        **kwargs: Lightning's ``EMAWeightAveraging`` arguments (``update_every_n_steps``, ...).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs.pop("avg_fn", None)
            self._kwargs["multi_avg_fn"] = EMAWarmup(decay)

    @property
    def average(self) -> L.LightningModule | None:
        """The averaged copy of the module while fitting (None before ``setup``)."""
        return None if self._average_model is None else self._average_model.module

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
