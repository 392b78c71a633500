#!/usr/bin/env python
"""Class-conditional MNIST, every family, the comparison budget: one table.

    python scripts/bench_conditional.py --data-dir ../shared/data [--minutes 15] [--parallel 2]
        [--families autoregressive,vae,...] [--out logs/sweeps/conditional_mnist] [--quality-n 1000]
        [--guidance 1,2,3] [--guidance-n 500]

1. ``genlab-train experiment=compare_families dataset=mnist +conditional=class threads=1`` with
   ``trainer.max_time`` of ``--minutes`` per family, the families split over ``--parallel`` processes
   (one thread each) that write into one sweep directory;
2. ``genlab-compare <sweep> --quality-n N``: per run the marginal and conditional test NLL (their kind),
   the generative classifier's test accuracy, and in the classifier's features FD, the samples' label
   accuracy and the intra-class FD (samples drawn for the labels of the reference test images);
3. for each family with classifier-free guidance, ``genlab-eval <run> --guidance W1,W2,...``: FD and
   label accuracy against the guidance weight (``guidance_sweep.md`` / ``.png`` in the run).

Prints the table and the sweeps; everything stays in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FAMILIES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs" / "family").glob("*.yaml"))


def train(args: argparse.Namespace, families: list[str]) -> None:
    """The sweep, ``--parallel`` processes over disjoint sets of families, into ``args.out``."""
    groups = [families[i::args.parallel] for i in range(args.parallel)]
    procs = []
    for group in filter(None, groups):
        cmd = ["genlab-train", "experiment=compare_families", "dataset=mnist", f"paths.data_dir={args.data_dir}",
               "+conditional=class", "threads=1", f"trainer.max_time=00:00:{args.minutes:02d}:00",
               f"hydra.sweep.dir={args.out}", f"+family={','.join(group)}", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
        log = open(Path(args.out).with_suffix(f".{'_'.join(group)}.log"), "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"warning: a training process exited with {codes}; see {args.out}.*.log", file=sys.stderr)


def guidance_sweeps(args: argparse.Namespace) -> None:
    """``genlab-eval --guidance`` for every finished run whose family has a guidance weight."""
    from genlab.evaluate import guided_families

    guided = set(guided_families())
    for results in sorted(Path(args.out).rglob("results.json")):
        r = json.loads(results.read_text())
        if r.get("family") in guided and r.get("status") == "finished":
            subprocess.run(["genlab-eval", str(results.parent), "--guidance", args.guidance,
                            "--n", str(args.guidance_n)], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="holds MNIST/raw (torchvision's layout)")
    p.add_argument("--minutes", type=int, default=15, help="training budget per family (trainer.max_time)")
    p.add_argument("--parallel", type=int, default=2, help="training processes at once (one thread each)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated configs/family entries")
    p.add_argument("--out", default="logs/sweeps/conditional_mnist")
    p.add_argument("--quality-n", type=int, default=1000)
    p.add_argument("--guidance", default="1,2,3", help="guidance weights to sweep (1 = unguided)")
    p.add_argument("--guidance-n", type=int, default=500)
    p.add_argument("--skip-training", action="store_true", help="only compare and sweep an existing --out")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_training:
        train(args, args.families.split(","))
    subprocess.run(["genlab-compare", args.out, "--quality-n", str(args.quality_n)], check=False)
    guidance_sweeps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
