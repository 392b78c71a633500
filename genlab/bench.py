"""Shared plumbing of the benchmark scripts in ``scripts/``: run ``genlab-train`` as a user would
(a subprocess with Hydra overrides) and hand back its ``results.json``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def budget(minutes: int) -> str:
    """``trainer.max_time`` (DD:HH:MM:SS) for a budget in minutes."""
    hours, mins = divmod(minutes, 60)
    return f"00:{hours:02d}:{mins:02d}:00"


def run_training(overrides: list[str], threads: int | None = None) -> dict[str, Any] | None:
    """Run ``python -m genlab.train <overrides>``; return its results dict, or None (after
    printing the tail of its output) if it failed.

    Args:
        threads: ``OMP_NUM_THREADS`` for the run (1 is far steadier when other jobs share the
            CPU: OpenMP threads wait on each other); None/0 keeps torch's default.
    """
    cmd = [sys.executable, "-m", "genlab.train", *overrides]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    print("running:", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    last = out.stdout.strip().splitlines()[-1:] or [""]
    if out.returncode or not last[0].startswith("results: "):
        print(out.stdout[-2000:], out.stderr[-4000:], sep="\n")
        return None
    path = last[0].removeprefix("results: ")
    return {**json.loads(Path(path).read_text()), "path": path}


def print_table(header: list[str], row: list[Any], results: dict[str, Any]) -> None:
    """A markdown table of one row, then the results path (for the docs)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"results: {results['path']}")


THREADS_HELP = ("OMP_NUM_THREADS for the run (and torch threads for sampling here); 0 keeps torch's default. "
                "On a CPU shared with other jobs, 2+ threads can be 100x slower than 1 (OpenMP threads wait "
                "on each other)")


def bench_parser(doc: str | None, minutes: int) -> argparse.ArgumentParser:
    """The options every MNIST benchmark script shares: ``--data-dir``, ``--minutes``,
    ``--threads`` and trailing Hydra overrides; scripts add their own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--minutes", type=int, default=minutes, help="training budget")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    return p


def train_experiment(experiment: str, args: Any) -> dict[str, Any] | None:
    """``genlab-train experiment=<experiment>`` with the shared options of :func:`bench_parser`;
    also sets this process's torch threads for what the script does afterwards (sampling)."""
    r = run_training([f"experiment={experiment}", f"paths.data_dir={args.data_dir}",
                      f"trainer.max_time={budget(args.minutes)}", *args.overrides], args.threads)
    if r is not None and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return r
