#!/usr/bin/env python
"""Sampling-time checks of a trained diffusion model: DDIM steps and eta, scored in-domain.

    python scripts/diffusion_sampling_checks.py <checkpoint.ckpt> [--settings 50:0 50:1 100:0] [--n 1000]
        [--guidance 1 2 3 [--guide-ckpt OTHER.ckpt]] [--cache-dir DIR] [key=value ...]

For each ``STEPS:ETA`` setting, draws ``--n`` samples (seed 0, EMA weights) with
:class:`genlab.families.diffusion.DDIM` (``eta = 0``: deterministic; ``eta = 1``: ancestral
with the posterior variances on the respaced chain), or for ``ancestral:STEPS`` with
:class:`genlab.families.diffusion.Ancestral` (the model's own, e.g. learned, variances), and
prints one markdown row of the in-domain quality metrics (:mod:`genlab.metrics.quality`: FD,
precision, recall, confident share, class range) against held-out test images, with the
sampling time. ``--guidance W ...`` repeats every setting at each autoguidance weight (a model
trained with ``model.guidance``; weight 1 = unguided). ``--guide-ckpt`` takes the guide from another
checkpoint of the same architecture and parametrisation instead (its EMA weights: e.g. an earlier
checkpoint of the run, or a worse model), also for a model trained without ``model.guidance``.

Each row is one sampler object passed to ``family.sample`` (no family attribute is changed); the
same setting as a config override of one evaluation is e.g. ``genlab-eval RUN model.sampler.steps=50
model.sampler.eta=1 model.sampler.guidance=3`` (``model.sampler=ddpm``: ancestral on all steps).
This script adds the loop, the seeded draws of the rows in docs/benchmarks.md, ``ancestral:STEPS``
and the lent guide of ``--guide-ckpt``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from bench_diffusion import draw  # scripts/ is on sys.path when this file runs

from genlab.builders import load_run
from genlab.evaluate import run_classifier, summary_cells
from genlab.families.diffusion import DDIM, Ancestral, Diffusion, Guidance, GuideNet, Sampler
from genlab.metrics.quality import quality_metrics, reference_set


def parse_setting(text: str) -> Sampler:
    """``STEPS:ETA`` (DDIM) or ``ancestral:STEPS`` (DDPM on the respaced chain, the model's variances)."""
    try:
        a, b = text.split(":")
        return Ancestral(steps=int(b)) if a == "ancestral" else DDIM(steps=int(a), eta=float(b))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"a setting is STEPS:ETA such as 50:0 or 50:1, or ancestral:STEPS, "
                                         f"got {text!r} ({e})") from e


def use_guide(module: Any, ckpt: str) -> None:
    """Make ``ckpt``'s denoiser (EMA weights) the guide of ``module`` (autoguidance); a module trained
    without ``model.guidance`` gets a copy of its family with the default guidance (weight 1: the
    weights come from ``--guidance``, i.e. each sampler's own ``guidance``)."""
    other, _ = load_run(ckpt)
    net, fam = module.nets["net"], module.family
    if not isinstance(other.family, Diffusion) or type(other.nets["net"]) is not type(net) or any(
            a.shape != b.shape for a, b in zip(other.nets["net"].state_dict().values(), net.state_dict().values())):
        raise SystemExit(f"--guide-ckpt {ckpt}: the guide must be a diffusion model with the same network as the model")
    if type(other.family.prediction) is not type(fam.prediction) or not torch.allclose(
            other.family.process.tables["alpha_bar"], fam.process.tables["alpha_bar"]):
        raise SystemExit(f"--guide-ckpt {ckpt}: the guide must predict the same target on the same noise schedule")
    module.nets["guide"] = GuideNet(other.nets["net"])
    module.nets["guide"].taken_at.fill_(float(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]))
    if fam.guidance is None:
        module.family = fam.with_guidance(Guidance())


def describe(sampler: Sampler) -> str:
    if isinstance(sampler, DDIM):
        return f"DDIM {sampler.steps} steps, eta {sampler.eta:g}"
    return f"ancestral {sampler.steps} steps (model variances)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--settings", type=parse_setting, nargs="+", default=[parse_setting("50:0"), parse_setting("50:1")],
                   help="samplers to try: STEPS:ETA (DDIM) or ancestral:STEPS")
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="autoguidance weights to try (a model trained with model.guidance; 1 = unguided)")
    p.add_argument("--guide-ckpt", default=None, help="use this checkpoint's weights as the autoguidance guide")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=250, help="samples drawn per batch")
    p.add_argument("--cache-dir", default=None, help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.data_dir=../shared/data")
    a = p.parse_intermixed_args()
    module, dm = load_run(a.ckpt, overrides=a.overrides)
    if not isinstance(module.family, Diffusion):
        print(f"{a.ckpt} is a {module.family.name} checkpoint, not a diffusion model", file=sys.stderr)
        return 2
    if a.guide_ckpt:
        use_guide(module, a.guide_ckpt)
    guidance = module.family.guidance
    if a.guidance and guidance is None:
        print(f"{a.ckpt} was trained without model.guidance: it has no guide snapshot for --guidance", file=sys.stderr)
        return 2
    clf, _ = run_classifier(module, dm, a.cache_dir)
    ref = reference_set(dm, a.n)
    print("| sampler | FD | precision | recall | confident (>= 0.9) | class range | s per 1000 samples |")
    print("|---|---|---|---|---|---|---|")
    for setting in a.settings:
        for w in a.guidance or [guidance.weight if guidance else None]:
            sampler = setting.with_guidance(w)  # the weight of these samples; the family is left as it is
            x, sec = draw(module, sampler, a.n, a.chunk)
            name = describe(sampler) + (f", guidance {w:g}" if guidance is not None else "")
            print(f"| {name} | {summary_cells(quality_metrics(clf, ref, x))} | {sec:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
