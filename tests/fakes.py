"""Small files in the real on-disk formats (IDX, CIFAR-10 pickle batches, text, npz)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, a: np.ndarray) -> None:
    """IDX file (MNIST's format) of a uint8 array."""
    path.write_bytes(bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes())


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """One CIFAR-10 python-pickle batch: ``x`` uint8 (N, 3, 32, 32)."""
    d = {b"batch_label": b"test", b"data": x.reshape(len(x), -1), b"labels": y.tolist(), b"filenames": []}
    path.write_bytes(pickle.dumps(d, protocol=2))


def write_fake_datasets(root: Path, n_train: int = 120, n_test: int = 30) -> dict[str, Path]:
    """MNIST and CIFAR-10 in torchvision's layout under ``root``, a text file and an npz."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 20))
    text = root / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    array = root / "images.npz"
    np.savez(array, x=rng.integers(0, 256, (100, 12, 12), dtype=np.uint8), y=rng.integers(0, 3, 100))
    return {"root": root, "text": text, "array": array, "image_folder": write_image_folder(root / "pictures")}


def write_image_folder(root: Path, n: int = 30, classes: int = 3) -> Path:
    """``n`` random grey 12x12 PNGs in ``classes`` class sub-folders (torchvision's ImageFolder layout)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root
