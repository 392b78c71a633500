"""CIFAR-10 (3x32x32, 256 levels), read from the python pickle batches with our own reader.

Files are looked up in the layout of the official archive (and torchvision):
``<root>/cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``. Missing files are
downloaded by ``torchvision.datasets.CIFAR10`` when ``download=True``. The official 50,000
training images are split (seeded) into train/val; the official 10,000 are the test split.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit, ensure_files, seeded_split

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR_FIX = (
    "Fix: delete the file (or the whole cifar-10-batches-py folder) so it is downloaded again "
    "(dataset.download=true), copy a good copy there, or pass dataset.root=... pointing at a "
    "directory holding good cifar-10-batches-py files."
)


def _field(d: dict, key: str):
    """``d[b"key"]`` (the official Python 2 pickles) or ``d["key"]``; None when absent."""
    return d.get(key.encode(), d.get(key))


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 python batch: images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``.

    A batch is a pickled dict with ``b"data"`` (uint8 ``(N, 3072)``, channel-major rows) and
    ``b"labels"`` (N ints in 0..9). Raises :class:`DataError` naming the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"CIFAR-10 batch {path} does not exist. {CIFAR_FIX}")
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on corrupt or truncated files
        raise DataError(f"CIFAR-10 batch {path} is corrupt or truncated ({type(e).__name__}: {e}). {CIFAR_FIX}") from e
    data = _field(d, "data") if isinstance(d, dict) else None
    labels = _field(d, "labels") if isinstance(d, dict) else None
    if data is None or labels is None:
        raise DataError(f"CIFAR-10 batch {path} lacks the b'data' or b'labels' entry. {CIFAR_FIX}")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(
            f"CIFAR-10 batch {path} has data {data.dtype} {data.shape} and labels {labels.shape}; "
            f"expected uint8 (N, 3072) and (N,). {CIFAR_FIX}"
        )
    if labels.size and not (labels.min() >= 0 and labels.max() <= 9):
        raise DataError(f"CIFAR-10 batch {path} has labels outside 0..9. {CIFAR_FIX}")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10: seeded train/val split of the official 50k, official test 10k.

    Args:
        root: directory holding ``cifar-10-batches-py/``.
        download: download missing files with torchvision.
        val_fraction: share of the official training set used for validation (0.1 = 5,000).
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(self, root: str = "data", download: bool = True, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.root, self.download = root, download

    @property
    def info(self) -> DataInfo:
        return DataInfo(name="cifar10", kind="image", shape=(3, 32, 32), levels=256, num_classes=10)

    @property
    def batch_dir(self) -> Path:
        return Path(self.root).expanduser() / "cifar-10-batches-py"

    def files(self) -> list[Path]:
        """The six expected batch files (five train, one test)."""
        return [self.batch_dir / f for f in (*TRAIN_BATCHES, TEST_BATCH)]

    def ensure_files(self) -> None:
        """Download missing files (if allowed), else raise :class:`DataError` with the fixes."""
        import torchvision.datasets

        ensure_files("CIFAR-10", self.root, self.files(), lambda: [p for p in self.files() if not p.exists()],
                     self.download, lambda: torchvision.datasets.CIFAR10(self.root, train=True, download=True),
                     "batch files")

    def load_splits(self) -> dict[str, TensorSplit]:
        self.ensure_files()
        parts = [read_cifar_batch(self.batch_dir / f) for f in TRAIN_BATCHES]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        tr, va = seeded_split(len(x), (1.0 - self.val_fraction, self.val_fraction), self.seed)
        return {
            "train": TensorSplit(x[tr], y[tr]),
            "val": TensorSplit(x[va], y[va]),
            "test": TensorSplit(*read_cifar_batch(self.batch_dir / TEST_BATCH)),
        }
