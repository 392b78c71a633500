"""Images from a local ``.npy`` / ``.npz`` file: bring your own discrete data.

The file holds uint8 (or bool) images ``(N, H, W)`` or ``(N, C, H, W)``: a ``.npy`` array, or a
``.npz`` with key ``x`` (else its only array) and optional integer labels ``y`` ``(N,)``.
The examples are split (seeded) into train/val/test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit, images_to_uint8, seeded_split


def load_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y or None)`` from a ``.npy`` or ``.npz`` file, with :class:`DataError` on problems."""
    if not path.is_file():
        raise DataError(f"array file {path} does not exist. Fix: set dataset.path=... to a .npy or .npz file")
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"array file {path} must end in .npy or .npz. Fix: save it with np.save / np.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (pickled objects), OSError/EOFError (corrupt), ...
        raise DataError(f"array file {path} cannot be read ({type(e).__name__}: {e}). Fix: re-save it (np.save)") from e
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        keys = list(loaded.files)
        if "x" not in keys and len(keys) != 1:
            raise DataError(f"array file {path} has arrays {keys} but no 'x'. Fix: save it as np.savez(path, x=...)")
        x = loaded["x" if "x" in keys else keys[0]]
        y = loaded["y"] if "y" in keys and "x" in keys else None
    return x, y


class ArrayDataModule(InMemoryDataModule):
    """Seeded train/val/test split of images from a ``.npy`` / ``.npz`` file.

    Args:
        path: the file (see module docstring).
        levels: number of grey levels; default 2 if every value is 0 or 1, else 256.
        name: dataset name used in results.
        val_fraction, test_fraction: shares of the examples for validation and test.
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(
        self,
        path: str,
        levels: int | None = None,
        name: str = "array",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.path, self.levels, self.name = Path(path).expanduser(), levels, name
        self.test_fraction = test_fraction
        self._data: tuple[Tensor, Tensor | None, int] | None = None

    def source(self) -> str:
        return f" (from {self.path})"

    def data(self) -> tuple[Tensor, Tensor | None, int]:
        """``(x uint8 (N, C, H, W), y int64 (N,) or None, levels)``; the file is read once."""
        if self._data is None:
            self._data = self._load()
        return self._data

    def _load(self) -> tuple[Tensor, Tensor | None, int]:
        x, y = load_array_file(self.path)
        if x.dtype not in (np.uint8, np.bool_):
            raise DataError(
                f"array file {self.path} holds dtype {x.dtype}; expected uint8 (or bool) pixel values. "
                "Fix: save x.astype('uint8') with values in 0..levels-1."
            )
        if x.ndim not in (3, 4):
            raise DataError(
                f"array file {self.path} holds shape {x.shape}; expected images (N, H, W) or (N, C, H, W). "
                "Fix: reshape it, e.g. x.reshape(N, 1, H, W)."
            )
        x = images_to_uint8(x.astype(np.uint8, copy=False), f"array file {self.path}")
        top = int(x.max()) if x.numel() else 0
        levels = self.levels or (2 if top <= 1 else 256)
        if not 2 <= levels <= 256 or top >= levels:
            raise DataError(
                f"array file {self.path}: values go up to {top} but levels={levels} (must be in 2..256 "
                "and above the largest value). Fix: set dataset.levels=... or rescale the data."
            )
        if y is not None:
            if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
                raise DataError(
                    f"array file {self.path}: labels 'y' have dtype {y.dtype} and shape {y.shape}; expected "
                    f"non-negative integers of shape ({len(x)},). Fix: save y as an int array, one label per image."
                )
            y = torch.from_numpy(y.astype(np.int64))
        return x, y, levels

    @property
    def info(self) -> DataInfo:
        x, y, levels = self.data()
        num_classes = int(y.max()) + 1 if y is not None and len(y) else None
        return DataInfo(name=self.name, kind="image", shape=tuple(x.shape[1:]), levels=levels, num_classes=num_classes)

    def load_splits(self) -> dict[str, TensorSplit]:
        x, y, _ = self.data()
        train_frac = 1.0 - self.val_fraction - self.test_fraction
        tr, va, te = seeded_split(len(x), (train_frac, self.val_fraction, self.test_fraction), self.seed)
        parts = {"train": tr, "val": va, "test": te}
        return {k: TensorSplit(x[i], None if y is None else y[i]) for k, i in parts.items()}
