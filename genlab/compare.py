"""``genlab-compare <sweep dir>``: one honest table of likelihood and sample quality across runs.

    genlab-compare logs/sweeps/compare/<date>/<time> [--quality-n 1000] [--no-quality] [--inception] [--wandb]

Gathers every ``results.json`` under the directory (one per run of a Hydra multirun, e.g.
``genlab-train experiment=compare_families seed=0,1,2``) and writes, next to them:

* ``comparison.md`` / ``comparison.csv``: one row per configuration. Runs that differ only by their
  seed (the same resolved config apart from every ``*.seed`` key and the output paths, and sample
  metrics measured under the same protocol) are one row: each numeric column is the mean over the
  seeds ± the half-width of its 95% Student-t interval, ``t_{0.975, k-1} s / sqrt(k)`` over the ``k``
  seeds (``seeds`` says how many; a single seed has no interval and shows the bare value, never
  ± 0; the CSV has the half-width in ``<column>_ci95``, empty then). Columns: family, model,
  parameters, test NLL in bits/dim and its kind (exact / bound / estimate; "—" for families without
  a likelihood, never a made-up number), ``nll_se`` (the per-example standard error of one run's
  test NLL, mean over seeds: the test-set sampling error, which the seeds' interval does not hold,
  as every seed is scored on the same test images; ``nll_se_t``: a stratified diffusion bound's
  timestep-sampling error), ``nll_n`` (test examples), feature-space FD, KID, precision, recall
  (in an in-domain classifier's features, see :mod:`genlab.metrics.quality`), samples per second,
  training seconds; ``nll_rank`` / ``fd_rank`` (lower is better; ``=2``: tied, its interval overlaps
  another's; ``2?``: one seed, ordered by the value alone); ``protocol``: the id of how the sample
  metrics were measured (samples, reference images and split, feature-network weights hash and
  config, metric settings; legend under the table; the CSV spells each out with the sampler and
  seed). Metrics under different protocols are never averaged together, FD is ranked within one
  protocol only, and a table holding several protocols (or test NLLs over different numbers of
  examples) says so in a warning. Plus a floor row (held-out real data) and, where known, the data's
  true entropy;
* ``nll.png`` and ``fd.png`` (test NLL / FD per configuration: bars at the mean, 95% intervals as
  error bars, each seed a dot), ``nll_vs_time.png`` (validation NLL against wall-clock time, one
  line per run, one colour per configuration) and ``samples.png`` (a row of samples per configuration).

``--inception`` adds the standard Inception FID / KID / IS (from local weights only; see
``genlab-eval --inception``). With ``--wandb`` the table and plots are logged to a W&B run in the
sweep's group.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from genlab.checkpoints import flatten_config
from genlab.families.base import family_names
from genlab.metrics.intervals import Interval, format_interval, t_interval, tied_ranks
from genlab.metrics.quality import InceptionError, inception_weights
from genlab.runs import sweep_results

# columns of the markdown table (the CSV adds the interval half-widths and the protocol spelled out)
COLUMNS = ["family", "model", "loss", "params", "nll_bpd", "nll_kind", "nll_se", "nll_rank", "fd", "kid", "precision",
           "recall", "confident", "fd_rank", "samples_per_s", "train_s", "seeds", "protocol"]
SAMPLE_COLUMNS = ("mode_coverage", "high_quality")  # results.json sample_metrics shown when present
# shown when a run of the table is class-conditional: log p(x|y), the generative classifier's test accuracy,
# the samples' label accuracy and intra-class FD (genlab-eval's conditional metrics)
COND_COLUMNS = ["cond_nll_bpd", "classifier_acc", "label_acc", "intra_fd"]
INCEPTION_COLUMNS = ["inception_fid", "inception_kid", "inception_is", "inception_protocol"]  # with --inception
# the columns averaged over seeds, with an interval (the others are the same for every seed, or an error)
VALUES = ("nll_bpd", "fd", "kid", "precision", "recall", "confident", "samples_per_s", "train_s", "cond_nll_bpd",
          "classifier_acc", "label_acc", "intra_fd", "inception_fid", "inception_kid", "inception_is", *SAMPLE_COLUMNS)
RANKED = {"nll_bpd": "nll_rank", "fd": "fd_rank"}  # lower is better
# keys of a run config that say where a run writes or how it reports, not what it computes
_NOT_COMPARED = ("paths", "ckpt_path", "logger", "threads", "compile", "hydra")
# the protocol spelled out in the CSV
PROTOCOL_CSV = ["quality_n", "reference_n", "reference_split", "feature_net_sha256", "feature_net_config", "sampler",
                "sample_overrides", "sample_seed", "nll_n", "seed_list"]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All finished or failed runs (their results.json) under ``sweep_dir``, in family order."""
    runs = []
    for path in sweep_results(sweep_dir):  # a two-stage run's own first stage is part of that run, not a row
        r = json.loads(path.read_text())
        r["run_dir"] = str(path.parent)
        runs.append(r)
    if not runs:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: pass the directory of a finished sweep "
                                "(e.g. logs/sweeps/compare/<date>/<time>)")
    order = {f: i for i, f in enumerate(family_names())}  # the registered families' compare_rank
    return sorted(runs, key=lambda r: (order.get(r.get("family"), len(order)), r.get("model") or "",
                                       str(r.get("seed"))))


