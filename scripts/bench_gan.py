#!/usr/bin/env python
"""Benchmark: DCGAN on 8-bit MNIST, 20 minutes of CPU training, 1,000 samples for later scoring.

A GAN has no likelihood (results.json: ``nll_kind: none``); its samples are scored by a
classifier trained on MNIST's own train split (feature-space FID / precision-recall), which
is run separately on the ``.pt`` file written here.

    python scripts/bench_gan.py --data-dir ../shared/data [--minutes 20] [--threads 1] [-- extra hydra overrides]

Runs ``genlab-train experiment=gan_mnist``, rebuilds the run from its last checkpoint
(:func:`genlab.builders.load_run`), draws ``--num-samples`` images from the generator EMA (refined by the
discriminator where ``model.sampler.refine`` is set and Jacobian-truncated where ``model.sampler.jacobian_truncation`` is,
as in the experiment) with a fixed seed and writes ``<run>/bench_samples.png`` (a grid of the first 100) and
``<run>/bench_samples.pt`` (uint8 ``(N, 1, 28, 28)``), then prints one markdown table row.
With discriminator rejection sampling on (``model.sampler.rejection={}``), also
``<run>/bench_samples_drs.{png,pt}``: the same number of samples through the calibrated
discriminator (Azadi et al. 2019), and a second row.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torchvision.utils import save_image

from genlab.bench import bench_parser, print_table, train_experiment
from genlab.builders import load_run
from genlab.callbacks.samples import image_grid


def sample_from_checkpoint(ckpt: str, n: int, seed: int, out: Path) -> list[tuple[str, Path, Path, float]]:
    """Draw ``n`` samples from the run in ``ckpt``; write the PNG grid and the ``.pt``. A run
    with discriminator rejection sampling (``model.sampler.rejection={}``, calibrated) gets
    both: plain generator samples at ``out`` and rejection samples at ``out`` + ``_drs``.
    Returns ``(kind, png, pt, images per second)`` for each."""
    module, datamodule = load_run(ckpt)
    rejection = module.nets["rejection"] if "rejection" in module.nets else None
    kinds = [("plain", out)]
    if rejection is not None and rejection.ready:
        kinds.append(("drs", out.with_name(out.name + "_drs")))
    written = []
    for kind, path in kinds:
        with rejection.disabled() if kind == "plain" and rejection is not None else nullcontext():
            t0 = time.perf_counter()
            x = module.sample(n, seed=seed)
            rate = n / (time.perf_counter() - t0)
        png, pt = path.with_suffix(".png"), path.with_suffix(".pt")
        save_image(image_grid(x[:100], datamodule.info.levels, nrow=10), png)
        torch.save(x.cpu(), pt)
        written.append((kind, png, pt, rate))
    return written


def sampler_label(kind: str, results: dict) -> str:
    """What drew the samples: the generator EMA, refined (``model.sampler.refine``), Jacobian-truncated
    (``model.sampler.jacobian_truncation``) and / or rejection-sampled."""
    sampler = results["config"]["model"].get("sampler") or {}
    label = "generator EMA" + (", latent refinement" if sampler.get("refine") else "")
    label += ", Jacobian truncation" if sampler.get("jacobian_truncation") else ""
    return label + (", discriminator rejection" if kind == "drs" else "")


def main() -> int:
    p = bench_parser(__doc__, minutes=20)
    p.add_argument("--num-samples", type=int, default=1000, help="samples written for scoring")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    a = p.parse_args()
    r = train_experiment("gan_mnist", a)
    if r is None:
        return 2
    ckpt = r["checkpoints"]["last"] or r["checkpoint"]
    written = sample_from_checkpoint(ckpt, a.num_samples, a.seed, Path(r["path"]).parent / "bench_samples")
    steps, secs = r["global_step"], r["train_seconds"]
    n_critic = r["config"]["loss"].get("n_critic", 1)
    for kind, png, pt, rate in written:
        print_table(
            ["model", "data", "loss", "budget", "epochs", "steps (D+G)", "G steps/s", "sampler", "samples/s", "NLL",
             "samples"],
            [f"{r['model']} ({r['params']:,} params incl. EMA)", r["dataset"], r["loss"], f"{a.minutes} min CPU",
             r["epochs"], steps, f"{steps / (n_critic + 1) / secs:.2f}",
             sampler_label(kind, r), f"{rate:.0f}", r["test"]["nll_kind"],
             f"{pt} ({a.num_samples} x uint8), {png}"], r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
