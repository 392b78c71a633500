"""Character-level text: a source gives one string, split into contiguous train/val/test parts.

Sources (selected in config by ``_target_``) are small objects with ``.name`` and ``.read()``:

* :class:`PydocSource`: the English documentation topics CPython ships (no download).
* :class:`TinyShakespeareSource`: Karpathy's tiny Shakespeare (downloaded once, sha256-checked).
* :class:`TextFileSource`: any local UTF-8 file.

The vocabulary is the sorted set of *training* characters. If the val/test parts contain
characters never seen in training, one extra id 0 is reserved for the replacement character
``U+FFFD`` and every unseen character maps to it (if ``U+FFFD`` already occurs in training, its
own id is used). Adding the unseen characters to the vocabulary would leak test data.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from genlab.data.base import DataError, DataInfo, IndexBatchSampler, InMemoryDataModule, ResumableLoader, TensorSplit

UNK = "\ufffd"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class PydocSource:
    """The English docs CPython ships in ``pydoc_data.topics`` (about 465k characters)."""

    name = "pydoc"

    def read(self) -> str:
        from pydoc_data.topics import topics

        return "".join(topics[k] for k in sorted(topics))


class TinyShakespeareSource:
    """Tiny Shakespeare (1,115,394 bytes), cached at ``<root>/tiny_shakespeare/input.txt``.

    The sha256 digest is checked after the download and every time the cached file is read.
    """

    name = "tiny_shakespeare"

    def __init__(self, root: str = "data") -> None:
        self.path = Path(root).expanduser() / "tiny_shakespeare" / "input.txt"

    def _check(self, data: bytes, what: str, fix: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise DataError(
                f"{what} has sha256 {digest} ({len(data)} bytes), expected {SHAKESPEARE_SHA256} "
                f"(1115394 bytes). Fix: {fix}"
            )

    def _download(self) -> bytes:
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as r:
                data = r.read()
        except Exception as e:  # URLError, timeouts, ...
            raise DataError(
                f"downloading tiny Shakespeare from {SHAKESPEARE_URL} to {self.path} failed "
                f"({type(e).__name__}: {e}). Fix: connect to the network, or place the file "
                f"there yourself (or set dataset.source.root=...)."
            ) from e
        self._check(data, f"the download from {SHAKESPEARE_URL}", "retry later; the file at the URL may have changed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(self.path)
        return data

    def read(self) -> str:
        if self.path.exists():
            data = self.path.read_bytes()
            self._check(data, f"cached file {self.path}", "delete it so it is downloaded again")
        else:
            data = self._download()
        return data.decode("utf-8")


class TextFileSource:
    """Any local UTF-8 text file.

    Args:
        path: the file.
        name: name used in results (``text_<name>``); default: the file name without suffix.
    """

    def __init__(self, path: str, name: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.name = name or self.path.stem

    def read(self) -> str:
        if not self.path.is_file():
            raise DataError(f"text file {self.path} does not exist. Fix: set dataset.source.path=... to a UTF-8 file")
        data = self.path.read_bytes()
        if not data:
            raise DataError(f"text file {self.path} is empty. Fix: point dataset.source.path=... at a non-empty file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"text file {self.path} is not UTF-8: byte offset {e.start} (0x{data[e.start]:02x}) "
                f"is invalid ({e.reason}). Fix: re-encode it as UTF-8, e.g. "
                f"`iconv -f latin1 -t utf-8 {self.path} > out.txt`."
            ) from e


class WindowSplit(TensorSplit):
    """All windows ``ids[s : s + block_size]`` of a 1-D id sequence.

    Indexed by ``(start_indices, batch_seed)`` it returns ``{"x": int64 (B, block_size)}``; its
    length is the number of possible starts, ``len(ids) - block_size + 1``.
    """

    def __init__(self, ids: Tensor, block_size: int) -> None:
        super().__init__(ids.unfold(0, block_size, 1))  # (len - T + 1, T) view, no copy
        self.ids, self.block_size = ids, block_size


class TextDataModule(InMemoryDataModule):
    """Character-level language data from a text source.

    The text is cut into contiguous parts: the first ``1 - val_fraction - test_fraction`` of the
    characters for training, then validation, then test. Training batches are random windows
    (``len(ids) // block_size`` of them per epoch, drawn without replacement among all start
    offsets); val/test are the non-overlapping full blocks ``(N, block_size)`` in order.

    Args:
        source: a text source (``PydocSource``, ``TinyShakespeareSource``, ``TextFileSource``).
        block_size: characters per example ``T``.
        val_fraction, test_fraction: shares of the characters for validation and test.
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(
        self,
        source,
        block_size: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.source, self.block_size, self.test_fraction = source, block_size, test_fraction
        self._encoded: tuple[list[str], dict[str, Tensor]] | None = None

    def encoded(self) -> tuple[list[str], dict[str, Tensor]]:
        """``(vocab, {split: int64 ids (n_split,)})``; the text is read once and cached."""
        if self._encoded is None:
            self._encoded = self._encode(self.source.read())
        return self._encoded

    def _encode(self, text: str) -> tuple[list[str], dict[str, Tensor]]:
        n_val, n_test = round(len(text) * self.val_fraction), round(len(text) * self.test_fraction)
        n_train = len(text) - n_val - n_test
        parts = {"train": text[:n_train], "val": text[n_train : n_train + n_val], "test": text[n_train + n_val :]}
        vocab = sorted(set(parts["train"]))
        if set(parts["val"] + parts["test"]) - set(vocab) and UNK not in vocab:
            vocab.insert(0, UNK)
        lookup = {c: i for i, c in enumerate(vocab)}
        unk = lookup.get(UNK, 0)
        ids = {k: torch.tensor([lookup.get(c, unk) for c in s], dtype=torch.int64) for k, s in parts.items()}
        for split, t in ids.items():
            if len(t) < self.block_size:
                raise DataError(
                    f"text source {self.source.name!r} ({len(text)} characters) is too short for "
                    f"block_size={self.block_size}: its {split} part has {len(t)} characters. Fix: lower "
                    f"dataset.block_size, {_fraction_fix(split)}, or use a longer text."
                )
        return vocab, ids

    @property
    def info(self) -> DataInfo:
        vocab, _ = self.encoded()
        name = f"text_{self.source.name}"
        return DataInfo(name=name, kind="text", shape=(self.block_size,), levels=len(vocab), vocab=tuple(vocab))

    def load_splits(self) -> dict[str, TensorSplit]:
        _, ids = self.encoded()
        out: dict[str, TensorSplit] = {"train": WindowSplit(ids["train"], self.block_size)}
        for split in ("val", "test"):
            n = len(ids[split]) // self.block_size * self.block_size
            out[split] = TensorSplit(ids[split][:n].view(-1, self.block_size))
        return out

    def train_dataloader(self) -> DataLoader:
        ds = self.splits["train"]
        windows = len(ds.ids) // self.block_size
        batch_size = min(self.batch_size, windows)
        sampler = IndexBatchSampler(len(ds), batch_size, True, True, self.seed, num_samples=windows)
        return ResumableLoader(ds, sampler=sampler, batch_size=None, num_workers=0)


def _fraction_fix(split: str) -> str:
    """What to change when a split of the text is shorter than one block (there is no train fraction:
    train is what validation and test leave)."""
    if split == "train":
        return "lower dataset.val_fraction and dataset.test_fraction (train is the rest)"
    return f"raise dataset.{split}_fraction"
