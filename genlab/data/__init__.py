"""In-memory datamodules holding discrete data (see :mod:`genlab.data.base`)."""

from genlab.data.base import DataError, DataInfo, InMemoryDataModule

__all__ = ["DataError", "DataInfo", "InMemoryDataModule"]
