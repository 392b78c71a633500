"""File-format datamodules (MNIST IDX, CIFAR-10 pickles, text, arrays) on small real-format files.

Every file is written into ``tmp_path``; nothing is downloaded and no shared data is used.
"""

from __future__ import annotations

import gzip
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fakes import write_cifar_batch, write_idx

from genlab.data.array import ArrayDataModule
from genlab.data.base import DataError
from genlab.data.cifar10 import CIFAR10DataModule, read_cifar_batch
from genlab.data.mnist import BinarizedMNISTDataModule, MNISTDataModule, read_idx
from genlab.data.text import (
    UNK,
    PydocSource,
    TextDataModule,
    TextFileSource,
    TinyShakespeareSource,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"


# -- helpers -----------------------------------------------------------------------------------
def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


@pytest.fixture
def mnist(tmp_path):
    """120 train / 30 test random 28x28 images in torchvision's layout; returns (root, arrays)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 120), ("t10k", 30)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        arrays[split] = (x, y)
    return tmp_path, arrays


@pytest.fixture
def cifar(tmp_path):
    """Five train batches and a test batch of 20 random images each; returns (root, x_train, x_test)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(folder / name, x, rng.integers(0, 10, 20))
        xs.append(x)
    return tmp_path, np.concatenate(xs[:5]), xs[5]


def write_text(tmp_path: Path, text: str | bytes, name: str = "t.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# -- MNIST -------------------------------------------------------------------------------------
def test_read_idx_roundtrip_plain_and_gz(mnist):
    root, arrays = mnist
    raw = root / "MNIST" / "raw"
    x = read_idx(raw / "train-images-idx3-ubyte")
    assert x.dtype == np.uint8 and x.shape == (120, 28, 28)
    assert np.array_equal(x, arrays["train"][0])
    p = raw / "t10k-labels-idx1-ubyte"
    p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    assert np.array_equal(read_idx(p), arrays["t10k"][1])  # only the .gz exists now


def test_mnist_splits_roundtrip_disjoint_seeded(mnist):
    root, arrays = mnist
    dm = MNISTDataModule(root=str(root), download=False, val_fraction=0.25, seed=3)
    s = dm.splits
    assert [len(s[k]) for k in ("train", "val", "test")] == [90, 30, 30]
    assert s["train"].x.dtype == torch.uint8 and s["train"].x.shape == (90, 1, 28, 28)
    assert s["train"].y.dtype == torch.int64
    tr, va = rows(s["train"].x), rows(s["val"].x)
    assert not tr & va and tr | va == rows(torch.from_numpy(arrays["train"][0]))
    # labels stay attached to their images
    lookup = {r.tobytes(): int(l) for r, l in zip(arrays["train"][0], arrays["train"][1])}
    assert all(lookup[x.numpy()[0].tobytes()] == int(y) for x, y in zip(s["val"].x, s["val"].y))
    assert torch.equal(s["test"].x[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.equal(s["test"].y, torch.from_numpy(arrays["t10k"][1]).long())
    same = MNISTDataModule(root=str(root), download=False, val_fraction=0.25, seed=3).splits
    other = MNISTDataModule(root=str(root), download=False, val_fraction=0.25, seed=4).splits
    assert torch.equal(same["val"].x, s["val"].x) and not torch.equal(other["val"].x, s["val"].x)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (90, 1, 28, 28) and batch["x"].dtype == torch.uint8 and batch["y"].shape == (90,)


def test_mnist_info_needs_no_data(tmp_path):
    info = MNISTDataModule(root=str(tmp_path / "nothing"), download=False).info
    assert (info.name, info.shape, info.levels, info.num_classes) == ("mnist", (1, 28, 28), 256, 10)
    binfo = BinarizedMNISTDataModule(root=str(tmp_path / "nothing"), download=False).info
    assert (binfo.name, binfo.levels) == ("binarized_mnist", 2)


def test_binarized_mnist_fixed_eval_dynamic_train(mnist):
    root, arrays = mnist
    a = BinarizedMNISTDataModule(root=str(root), download=False, val_fraction=0.25, seed=0)
    b = BinarizedMNISTDataModule(root=str(root), download=False, val_fraction=0.25, seed=0)
    for split in ("val", "test"):
        x = a.splits[split].x
        assert x.dtype == torch.uint8 and set(x.unique().tolist()) <= {0, 1}
        assert torch.equal(x, b.splits[split].x)
    # the fixed draw follows the grey levels: mean of bits ~ mean of x / 255
    grey = torch.from_numpy(arrays["t10k"][0]).float().mean() / 255
    assert abs(a.splits["test"].x.float().mean() - grey) < 0.01

    def first_batch(dm, epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    a.batch_size = b.batch_size = 16
    x0, x0_again, x1 = first_batch(a, 0)["x"], first_batch(b, 0)["x"], first_batch(a, 1)["x"]
    assert x0.shape == (16, 1, 28, 28) and x0.dtype == torch.uint8 and set(x0.unique().tolist()) <= {0, 1}
    assert torch.equal(x0, x0_again) and not torch.equal(x0, x1)
    idx = torch.arange(8)  # same images, different batch seeds -> different bits
    train = a.splits["train"]
    assert torch.equal(train[(idx, 5)]["x"], train[(idx, 5)]["x"])
    assert not torch.equal(train[(idx, 5)]["x"], train[(idx, 6)]["x"])


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda b: b[:1000], ["truncated", "expected 94096 bytes", "found 1000"]),
        (lambda b: b"\x01\x02" + b[2:], ["magic"]),
        (lambda b: b[:2] + b"\x0d" + b[3:], ["type code 0x0d"]),
        (lambda b: b + b"extra", ["trailing data"]),
    ],
)
def test_read_idx_errors_name_file_and_fix(mnist, corrupt, words):
    root, _ = mnist
    p = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(DataError) as e:
        MNISTDataModule(root=str(root), download=False).setup()
    msg = str(e.value)
    assert str(p) in msg and "delete" in msg and all(w in msg for w in words)


def test_mnist_missing_files(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        MNISTDataModule(root=str(tmp_path), download=False).setup()
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte") in str(e.value)
    assert "download" in str(e.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as e:
        MNISTDataModule(root=str(tmp_path), download=True).setup()
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg and "network" in msg
    assert isinstance(e.value.__cause__, urllib.error.URLError)


# -- CIFAR-10 ----------------------------------------------------------------------------------
def test_cifar_roundtrip_and_splits(cifar):
    root, x_train, x_test = cifar
    x, y = read_cifar_batch(root / "cifar-10-batches-py" / "test_batch")
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(x_test))
    dm = CIFAR10DataModule(root=str(root), download=False, seed=0, batch_size=32)
    s = dm.splits
    assert [len(s[k]) for k in ("train", "val", "test")] == [90, 10, 20]
    tr, va = rows(s["train"].x), rows(s["val"].x)
    assert not tr & va and tr | va == rows(torch.from_numpy(x_train))
    other = CIFAR10DataModule(root=str(root), download=False, seed=1).splits
    assert not torch.equal(other["val"].x, s["val"].x)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (32, 3, 32, 32) and batch["x"].dtype == torch.uint8 and batch["y"].shape == (32,)
    assert dm.info.shape == (3, 32, 32) and dm.info.levels == 256 and dm.info.name == "cifar10"


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b"this is not a pickle at all",
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: pickle.dumps({b"labels": [0]}, protocol=2),  # missing data
        lambda b: pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2),
    ],
)
def test_cifar_corrupt_batches(cifar, corrupt):
    root, _, _ = cifar
    p = root / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(DataError) as e:
        CIFAR10DataModule(root=str(root), download=False).setup()
    assert str(p) in str(e.value) and "delete" in str(e.value)


