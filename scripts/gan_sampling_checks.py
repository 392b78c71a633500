#!/usr/bin/env python
"""Sampling-time checks of a trained GAN: the truncation trick, the raw generator vs its EMA, batch
norm with the running statistics vs the sampled batch's own, discriminator-driven latent
refinement at several settings, and discriminator rejection sampling at several quantiles.

    python scripts/gan_sampling_checks.py <checkpoint.ckpt> [--n 1000] [--seed 0] [--no-baseline]
        [--refine 20:0.05:1 ...] [--jacobian 0.8:2 ...] [--drs-quantiles M ...] [--cache-dir DIR] [key=value ...]

For each setting, draws ``--n`` samples (``--seed``) and prints the in-domain quality metrics
(:mod:`genlab.metrics.quality`: FD, precision, recall, confident share, class range) against
held-out test images. Truncation (Brock et al. 2019) draws ``z`` from a standard normal
truncated to ``[-a, a]``. Latent refinement (Tanaka 2019, :mod:`genlab.families.gan.refine`)
moves each ``z`` ``STEPS`` Adam steps of size ``LR`` up ``D(G(z)) - PENALTY ||z - z0||``.
Jacobian truncation (Tanielian et al. 2020, :mod:`genlab.families.gan.jacobian`, ``--jacobian KEEP:INK_POWER``)
draws ``n / KEEP`` latents, refines them as the run does, and keeps the ``n`` with the smallest
generator Jacobian norm divided by ``ink^INK_POWER``.
Discriminator rejection sampling (Azadi et al. 2019, :mod:`genlab.families.gan.rejection`) is
calibrated here on 1,000 validation images for each quantile ``M`` (``--drs-quantiles``), whether
or not the run was trained with it; its proposals go through the run's own ``model.refine``
(``model.refine=null`` among the overrides: unrefined proposals).
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from genlab.builders import load_run
from genlab.families.gan.callbacks import calibration_images
from genlab.families.gan.jacobian import JacobianTruncation
from genlab.families.gan.refine import LatentRefinement
from genlab.families.gan.rejection import RejectionCalibration
from genlab.evaluate import run_classifier, summary_cells
from genlab.metrics.quality import quality_metrics, reference_set


@torch.no_grad()
def draw(family, nets, generator, n: int, truncation: float | None, seed: int = 0) -> torch.Tensor:
    """``n`` samples (``seed``) of ``generator``, through the family's latent refinement where it is set."""
    torch.manual_seed(seed)
    z = torch.randn(family.proposals(n), family.latent_dim)
    if truncation:
        torch.nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation)
    return family.to_data(family.draw(nets, generator, n, z.device, z=z))


def refinement(spec: str) -> LatentRefinement:
    """``STEPS:LR:PENALTY`` -> the refinement."""
    try:
        steps, lr, penalty = spec.split(":")
        return LatentRefinement(int(steps), float(lr), float(penalty))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--refine {spec!r}: use STEPS:LR:PENALTY, e.g. 20:0.05:1 ({e})") from e


def jacobian(spec: str) -> JacobianTruncation:
    """``KEEP:INK_POWER`` -> the Jacobian truncation."""
    try:
        keep, ink_power = spec.split(":")
        return JacobianTruncation(keep=float(keep), ink_power=float(ink_power))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--jacobian {spec!r}: use KEEP:INK_POWER, e.g. 0.8:2 ({e})") from e


def label(refine: LatentRefinement | None, jt: JacobianTruncation | None) -> str:
    """How the samples were post-processed: ``refined (...)``, ``Jacobian-truncated (...)``."""
    parts = [f"refined ({refine.steps} steps, lr {refine.lr:g}, penalty {refine.penalty:g})"] if refine else []
    if jt:
        parts.append(f"Jacobian-truncated (keep {jt.keep:g}, ink power {jt.ink_power:g})")
    return ", ".join(parts)


def batch_stats(generator: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``generator`` whose batch-norm layers normalise with each batch's own statistics."""
    g = copy.deepcopy(generator).eval()
    for m in g.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    return g


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of every row's samples")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the plain, truncated and batch-statistics rows (only --refine and --drs-quantiles)")
    p.add_argument("--drs-quantiles", type=float, nargs="*", default=[0.8, 0.95, 0.99],
                   help="rejection-sampling bounds M to try (quantiles of the generated log-ratios)")
    p.add_argument("--refine", type=refinement, nargs="*", default=[],
                   help="latent refinements to try, STEPS:LR:PENALTY (e.g. 20:0.05:1)")
    p.add_argument("--jacobian", type=jacobian, nargs="*", default=[],
                   help="Jacobian truncations to try on top of the run's own refinement, KEEP:INK_POWER (e.g. 0.8:2)")
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
    # plain rows first; the run's own refinement / truncation are restored for the Jacobian and DRS rows
    own, own_jt = family.refine, family.jacobian_truncation
    family.refine = family.jacobian_truncation = None
    for name, trunc in [] if a.no_baseline else settings:
        if name in nets:
            row(name, trunc, "-", draw(family, nets, nets[name], a.n, trunc, a.seed))
    for name in [] if a.no_baseline else ["generator_ema", "generator"]:
        if name in nets and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in nets[name].modules()):
            # batch norm with the statistics of the n samples' own batch, not the running averages
            row(f"{name}, batch-norm batch statistics", None, "-",
                draw(family, nets, batch_stats(nets[name]), a.n, None, a.seed))
    sampler = "generator_ema" if "generator_ema" in nets else "generator"
    for spec in a.refine:
        family.refine = spec
        row(f"{sampler}, {label(spec, None)}", None, "-",
            draw(family, nets, family.sampling_generator(nets), a.n, None, a.seed))
    family.refine = own
    for spec in a.jacobian:
        family.jacobian_truncation = spec
        row(f"{sampler}, {label(own, spec)}", None, "-",
            draw(family, nets, family.sampling_generator(nets), a.n, None, a.seed))
    family.jacobian_truncation = own_jt
    images = calibration_images(dm)
    for quantile in a.drs_quantiles:  # replaces the run's own calibration, if any
        nets["rejection"] = RejectionCalibration(quantile)
        torch.manual_seed(8765)
        fit = family.calibrate_rejection(nets, images)
        row(", ".join([sampler] + ([label(own, own_jt)] if own or own_jt else [])), None,
            f"{quantile:g}, {fit['acceptance']:.2f}", module.sample(a.n, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
