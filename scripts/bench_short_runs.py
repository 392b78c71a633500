#!/usr/bin/env python
"""The default short run of every model on the embedded digits, one thread: what a first run costs.

    python scripts/bench_short_runs.py [--models pixelcnn,vae,...] [--steps 30] [--out short_runs.json]

Runs ``genlab-train model=<M> dataset=digits trainer.max_steps=<steps> threads=1`` in a fresh
process per model and prints a markdown table: model | CPU seconds of the whole run (the child's
user + system time, which a loaded machine does not inflate) | wall seconds | of which the test
phase | the test NLL with its standard error over the test examples and its kind. The goal: every
model under 120 CPU seconds, the evaluation never most of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ["pixelcnn", "transformer", "vae", "vae_conv", "glow", "realnvp", "ddpm", "ddpm_mlp", "flow_matching",
          "flow_matching_mlp", "dcgan", "gan_mlp", "ebm", "ebm_mlp"]


def one_run(model: str, steps: int, root: Path, extra: list[str]) -> dict:
    """Train ``model`` for ``steps`` steps on digits in a child process; its CPU and wall seconds and results."""
    out = root / model
    cmd = [sys.executable, "-m", "genlab.train", f"model={model}", "dataset=digits", f"trainer.max_steps={steps}",
           "threads=1", f"hydra.run.dir={out}", "callbacks.progress_bar.refresh_rate=0", *extra]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **_env()})
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    if proc.returncode != 0:
        print(f"{model}: exit {proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return {"model": model, "rc": proc.returncode, "cpu_s": cpu, "wall_s": wall, "results": results}


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def row(r: dict) -> str:
    res, test = r["results"], r["results"].get("test", {})
    timings = res.get("timings", {})
    nll = "—"
    if test.get("nll_kind", "none") != "none":
        se = f" ± {test['nll_bpd_se']:.3f}" if "nll_bpd_se" in test else ""
        nll = f"{test['nll_bpd']:.3f}{se} ({test['nll_kind']})"
    test_s = timings.get("test_seconds")
    return (f"| {r['model']} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
            f"{'—' if test_s is None else f'{test_s:.1f}'} | {nll} |" + ("" if r["rc"] == 0 else f" exit {r['rc']} |"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("extra", nargs="*", help="more genlab-train overrides for every run")
    args = p.parse_args()
    rows = []
    print("| model | CPU s (whole run) | wall s | test phase s | test NLL, bits/dim ± SE (kind) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rows.append(one_run(model, args.steps, Path(tmp), args.extra))
            print(row(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