def add_quality(runs: list[dict[str, Any]], n: int, cache_dir: str | None = None, log: Any = print,
                inception: bool = False, weights: str | None = None, rescore: bool = False) -> dict[str, Any] | None:
    """Score each run's samples with the dataset's classifier (``quality.json``, computed once per
    run and ``n``; ``rescore``: again) and with ``inception`` the standard Inception metrics; returns
    the real-data floor (with its ``protocol`` id), or None where the data have no labelled images."""
    from genlab.evaluate import evaluate

    floor, pid, computed = None, None, None
    for r in runs:
        q = None if rescore else reusable(Path(r["run_dir"]) / "quality.json", n, inception)
        if q is None and r.get("status") == "finished" and r.get("checkpoint"):
            try:  # same data, n and classifier: one floor for the runs scored now
                q = evaluate(r["run_dir"], n=n, cache_dir=cache_dir, floor=computed, inception=inception,
                             inception_weights=weights)
            except ValueError as err:  # data without labelled images: no classifier features
                log(f"sample quality skipped for {r['run_dir']}: {err}")
                return None
            computed = q["floor"]
        if q is None:
            continue
        r["quality"] = {**q["samples"], **(q.get("conditional") or {}),
                        "sample_seconds_per_1000": q.get("sample_seconds_per_1000")}
        r["quality_protocol"], r["inception"] = q.get("protocol"), q.get("inception")
        floor, pid = q["floor"], (q.get("protocol") or {}).get("id", "unknown")
    return None if floor is None else {**floor, "protocol": pid}


def reusable(path: Path, n: int, inception: bool) -> dict[str, Any] | None:
    """A run's ``quality.json`` if it holds what is asked for (``n`` samples; the Inception metrics with
    ``inception``), else None. One written before protocols were recorded is used, labelled ``unknown``."""
    if not path.exists():
        return None
    q = json.loads(path.read_text())
    has_inception = (q.get("inception") or {}).get("fid") is not None
    return q if q.get("n") == n and (has_inception or not inception) else None


