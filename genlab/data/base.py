"""In-memory datamodules shared by every dataset.

Every split lives in memory in its *discrete* form: images as ``uint8`` tensors of shape
``(N, C, H, W)`` with values in ``{0, ..., levels-1}``, text as ``int64`` character ids.
Batches are produced by tensor indexing (no per-sample Python transforms): a sampler yields
``(indices, batch_seed)`` pairs and the split dataset returns ``{"x": x[indices], ...}``.
The seed of each batch is derived from ``(seed, epoch, batch index)`` so that stochastic data
transforms (dynamic binarisation) and the shuffling order are reproducible, also across a
resume from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class DataError(RuntimeError):
    """A dataset could not be loaded: the message names the file and the fix."""


@dataclass(frozen=True)
class DataInfo:
    """Metadata that families read to size their networks and likelihoods.

    Attributes:
        name: dataset name (stable, used in results and tables).
        kind: ``"image"`` (x has shape ``(C, H, W)``), ``"text"`` (x has shape ``(T,)``) or
            ``"points"`` (x has shape ``(D,)``: discretised coordinates, e.g. 2-D mixtures).
        shape: shape of one example, without the batch dimension.
        levels: number of discrete values per dimension (2 for binary images, 256 for 8-bit,
            17 for sklearn digits, the vocabulary size for text).
        num_classes: number of labels where the data has labels (for classifiers), else None.
        entropy_nats: the true entropy of the data distribution in nats per example, where it
            is known exactly (``toy`` data), else None.
        cond_entropy_nats: the true conditional entropy ``H(X | Y)`` given the label, where known.
        vocab: for text, the characters in id order.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    levels: int
    num_classes: int | None = None
    entropy_nats: float | None = None
    cond_entropy_nats: float | None = None
    vocab: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def dims(self) -> int:
        """Number of discrete dimensions per example (the D of bits/dim)."""
        return math.prod(self.shape)

    @property
    def unit(self) -> str:
        """Name of the per-dimension likelihood unit."""
        return "bits/char" if self.kind == "text" else "bits/dim"

    @property
    def entropy_bpd(self) -> float | None:
        """True entropy in bits per dimension, where known."""
        if self.entropy_nats is None:
            return None
        return self.entropy_nats / (self.dims * math.log(2))

    def decode_text(self, ids: Tensor) -> str:
        """Characters of a 1-D tensor of ids (text data only)."""
        assert self.vocab is not None, "decode_text needs text data"
        return "".join(self.vocab[i] for i in ids.tolist())


class IndexBatchSampler:
    """Yields ``(indices, batch_seed)`` for one epoch of a split of ``n`` items.

    Shuffling uses a generator seeded by ``(seed, epoch)``; ``set_epoch`` is called by
    Lightning at the start of every epoch. Under DDP each rank takes every ``world_size``-th
    batch, so ``world_size`` ranks with batch size ``B`` see exactly the examples that one
    process with batch size ``world_size * B`` sees in each step. ``num_samples`` draws that many items per epoch (default: all of them).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        if n <= 0:
            raise DataError("a data split is empty: increase the dataset size or the split fractions")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.epoch = seed, 0
        self.num_samples = min(num_samples or n, n)
        self.served = 0  # batches handed out in the current epoch (the loader has no prefetch)
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands: a checkpoint written after a step records the batches trained."""
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the next iteration of that epoch skips the batches already trained."""
        self._resume = (int(state["epoch"]), int(state["served"]))

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batches(self) -> list[Tensor]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)[: self.num_samples]
        else:
            order = torch.arange(self.num_samples)
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches.pop()
        rank, world = self._rank()
        if world > 1 and self.drop_last:  # training: equal batches per rank, so gradient all-reduces stay in step
            batches = batches[: len(batches) - len(batches) % world] or batches[:world]
        if world > 1:  # evaluation keeps every example (metrics are reduced once, at the end)
            batches = batches[rank::world]
        return batches

    def __iter__(self) -> Iterator[tuple[Tensor, int]]:
        skip = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        self._resume, self.served = None, skip
        for i, idx in enumerate(self._batches()):
            if i < skip:
                continue
            self.served = i + 1
            yield idx, (self.seed * 7_919 + self.epoch) * 100_003 + i

    def __len__(self) -> int:
        return len(self._batches())


BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`IndexBatchSampler` that Lightning can checkpoint mid-epoch
    (its ``state_dict`` goes into the checkpoint's loop state), so that a resume from any step
    continues with the next batch of the same epoch order instead of restarting the epoch."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


class TensorSplit(Dataset):
    """One split held in memory; indexed by ``(indices, batch_seed)`` it returns a batch dict.

    Args:
        x: discrete data, first dimension indexes examples.
        y: optional labels, shape ``(N,)``.
        transform: optional batch transform ``(x_batch, generator) -> x_batch`` (e.g. dynamic
            binarisation); it receives a generator seeded with the batch seed.
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, transform: BatchTransform | None = None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[Tensor, int]) -> dict[str, Tensor]:
        idx, seed = item
        x = self.x[idx]
        if self.transform is not None:
            x = self.transform(x, torch.Generator().manual_seed(seed))
        batch = {"x": x}
        if self.y is not None:
            batch["y"] = self.y[idx]
        return batch


def _check_batch_size(key: str, value: object, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{key}={value!r} is not a batch size. Fix: pass a positive integer{alternative}, "
                        f"e.g. {key}=128")


