"""``genlab-eval``: sample quality of a trained run, in the features of an in-domain classifier.

    genlab-eval <run dir | checkpoint.ckpt> [--n 1000] [--samples file.pt] [--seed 0] [--inception]

Draws ``--n`` samples from the run's checkpoint (or reads a saved uint8 tensor with
``--samples``), scores them with the dataset's cached feature classifier (trained once on the
train split; see :mod:`genlab.metrics.quality`) against held-out real images (the test split)
and prints them next to the floor: the same metrics for other held-out real images (the
validation split). Writes ``quality.json`` in the run directory, with the ``protocol`` of the
metrics: numbers of samples and reference images, the reference split, the feature network (a hash
of its weights, its training config), the sampler settings and overrides, the seed.

``--inception`` adds the standard Inception FID, KID and IS, from the FID Inception-v3 weights in a
local file (``--inception-weights`` or ``$GENLAB_INCEPTION_WEIGHTS``; never downloaded; a missing
file is a clear error naming where to put it), with their own protocol.

A class-conditional run (``+conditional=class``) draws its samples for the labels of the reference
images (so the samples' class mix is the reference's) and adds ``conditional``: the samples' label
accuracy (the classifier agrees with the requested label) and the intra-class FD (per class, averaged).
``--guidance 1,2,4`` sweeps the guidance weight of a family with guidance (its ``guidance_key``, e.g.
``model.sampler.guidance``):
FD and label accuracy per weight in ``guidance_sweep.json`` / ``.md`` / ``.png``.
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
from genlab.families.base import Conditional
from genlab.metrics.quality import (InceptionError, classifier_protocol, conditional_quality, get_classifier,
                                    inception_metrics, quality_metrics, real_floor, reference_labels, reference_set)
from genlab.metrics.quality import inception_weights as find_inception_weights

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
             overrides: list[str] | None = None, inception: bool = False,
             inception_weights: str | Path | None = None) -> dict[str, Any]:
    """Quality metrics of a run's samples and the real-data floor (see module docstring); pass
    ``floor`` when it is already known for this dataset and ``n`` (a sweep computes it once).
    ``overrides`` (``key=value``, e.g. ``model.sampler.steps=20``) change sampling settings: the
    result then goes to ``quality_<hash of the overrides>.json`` with the overrides in it, and the
    default ``quality.json`` is left as it is. ``inception``: add the standard Inception FID / KID / IS
    (local weights only: ``inception_weights`` or ``$GENLAB_INCEPTION_WEIGHTS``; checked before sampling)."""
    weights = find_inception_weights(inception_weights) if inception else None
    ckpt, run_dir = find_checkpoint(source)
    overrides = list(overrides or [])
    module, dm = load_run(str(ckpt), overrides=overrides)
    clf, meta = run_classifier(module, dm, cache_dir)
    ref, ref_y = reference_set(dm, n), reference_labels(dm, n)
    y = ref_y if module.conditional and samples is None else None  # the reference's labels, in its order
    t0 = time.perf_counter()
    x = torch.load(samples, map_location="cpu")[:n] if samples is not None else draw_samples(module, n, seed, y)
    x = x.to(ref.dtype)
    seconds = time.perf_counter() - t0
    out = {
        "run": str(run_dir), "checkpoint": str(ckpt), "family": module.family.name, "n": len(x),
        "sample_seconds_per_1000": None if samples is not None else 1000 * seconds / len(x),
        "classifier": {"test_accuracy": meta["test_accuracy"], "path": meta.get("path")},
        "protocol": protocol(module, clf, meta, (len(x), len(ref)), seed, overrides, samples, y is not None),
        "samples": quality_metrics(clf, ref, x),
        "floor": floor if floor is not None else real_floor(clf, dm, n),
        "inception": inception_metrics(ref, x, dm.info.levels, weights) if weights else None,
        "overrides": overrides,
        "conditional": conditional_quality(clf, ref, ref_y, x, y) if y is not None else None,
    }
    path = quality_path(run_dir, overrides)
    path.write_text(json.dumps(out, indent=2))
    out["path"] = str(path)
    return out


def protocol(module: Any, clf: Any, meta: dict[str, Any], sizes: tuple[int, int], seed: int, overrides: list[str],
             samples: str | Path | None, labelled: bool) -> dict[str, Any]:
    """The protocol of a run's quality metrics (:func:`~genlab.metrics.quality.classifier_protocol`: ``sizes``
    = (samples, reference images), the reference, the feature network) and, beside it, how the samples were
    drawn: the run's sampler config after ``overrides``, the overrides, the seed, a samples file, whether the
    samples were drawn for the reference's labels."""
    model_cfg = (module.run_config or {}).get("model") or {}
    return {**classifier_protocol(clf, meta, *sizes), "sampler": model_cfg.get("sampler"), "overrides": overrides,
            "seed": None if samples is not None else seed, "samples_file": None if samples is None else str(samples),
            "labels": "reference labels" if labelled else None}


