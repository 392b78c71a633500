"""Checkpoints that are never half-written and never silently corrupt.

* Writes are atomic: the checkpoint goes to a temporary file in the same directory, is flushed
  and ``fsync``-ed, then renamed over the old one (``os.replace``), so a crash or a full disk
  leaves the previous good checkpoint in place.
* Every read is verified: a checkpoint is a zip archive (``torch.save``'s format) whose members
  each carry a CRC-32 of their content; :func:`read_checkpoint` checks all of them before
  unpickling, so a truncated file, flipped bits or a file of another kind is refused with the
  file named, never used.

Lightning writes and reads through :class:`AtomicCheckpointIO` (a ``Trainer`` plugin), genlab's
own loaders (:func:`genlab.builders.load_run`) through :func:`read_checkpoint`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a genlab checkpoint."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, no permission); the previous one is intact."""


def load_cached(path: str | Path, what: str, redo: str, category: type[Warning]) -> Any | None:
    """The contents of a derived-data cache file written by :func:`atomic_save` (tensors only), or None with a
    ``category`` warning (``the cached <what> <path> cannot be read (...); <redo>``) when it cannot be read:
    truncated, not a torch file, unpickling refused all mean "rebuild it"."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        warnings.warn(f"the cached {what} {path} cannot be read ({type(err).__name__}: {err}); {redo}", category,
                      stacklevel=3)
        return None


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same directory, fsync, rename.
    Whatever stops it (a full disk, an interrupt) leaves the previous file whole and no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def weights_digest(module: nn.Module) -> bytes:
    """SHA-256 over a module's weights and buffers (names and raw bytes, in name order): which weights these are."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def write_checkpoint(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_save`); a failure names the fix."""
    path = Path(path)
    try:
        atomic_save(obj, path)
    except OSError as err:
        previous = f"the previous {path.name} there is intact" if path.exists() else f"no earlier {path.name} existed"
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({_reason(err)}); {previous}. Fix: "
            f"{_fix(err)}, then resume from the last checkpoint with ckpt_path=<its path>."
        ) from err
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(err: OSError) -> str:
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied", errno.EROFS: "the filesystem is read-only"}.get(
        err.errno, f"{type(err).__name__}: {err}")


def _fix(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there (or set GENLAB_LOG_DIR / paths.log_dir to a disk with room)"
    return "make the directory writable (or set GENLAB_LOG_DIR / paths.log_dir to one that is)"


def verify_checkpoint(path: str | Path) -> Path:
    """Raise :class:`CheckpointError` unless ``path`` is a complete checkpoint whose every member
    matches its CRC-32; returns the path."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist. Fix: pass a run's checkpoints/last.ckpt or "
                              "best.ckpt (or the run directory to genlab-eval / genlab-task)")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory. Fix: pass {path}/checkpoints/last.ckpt "
                              "(or a file inside it)")
    problem = _zip_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is {problem}; refusing to use it. Fix: resume or evaluate from "
                              "another checkpoint of the run (best.ckpt / last.ckpt), or retrain")
    return path


def _zip_problem(path: Path) -> str | None:
    try:
        if not zipfile.is_zipfile(path):
            return "not a checkpoint (not a torch.save archive: truncated, or another kind of file)"
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return f"corrupted (member {bad} fails its CRC-32 check)" if bad else None


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify (:func:`verify_checkpoint`) and load a Lightning checkpoint dict."""
    path = verify_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # unpickling errors of many kinds
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {err}). Fix: pass a "
                              "checkpoint written by genlab-train") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no state_dict). Fix: pass a "
                              "run's checkpoints/*.ckpt")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through :func:`write_checkpoint` and :func:`read_checkpoint`.

    ``preloaded``: checkpoints already read and verified (``{path: dict}``, e.g. the resume
    checkpoint that ``genlab-train`` checks against the run config); each is served once instead of
    being read again.
    """

    def __init__(self, preloaded: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = {str(Path(k).resolve()): v for k, v in (preloaded or {}).items()}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        cached = self.preloaded.pop(str(Path(path).resolve()), None)
        return cached if cached is not None else read_checkpoint(path, map_location=map_location or "cpu")


def differences(a: str | Path, b: str | Path) -> list[str]:
    """What differs between two checkpoints' training state: global step, weights (also the raw
    ones of an EMA run) and optimizer states, compared bit for bit; ``[]`` when identical."""
    x, y = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    out = [] if x["global_step"] == y["global_step"] else ["global_step"]
    for key in ("state_dict", "current_model_state"):
        if (key in x) != (key in y):
            out.append(key)
        out += [f"{key}[{k}]" for k in x.get(key, {}) if k not in y.get(key, {}) or not torch.equal(x[key][k], y[key][k])]
    if len(x["optimizer_states"]) != len(y["optimizer_states"]):
        return [*out, "optimizer_states"]
    for oa, ob in zip(x["optimizer_states"], y["optimizer_states"]):
        for i, state in oa["state"].items():
            for name, v in state.items():
                w = ob["state"].get(i, {}).get(name)
                tensors = torch.is_tensor(v) and torch.is_tensor(w)
                if not (torch.equal(v, w) if tensors else (not torch.is_tensor(v) and v == w)):
                    out.append(f"optimizer state {i}.{name}")
    return out


# -- run identity -----------------------------------------------------------------------------
# keys that name where a run writes or how it reports, not what it computes
# and how fast it runs (threads, compilation): the same maths
_NOT_IDENTITY = ("paths", "ckpt_path", "logger", "threads", "compile")


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a resolved run config, without the keys that only say where outputs go."""
    ident = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


