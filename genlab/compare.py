"""``genlab-compare <sweep dir>``: one honest table of likelihood and sample quality across runs.

    genlab-compare logs/sweeps/compare/<date>/<time> [--quality-n 1000] [--no-quality] [--wandb]

Gathers every ``results.json`` under the directory (one per run of a Hydra multirun, e.g.
``experiment=compare_families``) and writes, next to them:

* ``comparison.md`` / ``comparison.csv``: family, model, parameters, test NLL in bits/dim and its
  kind (exact / bound / estimate; "—" for families without a likelihood, never a made-up
  number), feature-space FD, KID, precision, recall (in an in-domain classifier's features, see
  :mod:`genlab.metrics.quality`), samples per second and training seconds; plus a floor row
  (held-out real data) and, where known, the data's true entropy;
* ``nll.png`` (test NLL per run), ``nll_vs_time.png`` (validation NLL against wall-clock
  time) and ``samples.png`` (a montage with one row of samples per run).

With ``--wandb`` the table and plots are logged to a W&B run in the sweep's group.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from genlab.families.base import family_names

COLUMNS = ["family", "model", "loss", "params", "nll_bpd", "nll_kind", "fd", "kid", "precision", "recall", "confident",
           "samples_per_s", "train_s"]
SAMPLE_COLUMNS = ("mode_coverage", "high_quality")  # results.json sample_metrics shown when present
# shown when a run of the table is class-conditional: log p(x|y), the generative classifier's test accuracy,
# the samples' label accuracy and intra-class FD (genlab-eval's conditional metrics)
COND_COLUMNS = ["cond_nll_bpd", "classifier_acc", "label_acc", "intra_fd"]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All finished or failed runs (their results.json) under ``sweep_dir``, in family order."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob("results.json")):
        r = json.loads(path.read_text())
        r["run_dir"] = str(path.parent)
        runs.append(r)
    if not runs:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: pass the directory of a finished sweep "
                                "(e.g. logs/sweeps/compare/<date>/<time>)")
    order = {f: i for i, f in enumerate(family_names())}  # the registered families' compare_rank
    return sorted(runs, key=lambda r: (order.get(r.get("family"), len(order)), r.get("model") or ""))


def add_quality(runs: list[dict[str, Any]], n: int, cache_dir: str | None = None,
                log: Any = print) -> dict[str, Any] | None:
    """Score each run's samples with the dataset's classifier (``quality.json``, computed once per
    run); returns the real-data floor, or None where the data have no labelled images."""
    from genlab.evaluate import evaluate

    floor = None
    for r in runs:
        qpath = Path(r["run_dir"]) / "quality.json"
        if qpath.exists() and json.loads(qpath.read_text()).get("n") == n:
            q = json.loads(qpath.read_text())
        elif r.get("status") == "finished" and r.get("checkpoint"):
            try:
                q = evaluate(r["run_dir"], n=n, cache_dir=cache_dir, floor=floor)  # same data: one floor
            except ValueError as err:  # data without labelled images: no classifier features
                log(f"sample quality skipped for {r['run_dir']}: {err}")
                return None
        else:
            continue
        r["quality"], floor = {**q["samples"], **(q.get("conditional") or {})}, q["floor"]
        r["quality"]["sample_seconds_per_1000"] = q.get("sample_seconds_per_1000")
    return floor


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def row(r: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run (None where a value does not exist)."""
    t, q = r.get("test", {}), r.get("quality") or {}
    has_nll = t.get("nll_kind", "none") != "none"
    samples_per_s = r.get("timings", {}).get("samples_per_second")
    if q.get("sample_seconds_per_1000"):
        samples_per_s = 1000 / q["sample_seconds_per_1000"]
    return {
        "family": str(r.get("family")) + ("" if r.get("status") == "finished" else f" ({r.get('status')})"),
        "model": r.get("model"), "loss": r.get("loss"), "params": r.get("params"),
        "nll_bpd": t.get("nll_bpd") if has_nll else None, "nll_kind": t.get("nll_kind", "none"),
        "fd": q.get("fd"), "kid": q.get("kid"), "precision": q.get("precision"), "recall": q.get("recall"),
        "confident": q.get("confident_share"), "samples_per_s": samples_per_s, "train_s": r.get("train_seconds"),
        "cond_nll_bpd": t.get("cond_nll_bpd") if has_nll else None, "classifier_acc": t.get("classifier_accuracy"),
        "label_acc": q.get("label_accuracy"), "intra_fd": q.get("intra_fd"),
    }


