"""``genlab-task``: what generative models are for, on a trained checkpoint.

    genlab-task --help                      # the tasks
    genlab-task <task> --help               # a task's options
    genlab-task <task> ckpt=<run dir or .ckpt> [key=value ...]

Every task writes ``<task>.json`` / ``<task>.md`` and its PNGs to ``out=`` (default
``<run dir>/tasks/<task>``).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genlab.tasks.base import TaskError, load_context
from genlab.tasks.registry import TASKS


def usage() -> str:
    width = max(len(n) for n in TASKS)
    lines = [__doc__.strip(), "", "tasks:"]
    for t in TASKS.values():
        lines.append(f"  {t.name.ljust(width)}  {t.summary}")
        lines.append(f"  {' ' * width}  families: {t.families}")
    return "\n".join(lines)


def task_help(name: str) -> str:
    t = TASKS[name]
    config_cls, _ = t.load()
    lines = [f"genlab-task {name} ckpt=... [key=value ...]", "", t.summary, f"families: {t.families}", ""]
    if config_cls.__doc__:
        lines += [inspect.cleandoc(config_cls.__doc__), ""]
    lines.append("options (defaults):")
    for f in fields(config_cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        lines.append(f"  {f.name}={default}")
    return "\n".join(lines)


def parse(name: str, args: list[str]) -> Any:
    """The task's config from ``key=value`` arguments (unknown keys and bad values are errors)."""
    config_cls, _ = TASKS[name].load()
    bad = [a for a in args if "=" not in a]
    if bad:
        raise TaskError(f"arguments must be key=value, got {bad}. Options: {', '.join(f.name for f in fields(config_cls))}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(config_cls), OmegaConf.from_dotlist(args))
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise TaskError(f"ckpt=... is required: a run directory (holding results.json) or a checkpoint .ckpt "
                            f"(genlab-task {name} ckpt=logs/runs/<date>/<time>)")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise TaskError(f"bad option for task '{name}': {msg}. Options: "
                        f"{', '.join(f.name for f in fields(config_cls))} (genlab-task {name} --help)") from e


def run_task(name: str, args: list[str]) -> dict[str, Any]:
    """Parse, load the checkpoint, run; returns the task's report."""
    if name not in TASKS:
        raise TaskError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    many = TASKS[name].many and several_runs(args)
    if many:
        return TASKS[name].load_many()(many, args)
    cfg = parse(name, args)
    _, fn = TASKS[name].load()
    ctx = load_context(name, cfg)
    try:
        report = fn(ctx, cfg)
    except TaskError:
        raise
    except ValueError as e:  # a family refusing an option value (e.g. steps outside 1..T)
        raise TaskError(f"task '{name}' cannot run with these options: {e}") from e
    report.setdefault("out_dir", str(ctx.out_dir))
    return report


def several_runs(args: list[str]) -> list[str] | None:
    """The runs of ``ckpt=`` when it names several (comma-separated, or a sweep directory: a directory
    without a results.json of its own), else None."""
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), None)
    if not ckpt:
        return None
    parts = [p for p in ckpt.split(",") if p]
    if len(parts) > 1 or (Path(parts[0]).is_dir() and not (Path(parts[0]) / "results.json").is_file()):
        return parts
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in TASKS and any(a in ("-h", "--help") for a in rest):
        print(task_help(name))
        return 0
    try:
        report = run_task(name, rest)
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.get("summary", []):
        print(line)
    print(f"written to {report['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