def test_cifar_missing_files(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(e.value) and "download" in str(e.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as e:
        CIFAR10DataModule(root=str(tmp_path), download=True).setup()
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(e.value) and "network" in str(e.value)
    assert isinstance(e.value.__cause__, urllib.error.URLError)


# -- text --------------------------------------------------------------------------------------
def test_pydoc_text_splits_vocab_and_windows():
    text = PydocSource().read()
    assert len(text) > 100_000
    T = 64
    dm = TextDataModule(PydocSource(), block_size=T, batch_size=8, seed=0)
    info = dm.info
    n_val, n_test = round(len(text) * 0.05), round(len(text) * 0.05)
    n_train = len(text) - n_val - n_test
    train, val = text[:n_train], text[n_train : n_train + n_val]
    vocab_train = sorted(set(train))
    assert list(info.vocab) in (vocab_train, [UNK] + vocab_train)
    assert (info.name, info.kind, info.shape, info.levels) == ("text_pydoc", "text", (T,), len(info.vocab))
    s = dm.splits
    # val: non-overlapping contiguous blocks, in order, final partial block dropped
    assert s["val"].x.shape == (n_val // T, T) and s["val"].x.dtype == torch.int64
    expected_val = "".join(c if c in info.vocab else UNK for c in val[: n_val // T * T])
    assert info.decode_text(s["val"].x.flatten()) == expected_val
    assert len(s["test"].x) == n_test // T
    # windows decode back to the text at their start offsets
    starts = torch.tensor([0, 1, 12345, n_train - T])
    windows = s["train"][(starts, 0)]["x"]
    assert windows.shape == (4, T)
    assert [info.decode_text(w) for w in windows] == [train[i : i + T] for i in starts.tolist()]
    loader = dm.train_dataloader()
    assert len(loader) == (n_train // T) // 8
    batch = next(iter(loader))
    assert batch["x"].shape == (8, T) and batch["x"].dtype == torch.int64
    assert all(info.decode_text(w) in train for w in batch["x"])


def test_text_unseen_chars_map_to_unknown(tmp_path):
    body = "abcab" * 40
    dm = TextDataModule(TextFileSource(str(write_text(tmp_path, body + "xyz" * 4))), block_size=4, test_fraction=0.05)
    assert dm.info.vocab == (UNK, "a", "b", "c")  # x, y, z only occur in the test part
    test = dm.info.decode_text(dm.splits["test"].x.flatten())
    assert UNK in test and "x" not in test
    plain = TextDataModule(TextFileSource(str(write_text(tmp_path, body, "plain.txt"))), block_size=4)
    assert plain.info.vocab == ("a", "b", "c") and plain.info.name == "text_plain"


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TextFileSource(str(tmp_path / "missing.txt")).read()
    empty = write_text(tmp_path, b"", "empty.txt")
    with pytest.raises(DataError, match="empty") as e:
        TextFileSource(str(empty)).read()
    assert str(empty) in str(e.value)
    latin = write_text(tmp_path, "hello café world".encode("latin-1"), "latin.txt")
    with pytest.raises(DataError) as e:
        TextFileSource(str(latin)).read()
    assert str(latin) in str(e.value) and "byte offset 9" in str(e.value) and "iconv" in str(e.value)
    short = TextDataModule(TextFileSource(str(write_text(tmp_path, "abc" * 30, "short.txt"))), block_size=16)
    with pytest.raises(DataError, match="too short for block_size=16"):
        short.setup()


def test_tiny_shakespeare_digest_and_download_errors(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    src = TinyShakespeareSource(root=str(tmp_path))
    with pytest.raises(DataError) as e:
        src.read()
    assert str(src.path) in str(e.value) and "network" in str(e.value)
    assert isinstance(e.value.__cause__, urllib.error.URLError)
    src.path.parent.mkdir(parents=True)
    src.path.write_text("First Citizen:\nnot the real file\n")
    with pytest.raises(DataError) as e:
        src.read()
    msg = str(e.value)
    assert str(src.path) in msg and "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed" in msg
    assert "delete" in msg


# -- arrays ------------------------------------------------------------------------------------
def test_array_npz_with_labels(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 5, 50)
    y[0] = 4
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    dm = ArrayDataModule(str(p), name="mine", batch_size=16, seed=0)
    info = dm.info
    assert (info.name, info.shape, info.levels, info.num_classes) == ("mine", (3, 8, 8), 256, 5)
    s = dm.splits
    assert [len(s[k]) for k in ("train", "val", "test")] == [40, 5, 5]
    assert set().union(*(rows(s[k].x) for k in s)) == rows(torch.from_numpy(x))
    assert not rows(s["train"].x) & rows(s["test"].x)
    lookup = {r.tobytes(): int(l) for r, l in zip(x, y)}
    assert all(lookup[xi.numpy().tobytes()] == int(yi) for xi, yi in zip(s["test"].x, s["test"].y))
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 3, 8, 8) and batch["x"].dtype == torch.uint8 and batch["y"].dtype == torch.int64


def test_array_npy_binary_and_single_key_npz(tmp_path):
    x = (np.random.default_rng(3).random((30, 6, 6)) < 0.5).astype(np.uint8)
    np.save(tmp_path / "b.npy", x)
    dm = ArrayDataModule(str(tmp_path / "b.npy"))
    assert dm.info.levels == 2 and dm.info.shape == (1, 6, 6) and dm.info.num_classes is None
    assert dm.splits["train"].x.shape == (24, 1, 6, 6)
    np.savez(tmp_path / "k.npz", images=x * 3)
    assert ArrayDataModule(str(tmp_path / "k.npz"), levels=4).info.levels == 4


@pytest.mark.parametrize(
    "array, kwargs, words",
    [
        (np.zeros((10, 4, 4), np.float32), {}, ["float32", "uint8"]),
        (np.zeros((10, 16), np.uint8), {}, ["(10, 16)", "reshape"]),
        (np.full((10, 4, 4), 200, np.uint8), {"levels": 4}, ["200", "levels"]),
    ],
)
def test_array_errors(tmp_path, array, kwargs, words):
    p = tmp_path / "bad.npy"
    np.save(p, array)
    with pytest.raises(DataError) as e:
        ArrayDataModule(str(p), **kwargs).setup()
    assert str(p) in str(e.value) and all(w in str(e.value) for w in words)


def test_array_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ArrayDataModule(str(tmp_path / "nope.npz")).info


# -- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, cls",
    [
        ("mnist", MNISTDataModule),
        ("binarized_mnist", BinarizedMNISTDataModule),
        ("cifar10", CIFAR10DataModule),
        ("text", TextDataModule),
        ("tiny_shakespeare", TextDataModule),
        ("text_file", TextDataModule),
        ("array", ArrayDataModule),
    ],
)
def test_dataset_configs_instantiate(tmp_path, name, cls):
    cfg = OmegaConf.merge(
        {"paths": {"data_dir": str(tmp_path)}, "seed": 7},
        {"dataset": OmegaConf.load(CONFIGS / f"{name}.yaml")},
    )
    if name == "text_file":
        cfg.dataset.source.path = str(tmp_path / "t.txt")
    if name == "array":
        cfg.dataset.path = str(tmp_path / "a.npy")
    dm = instantiate(cfg.dataset)  # constructors do not touch the data
    assert type(dm) is cls and dm.seed == 7
