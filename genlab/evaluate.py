"""``genlab-eval``: sample quality of a trained run, in the features of an in-domain classifier.

    genlab-eval <run dir | checkpoint.ckpt> [--n 1000] [--samples file.pt] [--seed 0]

Draws ``--n`` samples from the run's checkpoint (or reads a saved uint8 tensor with
``--samples``), scores them with the dataset's cached feature classifier (trained once on the
train split; see :mod:`genlab.metrics.quality`) against held-out real images (the test split)
and prints them next to the floor: the same metrics for other held-out real images (the
validation split). Writes ``quality.json`` in the run directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genlab import progress
from genlab.builders import load_run
from genlab.checkpoints import CheckpointError
from genlab.data.base import DataError
from genlab.metrics.quality import get_classifier, inception_metrics, quality_metrics, real_floor, reference_set

COLUMNS = ("fd", "kid", "precision", "recall", "density", "coverage", "confident_share")


def find_checkpoint(source: str | Path) -> tuple[Path, Path]:
    """``(checkpoint, run dir)`` for a run directory (its results.json) or a checkpoint path."""
    source = Path(source)
    if source.suffix == ".ckpt":
        if not source.exists():
            raise FileNotFoundError(f"checkpoint {source} does not exist")
        return source, source.parent.parent
    results = source / "results.json"
    if not results.exists():
        raise FileNotFoundError(f"{source} has no results.json: pass a run directory or a .ckpt file")
    ckpt = json.loads(results.read_text()).get("checkpoint")
    if not ckpt or not Path(ckpt).exists():
        raise FileNotFoundError(f"the run in {source} kept no checkpoint (callbacks=none?); nothing to sample from")
    return Path(ckpt), source


def run_classifier(module: Any, dm: Any, cache_dir: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The dataset's feature classifier for a loaded run, cached in ``cache_dir`` (default
    ``<the run's data_dir>/genlab_classifiers``): ``(classifier, metadata)``."""
    cache = Path(cache_dir) if cache_dir else Path(module.run_config["paths"]["data_dir"]) / "genlab_classifiers"
    return get_classifier(dm, cache)


def summary_cells(q: dict[str, Any]) -> str:
    """``FD | precision | recall | confident % | class range`` cells of a :func:`quality_metrics` result,
    the columns of the sampling-check scripts' markdown rows."""
    hist = q["class_hist"]
    return (f"{q['fd']:.1f} | {q['precision']:.3f} | {q['recall']:.3f} | {100 * q['confident_share']:.1f}% | "
            f"{100 * min(hist):.0f}%-{100 * max(hist):.0f}%")


def evaluate(source: str | Path, n: int = 1000, samples: str | Path | None = None, seed: int = 0,
             cache_dir: str | Path | None = None, floor: dict[str, Any] | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Quality metrics of a run's samples and the real-data floor (see module docstring); pass
    ``floor`` when it is already known for this dataset and ``n`` (a sweep computes it once).
    ``overrides`` (``key=value``, e.g. ``model.sampler.steps=20``) change sampling settings: the
    result then goes to ``quality_<hash of the overrides>.json`` with the overrides in it, and the
    default ``quality.json`` is left as it is."""
    ckpt, run_dir = find_checkpoint(source)
    overrides = list(overrides or [])
    module, dm = load_run(str(ckpt), overrides=overrides)
    clf, meta = run_classifier(module, dm, cache_dir)
    t0 = time.perf_counter()
    if samples is not None:
        x = torch.load(samples, map_location="cpu")[:n]
    else:
        x = draw_samples(module, n, seed)
    seconds = time.perf_counter() - t0
    ref = reference_set(dm, n)
    out = {
        "run": str(run_dir), "checkpoint": str(ckpt), "family": module.family.name, "n": len(x),
        "sample_seconds_per_1000": None if samples is not None else 1000 * seconds / len(x),
        "classifier": {"test_accuracy": meta["test_accuracy"], "path": meta.get("path")},
        "samples": quality_metrics(clf, ref, x.to(ref.dtype)),
        "floor": floor if floor is not None else real_floor(clf, dm, n),
        "inception": inception_metrics(ref, x.to(ref.dtype), dm.info.levels),
        "overrides": overrides,
    }
    path = quality_path(run_dir, overrides)
    path.write_text(json.dumps(out, indent=2))
    out["path"] = str(path)
    return out


def draw_samples(module: Any, n: int, seed: int, chunk: int = 250) -> torch.Tensor:
    """``n`` samples of ``module`` in chunks of ``chunk`` (chunk ``i`` seeded ``seed + i``), with a bar."""
    out = []
    with progress.bar(f"drawing {n} samples", total=n, unit="sample") as bar:
        for i in range(0, n, chunk):
            out.append(module.sample(min(chunk, n - i), seed=seed + i))
            bar.advance(len(out[-1]))
    return torch.cat(out)


def quality_path(run_dir: Path, overrides: list[str]) -> Path:
    """``quality.json``, or ``quality_<8 hex of the overrides>.json`` for evaluation overrides."""
    if not overrides:
        return run_dir / "quality.json"
    digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]
    return run_dir / f"quality_{digest}.json"


def table(out: dict[str, Any]) -> str:
    """Markdown table: the samples' metrics and the real-data floor."""
    head = "| set | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(f"{out[key][c]:.4g}" for c in COLUMNS) + " |"
            for name, key in (("samples", "samples"), ("real val (floor)", "floor"))]
    hist = ", ".join(f"{v:.2f}" for v in out["samples"]["class_hist"])
    inc = out.get("inception", {})
    inception = inc.get("notice") or f"Inception FID {inc['fid']:.3f}, IS {inc['is']:.3f} +- {inc['is_std']:.3f}"
    return "\n".join([head, *rows, f"\nclass histogram of samples: [{hist}]", inception])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genlab-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (holding results.json) or a checkpoint .ckpt")
    p.add_argument("--n", type=int, default=1000, help="number of samples (and of real reference images)")
    p.add_argument("--samples", help="score this saved uint8 tensor (.pt) instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="where feature classifiers are cached (default <data_dir>/genlab_classifiers)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sampling settings for this evaluation, e.g. model.sampler.steps=20 (the model's "
                        "architecture cannot change); the result goes to quality_<hash>.json")
    a = p.parse_intermixed_args(argv)
    if bad := [o for o in a.overrides if "=" not in o]:
        print(f"error: overrides must be key=value, got {bad} (e.g. model.sampler.steps=20)", file=sys.stderr)
        return 2
    try:
        out = evaluate(a.source, a.n, a.samples, a.seed, a.cache_dir, overrides=a.overrides)
    except (FileNotFoundError, ValueError, CheckpointError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(out))
    print(f"quality: {out['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
