#!/usr/bin/env python
"""Sampling-time checks of a trained GAN: the truncation trick, the raw generator vs its EMA, and
discriminator rejection sampling at several quantiles.

    python scripts/gan_sampling_checks.py <checkpoint.ckpt> [--n 1000] [--cache-dir DIR] [key=value ...]

For each setting, draws ``--n`` samples (seed 0) and prints the in-domain quality metrics
(:mod:`genlab.metrics.quality`: FD, precision, recall, confident share, class range) against
held-out test images. Truncation (Brock et al. 2019) draws ``z`` from a standard normal
truncated to ``[-a, a]``. Discriminator rejection sampling (Azadi et al. 2019,
:mod:`genlab.families.gan.rejection`) is calibrated here on 1,000 validation images for each
quantile ``M`` (``--drs-quantiles``), whether or not the run was trained with it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from genlab.builders import load_run
from genlab.families.gan.callbacks import calibration_images
from genlab.families.gan.rejection import RejectionCalibration
from genlab.evaluate import run_classifier, summary_cells
from genlab.metrics.quality import quality_metrics, reference_set


@torch.no_grad()
def draw(family, generator, n: int, truncation: float | None) -> torch.Tensor:
    torch.manual_seed(0)
    z = torch.randn(n, family.latent_dim)
    if truncation:
        torch.nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation)
    return family.to_data(family.generate(generator, n, z.device, z=z))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--drs-quantiles", type=float, nargs="*", default=[0.8, 0.95, 0.99],
                   help="rejection-sampling bounds M to try (quantiles of the generated log-ratios)")
    p.add_argument("--cache-dir", default=None, help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.data_dir=../shared/data")
    a = p.parse_intermixed_args()
    module, dm = load_run(a.ckpt, overrides=a.overrides)
    family, nets = module.family, module.nets
    if family.name != "gan":
        print(f"{a.ckpt} is a {family.name} checkpoint, not a GAN", file=sys.stderr)
        return 2
    clf, _ = run_classifier(module, dm, a.cache_dir)
    ref = reference_set(dm, a.n)
    print("| generator | truncation | rejection (quantile, acceptance) | FD | precision | recall | confident (>= 0.9) "
          "| class range |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name: str, trunc: float | None, drs: str, x: torch.Tensor) -> None:
        print(f"| {name} | {trunc or '-'} | {drs} | {summary_cells(quality_metrics(clf, ref, x))} |", flush=True)

    nets.eval()
    settings = [("generator_ema", None), ("generator", None)] + [("generator_ema", t) for t in (1.5, 1.0, 0.7)]
    for name, trunc in settings:
        if name in nets:
            row(name, trunc, "-", draw(family, nets[name], a.n, trunc))
    images = calibration_images(dm)
    for quantile in a.drs_quantiles:  # replaces the run's own calibration, if any
        nets["rejection"] = RejectionCalibration(quantile)
        torch.manual_seed(8765)
        fit = family.calibrate_rejection(nets, images)
        row("generator_ema" if "generator_ema" in nets else "generator", None,
            f"{quantile:g}, {fit['acceptance']:.2f}", module.sample(a.n, seed=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
