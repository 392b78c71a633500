#!/usr/bin/env python
"""Benchmark: MLP VAE on binarized MNIST, 10 minutes of CPU training, IWAE test NLL (k=1000).

Target (issue #2): test NLL <= 95 nats per image. Reference: IWAE paper, one-layer VAE after
3,280 epochs: 86.76 nats.

    python scripts/bench_vae.py --data-dir ../shared/data [--minutes 10] [-- extra hydra overrides]

Runs ``genlab-train experiment=vae_binarized_mnist`` and prints one markdown table row from its
results.json. Exit status 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TARGET_NATS = 95.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--minutes", type=int, default=10, help="training budget")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = p.parse_args()
    cmd = [sys.executable, "-m", "genlab.train", "experiment=vae_binarized_mnist",
           f"paths.data_dir={a.data_dir}", f"trainer.max_time=00:00:{a.minutes:02d}:00", *a.overrides]
    print("running:", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    last = out.stdout.strip().splitlines()[-1:] or [""]
    if out.returncode or not last[0].startswith("results: "):
        print(out.stdout[-2000:], out.stderr[-4000:], sep="\n")
        return 2
    r = json.loads(Path(last[0].removeprefix("results: ")).read_text())
    nats, k = r["test"]["nll_nats"], r["config"]["model"]["test_k"]
    print("| model | data | budget | epochs | val -ELBO (nats) | test NLL (nats, IW k) | bits/dim | pass (<= 95) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {r['model']} ({r['params']:,} params) | {r['dataset']} | {a.minutes} min CPU | {r['epochs']} | "
          f"{r['val']['nll_nats']:.2f} | {nats:.2f} (k={k}) | {r['test']['nll_bpd']:.4f} | "
          f"{'yes' if nats <= TARGET_NATS else 'NO'} |")
    print(f"results: {last[0].removeprefix('results: ')}")
    return 0 if nats <= TARGET_NATS else 1


if __name__ == "__main__":
    sys.exit(main())
