#!/usr/bin/env python
"""Benchmark: multi-scale flow (Glow-style) on 8-bit MNIST, 20 minutes of CPU training.

Target (issue #4): test NLL <= 1.4 bits/dim (the uniform-dequantisation bound, one draw per
test image). References (hours of GPU training): RealNVP 1.06, Glow 1.05, Flow++ 0.99 bits/dim.

    python scripts/bench_flow.py --data-dir ../shared/data [--minutes 20] [--threads 1] [-- extra hydra overrides]

Runs ``genlab-train experiment=flow_mnist`` and prints one markdown table row from its
results.json. Exit status 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import sys

from genlab.bench import budget, print_table, run_training

TARGET_BPD = 1.4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--minutes", type=int, default=20, help="training budget")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS for the run; 0 keeps torch's default. On a CPU shared with other "
                        "jobs, 2+ threads can be 100x slower than 1 (OpenMP threads wait on each other)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = p.parse_args()
    r = run_training(["experiment=flow_mnist", f"paths.data_dir={a.data_dir}",
                      f"trainer.max_time={budget(a.minutes)}", *a.overrides], a.threads)
    if r is None:
        return 2
    bpd, steps, secs = r["test"]["nll_bpd"], r["global_step"], r["train_seconds"]
    val = r["val"].get("nll_bpd")  # absent when the budget ends before the first epoch
    print_table(
        ["model", "data", "budget", "epochs", "steps/s", "val NLL (bits/dim)", "test NLL (bits/dim, bound)",
         "nats/image", "pass (<= 1.4)"],
        [f"{r['model']} ({r['params']:,} params)", r["dataset"], f"{a.minutes} min CPU", r["epochs"],
         f"{steps / secs:.2f}", "—" if val is None else f"{val:.4f}", f"{bpd:.4f} ({r['test']['nll_kind']})",
         f"{r['test']['nll_nats']:.1f}", "yes" if bpd <= TARGET_BPD else "NO"], r)
    return 0 if bpd <= TARGET_BPD else 1


if __name__ == "__main__":
    sys.exit(main())
