"""Latents as data: a first stage's latents of each split, encoded once, cached on disk, looked up by content.

A two-stage model trains its prior on ``z(x)``, the frozen first stage's latents of the training
images. Encoding every batch again costs one encoder pass per step; instead each split of the dataset
is encoded once and cached::

    <paths.data_dir>/genlab_latents/<stage-1 key>/<dataset name>_<split>.pt

``<stage-1 key>`` is the first 16 hex digits of the SHA-256 of the stage-1 checkpoint file
(:func:`checkpoint_digest`): every prior trained over the same stage 1 reuses the files, and a changed
checkpoint (retrained, fine-tuned) gets a new directory, so stale latents are never read (and a model
whose stage-1 weights are not that file's, e.g. a two-stage checkpoint reloaded after its stage-1 file
changed, encodes in memory instead of writing under the file's key: :func:`state_digest`). Files are
written atomically (a temporary file in the same directory, then a rename), so a run that dies while
writing, or two runs writing at once, leave either no file or a complete one. A file that cannot be
read, or whose contents do not fit (another format, other images under the same split name: e.g. a
different ``seed`` / ``val_fraction`` split the data differently, codes out of range) is rebuilt with
a :class:`LatentCacheWarning`, never used.

**Lookup by content, not by index.** Batches carry only the images (``{"x", "y"}``; the generic module
and the datamodules are unchanged), so the cached latents are found by a 62-bit hash of each example's
values (:func:`content_keys`: two polynomial hashes modulo the prime ``2^31 - 1``; the chance that
two different images of a 70,000-image dataset share a key is about ``1e-9``). Because the first stage
is deterministic, the latents are a function of the image alone: duplicated images share one entry,
and an image that is in no cached split (a batch transform such as dynamic binarisation makes new
images every epoch; a task's own inputs) is simply a miss, encoded on the fly. Splits with a batch
transform are therefore not cached at all. The table lives in the family's nets
(:class:`LatentTable`, non-persistent buffers: it follows the nets to the GPU and is not written to
checkpoints).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from genlab.checkpoints import atomic_save, load_cached, weights_digest
from genlab.data.base import DataInfo

log = logging.getLogger(__name__)

FORMAT = 1
PRIME = 2**31 - 1
BASES = (16_807, 48_271)  # two primitive roots modulo 2^31 - 1 (the Park-Miller multipliers)


class LatentCacheWarning(UserWarning):
    """A cached latents file was unreadable or did not fit, and is being rebuilt."""


def checkpoint_digest(path: str | Path, chars: int = 16) -> str:
    """The first ``chars`` hex digits of the SHA-256 of the file at ``path`` (the stage-1 cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


def state_digest(module: nn.Module) -> str:
    """The SHA-256 (16 hex digits) of a module's weights and buffers, by name: which weights are loaded."""
    return weights_digest(module).hex()[:16]


@lru_cache(maxsize=8)
def _powers(dims: int) -> Tensor:
    """``(2, D)`` int64: ``b^d mod p`` for both bases, ``d = 0..D-1``."""
    out = torch.empty(2, dims, dtype=torch.long)
    for row, base in enumerate(BASES):
        w = 1
        for d in range(dims):
            out[row, d] = w
            w = w * base % PRIME
    return out


def content_keys(x: Tensor) -> Tensor:
    """A 62-bit key per example of discrete ``x`` ``(B, ...)`` -> ``(B,)`` int64 on ``x``'s device:
    ``h_b = sum_d x_d b^d mod p`` for two bases ``b``, combined as ``h_1 p + h_2`` (no overflow:
    every product is below ``2^62``)."""
    flat = x.reshape(len(x), -1).long() % PRIME
    w = _powers(flat.shape[1]).to(flat.device)
    h1 = (flat * w[0] % PRIME).sum(1) % PRIME
    h2 = (flat * w[1] % PRIME).sum(1) % PRIME
    return h1 * PRIME + h2


class LatentTable(nn.Module):
    """The cached latents of a run, sorted by content key: ``lookup(x)`` finds them for a batch.
    Derived data: plain tensors, not buffers (never in checkpoints, and not averaged or swapped by weight
    averaging such as an EMA callback), moved with the module (``.to(device)``); ``ready`` once filled."""

    def __init__(self) -> None:
        super().__init__()
        self.keys, self.codes = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        self.ready = False

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> LatentTable:
        """Device moves apply to the table too (dtype casts do not: its keys and codes keep their types)."""
        super()._apply(fn, recurse)
        moved = fn(torch.empty(0))
        self.keys, self.codes = self.keys.to(moved.device), self.codes.to(moved.device)
        return self

    def fill(self, keys: Tensor, codes: Tensor) -> None:
        """Hold ``codes`` ``(N, ...)`` under ``keys`` ``(N,)`` (duplicates kept once), on ``keys``' device."""
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        table = codes.new_empty((len(uniq), *codes.shape[1:]))
        table[inverse] = codes
        self.keys, self.codes, self.ready = uniq, table, True

    def lookup(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes, hit)`` for ``x`` ``(B, ...)``: the cached latents ``(B, ...)`` (arbitrary where
        ``hit`` ``(B,)`` is False) and which examples were found."""
        q = content_keys(x.to(self.keys.device))
        if not len(self.keys):
            return self.codes.new_zeros((len(q), *self.codes.shape[1:])), torch.zeros_like(q, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, q).clamp(max=len(self.keys) - 1)
        return self.codes[pos], self.keys[pos] == q


@dataclass(frozen=True)
class Encoding:
    """What is cached per image: integer codes of ``shape`` in ``0..levels-1`` (the latents themselves),
    or with ``levels`` None float posterior parameters of ``shape`` (a stochastic encoder's)."""

    name: str
    shape: tuple[int, ...]
    levels: int | None

    @classmethod
    def of(cls, latent: DataInfo, encoding_shape: tuple[int, ...] | None = None) -> Encoding:
        """The latents of ``latent`` (``encoding_shape`` None), or posterior parameters of that shape."""
        if encoding_shape is None:
            return cls(latent.name, tuple(latent.shape), latent.levels)
        return cls(latent.name, tuple(encoding_shape), None)

    def empty(self) -> Tensor:
        return torch.empty(0, *self.shape, dtype=torch.long if self.levels is not None else torch.float32)


def as_encoding(latent: Encoding | DataInfo) -> Encoding:
    """``latent`` as an :class:`Encoding` (a :class:`DataInfo`: its integer codes)."""
    return latent if isinstance(latent, Encoding) else Encoding.of(latent)


@dataclass
class LatentCache:
    """Where the latents of a dataset's splits are cached, and the images they are latents of.

    Args:
        root: the cache directory (``<paths.data_dir>/genlab_latents``); None: encode in memory, write nothing.
        dataset: the dataset's name (``DataInfo.name``), the file prefix.
        splits: the discrete images of each cacheable split (``{"train": x, ...}``).
        batch_size: examples per encoder call while encoding a split.
    """

    root: Path | None
    dataset: str
    splits: Mapping[str, Tensor] = field(repr=False)
    batch_size: int = 256

    @classmethod
    def of(cls, datamodule: Any, root: str | Path | None) -> LatentCache:
        """The cache of an in-memory datamodule's splits; splits with a batch transform (their batches are
        new images every time) are left out: their latents are encoded per batch."""
        splits = {k: s.x for k, s in datamodule.splits.items() if s.transform is None}
        return cls(Path(root) if root is not None else None, datamodule.info.name, splits)

    def path(self, key: str, split: str) -> Path | None:
        """``<root>/<key>/<dataset>_<split>.pt``, or None without a root."""
        return None if self.root is None else self.root / key / f"{self.dataset}_{split}.pt"

    def load(self, key: str | None, encode: Callable[[Tensor], Tensor],
             latent: Encoding | DataInfo) -> tuple[Tensor, Tensor]:
        """``(keys, codes)`` of every split: read from the cache under the stage-1 ``key``, else encoded
        with ``encode`` (a batch of images -> their encodings, :class:`Encoding`) and written. ``key``
        None: never cached."""
        latent = as_encoding(latent)
        parts = [self.split_latents(split, x, key, encode, latent) for split, x in self.splits.items()]
        if not parts:
            return torch.empty(0, dtype=torch.long), latent.empty()
        return torch.cat([k for k, _ in parts]), torch.cat([c for _, c in parts])

    def split_latents(self, split: str, x: Tensor, key: str | None, encode: Callable[[Tensor], Tensor],
                      latent: Encoding) -> tuple[Tensor, Tensor]:
        """``(content keys, latents)`` of one split, from its file where that is valid."""
        keys = content_keys(x)
        path = self.path(key, split) if key is not None else None
        if path is not None and path.is_file():
            codes = read_latents(path, keys, latent)
            if codes is not None:
                log.info("latents of %s %s: read from %s", self.dataset, split, path)
                return keys, codes
        codes = torch.cat([encode(xb).cpu() for xb in x.split(self.batch_size)]) if len(x) else latent.empty()
        if path is not None:
            write_atomic(path, {"format": FORMAT, "dataset": self.dataset, "split": split, "latent": latent.name,
                                "keys": keys, "codes": codes})
        log.info("latents of %s %s: %d images encoded by the first stage%s", self.dataset, split, len(x),
                 f", cached in {path}" if path is not None else "")
        return keys, codes


def read_latents(path: Path, keys: Tensor, latent: Encoding) -> Tensor | None:
    """The latents stored at ``path`` if the file is readable and fits the split (same content keys in
    the same order, latents of ``latent``'s shape and levels); else None, with a warning."""
    stored = load_cached(path, "latents", "re-encoding the split and rewriting the file", LatentCacheWarning)
    if stored is None:
        return None
    reason = misfit(stored, keys, latent)
    if reason:
        warnings.warn(f"the cached latents {path} do not fit this run ({reason}); re-encoding the split and "
                      "rewriting the file", LatentCacheWarning, stacklevel=2)
        return None
    return stored["codes"]


def misfit(stored: Any, keys: Tensor, latent: Encoding | DataInfo) -> str | None:
    """Why a loaded cache file cannot serve the split with content ``keys``, or None."""
    latent = as_encoding(latent)
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        return f"not a genlab latents file of format {FORMAT}"
    codes, stored_keys = stored.get("codes"), stored.get("keys")
    if not isinstance(codes, Tensor) or not isinstance(stored_keys, Tensor):
        return "no keys/codes tensors"
    if not torch.equal(stored_keys, keys):
        return "its images are not this split's (the dataset or its split changed)"
    if tuple(codes.shape) != (len(keys), *latent.shape):
        return f"latents of shape {tuple(codes.shape)}, expected {(len(keys), *latent.shape)}"
    if latent.levels is None:
        return None if codes.is_floating_point() and bool(codes.isfinite().all()) else \
            "encodings that are not finite floats (posterior parameters)"
    if codes.is_floating_point() or (len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= latent.levels)):
        return f"latents that are not integer codes in 0..{latent.levels - 1}"
    return None


def write_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same directory and a rename
    (:func:`genlab.checkpoints.atomic_save`)."""
    atomic_save(obj, path)
