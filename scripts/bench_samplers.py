#!/usr/bin/env python
"""Samplers of one trained diffusion or flow-matching run side by side: cost (NFE, time) and
in-domain sample quality (FD, % confident).

    python scripts/bench_samplers.py <run dir | checkpoint.ckpt> [--n 1000] [--settings ddim:50 dpmpp_2m:20 ...]
        [--guidance W] [--seed 0] [--chunk 250] [--threads 1] [--out rows.json] [--cache-dir DIR] [key=value ...]

A setting is ``NAME[:STEPS][:key=value ...]``:

* diffusion: ``NAME`` is a sampler's stable name (``ddim``, ``dpmpp_2m``, ``heun``, ``ddpm`` or
  ``ancestral``), ``STEPS`` its ``steps`` and ``key=value`` further constructor arguments, e.g.
  ``ddim:50:eta=1`` or ``heun:18:s_churn=10``. Defaults: ``ddim:50 ddim:20 ddim:10 dpmpp_2m:20
  dpmpp_2m:10 heun:10 heun:6`` (add ``ancestral:1000`` for the DDPM chain; it takes 1000 NFE).
* flow matching: ``NAME`` is the ODE method of :class:`genlab.families.flow_matching.ODESolver`
  (fixed-grid ``euler`` / ``midpoint`` / ``rk4`` with ``STEPS``, adaptive ``dopri5`` with its
  default tolerances or e.g. ``dopri5:rtol=1e-4:atol=1e-4``). Defaults: ``euler:20 midpoint:10
  midpoint:50 rk4:5 dopri5``.

Every setting draws ``--n`` samples (EMA weights, eval mode) from the same seed, in batches of
``--chunk``, on ``--threads`` CPU threads; the time is the drawing alone, per 1000 samples. NFE is
counted, not computed: forward calls of the run's networks per batch (a diffusion model with an
autoguidance guide makes two per evaluation; an adaptive solver's count is the mean over batches).
The samples are scored as ``genlab-eval`` scores them (:func:`genlab.metrics.quality.quality_metrics`
with the dataset's cached in-domain classifier, against ``--n`` held-out test images), and the
last row is the floor: held-out validation images scored the same way. ``--guidance W`` samples
a diffusion run trained with ``model.guidance`` at autoguidance weight ``W`` (each sampler's own
``guidance``). ``key=value`` arguments override the stored run config as for ``genlab-eval``,
e.g. ``paths.data_dir=../shared/data``. ``--out`` writes the rows and the protocol as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from genlab.builders import load_run
from genlab.evaluate import find_checkpoint, run_classifier
from genlab.families.diffusion import Diffusion, Sampler
from genlab.families.diffusion.samplers import SAMPLERS
from genlab.families.flow_matching import FlowMatching, ODESolver
from genlab.metrics.quality import quality_metrics, real_floor, reference_set

DIFFUSION = ["ddim:50", "ddim:20", "ddim:10", "dpmpp_2m:20", "dpmpp_2m:10", "heun:10", "heun:6"]
FLOW = ["euler:20", "midpoint:10", "midpoint:50", "rk4:5", "dopri5"]
ALIASES = {"ancestral": "ddpm"}


def parse_value(text: str) -> Any:
    """``1`` -> int, ``1e-4`` -> float, ``true`` / ``null`` / words as YAML reads them."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:STEPS][:key=value ...]`` -> ``(NAME, constructor kwargs)``."""
    name, *parts = text.split(":")
    kwargs: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep and key.isdigit():
            kwargs["steps"] = int(key)
        elif sep and key:
            kwargs[key] = parse_value(value)
        else:
            raise SystemExit(f"--settings {text!r}: expected NAME[:STEPS][:key=value ...], e.g. ddim:50:eta=1")
    return ALIASES.get(name, name), kwargs


