"""The model summary at the start of fit, without the FLOPs column and ``Total Flops`` line that
Lightning 2.6 prints as 0 (genlab sets no example input, so none are counted)."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary as _LightningSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")  # printed as Lightning prints it


class ModelSummary(_LightningSummary):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelSummary` as plain text, FLOPs left out
    (genlab-train adds it when ``trainer.enable_model_summary`` is true)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        columns = [c for c in summary_data if c[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        log.info("\n" + "\n".join(line for line in table.split("\n") if not line.endswith("Total Flops")))