def draw_samples(module: Any, n: int, seed: int, y: torch.Tensor | None = None, chunk: int = 250) -> torch.Tensor:
    """``n`` samples of ``module`` in chunks of ``chunk`` (chunk ``i`` seeded ``seed + i``), with a bar;
    ``y``: the labels ``(n,)`` of a conditional model's samples (None: drawn from ``p(y)`` where it has labels)."""
    n = n if y is None else len(y)
    out = []
    with progress.bar(f"drawing {n} samples", total=n, unit="sample") as bar:
        for i in range(0, n, chunk):
            labels = None if y is None else y[i:i + chunk]
            out.append(module.sample(min(chunk, n - i), seed=seed + i, **({} if labels is None else {"y": labels})))
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
    cond, p = out.get("conditional"), out.get("protocol") or {}
    lines = [head, *rows, f"\nclass histogram of samples: [{hist}]", protocol_line(p)]
    if inc := out.get("inception"):
        lines.append(f"Inception (standard weights, protocol {inc['protocol']['id']}): FID {inc['fid']:.3f}, "
                     f"KID {inc['kid']:.4g} ± {inc['kid_std']:.2g}, IS {inc['is']:.3f} ± {inc['is_std']:.3f}")
    if cond:
        fd = "—" if cond["intra_fd"] is None else f"{cond['intra_fd']:.4g}"
        lines.append(f"conditional samples: label accuracy {cond['label_accuracy']:.4f}, intra-class FD {fd}")
    return "\n".join(lines)


def protocol_line(p: dict[str, Any]) -> str:
    """One line saying how the metrics were measured (``protocol unknown`` for a result without one)."""
    if not p:
        return "protocol unknown (a quality.json written before protocols were recorded)"
    net = p["feature_net"]
    return (f"protocol {p['id']}: {p['n_samples']} samples vs {p['n_reference']} {p['reference']['split']} images, "
            f"feature net {net['weights_sha256']} (test accuracy {net['test_accuracy']:.4f}); sampler overrides "
            f"{p.get('overrides') or 'none'}, seed {p.get('seed')}")