# what may differ between a checkpoint's run and its resume, because it takes effect when set again:
# budgets, evaluation, reporting, callbacks, the hardware. Everything else (model, loss, dataset,
# optimizer, scheduler, seed) lives in or shaped the checkpoint's state, so a change would be
# recorded without being applied.
RESUMABLE = (
    "ckpt_path", "paths", "logger", "callbacks", "num_samples", "threads", "compile",
    "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "trainer.min_steps", "trainer.min_epochs",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.default_root_dir", "trainer.precision",
    "trainer.gradient_clip_val", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
)


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}`` (an empty dict stays one entry)."""
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _relative(flat: dict[str, Any]) -> dict[str, Any]:
    """Paths under the run's output directory written relative to it (a resume writes to a new one)."""
    out = flat.get("paths.output_dir")
    if not isinstance(out, str) or not out:
        return flat
    return {k: v.replace(out, "<output_dir>") if isinstance(v, str) else v for k, v in flat.items()}


def changed_on_resume(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The config keys that differ between a checkpoint's run and a resume of it and that a resume
    cannot apply (the optimizer's and the models' state come from the checkpoint)."""
    a, b = _relative(flatten_config(stored)), _relative(flatten_config(current))
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    return [k for k in keys if not any(k == r or k.startswith(r + ".") for r in RESUMABLE)]


def check_resume(ckpt_path: str, ckpt: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose overrides would be recorded but not applied."""
    stored = ckpt.get("genlab_config")
    if not stored:
        raise CheckpointError(f"{ckpt_path} has no genlab run config (genlab_config); it was not written by "
                              "genlab-train. Fix: resume from a genlab run's checkpoints/last.ckpt")
    keys = changed_on_resume(stored, current)
    if keys:
        shown = ", ".join(f"{k} ({flatten_config(stored).get(k, '<unset>')!r} -> {flatten_config(current).get(k, '<unset>')!r})"
                          for k in keys[:8]) + (" ..." if len(keys) > 8 else "")
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: these settings differ from the checkpoint's run and cannot change on resume "
            f"(the weights, optimizer and schedule state come from the checkpoint): {shown}. Fix: drop those "
            "overrides to resume as the run was configured, or start a new run without ckpt_path to train with "
            "them. A resume may change: " + ", ".join(RESUMABLE[1:]) + "."
        )