def write_tables(runs: list[dict[str, Any]], floor: dict[str, Any] | None, out: Path) -> tuple[Path, Path]:
    """``comparison.md`` and ``comparison.csv`` in ``out`` (plus a column per dataset-specific
    sample metric that some run reports, e.g. ``mode_coverage`` on 2-D mixtures)."""
    extra_cols = sorted({k for r in runs for k in (r.get("sample_metrics") or {}) if k in SAMPLE_COLUMNS})
    rows = [{**row(r), **{k: (r.get("sample_metrics") or {}).get(k) for k in extra_cols}} for r in runs]
    conditional = any(r.get("conditional") for r in runs)
    columns = COLUMNS[:6] + (COND_COLUMNS[:2] if conditional else []) + COLUMNS[6:] + \
        (COND_COLUMNS[2:] if conditional else []) + extra_cols
    data = runs[0].get("data", {})
    extra = []
    if floor is not None:
        extra.append({"family": "real data (val split)", "model": "—", "nll_kind": "—", "fd": floor["fd"],
                      "kid": floor["kid"], "precision": floor["precision"], "recall": floor["recall"],
                      "confident": floor.get("confident_share")})
    if data.get("entropy_bpd") is not None:
        extra.append({"family": "true entropy", "model": "—", "nll_bpd": data["entropy_bpd"], "nll_kind": "exact"})
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for rr in rows + extra:
            w.writerow({k: rr.get(k) for k in columns})
    unit = runs[0].get("test", {}).get("unit", "bits/dim")
    head = [c if c != "nll_bpd" else f"NLL ({unit})" for c in columns]
    lines = [f"# Comparison: {len(runs)} runs on {runs[0].get('dataset')}", "",
             "NLL kinds: exact (a true likelihood), bound (an upper bound on the NLL), estimate (stochastic). "
             "'—': the family has no likelihood / the value does not exist. FD, KID, precision and recall are "
             "measured against held-out test images in the features of a classifier trained on the dataset's "
             "train split; confident: the share of samples it classifies with probability >= 0.9; 'real data' is "
             "the floor: held-out validation images scored the same way." + (
                 " Conditional runs: NLL is the marginal -log sum_y p(x|y) p(y) (same kind), cond_nll_bpd "
                 "-log p(x|y), classifier_acc the generative classifier's test accuracy, label_acc the share of "
                 "samples classified as the requested label, intra_fd the per-class FD averaged." if conditional
                 else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(rr.get(c)) for c in columns) + " |" for rr in rows + extra]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    return out / "comparison.md", out / "comparison.csv"


# -- plots ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r: dict[str, Any]) -> str:
    return f"{r['family']}\n({r.get('model')})"


def plot_nll(runs: list[dict[str, Any]], path: Path) -> Path:
    """Bar chart of test NLL per run; runs without a likelihood are labelled, not drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(runs)), 4), dpi=100)
    for i, r in enumerate(runs):
        rr = row(r)
        if rr["nll_bpd"] is None:
            ax.text(i, 0, "no\nlikelihood", ha="center", va="bottom", fontsize=8)
        else:
            ax.bar(i, rr["nll_bpd"], color="C0" if rr["nll_kind"] == "exact" else "C1")
            ax.text(i, rr["nll_bpd"], f"{rr['nll_bpd']:.3f}\n{rr['nll_kind']}", ha="center", va="bottom", fontsize=7)
    entropy = runs[0].get("data", {}).get("entropy_bpd")
    if entropy is not None:
        ax.axhline(entropy, color="k", ls="--", lw=1, label="true entropy")
        ax.legend(loc="lower right")
    top = max([row(r)["nll_bpd"] or 0 for r in runs] + [entropy or 0])
    ax.set_ylim(0, 1.15 * top if top > 0 else 1)  # room for the labels above the bars
    ax.set_xticks(range(len(runs)), [_label(r) for r in runs], fontsize=8)
    ax.set_ylabel(f"test NLL ({runs[0].get('test', {}).get('unit', 'bits/dim')})")
    ax.set_title("test NLL per family (blue: exact, orange: bound/estimate)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_nll_vs_time(runs: list[dict[str, Any]], path: Path) -> Path:
    """Validation NLL against wall-clock training time, one line per run with a likelihood."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in runs:
        pts = [(h["seconds"], h["nll_bpd"]) for h in r.get("history", []) if "nll_bpd" in h]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=f"{r['family']} ({r.get('model')})")
    ax.set(xlabel="training time (s)", ylabel="validation NLL (bits/dim)", title="validation NLL vs wall-clock")
    entropy = runs[0].get("data", {}).get("entropy_bpd")
    if ax.lines and entropy is not None:
        ax.axhline(entropy, color="k", ls="--", lw=1, label="true entropy")
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no validation NLL was recorded", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _sample_row(r: dict[str, Any], k: int) -> torch.Tensor | None:
    pt = Path(r["samples"]).with_suffix(".pt") if r.get("samples") else None
    if pt is None or not pt.exists():
        return None
    x = torch.load(pt, map_location="cpu")[:k]
    return x if x.dim() >= 2 else None


