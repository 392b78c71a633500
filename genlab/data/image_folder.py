"""Images from a folder of PNG / JPEG files: bring your own pictures.

    genlab-train dataset=image_folder dataset.path=~/pictures dataset.size=32

**Layout** (as torchvision's ``ImageFolder``): every sub-folder of ``path`` that holds images is a
class, named by the folder (class ids in sorted order of the names; images may sit deeper inside
it); a folder whose images all sit at its top level is unlabelled. Hidden files and folders
(``.name``) are ignored; other files that are not images (by suffix) are skipped and counted in a
log line. Decoding uses Pillow.

**Conversion, once.** Every image is decoded to grey (``channels=1``) or RGB (``channels=3``; null:
grey if every file is a grey image, else RGB; an alpha channel is dropped; 16-bit grey files keep
their top 8 bits; an EXIF rotation is applied), resized so that it covers ``size`` and centre-cropped to it (``ImageOps.fit``,
bicubic; null: every image must already have the same size), and quantised to ``levels`` grey levels
(``floor(v * levels / 256)``; 256 keeps the 8-bit values). The result, a ``uint8 (N, C, H, W)``
tensor and the labels ``int64 (N,)``, is cached in ``cache_dir`` under a SHA-256 of the file list
(relative paths, sizes, modification times) and the conversion options: an unchanged folder is read
back without decoding a file, a changed one (a file added, removed, edited) is converted again. The
cache is written atomically and a damaged or mismatched file is rebuilt with an
:class:`ImageCacheWarning`.

**Splits**: the examples are split (seeded by ``seed``) into train / val / test by
``val_fraction`` / ``test_fraction``.

**Horizontal flips** (``hflip=true``): each training image is mirrored left-right with probability
1/2 (:class:`FlipSplit`), drawn from a generator seeded by the batch's seed (seed, epoch, batch
index), so a resumed run sees the very batches of an uninterrupted one. Validation, test and every
evaluation read the images unflipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genlab import progress
from genlab.checkpoints import atomic_save, load_cached
from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit, seeded_split

log = logging.getLogger(__name__)

FORMAT = 1  # of the cache files; bump when their content changes
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
EXIF_ORIENTATION = 274  # the EXIF tag of the rotation / mirroring a viewer applies
SIZE_FIX = "Fix: set dataset.size=S (every image resized and centre-cropped to SxS) or dataset.size=[H,W]"


class ImageCacheWarning(UserWarning):
    """A cached conversion of an image folder was unreadable or did not fit, and is being rebuilt."""


@dataclass(frozen=True)
class Listing:
    """The images of a folder: ``files`` (sorted), their class ids ``labels`` and the class names
    ``classes`` (None for an unlabelled folder), and the number of non-image files ``skipped``."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    skipped: int


def _visible(path: Path, root: Path) -> bool:
    """Not hidden, nor inside a hidden folder below ``root``."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_under(folder: Path, root: Path, recursive: bool) -> tuple[list[Path], int]:
    """``(image files, number of other files)`` in ``folder`` (with its sub-folders if ``recursive``)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and _visible(p, root))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(files) - len(images)


def scan_folder(root: str | Path) -> Listing:
    """The images of ``root`` and their labels (module docstring), with :class:`DataError` for a
    missing path, a file, a folder without images, or images both at the top and in class folders."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist. Fix: set dataset.path=... to a folder of PNG/JPEG "
                        "images (one sub-folder per class for labels)")
    if not root.is_dir():
        raise DataError(f"dataset.path={root} is a file, not a folder. Fix: pass the folder that holds the images "
                        "(for a .npy/.npz array use dataset=array)")
    top, skipped = _images_under(root, root, recursive=False)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and _visible(d, root))
    per_class = {}
    for d in subdirs:
        images, other = _images_under(d, root, recursive=True)
        skipped += other
        if images:
            per_class[d.name] = images
    if not top and not per_class:
        raise DataError(f"image folder {root} holds no images ({skipped} other files skipped; suffixes read: "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))}). Fix: point dataset.path=... at the images")
    if top and per_class:
        raise DataError(f"image folder {root} has images both at its top level (e.g. {top[0]}) and in class "
                        f"sub-folders ({', '.join(per_class)}). Fix: move the top-level images into a class "
                        "folder, or point dataset.path=... at one class folder for unlabelled data")
    if top:
        return Listing(root, tuple(top), None, None, skipped)
    classes = tuple(per_class)
    files = [(f, k) for k, name in enumerate(classes) for f in per_class[name]]
    return Listing(root, tuple(f for f, _ in files), tuple(k for _, k in files), classes, skipped)


def listing_digest(listing: Listing, options: dict[str, Any]) -> str:
    """SHA-256 (hex) of the file list (relative path, size, modification time of each image, and its
    class) and the conversion ``options``: equal digests mean the same conversion of the same files."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **options}, sort_keys=True).encode())
    labels = listing.labels or (None,) * len(listing.files)
    for f, k in zip(listing.files, labels):
        st = f.stat()
        h.update(f"{f.relative_to(listing.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0{k}\n".encode())
    return h.hexdigest()


