#!/usr/bin/env python
"""Benchmark: Gated PixelCNN on MNIST, 20 minutes of CPU training, exact test NLL.

* ``--dataset binarized_mnist`` (default): dynamically binarised MNIST. Target (issue #3): test
  NLL <= 88 nats per image. References: PixelCNN 81.30 nats (van den Oord et al. 2016, Pixel
  RNN paper, Table 4); MADE 86.64; NADE 88.33.
* ``--dataset mnist``: 8-bit MNIST with a discretised logistic mixture output, reported in
  bits/dim (no target).

    python scripts/bench_pixelcnn.py --data-dir ../shared/data [--minutes 20] [--dataset mnist]
        [--threads 1] [-- extra hydra overrides]

Runs ``genlab-train experiment=pixelcnn_<dataset>`` and prints one markdown table row from its
results.json. Exit status 1 if the target is missed, 2 if the run failed.
"""

from __future__ import annotations

import argparse
import sys

from genlab.bench import budget, run_training

TARGET_NATS = {"binarized_mnist": 88.0, "mnist": None}


def row(r: dict, minutes: int, target: float | None) -> tuple[str, bool]:
    """The markdown table row of a results.json, and whether the target is met."""
    nats, ok = r["test"]["nll_nats"], target is None or r["test"]["nll_nats"] <= target
    steps_per_s = r["global_step"] / max(r["train_seconds"] or 1.0, 1e-9)
    verdict = "—" if target is None else ("yes" if ok else "NO")
    return (f"| {r['model']} ({r['params']:,} params) | {r['dataset']} | {minutes} min CPU | {r['epochs']} | "
            f"{r['global_step']} ({steps_per_s:.2f}/s) | {r['val'].get('nll_nats', float('nan')):.2f} | "
            f"{nats:.2f} | {r['test']['nll_bpd']:.4f} | {verdict} |"), ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--minutes", type=int, default=20, help="training budget")
    p.add_argument("--dataset", choices=sorted(TARGET_NATS), default="binarized_mnist")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the run (1 is far faster when other jobs share the cores)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = p.parse_args()
    r = run_training([f"experiment=pixelcnn_{a.dataset}", f"paths.data_dir={a.data_dir}", "dataset.download=false",
                      f"trainer.max_time={budget(a.minutes)}", *a.overrides], a.threads)
    if r is None:
        return 2
    target = TARGET_NATS[a.dataset]
    line, ok = row(r, a.minutes, target)
    goal = f"pass (<= {target:g} nats)" if target is not None else "target"
    print(f"| model | data | budget | epochs | steps | val NLL (nats) | test NLL (nats, exact) | bits/dim | {goal} |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(line)
    print(f"results: {r['path']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
