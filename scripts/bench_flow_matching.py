#!/usr/bin/env python
"""Benchmark: flow matching (OT path / rectified flow, small UNet) on 8-bit MNIST, CPU training.

    python scripts/bench_flow_matching.py --data-dir ../shared/data [--minutes 30] [--threads 1]
        [--num-samples 1000] [-- extra hydra overrides]

Trains ``genlab-train experiment=flow_matching_mnist`` for ``--minutes``, then, from the best
checkpoint (EMA weights), draws ``--num-samples`` samples with three ODE solvers — euler with 20
and with 50 steps, and adaptive dopri5 — and reports for each the number of function evaluations
(NFE, per sampling batch) and the seconds per 1,000 samples. Writes into ``<run dir>/bench/``
a PNG grid (first 64 samples) and all samples as a uint8 tensor ``samples_<solver>.pt``
``(N, 1, 28, 28)`` per solver (for a classifier to score later), and prints markdown tables
with the test NLL in bits/dim and its kind (``estimate``: Hutchinson traces; see
configs/experiment/flow_matching_mnist.yaml for the test subset and solver).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from genlab.bench import bench_parser, print_table, train_experiment
from genlab.builders import load_run
from genlab.callbacks.samples import write_samples
from genlab.families.flow_matching import ODESolver

SOLVERS = {
    "euler-20": ODESolver("euler", steps=20),
    "euler-50": ODESolver("euler", steps=50),
    "dopri5": ODESolver("dopri5", rtol=1e-5, atol=1e-5),
}


def sample_with(module, solver: ODESolver, n: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, float, float]:
    """``n`` samples drawn in batches; returns (uint8 samples, mean NFE per batch, seconds per 1,000 samples)."""
    family, nets = module.family, module.nets
    torch.manual_seed(seed)
    chunks, nfes, t0 = [], [], time.perf_counter()
    for start in range(0, n, batch):
        s = family.generate(nets, min(batch, n - start), solver)
        chunks.append(family.to_data(nets, s.y))
        nfes.append(s.nfe)
    secs = time.perf_counter() - t0
    return torch.cat(chunks), sum(nfes) / len(nfes), 1000.0 * secs / n


def main() -> int:
    p = bench_parser(__doc__, minutes=30)
    p.add_argument("--num-samples", type=int, default=1000, help="samples per solver")
    p.add_argument("--batch", type=int, default=250, help="samples per ODE solve")
    a = p.parse_args()
    r = train_experiment("flow_matching_mnist", a)
    if r is None:
        return 2
    if not r.get("checkpoint"):
        print(f"no checkpoint was written (see {r['path']}): train longer than --minutes {a.minutes}")
        return 2
    module, _ = load_run(r["checkpoint"])
    out = Path(r["path"]).parent / "bench"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, solver in SOLVERS.items():
        x, nfe, secs = sample_with(module, solver, a.num_samples, a.batch)
        torch.save(x, out / f"samples_{name}.pt")
        png = write_samples(x[:64], module.info, out / f"samples_{name}")
        rows.append((name, solver, nfe, secs, png))
    t, steps, train_s = r["test"], r["global_step"], r["train_seconds"]
    val = r["val"].get("nll_bpd")
    print_table(
        ["model", "data", "budget", "steps", "steps/s", "val NLL (bits/dim)", "test NLL (bits/dim, kind)", "nats/image"],
        [f"{r['model']} ({r['params']:,} params)", r["dataset"], f"{a.minutes} min CPU, {a.threads} thread(s)", steps,
         f"{steps / train_s:.2f}", "—" if val is None else f"{val:.4f}", f"{t['nll_bpd']:.4f} ({t['nll_kind']})",
         f"{t['nll_nats']:.1f}"], r)
    print("\n| sampler | NFE (per solve) | s / 1,000 samples | samples |")
    print("|---|---|---|---|")
    for name, solver, nfe, secs, png in rows:
        print(f"| {name} ({solver!r}) | {nfe:.1f} | {secs:.1f} | {png} (+ .pt) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
