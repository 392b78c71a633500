"""A run's output is the progress bar, genlab's own lines and real warnings: Lightning's noise is filtered.

* the ``isinstance(treespec, LeafSpec)`` deprecation warning (Lightning's own use of torch's pytree),
* the "litlogger" advertisement,
* Lightning's note that it skips its default model summary for genlab's
  (:class:`genlab.callbacks.summary.ModelSummary`, which leaves out the FLOPs that are always 0).

Filters, not patches: they drop those messages only, and :func:`install` is idempotent.
"""

from __future__ import annotations

import logging
import warnings

# the advertisement, and Lightning's note that genlab's own model summary replaces its default
_ADVERTS = ("litlogger", "LitLogger", "Skipping setting a default `ModelSummary`")


class _LightningNoise(logging.Filter):
    """Drops the advertisement and the summary note."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(a in record.getMessage() for a in _ADVERTS)


_FILTER = _LightningNoise()
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def install() -> None:
    """Filter the noise listed in the module doc (safe to call more than once)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