def build_sampler(family: Any, text: str, guidance: float | None) -> tuple[str, dict[str, Any], Sampler | ODESolver]:
    """``(name, kwargs, sampler object)`` of one setting for this run's family (refusals become one-line errors)."""
    name, kwargs = parse_setting(text)
    try:
        if isinstance(family, Diffusion):
            if name not in SAMPLERS:
                raise ValueError(f"unknown diffusion sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
            sampler = SAMPLERS[name](**kwargs)
            return name, kwargs, sampler if guidance is None else sampler.with_guidance(guidance)
        if guidance is not None:
            raise ValueError("--guidance is autoguidance of a diffusion model; flow matching has none")
        return name, kwargs, ODESolver(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--settings {text}: {err}") from None


def count_calls(nets: torch.nn.ModuleDict) -> tuple[list[int], list[Any]]:
    """A counter of forward calls of each of the run's networks and the hook handles (to remove)."""
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1

    return count, [net.register_forward_hook(hook) for net in nets.values()]


def draw(module: Any, sampler: Any, n: int, chunk: int, seed: int) -> tuple[torch.Tensor, float, float]:
    """``n`` samples in batches from ``seed``: (uint8 samples, network calls per batch, s per 1000 samples)."""
    count, handles = count_calls(module.nets)
    out, batches = [], 0
    try:
        with module.inference():
            torch.manual_seed(seed)
            t0 = time.process_time()  # CPU seconds: steady on a loaded machine (one thread)
            for i in range(0, n, chunk):
                out.append(module.family.sample(module.nets, min(chunk, n - i), sampler=sampler).cpu())
                batches += 1
            seconds = time.process_time() - t0
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out), count[0] / batches, 1000 * seconds / n


def describe(name: str, kwargs: dict[str, Any], guidance: float | None) -> str:
    """The settings cell: the given arguments (and the guidance weight)."""
    shown = {**kwargs, **({"guidance": guidance} if guidance is not None else {})}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"


def bench(module: Any, dm: Any, samplers: list[tuple[str, dict[str, Any], Any]], a: argparse.Namespace) -> list[dict]:
    """One row per sampler, printed as it is measured, then the real-data floor."""
    clf, meta = run_classifier(module, dm, a.cache_dir)
    ref = reference_set(dm, a.n)
    print("| sampler | settings | NFE | CPU s / 1000 samples | FD | % confident |\n|---|---|---|---|---|---|", flush=True)
    rows = []
    for name, kwargs, sampler in samplers:
        x, nfe, sec = draw(module, sampler, a.n, a.chunk, a.seed)
        q = quality_metrics(clf, ref, x.to(ref.dtype))
        rows.append({"sampler": name, "settings": describe(name, kwargs, a.guidance), "object": repr(sampler),
                     "nfe": nfe, "seconds_per_1000": sec, "fd": q["fd"], "confident_share": q["confident_share"]})
        r = rows[-1]
        print(f"| {name} | {r['settings']} | {nfe:g} | {sec:.1f} | {q['fd']:.2f} | {100 * q['confident_share']:.1f} |",
              flush=True)
    floor = real_floor(clf, dm, a.n)
    print(f"| real data (floor) | validation split | - | - | {floor['fd']:.2f} | "
          f"{100 * floor['confident_share']:.1f} |")
    rows.append({"sampler": "real data (floor)", "fd": floor["fd"], "confident_share": floor["confident_share"],
                 "classifier": {"test_accuracy": meta["test_accuracy"], "path": meta.get("path")}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (holding results.json) or a checkpoint .ckpt")
    p.add_argument("--n", type=int, default=1000, help="samples per setting (and real reference images)")
    p.add_argument("--settings", nargs="+", default=None, help="NAME[:STEPS][:key=value ...] (see above)")
    p.add_argument("--guidance", type=float, default=None, help="autoguidance weight of every diffusion sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=250, help="samples drawn per batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while sampling (1: steady timings)")
    p.add_argument("--out", default=None, help="write the rows and the protocol to this JSON file")
    p.add_argument("--cache-dir", default=None, help="feature-classifier cache (default <data_dir>/genlab_classifiers)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides, e.g. paths.data_dir=DIR")
    a = p.parse_intermixed_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt, _ = find_checkpoint(a.source)
    module, dm = load_run(str(ckpt), overrides=a.overrides)
    if not isinstance(module.family, (Diffusion, FlowMatching)):
        print(f"{ckpt} is a {module.family.name} run: this script compares diffusion or flow-matching samplers",
              file=sys.stderr)
        return 2
    if a.guidance is not None and isinstance(module.family, Diffusion) and module.family.guidance is None:
        print(f"{ckpt} was trained without model.guidance: it has no guide snapshot for --guidance", file=sys.stderr)
        return 2
    settings = a.settings or (DIFFUSION if isinstance(module.family, Diffusion) else FLOW)
    rows = bench(module, dm, [build_sampler(module.family, text, a.guidance) for text in settings], a)
    if a.out:
        protocol = {"checkpoint": str(ckpt), "family": module.family.name, "n": a.n, "seed": a.seed,
                    "chunk": a.chunk, "threads": a.threads, "guidance": a.guidance, "overrides": a.overrides}
        Path(a.out).write_text(json.dumps({**protocol, "rows": rows}, indent=2))
        print(f"rows: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