def plot_montage(runs: list[dict[str, Any]], path: Path, k: int = 10) -> Path | None:
    """One row of ``k`` samples per run (images), or one scatter panel per run (2-D points)."""
    rows = [(r, _sample_row(r, 500 if r.get("data", {}).get("shape", [0]) == [2] else k)) for r in runs]
    rows = [(r, x) for r, x in rows if x is not None]
    if not rows or rows[0][1].dim() == 2 and rows[0][1].shape[1] != 2:
        return None  # text: no picture
    plt = _plt()
    points = rows[0][1].dim() == 2
    shape = (1, len(rows)) if points else (len(rows), 1)
    fig, axes = plt.subplots(*shape, figsize=(3 * len(rows), 3) if points else (k * 0.8, 0.9 * len(rows)),
                             dpi=100, squeeze=False)
    for ax, (r, x) in zip(axes.flat, rows):
        levels = r.get("data", {}).get("levels", 256)
        if points:
            ax.scatter(x[:, 0].float(), x[:, 1].float(), s=2)
            ax.set(xlim=(0, levels - 1), ylim=(0, levels - 1), aspect="equal")
            ax.set_title(r["family"], fontsize=8)
        else:
            img = make_grid(x.float() / (levels - 1), nrow=len(x), padding=1, pad_value=1.0)  # (3, H, k*W)
            ax.imshow(img.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
            ax.set_ylabel(r["family"], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if points:
        fig.tight_layout()
    else:  # keep room on the left for the longest family name (tight_layout alone clips it)
        width = fig.get_size_inches()[0]
        longest = max(len(r["family"]) for r, _ in rows)
        fig.tight_layout(rect=(min(0.4, (0.07 * longest + 0.15) / width), 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# -- W&B ----------------------------------------------------------------------------------------
def log_wandb(runs: list[dict[str, Any]], out: Path, images: list[Path]) -> str:
    """Log the table and plots to a W&B run in the sweep's group; returns the run's directory."""
    import wandb

    cfg = runs[0].get("config", {})
    wb = (cfg.get("logger") or {}).get("wandb") or {}
    group = next((r.get("wandb_group") for r in runs if r.get("wandb_group")), None) or out.name
    run = wandb.init(project=wb.get("project") or "genlab", group=group, job_type="compare", dir=str(out),
                     name=f"compare-{out.name}", tags=["comparison"])
    table = wandb.Table(columns=COLUMNS, data=[[row(r).get(c) for c in COLUMNS] for r in runs])
    run.log({"comparison": table, **{p.stem: wandb.Image(str(p)) for p in images}})
    run_dir = run.dir
    run.finish()
    return str(Path(run_dir).parent)


def compare(sweep_dir: str | Path, quality_n: int | None = 1000, cache_dir: str | None = None,
            use_wandb: bool = False) -> dict[str, Any]:
    """Everything ``genlab-compare`` does (see module docstring); returns the paths written."""
    out = Path(sweep_dir)
    runs = collect(out)
    floor = add_quality(runs, quality_n, cache_dir) if quality_n else None
    md, csv_path = write_tables(runs, floor, out)
    images = [plot_nll(runs, out / "nll.png"), plot_nll_vs_time(runs, out / "nll_vs_time.png")]
    montage = plot_montage(runs, out / "samples.png")
    images += [montage] if montage else []
    result = {"markdown": md, "csv": csv_path, "plots": images, "runs": len(runs)}
    if use_wandb:
        result["wandb_dir"] = log_wandb(runs, out, images)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genlab-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", help="directory holding the runs' results.json (searched recursively)")
    p.add_argument("--quality-n", type=int, default=1000, help="samples per run for FD/KID/precision/recall")
    p.add_argument("--no-quality", action="store_true", help="skip the sample-quality metrics")
    p.add_argument("--cache-dir", help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("--wandb", action="store_true", help="log the table and plots to W&B (the sweep's group)")
    a = p.parse_args(argv)
    try:
        res = compare(a.sweep_dir, None if a.no_quality else a.quality_n, a.cache_dir, a.wandb)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(res["markdown"]).read_text())
    print("written:", res["markdown"], res["csv"], *res["plots"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
