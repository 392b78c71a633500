"""Two-stage models against the pixel-space model of the same family, from one comparison sweep.

    genlab-train experiment=compare_families dataset=mnist paths.data_dir=... seed=0,1,2 \
        +family=autoregressive,diffusion,vqvae_pixelcnn,latent_diffusion \
        callbacks.cpu_budget.seconds=120 trainer.max_time=00:00:10:00 threads=1
    genlab-compare <sweep dir>                       # scores every run's samples (quality.json)
    python scripts/bench_two_stage.py <sweep dir> [--pair two_stage/latent_pixelcnn=autoregressive/pixelcnn ...]

For each pair (a two-stage ``family/model`` = the pixel ``family/model`` of the same prior family), over
the seeds of the sweep (mean, and the range over seeds): the test NLL of the pixel model and the
two-stage bound on the same test images with its parts (``recon_bpd``, ``prior_bpd``, ``bitsback_bpd``
for a stochastic first stage), how much looser the bound is, FD of 1,000 samples (genlab-compare's
quality.json), and sampling time per 1,000 samples with the speed-up: genlab-eval's wall-clock timing of
those samples, or with ``--time N`` the CPU seconds of drawing N samples from each pair's first seed, twice
each (one thread: independent of the machine's load). Writes ``two_stage.md`` next to the sweep's ``comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from genlab.runs import sweep_results

PAIRS = ["two_stage/latent_pixelcnn=autoregressive/pixelcnn", "two_stage/ddpm_mlp=diffusion/ddpm"]


def sampling_cpu_seconds(run_dir: str, n: int) -> float:
    """CPU seconds of this process to draw ``n`` samples from a run (one thread; load-independent)."""
    import torch

    from genlab.evaluate import draw_samples, find_checkpoint
    from genlab.builders import load_run

    torch.set_num_threads(1)
    module, _ = load_run(str(find_checkpoint(run_dir)[0]))
    t0 = time.process_time()
    draw_samples(module, n, seed=0)
    return time.process_time() - t0


def runs_by_model(sweep: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished runs grouped by ``family/model``, each with its bound's parts and its sample quality."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sweep_results(sweep):
        r = json.loads(path.read_text())
        if r.get("status") != "finished":
            continue
        q = json.loads((path.parent / "quality.json").read_text()) if (path.parent / "quality.json").is_file() else {}
        m = r.get("metrics", {})
        row = {"nll": r["test"].get("nll_bpd"), "kind": r["test"].get("nll_kind"), "fd": (q.get("samples") or {}).get("fd"),
               "s_per_1000": q.get("sample_seconds_per_1000"), "steps": r.get("global_step"),
               **{k: m.get(f"test/{k}") for k in ("recon_bpd", "prior_bpd", "bitsback_bpd")}}
        stage1 = path.parent / "stage1" / "results.json"
        row["stage1_steps"] = json.loads(stage1.read_text()).get("global_step") if stage1.is_file() else None
        row["run_dir"] = str(path.parent)
        out.setdefault(f"{r['family']}/{r['model']}", []).append(row)
    return out


def cell(rows: list[dict[str, Any]], key: str, digits: int = 3) -> str:
    """``mean (min-max)`` over seeds, or ``—``."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "—"
    mean = statistics.fmean(vals)
    if len(vals) == 1 or min(vals) == max(vals):  # one value (or one measurement shared by the seeds)
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def pair_lines(two: str, pixel: str, runs: dict[str, list[dict[str, Any]]], timed: int = 0) -> list[str]:
    """Two table rows (the pixel model, the two-stage model) and the comparison line."""
    a, b = runs.get(pixel, []), runs.get(two, [])
    if not a or not b:
        return [f"| {two} vs {pixel} | missing runs ({len(b)} two-stage, {len(a)} pixel) | | | | | | |"]
    parts = " + ".join(cell(b, k) for k in ("recon_bpd", "prior_bpd")) + (
        f" − {cell(b, 'bitsback_bpd')}" if mean(b, "bitsback_bpd") is not None else "")
    loose = (mean(b, "nll") or 0) - (mean(a, "nll") or 0)
    speed = (mean(a, "s_per_1000") or 0) / max(mean(b, "s_per_1000") or 1e-12, 1e-12)
    if timed:  # CPU seconds per 1,000 samples, A B A B on the first seed's runs (the same process, one thread)
        ta, tb = [], []
        for _ in range(2):
            ta.append(sampling_cpu_seconds(a[0]["run_dir"], timed))
            tb.append(sampling_cpu_seconds(b[0]["run_dir"], timed))
        for rows, t in ((a, ta), (b, tb)):
            for r in rows:
                r["s_per_1000"] = 1000 * statistics.median(t) / timed
        speed = statistics.median(ta) / statistics.median(tb)
    return [f"| {pixel} | {len(a)} | {cell(a, 'steps', 0)} | {cell(a, 'nll')} ({a[0]['kind']}) | | {cell(a, 'fd', 1)} | "
            f"{cell(a, 's_per_1000', 1)} | |",
            f"| {two} | {len(b)} | {cell(b, 'stage1_steps', 0)} + {cell(b, 'steps', 0)} | {cell(b, 'nll')} (bound) | "
            f"{parts} | {cell(b, 'fd', 1)} | {cell(b, 's_per_1000', 1)} | {speed:.1f}x; bound {loose:+.3f} bits/dim |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path)
    p.add_argument("--pair", action="append", help=f"two_stage_family/model=pixel_family/model (default {PAIRS})")
    p.add_argument("--time", type=int, default=0, metavar="N", help="time sampling N images of each pair's first "
                   "seed in CPU seconds (twice each, A B A B: load-independent) instead of genlab-eval's wall clock")
    args = p.parse_args(argv)
    runs = runs_by_model(args.sweep)
    lines = ["| model | seeds | steps | test NLL, bits/dim | bound parts: recon + prior (− bits back) | FD | "
             "s / 1,000 samples | two-stage: speed-up; bound − pixel NLL |", "|---|---|---|---|---|---|---|---|"]
    for spec in args.pair or PAIRS:
        two, pixel = spec.split("=")
        lines += pair_lines(two, pixel, runs, args.time)
    text = "\n".join(lines) + "\n"
    (args.sweep / "two_stage.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
