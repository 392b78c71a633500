#!/usr/bin/env python
"""Benchmark: multi-scale flow (Glow-style) on 8-bit MNIST, 20 minutes of CPU training.

Target (issue #4): test NLL <= 1.4 bits/dim (the uniform-dequantisation bound, one draw per
test image). References (hours of GPU training): RealNVP 1.06, Glow 1.05, Flow++ 0.99 bits/dim.

    python scripts/bench_flow.py --data-dir ../shared/data [--minutes 20] [--threads 1] [-- extra hydra overrides]

Runs ``genlab-train experiment=flow_mnist`` and prints one markdown table row from its
results.json. Exit status 1 if the target is missed.
"""

from __future__ import annotations

import sys

from genlab.bench import bench_parser, print_table, train_experiment

TARGET_BPD = 1.4


def main() -> int:
    p = bench_parser(__doc__, minutes=20)
    a = p.parse_args()
    r = train_experiment("flow_mnist", a)
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