def guidance_sweep(source: str | Path, weights: list[float], n: int = 1000, seed: int = 0,
                   cache_dir: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """FD and label accuracy of a conditional run's samples per guidance weight (``model.sampler.guidance``);
    writes ``guidance_sweep.json``, ``.md`` and ``.png`` in the run directory."""
    ckpt, run_dir = find_checkpoint(source)
    module, dm = load_run(str(ckpt))
    family = module.family
    if not (isinstance(family, Conditional) and family.guidance_key):
        raise ValueError(f"the {family.name} family has no guidance weight to sweep; families with guidance: "
                         f"{', '.join(guided_families())}. Fix: drop --guidance")
    floor, rows = None, []
    for w in weights:
        q = evaluate(source, n, seed=seed, cache_dir=cache_dir, floor=floor,
                     overrides=[*(overrides or []), f"{family.guidance_key}={w}"])
        floor = q["floor"]
        cond = q["conditional"] or {}
        rows.append({"weight": w, "fd": q["samples"]["fd"], "label_accuracy": cond.get("label_accuracy"),
                     "intra_fd": cond.get("intra_fd"), "precision": q["samples"]["precision"],
                     "recall": q["samples"]["recall"]})
    out = {"run": str(run_dir), "family": family.name, "n": n, "rows": rows, "floor_fd": floor["fd"]}
    write_sweep(out, Path(run_dir))
    return out


def guided_families() -> list[str]:
    """The registered families with a guidance weight (a :class:`Conditional` ``guidance_key``)."""
    from genlab.families.base import registered

    return [c.name for c in registered() if issubclass(c, Conditional) and c.guidance_key]


def write_sweep(out: dict[str, Any], run_dir: Path) -> None:
    """The sweep's JSON, its markdown table and the FD / label-accuracy curves against the weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run_dir / "guidance_sweep.json").write_text(json.dumps(out, indent=2))
    md = ["| guidance weight | FD | label accuracy | intra-class FD | precision | recall |", "|---|---|---|---|---|---|"]
    md += [f"| {r['weight']:g} | {r['fd']:.2f} | {r['label_accuracy']:.4f} | {r['intra_fd'] or float('nan'):.2f} | "
           f"{r['precision']:.3f} | {r['recall']:.3f} |" for r in out["rows"]]
    (run_dir / "guidance_sweep.md").write_text("\n".join(md) + f"\n\nreal-data floor FD {out['floor_fd']:.2f}\n")
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    w = [r["weight"] for r in out["rows"]]
    ax.plot(w, [r["fd"] for r in out["rows"]], "o-", label="FD")
    ax.set(xlabel="guidance weight (1 = unguided)", ylabel="FD", title=f"{out['family']}: guidance sweep")
    twin = ax.twinx()
    twin.plot(w, [r["label_accuracy"] for r in out["rows"]], "s--", color="C1", label="label accuracy")
    twin.set_ylabel("label accuracy")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "guidance_sweep.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genlab-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (holding results.json) or a checkpoint .ckpt")
    p.add_argument("--n", type=int, default=1000, help="number of samples (and of real reference images)")
    p.add_argument("--samples", help="score this saved uint8 tensor (.pt) instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="where feature classifiers are cached (default <data_dir>/genlab_classifiers)")
    p.add_argument("--inception", action="store_true",
                   help="add the standard Inception FID / KID / IS (needs the weights file locally: never downloaded)")
    p.add_argument("--inception-weights", help="the Inception-v3 FID weights file (or a directory holding it); "
                                               "default $GENLAB_INCEPTION_WEIGHTS, then torch hub's checkpoints dir")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sampling settings for this evaluation, e.g. model.sampler.steps=20 (the model's "
                        "architecture cannot change); the result goes to quality_<hash>.json")
    p.add_argument("--guidance", help="comma-separated guidance weights to sweep (conditional runs of a family with "
                                      "guidance), e.g. 1,2,3,4: FD and label accuracy per weight")
    a = p.parse_intermixed_args(argv)
    if bad := [o for o in a.overrides if "=" not in o]:
        print(f"error: overrides must be key=value, got {bad} (e.g. model.sampler.steps=20)", file=sys.stderr)
        return 2
    try:
        if a.guidance:
            sweep = guidance_sweep(a.source, [float(w) for w in a.guidance.split(",")], a.n, a.seed, a.cache_dir,
                                   a.overrides)
            print((Path(sweep["run"]) / "guidance_sweep.md").read_text())
            return 0
        out = evaluate(a.source, a.n, a.samples, a.seed, a.cache_dir, overrides=a.overrides, inception=a.inception,
                       inception_weights=a.inception_weights)
    except (FileNotFoundError, ValueError, CheckpointError, DataError, InceptionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(out))
    print(f"quality: {out['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