def _unreadable(path: Path, err: Exception) -> DataError:
    return DataError(f"image {path} cannot be read ({type(err).__name__}: {err}). Fix: replace or delete that "
                     "file (or re-save it as PNG), then run again")


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """``(Pillow mode, (width, height))`` of an image from its header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            turned = img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # shown rotated by 90 degrees
            return img.mode, (h, w) if turned else (w, h)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def decode_image(path: Path, channels: int, size: tuple[int, int] | None, levels: int = 256) -> np.ndarray:
    """One image as ``uint8 (channels, H, W)``: converted to grey / RGB, fitted to ``size`` ``(H, W)``
    (resize to cover, centre crop; None: as it is) and quantised to ``levels`` values."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # as viewers show it (phone photos carry a rotation tag)
            if img.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits (a plain convert would clip)
                img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), "L")
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None
    if size is not None and img.size != (size[1], size[0]):
        img = ImageOps.fit(img, (size[1], size[0]), method=Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if levels != 256:
        arr = ((arr.astype(np.uint16) * levels) >> 8).astype(np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def detect(listing: Listing, channels: int | None, size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """``(channels, (H, W))`` of the conversion: the options where given, else read from the headers
    (grey only if every file is grey; one common size, else :class:`DataError` naming two files)."""
    if channels is not None and size is not None:
        return channels, size
    heads = [probe(f) for f in listing.files]
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for mode, _ in heads) else 3
    if size is None:
        first = heads[0][1]
        odd = next((i for i, (_, s) in enumerate(heads) if s != first), None)
        if odd is not None:
            n_sizes = len({s for _, s in heads})
            raise DataError(f"images of image folder {listing.root} have {n_sizes} different sizes, e.g. "
                            f"{listing.files[0]} is {first[0]}x{first[1]} and {listing.files[odd]} is "
                            f"{heads[odd][1][0]}x{heads[odd][1][1]} (width x height), and dataset.size is not set. "
                            f"{SIZE_FIX}")
        size = (first[1], first[0])
    return channels, size


def convert(listing: Listing, channels: int, size: tuple[int, int], levels: int) -> tuple[Tensor, Tensor | None]:
    """Decode every image of ``listing``: ``(x uint8 (N, C, H, W), y int64 (N,) or None)``, with a bar."""
    x = np.empty((len(listing.files), channels, *size), dtype=np.uint8)
    with progress.bar(f"converting the images of {listing.root}", total=len(listing.files), unit="image") as bar:
        for i, f in enumerate(listing.files):
            arr = decode_image(f, channels, size, levels)
            if arr.shape != x.shape[1:]:
                raise DataError(f"image {f} decodes to shape {arr.shape}, expected {x.shape[1:]} (C, H, W). {SIZE_FIX}")
            x[i] = arr
            bar.advance()
    y = None if listing.labels is None else torch.tensor(listing.labels, dtype=torch.long)
    return torch.from_numpy(x), y


def normalise_size(size: Any) -> tuple[int, int] | None:
    """``dataset.size`` as ``(H, W)``: None, an int ``S`` (``(S, S)``) or a pair ``[H, W]``."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    else:
        pair = tuple(size) if isinstance(size, Sequence) and not isinstance(size, str) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise DataError(f"dataset.size={size!r} is not an image size. {SIZE_FIX}, or null to keep the files' size")
    return pair


def hflip(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` mirrored left-right with probability 1/2 (draws from ``g``)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


class FlipSplit(TensorSplit):
    """A training split whose batches are flipped at random (:func:`hflip`), with a generator seeded
    by the batch seed (a stream of its own, apart from ``transform``'s). The split's ``x`` and
    ``transform`` stay those of the unflipped images, so code that reads the split's examples
    (feature classifiers, latent caches) sees the data as they are."""

    def __getitem__(self, item: tuple[Tensor, int]) -> dict[str, Tensor]:
        batch = super().__getitem__(item)
        seed = (int(item[1]) * 1_000_003 + 2_654_435_761) % 2**63
        batch["x"] = hflip(batch["x"], torch.Generator().manual_seed(seed))
        return batch


def read_cache(path: Path, digest: str) -> tuple[Tensor, Tensor | None, tuple[str, ...] | None] | None:
    """``(x, y, classes)`` from a cache file written for ``digest``; None (with a warning) if it is
    unreadable or holds something else."""
    stored = load_cached(path, "image folder", "converting the images again", ImageCacheWarning)
    if stored is None:
        return None
    ok = isinstance(stored, dict) and stored.get("format") == FORMAT and stored.get("digest") == digest
    x, y = (stored.get("x"), stored.get("y")) if ok else (None, None)
    ok = ok and isinstance(x, Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and len(x) == stored.get("n")
    ok = ok and (y is None or (isinstance(y, Tensor) and y.shape == (len(x),)))
    if not ok:
        warnings.warn(f"the cached image folder {path} does not fit these files and options; converting the images "
                      "again", ImageCacheWarning, stacklevel=2)
        return None
    return x, y, None if stored.get("classes") is None else tuple(stored["classes"])


class ImageFolderDataModule(InMemoryDataModule):
    """Seeded train/val/test split of a folder of images (module docstring).

    Args:
        path: the folder (class sub-folders for labels, or a flat folder of images).
        size: ``S`` or ``[H, W]``: resize (to cover) and centre-crop every image to it; null: keep the
            files' size (they must all have the same).
        channels: 1 (grey) or 3 (RGB); null: grey if every file is grey, else RGB.
        levels: grey levels per channel (256 keeps 8-bit values; fewer quantises them).
        hflip: mirror training images left-right at random (off in validation, test, evaluation).
        name: dataset name used in results (null: the folder's name).
        cache_dir: where converted folders are cached (null: not cached, converted on every run).
        val_fraction, test_fraction: shares of the images for validation and test.
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(self, path: str, size: Any = None, channels: int | None = None, levels: int = 256,
                 hflip: bool = False, name: str | None = None, cache_dir: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        if channels not in (None, 1, 3):
            raise DataError(f"dataset.channels={channels!r}: images are converted to 1 (grey) or 3 (RGB) channels. "
                            "Fix: set dataset.channels=1, 3, or null (grey if every file is grey, else RGB)")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise DataError(f"dataset.levels={levels!r}: pass an integer in 2..256 (256 keeps the 8-bit values)")
        self.path, self.size, self.channels = Path(path).expanduser(), normalise_size(size), channels
        self.levels, self.hflip, self.test_fraction = levels, bool(hflip), test_fraction
        self.name = name or self.path.resolve().name or "image_folder"
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._data: tuple[Tensor, Tensor | None, tuple[str, ...] | None] | None = None

    def source(self) -> str:
        return f" (from {self.path})"

    def data(self) -> tuple[Tensor, Tensor | None, tuple[str, ...] | None]:
        """``(x uint8 (N, C, H, W), y int64 (N,) or None, class names or None)``; converted once."""
        if self._data is None:
            self._data = self._load()
        return self._data

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names (sub-folder names) in label order; None for an unlabelled folder."""
        return self.data()[2]

    def options(self) -> dict[str, Any]:
        """The conversion options that the cache key covers."""
        return {"channels": self.channels, "size": self.size, "levels": self.levels, "resample": "bicubic"}

    def cache_path(self, digest: str) -> Path | None:
        """``<cache_dir>/<name>_<8 hex of folder + options>_<16 hex of the digest>.pt``, or None."""
        if self.cache_dir is None:
            return None
        where = json.dumps([str(self.path.resolve()), self.options()], sort_keys=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        return self.cache_dir / f"{stem}_{hashlib.sha256(where.encode()).hexdigest()[:8]}_{digest[:16]}.pt"

    def _load(self) -> tuple[Tensor, Tensor | None, tuple[str, ...] | None]:
        listing = scan_folder(self.path)
        what = f"{len(listing.classes)} classes" if listing.classes else "no labels"
        log.info("image folder %s: %d images (%s); %d non-image files skipped", self.path, len(listing.files), what,
                 listing.skipped)
        digest = listing_digest(listing, self.options())
        path = self.cache_path(digest)
        if path is not None and path.is_file():
            cached = read_cache(path, digest)
            if cached is not None:
                log.info("image folder %s: read from the cache %s", self.path, path)
                return cached
        channels, size = detect(listing, self.channels, self.size)
        x, y = convert(listing, channels, size, self.levels)
        if path is not None:
            self._write_cache(path, digest, x, y, listing)
        return x, y, listing.classes

    def _write_cache(self, path: Path, digest: str, x: Tensor, y: Tensor | None, listing: Listing) -> None:
        """Write the conversion atomically and remove this folder's older conversions with these options."""
        for stale in path.parent.glob(f"{path.name.rsplit('_', 1)[0]}_*.pt"):
            stale.unlink(missing_ok=True)
        atomic_save({"format": FORMAT, "digest": digest, "n": len(x), "x": x, "y": y,
                     "classes": None if listing.classes is None else list(listing.classes),
                     "files": [f.relative_to(listing.root).as_posix() for f in listing.files]}, path)
        log.info("image folder %s: %d images converted, cached in %s", self.path, len(x), path)

    @property
    def info(self) -> DataInfo:
        x, _, classes = self.data()
        return DataInfo(name=self.name, kind="image", shape=tuple(x.shape[1:]), levels=self.levels,
                        num_classes=len(classes) if classes else None)

    def load_splits(self) -> dict[str, TensorSplit]:
        x, y, _ = self.data()
        train_frac = 1.0 - self.val_fraction - self.test_fraction
        tr, va, te = seeded_split(len(x), (train_frac, self.val_fraction, self.test_fraction), self.seed)
        train = (FlipSplit if self.hflip else TensorSplit)(x[tr], None if y is None else y[tr])
        return {"train": train, **{k: TensorSplit(x[i], None if y is None else y[i]) for k, i in (("val", va),
                                                                                                  ("test", te))}}
