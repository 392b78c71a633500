"""A run's output is the progress bar, genlab's own lines and real warnings: Lightning's noise is filtered.

* the ``isinstance(treespec, LeafSpec)`` deprecation warning (Lightning's own use of torch's pytree),
* the "litlogger" advertisement,
* the model summary's FLOPs column and ``Total Flops`` line (always 0: genlab sets no example input;
  :class:`genlab.callbacks.summary.ModelSummary` prints the table without them),
* Lightning's note that it skips its default summary for genlab's.

Filters, not patches: they drop or trim those messages only, and :func:`install` is idempotent.
"""

from __future__ import annotations

import logging
import warnings

# the advertisement, and Lightning's note that genlab's own model summary replaces its default
_ADVERTS = ("litlogger", "LitLogger", "Skipping setting a default `ModelSummary`")


class _LightningNoise(logging.Filter):
    """Drops the advertisement; trims the FLOPs parts off the model summary table."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(a in message for a in _ADVERTS):
            return False
        if "Total Flops" in message:
            record.msg, record.args = strip_flops(message), None
        return True


def strip_flops(table: str) -> str:
    """The model summary without its ``FLOPs`` column and ``Total Flops`` line."""
    lines = [line for line in table.split("\n") if not line.strip().endswith("Total Flops")]
    header = next((line for line in lines if "| FLOPs" in line), None)
    if header is None:
        return "\n".join(lines)
    cols = header.split(" | ")
    i = next(k for k, c in enumerate(cols) if c.strip() == "FLOPs")
    out = []
    for line in lines:
        parts = line.split(" | ")
        out.append(" | ".join(parts[:i] + parts[i + 1:]) if len(parts) == len(cols) else line)
    return "\n".join(out)


_FILTER = _LightningNoise()
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary",
            "lightning.fabric.utilities.rank_zero")


def install() -> None:
    """Filter the noise listed in the module doc (safe to call more than once)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
