#!/usr/bin/env python
"""Training-step time of every family eager against ``torch.compile`` (the run config's ``compile`` key).

    python scripts/bench_compile.py [--families vae,gan,...] [--steps 60] [--warmup 10] [--pairs 3]
        [--compile true] [--warm-cache] [--data-dir ../shared/data]

For each family's benchmark experiment (the list and the switched-off extras of
``scripts/bench_overhead.py``: no validation, checkpoints, samples or test; one thread), fresh processes
run ``genlab.train.run`` in interleaved pairs (eager, compiled, eager, compiled, ...). Each reports the
CPU time (``time.process_time``) per training step after ``--warmup`` steps, which excludes compiling
(done in the first steps of each param group), and the wall seconds of its warm-up steps. Printed per
family: the median CPU ms per step of both, the median and range of the per-pair speed-ups
``eager / compiled``, and the compile seconds: the median of the compiled warm-up's wall time minus the
eager one's (inductor builds its C++ in worker processes, hence wall time). Each process compiles into
a fresh inductor cache (a first run's cost) unless ``--warm-cache`` shares the user's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_overhead import EXPERIMENTS, GENLAB_ONLY, StepClock, compose


class CompileClock(StepClock):
    """:class:`StepClock` that also writes ``warmup_s``: the wall seconds from the start of training to
    the first timed step (added to the run as ``+callbacks.clock``)."""

    def __init__(self, warmup: int, out: str) -> None:
        super().__init__(warmup, out)
        self.w0 = self.warmup_s = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.w0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None and trainer.global_step >= self.warmup:
            self.warmup_s = time.perf_counter() - self.w0
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        out = json.loads(Path(self.out).read_text())
        Path(self.out).write_text(json.dumps({**out, "warmup_s": self.warmup_s}))


def side(family: str, data_dir: str, steps: int, warmup: int, compile_value: str) -> dict[str, float]:
    """``{"s_per_step", "warmup_s"}`` of one ``genlab.train.run`` with ``compile=<compile_value>``."""
    from genlab.train import run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clock.json"
        clock = ["+callbacks.clock._target_=__main__.CompileClock", f"+callbacks.clock.warmup={warmup}",
                 f"+callbacks.clock.out={out}", f"compile={compile_value}"]
        run(compose(family, data_dir, warmup + steps, Path(tmp) / "run", [*GENLAB_ONLY, *clock]))
        return json.loads(out.read_text())


def measure(family: str, compiled: bool, args: argparse.Namespace) -> dict[str, float]:
    """One fresh process (one thread; a fresh inductor cache unless ``--warm-cache``)."""
    cmd = [sys.executable, __file__, "--inner", args.compile if compiled else "null", "--family", family,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--data-dir", args.data_dir]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
        if not args.warm_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{'compiled' if compiled else 'eager'} {family} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(family: str, pairs: list[tuple[dict, dict]]) -> str:
    """The table row of one family from its (eager, compiled) measurements."""
    eager = [1000 * e["s_per_step"] for e, _ in pairs]
    compiled = [1000 * c["s_per_step"] for _, c in pairs]
    speedups = [e / c for e, c in zip(eager, compiled)]
    compile_s = statistics.median(c["warmup_s"] - e["warmup_s"] for e, c in pairs)
    return (f"| {family} | {statistics.median(eager):.2f} | {statistics.median(compiled):.2f} | "
            f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}–{max(speedups):.2f}) | {compile_s:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(EXPERIMENTS), help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per process")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--pairs", type=int, default=3, help="interleaved (eager, compiled) process pairs per family")
    p.add_argument("--compile", default="true", help="the compiled side's compile= value, e.g. "
                   "'{mode: max-autotune-no-cudagraphs}'")
    p.add_argument("--warm-cache", action="store_true", help="share the user's inductor cache (else a fresh one)")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--inner", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        print(json.dumps(side(args.family, args.data_dir, args.steps, args.warmup, args.inner)))
        return 0
    print(f"compile={args.compile}, {args.steps} steps after {args.warmup}, {args.pairs} pairs, one thread\n\n"
          "| family | eager ms/step | compiled ms/step | speed-up (range) | compile s |\n|---|---:|---:|---:|---:|")
    for family in args.families.split(","):
        try:
            pairs = [(measure(family, False, args), measure(family, True, args)) for _ in range(args.pairs)]
        except RuntimeError as err:
            print(f"| {family} | failed: {str(err).strip().splitlines()[-1][:200]} | | | |", flush=True)
            continue
        print(row(family, pairs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
