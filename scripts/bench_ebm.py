#!/usr/bin/env python
"""Benchmark: energy-based model (conv energy, SGLD + replay buffer) on 8-bit MNIST, 20 minutes of CPU.

    python scripts/bench_ebm.py --data-dir ../shared/data [--minutes 20] [--threads 1] [--samples 1000] [-- overrides]

Runs ``genlab-train experiment=ebm_mnist``; then, from the final checkpoint
(:func:`genlab.builders.load_run`), draws ``--samples`` images by SGLD, writes a PNG grid
(``ebm_samples.png``) and the uint8 samples ``(N, 1, 28, 28)`` (``ebm_samples.pt``) next to the
run's results.json so that a classifier can score them later, and prints one markdown table row.
An EBM has no tractable likelihood on MNIST: the NLL column reads "—".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from genlab.bench import bench_parser, print_table, train_experiment
from genlab.builders import load_run
from genlab.callbacks.samples import image_grid


def draw_samples(ckpt: str, n: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``n`` uint8 samples from the checkpoint's model and the seconds they took."""
    module, _ = load_run(ckpt)
    t0 = time.perf_counter()
    x = module.sample(n, seed=seed)
    return x, time.perf_counter() - t0


def save(x: torch.Tensor, levels: int, out_dir: Path) -> tuple[Path, Path]:
    """Write the samples as ``ebm_samples.pt`` (uint8) and a PNG grid of the first 256."""
    pt, png = out_dir / "ebm_samples.pt", out_dir / "ebm_samples.png"
    torch.save(x.cpu(), pt)
    save_image(image_grid(x[:256].cpu(), levels, min_tile=28), png)
    return pt, png


def main() -> int:
    p = bench_parser(__doc__, minutes=20)
    p.add_argument("--samples", type=int, default=1000, help="images drawn from the final checkpoint")
    a = p.parse_args()
    r = train_experiment("ebm_mnist", a)
    if r is None:
        return 2
    x, secs = draw_samples(r["checkpoints"]["last"] or r["checkpoint"], a.samples)
    pt, png = save(x, r["data"]["levels"], Path(r["path"]).parent)
    steps, train_s = r["global_step"], r["train_seconds"]
    print_table(
        ["model", "data", "budget", "epochs", "steps", "s/step (incl. SGLD)", "test NLL", "samples", "sampling s",
         "samples (.pt, uint8)", "grid"],
        [f"{r['model']} ({r['params']:,} params)", r["dataset"], f"{a.minutes} min CPU", r["epochs"], steps,
         f"{train_s / max(steps, 1):.3f}", "— (none)", len(x), f"{secs:.1f}", str(pt), str(png)], r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
