"""What every downstream task shares: loading a trained run, real data, reports and image strips.

A task is a function ``run(ctx: TaskContext, cfg) -> dict`` with a dataclass config (its
``key=value`` options on the command line, see :mod:`genlab.tasks.cli`). It is written once
against the family contract (plus a few optional family methods, e.g. ``interpolate``), and
raises :class:`Unsupported` — naming the families that can do it — where a family cannot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class TaskError(ValueError):
    """A task cannot run with these inputs; the message names the problem and the fix."""


class Unsupported(TaskError):
    """The checkpoint's family (or data kind) cannot do this task."""

    def __init__(self, task: str, family: str, why: str, supported: str) -> None:
        super().__init__(f"task '{task}' is not available for the {family} family: {why}. "
                         f"It works with: {supported}.")

    @classmethod
    def lacking(cls, task: str, family: Any, capability: type) -> Unsupported:
        """``family`` does not have ``capability``: its own reason (:attr:`Family.why_not`) or the
        capability's, and the registered families that have it (as ``genlab-task --help`` lists them)."""
        from genlab.tasks.registry import TASKS

        why = type(family).why_not.get(capability, capability.missing)
        return cls(task, family.name, why, TASKS[task].families)


@dataclass
class TaskConfig:
    """Options shared by every task (``key=value`` on the command line)."""

    ckpt: str = "???"  # a run directory (holding results.json) or a checkpoint .ckpt
    out: str | None = None  # output directory (default <run dir>/tasks/<task>)
    split: str = "test"  # real examples from this split
    n: int = 100  # real examples used
    batch_size: int = 100
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, or auto (cuda when available)
    overrides: list[str] = field(default_factory=list)  # config overrides for the run (evaluation settings)


@dataclass
class TaskContext:
    """A trained run, ready for a task: module (eval mode, EMA weights where the run kept them), data."""

    module: Any
    dm: Any
    ckpt: Path
    run_dir: Path
    out_dir: Path
    device: torch.device

    @property
    def family(self) -> Any:
        return self.module.family

    @property
    def nets(self) -> Any:
        return self.module.nets

    @property
    def info(self) -> Any:
        return self.dm.info

    def real(self, split: str = "test", n: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor | None]:
        """The first ``n`` examples of ``split`` as the model sees them (discrete), and labels."""
        from genlab.metrics.quality import discrete

        if split not in self.dm.splits:
            raise TaskError(f"split '{split}' does not exist; choose one of {sorted(self.dm.splits)}")
        s = self.dm.splits[split]
        x = discrete(s, seed)
        n = len(x) if n is None else min(n, len(x))
        y = s.y[:n] if s.y is not None else None
        return x[:n].to(self.device), y


def label_kwargs(ctx: TaskContext, y: Tensor | None, label: int | None, key: str = "y") -> dict[str, Tensor]:
    """The labels a conditional model's capability method is given for real examples with labels ``y``:
    ``{key: labels}`` (their own labels, or ``label`` for all where the task's ``label=`` option is set);
    ``{}`` for an unconditional model (where ``label=`` is refused)."""
    if not ctx.module.conditional:
        if label is not None:
            raise TaskError(f"label={label}: this {ctx.family.name} run is unconditional (trained without "
                            "+conditional=class); drop label=")
        return {}
    n = len(y) if y is not None else None
    if label is not None:
        if n is None:
            raise TaskError("label= needs the examples' count; this split has no labels to count from")
        labels = torch.full((n,), int(label), dtype=torch.long)
    elif y is None:
        raise TaskError(f"the model is class-conditional but split {ctx.info.name!r} has no labels: pass label=<class>")
    else:
        labels = y.long()
    try:
        return {key: ctx.family.condition.check(labels, n).to(ctx.device)}
    except ValueError as err:
        raise TaskError(f"label={label}: {err}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TaskError("device=cuda but no CUDA device is available. Fix: device=cpu (or device=auto)")
    return torch.device(name)


def load_context(task: str, cfg: TaskConfig) -> TaskContext:
    """Load ``cfg.ckpt`` (a run dir or a .ckpt) with ``cfg.overrides``; make the output dir."""
    from genlab.builders import load_run
    from genlab.checkpoints import CheckpointError
    from genlab.data.base import DataError
    from genlab.evaluate import find_checkpoint

    if cfg.ckpt in (None, "???", ""):
        raise TaskError("ckpt=... is required: a run directory (holding results.json) or a checkpoint .ckpt")
    try:
        ckpt, run_dir = find_checkpoint(cfg.ckpt)
    except FileNotFoundError as e:
        raise TaskError(str(e)) from e
    device = resolve_device(cfg.device)
    try:
        module, dm = load_run(str(ckpt), overrides=list(cfg.overrides))
    except (CheckpointError, DataError) as e:
        raise TaskError(str(e)) from e
    module = module.to(device).eval()
    out = Path(cfg.out) if cfg.out else run_dir / "tasks" / task
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TaskError(f"the task's output directory {out} cannot be created ({type(e).__name__}: {e}). "
                        "Fix: pass out=<a writable directory>") from e
    torch.manual_seed(cfg.seed)
    return TaskContext(module, dm, Path(ckpt), Path(run_dir), out, device)


def require_images(task: str, ctx: TaskContext, supported: str) -> None:
    if ctx.info.kind != "image":
        raise Unsupported(task, ctx.family.name, f"it needs image data, not {ctx.info.kind} "
                          f"(dataset {ctx.info.name})", supported)


def write_report(out_dir: Path, name: str, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``<name>.json`` (everything) and ``<name>.md`` (for people) in ``out_dir``."""
    j, m = out_dir / f"{name}.json", out_dir / f"{name}.md"
    j.write_text(json.dumps(report, indent=2, default=_jsonable))
    m.write_text(markdown.rstrip() + "\n")
    return j, m


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def save_rows(rows: list[Tensor], levels: int, path: Path, labels: list[str] | None = None,
              min_tile: int = 32) -> Path:
    """A PNG of image rows: ``rows[i]`` is ``(N, C, H, W)`` discrete images (all rows the same N),
    each row labelled on the left when ``labels`` are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genlab.callbacks.samples import image_grid

    n = max(len(r) for r in rows)
    grids = [image_grid(r.cpu(), levels, nrow=n, min_tile=min_tile) for r in rows]
    h, w = grids[0].shape[1], grids[0].shape[2]
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(3.0, w / 40), max(1.0, h / 40) * len(rows)), dpi=100,
                             squeeze=False)
    for ax, g, lab in zip(axes[:, 0], grids, labels or [None] * len(rows)):
        img = g.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if lab:
            ax.set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def batches(x: Tensor, size: int):
    """Consecutive slices of ``x`` of at most ``size`` rows."""
    for i in range(0, len(x), max(1, size)):
        yield x[i:i + size]


def psnr(a: Tensor, b: Tensor, peak: float) -> float:
    """Peak signal-to-noise ratio in dB between two arrays on the same scale (``peak`` = max value)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def stream_seed(seed: int, stream: str) -> int:
    """An independent seed for the named random stream of a run (NumPy's ``SeedSequence``).

    Generators seeded with the same integer give the same uniform stream, so a mask drawn with
    ``seed`` and a model's noise drawn after ``torch.manual_seed(seed)`` would be correlated (the
    missing pixels would get the low noise values). Every stream but the global one is seeded
    from ``stream_seed(seed, name)``."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**32, *stream.encode()]).generate_state(1)[0])
