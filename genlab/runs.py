"""Run directories: unique names, and what to do when a directory already holds a run.

* ``${genlab_run_id:}`` (used by ``hydra.run.dir`` / ``hydra.sweep.dir`` in configs/train.yaml)
  is a per-process suffix: the SLURM job (and array task) id where there is one, else 6 random
  hex digits, so two runs started in the same second never share a directory.
* :func:`previous_run` decides, before anything is written, what an existing ``results.json`` or
  ``checkpoints/last.ckpt`` in the output directory means: a finished run with the same resolved
  config is skipped (a relaunched sweep does not redo it), an interrupted or killed one is resumed
  from its last checkpoint, and a finished run of another config is never overwritten.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genlab.checkpoints import config_hash

_RUN_ID: dict[str, str] = {}


def run_id() -> str:
    """This process's run-directory suffix (stable within the process)."""
    if "id" not in _RUN_ID:
        job, task = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        _RUN_ID["id"] = (f"j{job}" + (f"_{task}" if task else "")) if job else secrets.token_hex(3)
    return _RUN_ID["id"]


if not OmegaConf.has_resolver("genlab_run_id"):
    OmegaConf.register_new_resolver("genlab_run_id", run_id)


class OutputDirError(RuntimeError):
    """The output directory cannot be used (not writable, or holds another finished run)."""


@dataclass(frozen=True)
class Previous:
    """What the output directory already holds: ``action`` is ``"new"``, ``"skip"`` (``results``
    of the finished run) or ``"resume"`` (from ``checkpoint``)."""

    action: str
    results: dict[str, Any] | None = None
    checkpoint: str | None = None


def check_writable(out_dir: Path) -> None:
    """Raise :class:`OutputDirError` unless ``out_dir`` is (or can be made) a writable directory."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".genlab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(
            f"the run directory {out_dir} is not a writable directory ({type(err).__name__}: {err.strerror or err}). "
            "Fix: set GENLAB_LOG_DIR (or paths.log_dir=...) to a writable directory with free space"
        ) from err


def output_root(argv: list[str]) -> Path:
    """The directory a ``genlab-train`` command line will write under, read from its overrides
    (``hydra.run.dir`` / ``hydra.sweep.dir`` / ``paths.log_dir``) or ``GENLAB_LOG_DIR`` (default ``logs``)."""
    found = {a.split("=", 1)[0].lstrip("+"): a.split("=", 1)[1] for a in argv if "=" in a}
    for key in ("hydra.sweep.dir" if "-m" in argv or "--multirun" in argv else "hydra.run.dir", "paths.log_dir"):
        if key in found and "${" not in found[key]:
            return Path(found[key])
    return Path(os.environ.get("GENLAB_LOG_DIR", "logs"))


def precheck_output_root(argv: list[str]) -> str | None:
    """Why the output root cannot be written (its nearest existing ancestor is a file or read-only), else
    None: checked before Hydra creates the run directory, which would fail with a traceback."""
    root = output_root(argv).expanduser().absolute()
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return None
    return (f"runs cannot be written under {root}: {problem}. Fix: set GENLAB_LOG_DIR (or paths.log_dir=..., "
            "hydra.run.dir=...) to a writable directory")


def _read_results(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def previous_run(out_dir: Path, config: dict[str, Any]) -> Previous:
    """See the module doc. ``config`` is the resolved run config of the run about to start."""
    results = _read_results(out_dir / "results.json")
    last = out_dir / "checkpoints" / "last.ckpt"
    same = results is not None and results.get("config_hash") == config_hash(config)
    if results is not None and results.get("status") == "finished":
        if same:
            return Previous("skip", results=results)
        raise OutputDirError(
            f"{out_dir} already holds a finished run of a different config (results.json, config hash "
            f"{results.get('config_hash')} vs {config_hash(config)}); it is never overwritten. Fix: pass another "
            "hydra.sweep.dir (or hydra.run.dir), or delete that directory yourself"
        )
    if last.exists() and not config.get("ckpt_path"):
        if results is not None and not same:
            raise OutputDirError(
                f"{out_dir} holds an unfinished run of a different config (status {results.get('status')!r}); "
                "refusing to resume or overwrite it. Fix: pass another hydra.sweep.dir, or delete that directory"
            )
        return Previous("resume", checkpoint=str(last))
    return Previous("new")


FIRST_STAGE_DIR = "stage1"  # where a one-command two-stage run trains its first stage (genlab.pipeline)


def sweep_results(root: str | Path) -> list[Path]:
    """The ``results.json`` of every run under ``root`` (a sweep directory), sorted, without the first stages
    that two-stage runs trained inside their own directory (``<run>/stage1``: part of that run, not a row)."""
    found = sorted(Path(root).rglob("results.json"))
    return [p for p in found if not (p.parent.name == FIRST_STAGE_DIR and (p.parent.parent / "results.json").is_file())]