def seeded_split(n: int, fractions: tuple[float, ...], seed: int) -> list[Tensor]:
    """Split ``range(n)`` into disjoint index sets of the given fractions (last gets the rest)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return list(order.split(sizes))


class InMemoryDataModule(L.LightningDataModule):
    """Base class: subclasses implement :meth:`load_splits` (and :attr:`info`).

    ``load_splits`` returns a dict with keys ``train``, ``val``, ``test``, each a
    :class:`TensorSplit`. Loading happens once, on first use.

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test (default: ``batch_size``).
        seed: seed of the train/val split, the shuffling and stochastic transforms.
        val_fraction: share of the training data held out for validation, where the dataset
            has no official validation split.
    """

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        _check_batch_size("dataset.batch_size", batch_size)
        if eval_batch_size is not None:
            _check_batch_size("dataset.eval_batch_size", eval_batch_size, " (or null: the training batch size)")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self._splits: dict[str, TensorSplit] | None = None

    # -- to implement -------------------------------------------------------------------
    def load_splits(self) -> dict[str, TensorSplit]:
        raise NotImplementedError

    @property
    def info(self) -> DataInfo:
        raise NotImplementedError

    def sample_metrics(self, x: Tensor) -> dict[str, float]:
        """Dataset-specific quality of samples ``x`` (data space), e.g. mode coverage on a
        2-D mixture; ``{}`` where the dataset defines none. Written to results.json."""
        return {}

    # -- shared -------------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, TensorSplit]:
        if self._splits is None:
            self._splits = self.load_splits()
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self.splits  # noqa: B018  (load once)

    def _loader(self, split: str, shuffle: bool, batch_size: int, drop_last: bool) -> DataLoader:
        ds = self.splits[split]
        try:
            sampler = IndexBatchSampler(len(ds), batch_size, shuffle, drop_last, self.seed)
        except DataError as err:
            raise DataError(f"dataset {self.info.name!r}: the {split} split is empty{self.source()}. Fix: use a file "
                            "with more examples, or raise that split's fraction (dataset.val_fraction / "
                            "dataset.test_fraction where the dataset has them)") from err
        return (ResumableLoader if shuffle else DataLoader)(ds, sampler=sampler, batch_size=None, num_workers=0)

    def source(self) -> str:
        """`` (from <file>)`` naming where the data came from, for messages; empty where none."""
        return ""

    def train_dataloader(self) -> DataLoader:
        n = len(self.splits["train"])
        return self._loader("train", True, min(self.batch_size, n), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size, drop_last=False)


def check_discrete(x: Tensor, info: DataInfo, hint: str = "pass the dataset's uint8/int64 tensors") -> Tensor:
    """Validate a batch of discrete data for ``info`` (shape ``(B, *info.shape)``, integer values in
    ``0..levels-1``); returns ``x``. ``hint`` says what to pass instead of non-integer floats."""
    if tuple(x.shape[1:]) != tuple(info.shape):
        raise ValueError(f"expected {info.kind} data of shape (B, {', '.join(map(str, info.shape))}) for dataset "
                         f"{info.name!r}, got {tuple(x.shape)}")
    if x.is_floating_point() and not torch.equal(x, x.floor()):
        raise ValueError(f"expected discrete values (integers in 0..levels-1), got non-integer floats; {hint}")
    lo, hi = (int(v) for v in torch.aminmax(x.detach().float()))
    if lo < 0 or hi >= info.levels:
        raise ValueError(f"values must lie in 0..{info.levels - 1} (dataset {info.name!r} has {info.levels} "
                         f"levels), got values in {lo}..{hi}")
    return x


def images_to_uint8(x, name: str) -> Tensor:
    """Convert an array of images (N,H,W) or (N,C,H,W) to a uint8 ``(N, C, H, W)`` tensor."""
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise DataError(f"{name}: expected images of shape (N,H,W) or (N,C,H,W), got {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise DataError(f"{name}: expected uint8 pixel values, got dtype {t.dtype}; convert with .astype('uint8')")
    return t.contiguous()


def ensure_files(name: str, root: str, files: list, missing: Callable[[], list], download: bool,
                 fetch: Callable[[], object], kind: str = "files") -> None:
    """Make sure a dataset's files exist: download them with ``fetch()`` if allowed, else (or if
    the download fails) raise :class:`DataError` listing the expected files and the fixes.

    Args:
        name: dataset name for messages; root: the ``dataset.root`` in use.
        files: every expected path; missing: returns the paths still missing.
        download: whether ``fetch`` may be called; fetch: the real download (torchvision).
        kind: what the user should copy there (``"IDX files"``, ``"batch files"``).
    """
    if not missing():
        return
    listing = "\n  ".join(str(p) for p in files)
    if not download:
        raise DataError(
            f"{name} files missing under dataset.root={root}; expected:\n  {listing}\n"
            f"Fix: set dataset.download=true, copy the {kind} there, or set dataset.root=..."
        )
    try:
        fetch()
    except Exception as e:  # network errors arrive as URLError, RuntimeError, OSError, ...
        raise DataError(
            f"{name} download into dataset.root={root} failed ({type(e).__name__}: {e}). "
            f"Expected files:\n  {listing}\nFix: connect to the network, copy the {kind} "
            "there, or set dataset.root=... to a directory that has them."
        ) from e
    if missing():
        raise DataError(f"{name} download finished but files are still missing; expected:\n  {listing}")