# -- one row per run, then per group of seeds -----------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, Interval) or v is None:
        return format_interval(v, digits)
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def row(r: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run (None where a value does not exist)."""
    t, q, inc = r.get("test", {}), r.get("quality") or {}, r.get("inception") or {}
    has_nll = t.get("nll_kind", "none") != "none"
    samples_per_s = r.get("timings", {}).get("samples_per_second")
    if q.get("sample_seconds_per_1000"):
        samples_per_s = 1000 / q["sample_seconds_per_1000"]
    return {
        "family": str(r.get("family")) + ("" if r.get("status") == "finished" else f" ({r.get('status')})"),
        "model": r.get("model"), "loss": r.get("loss"), "params": r.get("params"), "seed": r.get("seed"),
        "status": r.get("status"),
        "nll_bpd": t.get("nll_bpd") if has_nll else None, "nll_kind": t.get("nll_kind", "none"),
        "nll_se": t.get("nll_bpd_se") if has_nll else None, "nll_se_t": t.get("nll_bpd_se_timesteps"),
        "nll_n": t.get("nll_examples"),
        "fd": q.get("fd"), "kid": q.get("kid"), "precision": q.get("precision"), "recall": q.get("recall"),
        "confident": q.get("confident_share"), "samples_per_s": samples_per_s, "train_s": r.get("train_seconds"),
        "cond_nll_bpd": t.get("cond_nll_bpd") if has_nll else None, "classifier_acc": t.get("classifier_accuracy"),
        "label_acc": q.get("label_accuracy"), "intra_fd": q.get("intra_fd"),
        "inception_fid": inc.get("fid"), "inception_kid": inc.get("kid"), "inception_is": inc.get("is"),
        "inception_protocol": (inc.get("protocol") or {}).get("id"),
        **{k: (r.get("sample_metrics") or {}).get(k) for k in SAMPLE_COLUMNS},
        **protocol_cells(r),
    }


def protocol_cells(r: dict[str, Any]) -> dict[str, Any]:
    """How a run's sample metrics were measured: the protocol id ("unknown" for a quality.json without
    one; None without sample metrics) and, for the CSV, its parts."""
    p = r.get("quality_protocol") or {}
    if not p:
        return {"protocol": "unknown" if r.get("quality") else None}
    net = p.get("feature_net") or {}
    return {"protocol": p.get("id"), "quality_n": p.get("n_samples"), "reference_n": p.get("n_reference"),
            "reference_split": (p.get("reference") or {}).get("split"), "feature_net_sha256": net.get("weights_sha256"),
            "feature_net_config": json.dumps(net.get("config"), sort_keys=True), "sample_seed": p.get("seed"),
            "sampler": json.dumps(p.get("sampler"), sort_keys=True),
            "sample_overrides": " ".join(p.get("overrides") or [])}


def seed_key(r: dict[str, Any]) -> str:
    """What a run is apart from its seed: a hash of its resolved config without every ``*.seed`` key, the
    output paths and the reporting keys, and of its sample metrics' protocol. Runs that did not finish
    are their own group (a failed seed is shown, never averaged)."""
    if r.get("status") != "finished":
        return r["run_dir"]
    flat = {**flatten_config(r.get("config") or {}), **{f"<{k}>": r.get(k) for k in ("family", "model", "loss", "dataset")}}
    out_dir = flat.get("paths.output_dir")
    ident = {k: v.replace(out_dir, "<output_dir>") if out_dir and isinstance(v, str) else v for k, v in flat.items()
             if k.split(".")[0] not in _NOT_COMPARED and k.split(".")[-1] != "seed"}
    ident["<protocols>"] = [row(r)["protocol"], row(r)["inception_protocol"]]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def group_seeds(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The runs grouped by :func:`seed_key`, in the order of each group's first run."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(seed_key(r), []).append(r)
    return list(groups.values())


def group_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of a group of seeds: every value column an :class:`Interval` over the seeds (None where no seed
    has the value), the standard errors averaged, the rest from the first run; ``_rows``: the runs' rows."""
    rows = [row(r) for r in runs]
    out = {k: v for k, v in rows[0].items() if k not in VALUES}
    out.update({c: t_interval([rr[c] for rr in rows]) for c in VALUES})
    for c in ("nll_se", "nll_se_t"):
        se = [rr[c] for rr in rows if rr[c] is not None]
        out[c] = sum(se) / len(se) if se else None
    out.update(seeds=len(rows), seed_list=",".join(str(rr["seed"]) for rr in rows), _rows=rows)
    return out


def add_ranks(rows: list[dict[str, Any]]) -> None:
    """``nll_rank`` over every finished row with an NLL; ``fd_rank`` within each sample-metric protocol
    (ranks are ties where the 95% intervals overlap, :func:`~genlab.metrics.intervals.tied_ranks`)."""
    for column, rank in RANKED.items():
        by_protocol: dict[Any, list[dict[str, Any]]] = {}
        for rr in rows:
            if rr.get(column) is not None and rr.get("status") == "finished":
                by_protocol.setdefault(rr.get("protocol") if column != "nll_bpd" else None, []).append(rr)
        for members in by_protocol.values():
            for rr, label in zip(members, tied_ranks([m[column] for m in members])):
                rr[rank] = label


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of seeds, ranked."""
    rows = [group_row(g) for g in group_seeds(runs)]
    add_ranks(rows)
    return rows


# -- tables -----------------------------------------------------------------------------------
def columns_of(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    """The markdown columns: :data:`COLUMNS`, the conditional ones where a run is conditional, the Inception
    ones where a run has them, a dataset sample metric where a run reports it, ``nll_se_t`` where present."""
    conditional = any(r.get("conditional") for r in runs)
    present = {c for rr in rows for c in (*SAMPLE_COLUMNS, "nll_se_t", "inception_fid") if rr.get(c) is not None}
    cols = COLUMNS[:7] + (["nll_se_t"] if "nll_se_t" in present else []) + COLUMNS[7:8]
    cols += (COND_COLUMNS[:2] if conditional else []) + COLUMNS[8:] + (COND_COLUMNS[2:] if conditional else [])
    return cols + (INCEPTION_COLUMNS if "inception_fid" in present else []) + sorted(present & set(SAMPLE_COLUMNS))


def extra_rows(runs: list[dict[str, Any]], floor: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The floor (held-out real data scored the same way) and the data's true entropy, where known."""
    extra, data = [], runs[0].get("data", {})
    if floor is not None:
        extra.append({"family": "real data (val split)", "model": "—", "nll_kind": "—", "fd": floor["fd"],
                      "kid": floor["kid"], "precision": floor["precision"], "recall": floor["recall"],
                      "confident": floor.get("confident_share"), "protocol": floor.get("protocol")})
    if data.get("entropy_bpd") is not None:
        extra.append({"family": "true entropy", "model": "—", "nll_bpd": data["entropy_bpd"], "nll_kind": "exact"})
    return extra


