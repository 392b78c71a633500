#!/usr/bin/env python
"""Sampling-time checks of a trained GAN, one ``genlab-eval <run> model.sampler...=...`` per row: the
truncation trick, the raw generator vs its EMA, batch norm with the running statistics vs the sampled
batch's own, discriminator-driven latent refinement and Jacobian truncation at several settings, and
discriminator rejection sampling at several quantiles.

    python scripts/gan_sampling_checks.py <run dir | checkpoint.ckpt> [--n 1000] [--seed 0] [--no-baseline]
        [--refine 20:0.05:1 ...] [--jacobian 0.8:2 ...] [--drs-quantiles M ...] [--cache-dir DIR] [key=value ...]

Each row is :func:`genlab.evaluate.evaluate` with the run's sampler (``model.sampler``) changed by
overrides, e.g. the same as ``genlab-eval RUN model.sampler.propose.truncation=1.0`` (its
``quality_<hash>.json`` is written in the run directory), printed as FD, precision, recall, confident
share and class range against held-out test images. Plain rows turn every step after ``propose`` off
(truncation: Brock et al. 2019; ``generator: raw``; ``batch_stats: true``); ``--refine STEPS:LR:PENALTY``
rows refine alone (Tanaka 2019); ``--jacobian KEEP:INK_POWER`` rows truncate the run's own refined
proposals (Tanielian et al. 2020); ``--drs-quantiles`` rows reject the run's own proposals at the bound
of that quantile (Azadi et al. 2019), which needs a run trained with ``model.sampler.rejection`` (its
calibration is in the checkpoint). ``key=value`` overrides apply to every row (e.g.
``paths.data_dir=../shared/data``).
"""

from __future__ import annotations

import argparse
import sys

from genlab.evaluate import evaluate, summary_cells

PLAIN = ["model.sampler.refine=null", "model.sampler.jacobian_truncation=null", "model.sampler.rejection=null"]


def refine_override(spec: str) -> str:
    """``STEPS:LR:PENALTY`` -> ``model.sampler.refine={steps: .., lr: .., penalty: ..}``."""
    try:
        steps, lr, penalty = spec.split(":")
        return f"model.sampler.refine={{steps: {int(steps)}, lr: {float(lr)}, penalty: {float(penalty)}}}"
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--refine {spec!r}: use STEPS:LR:PENALTY, e.g. 20:0.05:1 ({e})") from e


def jacobian_override(spec: str) -> str:
    """``KEEP:INK_POWER`` -> ``model.sampler.jacobian_truncation={keep: .., ink_power: ..}``."""
    try:
        keep, ink_power = spec.split(":")
        return f"model.sampler.jacobian_truncation={{keep: {float(keep)}, ink_power: {float(ink_power)}}}"
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--jacobian {spec!r}: use KEEP:INK_POWER, e.g. 0.8:2 ({e})") from e


def rows(a: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``(label, sampler overrides)`` per row."""
    plain = [] if a.no_baseline else [
        ("generator EMA", PLAIN), ("raw generator", [*PLAIN, "model.sampler.propose.generator=raw"]),
        *[(f"generator EMA, truncation {t:g}", [*PLAIN, f"model.sampler.propose.truncation={t}"])
          for t in (1.5, 1.0, 0.7)],
        *[(f"{g}, batch-norm batch statistics", [*PLAIN, f"model.sampler.propose.generator={k}",
                                                 "model.sampler.propose.batch_stats=true"])
          for g, k in (("generator EMA", "ema"), ("raw generator", "raw"))]]
    return [*plain,
            *[(o.removeprefix("model.sampler."), [*PLAIN, o]) for o in a.refine],
            *[(f"run's refinement, {o.removeprefix('model.sampler.')}", ["model.sampler.rejection=null", o])
              for o in a.jacobian],
            *[(f"run's steps, rejection at quantile {q:g}", [f"model.sampler.rejection={{quantile: {q}}}"])
              for q in a.drs_quantiles]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory (holding results.json) or a checkpoint .ckpt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of every row's samples")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the plain, truncated and batch-statistics rows (only --refine, --jacobian and "
                        "--drs-quantiles)")
    p.add_argument("--drs-quantiles", type=float, nargs="*", default=[0.8, 0.95, 0.99],
                   help="rejection-sampling bounds M to try (quantiles of the generated log-ratios)")
    p.add_argument("--refine", type=refine_override, nargs="*", default=[],
                   help="latent refinements to try, STEPS:LR:PENALTY (e.g. 20:0.05:1)")
    p.add_argument("--jacobian", type=jacobian_override, nargs="*", default=[],
                   help="Jacobian truncations to try on top of the run's own refinement, KEEP:INK_POWER (e.g. 0.8:2)")
    p.add_argument("--cache-dir", default=None, help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("overrides", nargs="*", help="config overrides for every row, e.g. paths.data_dir=../shared/data")
    a = p.parse_intermixed_args()
    print("| sampler | FD | precision | recall | confident (>= 0.9) | class range |\n|---|---|---|---|---|---|")
    floor = None
    for label, overrides in rows(a):
        try:
            out = evaluate(a.run, a.n, seed=a.seed, cache_dir=a.cache_dir, floor=floor,
                           overrides=[*a.overrides, *overrides])
        except ValueError as err:  # a setting this run cannot sample with (the error says why)
            print(f"| {label} | {err} | | | | |", flush=True)
            continue
        floor = out["floor"]
        print(f"| {label} | {summary_cells(out['samples'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
