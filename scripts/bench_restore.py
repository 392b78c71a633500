"""Restoration benchmark: every run of a comparison (or the checkpoints given) under each operator.

    python scripts/bench_restore.py logs/sweeps/compare/<date>/<time> --out docs/lab/restore \
        [--n 100] [--noise 0.05] [--samples 1] [--device auto] \
        [--operator "operator=downsample factor=2" --operator "operator=blur sigma=1.5" ...]

Writes ``restore_compare.md`` / ``.json`` (family x operator -> PSNR / SSIM / consistency / seconds, the
pseudo-inverse and Tikhonov baselines per operator, refusals with their reason) and
``restore_compare.png`` to ``--out``; each run's own report under ``--out/run<i>/<operator>``. The work
is :func:`genlab.tasks.restore.compare`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlab.tasks.base import TaskError
from genlab.tasks.restore import compare

OPERATORS = ["operator=downsample factor=2", "operator=blur sigma=1.5", "operator=fourier keep=0.25"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="a sweep directory, run directories or .ckpt files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--operator", action="append", help="an operator's key=value options (repeatable); "
                   f"default: {OPERATORS}")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--device", default="auto")
    args, extra = p.parse_known_args(argv)  # any other key=value options of genlab-task restore, e.g. iters=300
    options = [f"n={args.n}", f"noise={args.noise}", f"samples={args.samples}", f"device={args.device}", *extra]
    try:
        summary = compare(args.sources, [op.split() for op in (args.operator or OPERATORS)], options, args.out)
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "restore_compare.md").read_text())
    print(f"montage: {summary['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