def csv_cell(rr: dict[str, Any], c: str) -> dict[str, Any]:
    """A column's CSV cells: the mean and (value columns) the interval's half-width, empty without one."""
    v = rr.get(c)
    if c not in VALUES:
        return {c: v}
    if isinstance(v, Interval):
        return {c: v.mean, f"{c}_ci95": v.half}
    return {c: v, f"{c}_ci95": None}


def write_csv(rows: list[dict[str, Any]], columns: list[str], path: Path) -> Path:
    """``comparison.csv``: every column of the markdown table, each value column's ``_ci95`` beside it,
    and the protocol spelled out (:data:`PROTOCOL_CSV`)."""
    fields = [f for c in columns for f in ([c, f"{c}_ci95"] if c in VALUES else [c])]
    fields += [c for c in ["nll_se_t", *PROTOCOL_CSV] if c not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for rr in rows:
            cells: dict[str, Any] = {}
            for c in fields:
                if not (c.endswith("_ci95") and c.removesuffix("_ci95") in VALUES):
                    cells.update(csv_cell(rr, c))
            w.writerow(cells)
    return path


DESCRIPTION = (
    "One row per configuration: numeric columns are the mean over its seeds ± the half-width of the 95% Student-t "
    "interval over seeds (a single seed has no interval and shows the bare value). NLL kinds: exact (a true "
    "likelihood), bound (an upper bound on the NLL), estimate (stochastic); nll_se: the per-example standard error "
    "of a run's test NLL (mean over seeds). '—': the family has no likelihood / the value does not exist. FD, KID, "
    "precision and recall are measured against held-out test images in the features of a classifier trained on "
    "the dataset's train split; confident: the share of samples it classifies with probability >= 0.9; 'real data' "
    "is the floor: held-out validation images scored the same way. Ranks (lower is better): '=2' tied (its "
    "interval overlaps another's), '2?' a single seed ordered by its value alone; FD is ranked within one protocol.")
COND_DESCRIPTION = (
    " Conditional runs: NLL is the marginal -log sum_y p(x|y) p(y) (same kind), cond_nll_bpd -log p(x|y), "
    "classifier_acc the generative classifier's test accuracy, label_acc the share of samples classified as the "
    "requested label, intra_fd the per-class FD averaged.")


def write_tables(runs: list[dict[str, Any]], floor: dict[str, Any] | None, out: Path,
                 log: Any = print) -> tuple[Path, Path]:
    """``comparison.md`` and ``comparison.csv`` in ``out``: one row per group of seeds (:func:`table_rows`),
    the floor and entropy rows, the protocols' legend and warnings (also passed to ``log``)."""
    rows = table_rows(runs)
    columns = columns_of(rows, runs)
    everything = rows + extra_rows(runs, floor)
    write_csv(everything, columns, out / "comparison.csv")
    unit = runs[0].get("test", {}).get("unit", "bits/dim")
    head = [c if c != "nll_bpd" else f"NLL ({unit})" for c in columns]
    conditional = any(r.get("conditional") for r in runs)
    lines = [f"# Comparison: {len(runs)} runs ({len(rows)} configurations) on {runs[0].get('dataset')}", "",
             DESCRIPTION + (COND_DESCRIPTION if conditional else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(rr.get(c)) for c in columns) + " |" for rr in everything]
    warnings = protocol_warnings(rows)
    for w in warnings:
        log(f"warning: {w}")
    lines += ["", *protocol_legend(runs), *[f"**Warning**: {w}" for w in warnings]]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    return out / "comparison.md", out / "comparison.csv"


def protocol_legend(runs: list[dict[str, Any]]) -> list[str]:
    """One markdown line per sample-metric protocol of the table: how its metrics were measured."""
    seen: dict[str, str] = {}
    for r in runs:
        for p in (r.get("quality_protocol"), (r.get("inception") or {}).get("protocol")):
            if p and p.get("id") not in seen:
                net = p.get("feature_net") or {}
                digest = net.get("weights_sha256") or net.get("file_sha256")
                cfg = json.dumps(net.get("config"), sort_keys=True) if net.get("config") else "standard weights"
                seen[p["id"]] = (f"- protocol `{p['id']}`: {p.get('metrics')}, {p.get('n_samples')} samples against "
                                 f"{p.get('n_reference')} {p['reference']['split']} images (subset seed "
                                 f"{p['reference']['subset_seed']}); feature net {net.get('name')} {digest} ({cfg}); "
                                 f"settings {json.dumps(p.get('settings'), sort_keys=True)}")
        if r.get("quality") and not r.get("quality_protocol") and "unknown" not in seen:
            seen["unknown"] = "- protocol `unknown`: a quality.json written before protocols were recorded"
    return ["Sample-metric protocols:", *seen.values(), ""] if seen else []


def protocol_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Why some figures of one column are not comparable: sample metrics under several protocols (or an
    unknown one beside known ones), test NLLs averaged over different numbers of examples."""
    out = []
    for column, what in (("protocol", "the sample metrics"), ("inception_protocol", "the Inception metrics")):
        ids = sorted({str(rr[column]) for rr in rows if rr.get(column) is not None})
        if len(ids) > 1:
            out.append(f"{what} were measured under {len(ids)} protocols ({', '.join(ids)}): figures with different "
                       "protocol ids are not comparable (rescore with genlab-compare --rescore to put them under one)")
    sizes = sorted({int(rr["nll_n"]) for rr in rows if rr.get("nll_n") is not None and rr.get("nll_bpd") is not None})
    if len(sizes) > 1:
        out.append(f"the test NLLs average different numbers of test examples ({', '.join(map(str, sizes))})")
    return out


# -- plots ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(rr: dict[str, Any]) -> str:
    seeds = rr.get("seeds", 1)
    return f"{rr['family']}\n({rr.get('model')})" + (f"\n{seeds} seeds" if seeds > 1 else "")


def plot_bars(rows: list[dict[str, Any]], column: str, ylabel: str, path: Path, floor: float | None = None,
              floor_label: str = "") -> Path:
    """Bar chart of ``column`` per configuration: the mean over seeds, its 95% t-interval as an error bar,
    each seed a black dot; blue bars exact NLLs, orange the rest; rows without the value are labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 4), dpi=100)
    for i, rr in enumerate(rows):
        cell = rr.get(column)
        if cell is None:
            ax.text(i, 0, "no\nlikelihood" if column == "nll_bpd" else "—", ha="center", va="bottom", fontsize=8)
            continue
        color = "C0" if column != "nll_bpd" or rr["nll_kind"] == "exact" else "C1"
        ax.bar(i, cell.mean, color=color, yerr=cell.half, capsize=4, ecolor="k")
        seeds = [x[column] for x in rr.get("_rows", []) if x[column] is not None]
        ax.plot([i] * len(seeds), seeds, "k.", ms=4)
        text = format_interval(cell, 4) + (f"\n{rr['nll_kind']}" if column == "nll_bpd" else "")
        ax.text(i, cell.high, text, ha="center", va="bottom", fontsize=7)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label=floor_label)
        ax.legend(loc="lower right")
    top = max([rr[column].high for rr in rows if rr.get(column) is not None] + [floor or 0])
    ax.set_ylim(0, 1.2 * top if top > 0 else 1)  # room for the labels above the bars
    ax.set_xticks(range(len(rows)), [_label(rr) for rr in rows], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel}\nbars: mean over seeds; error bars: 95% t-interval; dots: seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_nll(runs: list[dict[str, Any]], path: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Test NLL per configuration (:func:`plot_bars`; blue: exact, orange: bound / estimate), with the
    data's true entropy where known; runs without a likelihood are labelled, not drawn."""
    unit = runs[0].get("test", {}).get("unit", "bits/dim")
    return plot_bars(rows or table_rows(runs), "nll_bpd", f"test NLL ({unit})", path,
                     runs[0].get("data", {}).get("entropy_bpd"), "true entropy")


def plot_nll_vs_time(runs: list[dict[str, Any]], path: Path) -> Path:
    """Validation NLL against wall-clock training time: one line per run, one colour per configuration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    colours = {seed_key(r): f"C{i % 10}" for i, r in enumerate({seed_key(r): r for r in runs}.values())}
    labelled: set[str] = set()
    for r in runs:
        pts = [(h["seconds"], h["nll_bpd"]) for h in r.get("history", []) if "nll_bpd" in h]
        key = seed_key(r)
        if pts:
            label = None if key in labelled else f"{r['family']} ({r.get('model')})"
            ax.plot(*zip(*pts), marker=".", color=colours[key], label=label)
            labelled.add(key)
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
    """Log the table (one row per configuration, intervals as text) and plots to a W&B run in the sweep's
    group; returns the run's directory."""
    import wandb

    cfg = runs[0].get("config", {})
    wb = (cfg.get("logger") or {}).get("wandb") or {}
    group = next((r.get("wandb_group") for r in runs if r.get("wandb_group")), None) or out.name
    run = wandb.init(project=wb.get("project") or "genlab", group=group, job_type="compare", dir=str(out),
                     name=f"compare-{out.name}", tags=["comparison"])
    table = wandb.Table(columns=COLUMNS, data=[[_fmt(rr.get(c)) for c in COLUMNS] for rr in table_rows(runs)])
    run.log({"comparison": table, **{p.stem: wandb.Image(str(p)) for p in images}})
    run_dir = run.dir
    run.finish()
    return str(Path(run_dir).parent)


def compare(sweep_dir: str | Path, quality_n: int | None = 1000, cache_dir: str | None = None,
            use_wandb: bool = False, inception: bool = False, weights: str | None = None,
            rescore: bool = False, log: Any = print) -> dict[str, Any]:
    """Everything ``genlab-compare`` does (see module docstring); returns the paths written. With
    ``inception`` the weights file is found (or refused) before any run is scored."""
    if inception:
        inception_weights(weights)
    out = Path(sweep_dir)
    runs = collect(out)
    floor = add_quality(runs, quality_n, cache_dir, log, inception, weights, rescore) if quality_n else None
    md, csv_path = write_tables(runs, floor, out, log)
    rows = table_rows(runs)
    images = [plot_nll(runs, out / "nll.png", rows), plot_nll_vs_time(runs, out / "nll_vs_time.png")]
    if any(rr.get("fd") is not None for rr in rows):
        images.append(plot_bars(rows, "fd", "FD (classifier features)", out / "fd.png", (floor or {}).get("fd"),
                                "real data (floor)"))
    montage = plot_montage([g[0] for g in group_seeds(runs)], out / "samples.png")
    images += [montage] if montage else []
    result = {"markdown": md, "csv": csv_path, "plots": images, "runs": len(runs), "configurations": len(rows)}
    if use_wandb:
        result["wandb_dir"] = log_wandb(runs, out, images)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genlab-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", help="directory holding the runs' results.json (searched recursively)")
    p.add_argument("--quality-n", type=int, default=1000, help="samples per run for FD/KID/precision/recall")
    p.add_argument("--no-quality", action="store_true", help="skip the sample-quality metrics")
    p.add_argument("--rescore", action="store_true", help="score every run again, even where quality.json exists")
    p.add_argument("--inception", action="store_true", help="add the standard Inception FID / KID / IS (local "
                                                            "weights only: GENLAB_INCEPTION_WEIGHTS)")
    p.add_argument("--inception-weights", help="the Inception-v3 FID weights file (default $GENLAB_INCEPTION_WEIGHTS)")
    p.add_argument("--cache-dir", help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("--wandb", action="store_true", help="log the table and plots to W&B (the sweep's group)")
    a = p.parse_args(argv)
    try:
        res = compare(a.sweep_dir, None if a.no_quality else a.quality_n, a.cache_dir, a.wandb, a.inception,
                      a.inception_weights, a.rescore)
    except (FileNotFoundError, InceptionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(res["markdown"]).read_text())
    print("written:", res["markdown"], res["csv"], *res["plots"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
