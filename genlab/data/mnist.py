"""MNIST (256 grey levels) and binarized MNIST, read from the IDX files with our own reader.

Files are looked up in torchvision's layout ``<root>/MNIST/raw/{train,t10k}-{images-idx3,
labels-idx1}-ubyte`` (a ``.gz`` next to a missing file is read transparently). Missing files are
downloaded by ``torchvision.datasets.MNIST`` when ``download=True``. The official 60,000 training
images are split (seeded) into train/val; the official 10,000 test images are the test split.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit, ensure_files, seeded_split

IDX_UINT8 = 0x08
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FIX = (
    "Fix: delete the file so it is downloaded again (dataset.download=true), copy a good copy "
    "there, or pass dataset.root=... pointing at a directory holding good MNIST/raw files."
)


def _read_maybe_gz(path: Path) -> tuple[Path, bytes]:
    """Bytes of ``path``, or of ``path.gz`` decompressed when only that exists."""
    gz = path.with_name(path.name + ".gz")
    src = path if path.exists() or not gz.exists() else gz
    if not src.exists():
        raise DataError(f"IDX file {path} does not exist (nor {gz}). {IDX_FIX}")
    data = src.read_bytes()
    if src.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"IDX file {src} is not a valid gzip file ({e}). {IDX_FIX}") from e
    return src, data


def read_idx(path: str | Path) -> np.ndarray:
    """Read a uint8 IDX file (the MNIST format) into an array of the header's shape.

    Layout: two zero bytes, type code ``0x08`` (uint8), number of dimensions ``ndim``, then
    ``ndim`` big-endian int32 sizes, then the data in C order.
    Raises :class:`DataError` naming the file, the problem and the fix.
    """
    src, data = _read_maybe_gz(Path(path))

    def bad(problem: str) -> DataError:
        return DataError(f"IDX file {src} is unreadable: {problem}. {IDX_FIX}")

    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise bad(f"wrong magic number {data[:4].hex() or '(empty file)'}, expected 0000 08 <ndim>")
    if data[2] != IDX_UINT8:
        raise bad(f"type code 0x{data[2]:02x} is not 0x08 (uint8)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"truncated header: expected {header} bytes, found {len(data)}")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data"
        raise bad(f"{what}: expected {expected} bytes for shape {dims}, found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def binarize(x: Tensor, g: torch.Generator) -> Tensor:
    """Bernoulli draw ``x_bin ~ Bernoulli(x / 255)`` of uint8 images, returned as uint8 {0, 1}."""
    return torch.bernoulli(x.float() / 255.0, generator=g).to(torch.uint8)


class MNISTDataModule(InMemoryDataModule):
    """MNIST with 256 grey levels: seeded train/val split of the official 60k, official test 10k.

    Args:
        root: directory holding ``MNIST/raw/`` (torchvision's layout).
        download: download missing files with torchvision.
        val_fraction: share of the official training set used for validation (1/12 = 5,000).
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(self, root: str = "data", download: bool = True, val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.root, self.download = root, download

    @property
    def info(self) -> DataInfo:
        return DataInfo(name="mnist", kind="image", shape=(1, 28, 28), levels=256, num_classes=10)

    @property
    def raw_dir(self) -> Path:
        return Path(self.root).expanduser() / "MNIST" / "raw"

    def files(self) -> list[Path]:
        """The four expected IDX files."""
        return [self.raw_dir / f for pair in MNIST_FILES.values() for f in pair]

    def _missing(self) -> list[Path]:
        return [p for p in self.files() if not p.exists() and not p.with_name(p.name + ".gz").exists()]

    def ensure_files(self) -> None:
        """Download missing files (if allowed), else raise :class:`DataError` with the fixes."""
        import torchvision.datasets

        ensure_files("MNIST", self.root, self.files(), self._missing, self.download,
                     lambda: torchvision.datasets.MNIST(self.root, train=True, download=True), "IDX files")

    def _official(self, split: str) -> tuple[Tensor, Tensor]:
        """Images uint8 ``(N, 1, 28, 28)`` and labels int64 ``(N,)`` of an official split."""
        img_file, lbl_file = (self.raw_dir / f for f in MNIST_FILES[split])
        x, y = read_idx(img_file), read_idx(lbl_file)
        max_label = int(y.max(initial=0))
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(y) != len(x) or max_label > 9:
            raise DataError(
                f"MNIST files {img_file} / {lbl_file} do not match: images {x.shape}, labels {y.shape} "
                f"(max label {max_label}); expected (N, 28, 28) and (N,) in 0..9. {IDX_FIX}"
            )
        return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long()

    def load_arrays(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{split: (x uint8 (N,1,28,28), y int64 (N,))}`` for train, val and test."""
        self.ensure_files()
        x, y = self._official("train")
        tr, va = seeded_split(len(x), (1.0 - self.val_fraction, self.val_fraction), self.seed)
        return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": self._official("test")}

    def load_splits(self) -> dict[str, TensorSplit]:
        return {k: TensorSplit(x, y) for k, (x, y) in self.load_arrays().items()}


class BinarizedMNISTDataModule(MNISTDataModule):
    """MNIST binarised to {0, 1}.

    Train: dynamic binarisation, a fresh Bernoulli(x/255) draw for every batch, seeded by the
    batch seed (reproducible for the same seed, epoch and batch). Val/test: one fixed draw
    made with a generator seeded by ``seed``, identical for every instance with that seed.
    """

    @property
    def info(self) -> DataInfo:
        return DataInfo(name="binarized_mnist", kind="image", shape=(1, 28, 28), levels=2, num_classes=10)

    def load_splits(self) -> dict[str, TensorSplit]:
        arrays = self.load_arrays()
        g = torch.Generator().manual_seed(self.seed)
        out = {"train": TensorSplit(*arrays["train"], transform=binarize)}
        for split in ("val", "test"):
            x, y = arrays[split]
            out[split] = TensorSplit(binarize(x, g), y)
        return out
