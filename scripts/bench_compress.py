#!/usr/bin/env python
"""Compress real examples with an autoregressive checkpoint and print the size table.

    python scripts/bench_compress.py <checkpoint.ckpt or run dir> [--n 100] [--batch 100]
        [--split test] [--prob-bits 24] [--device cpu] [--out DIR] [key=value ...]

Runs ``genlab-task compress`` (rANS file, bit-exact decode, NLL, PNG/gzip/xz baselines) and
prints its ``compress.md`` table. Trailing ``key=value`` arguments are run-config overrides,
e.g. ``paths.data_dir=/path/to/data`` for a run whose data lives elsewhere now:

    OMP_NUM_THREADS=1 python scripts/bench_compress.py \\
        /work/cache/ckpts/pixelcnn_binarized_mnist/checkpoints/best.ckpt --n 100 paths.data_dir=/work/shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlab.tasks.base import TaskError
from genlab.tasks.cli import run_task


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a genlab checkpoint (.ckpt) or run directory of an autoregressive model")
    p.add_argument("--n", type=int, default=100, help="examples to compress")
    p.add_argument("--batch", type=int, default=100, help="examples per rANS stream (and network batch)")
    p.add_argument("--split", default="test")
    p.add_argument("--prob-bits", type=int, default=24)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="output dir (default <run dir>/tasks/compress)")
    p.add_argument("overrides", nargs="*", help="run config overrides (key=value)")
    a = p.parse_intermixed_args()
    args = [f"ckpt={a.ckpt}", f"n={a.n}", f"batch_size={a.batch}", f"split={a.split}", f"prob_bits={a.prob_bits}",
            f"device={a.device}", f"overrides=[{','.join(a.overrides)}]"] + ([f"out={a.out}"] if a.out else [])
    try:
        report = run_task("compress", args)
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report["summary"]))
    print()
    print((Path(report["out_dir"]) / "compress.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
