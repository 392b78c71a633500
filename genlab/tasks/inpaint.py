"""Inpainting: fill the missing pixels of real images given the observed ones.

The mask (``mask=box|random|bottom``, :mod:`genlab.tasks.masks`) marks the MISSING pixels, the
same for all channels of a pixel. Every family that is an :class:`~genlab.families.base.Inpainter`
fills them by its own method (documented in its folder, listed by ``genlab-task inpaint --help``,
e.g. conditional ancestral sampling, exact when every missing pixel comes after the observed ones
in the generation order; RePaint; replacement along a probability path; clamped Langevin). The
others are refused with their reason.
In every case the output equals the input outside the mask, exactly (a final ``torch.where``).

Reported: MSE, MAE and PSNR on the masked pixels in the ``[0, 1]`` scale, for the model and two
trivial fills for context (``mean_fill``: the mean of the observed pixels of each image;
``noise_fill``: uniform random levels). Writes ``inpaint.png`` (rows: originals, masked with the
missing pixels grey, filled), ``inpaint.pt`` (``real``, ``missing``, ``filled``, ``mean_fill``
uint8/bool tensors) and ``inpaint.json`` / ``inpaint.md``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Inpainter
from genlab.tasks.base import label_kwargs
from genlab.tasks.base import (
    TaskConfig, TaskContext, TaskError, Unsupported, batches, require_images, save_rows, stream_seed,
    write_report,
)
from genlab.tasks.masks import make_mask, masked_errors, mean_fill, noise_fill, show_missing
from genlab.tasks.registry import TASKS


@dataclass
class Config(TaskConfig):
    """mask: box (centred square), random (pixels missing independently) or bottom (bottom half).
    box_frac: side of the box as a fraction of the image side.
    random_p: probability that a pixel is missing (mask=random).
    steps: RePaint: reverse steps of the respaced chain (null: min(T, 100)); path replacement: ODE
    intervals, the known region is replaced after each (null: model.solver.steps); clamped Langevin:
    steps (null: model.sampler.sample_steps).
    resample: RePaint: passes through every jump-length stretch of the chain (1: none).
    jump: RePaint: jump length of the resampling, in steps of the respaced chain.
    iters: iterated reconstruction: encode-decode-replace rounds.
    show: images in inpaint.png.
    label: a class-conditional model fills every image as this class (null: each image's own label).
    """

    mask: str = "box"
    box_frac: float = 0.5
    random_p: float = 0.5
    steps: int | None = None
    resample: int = 1
    jump: int = 10
    iters: int = 20
    show: int = 16
    label: int | None = None


# -- the task ----------------------------------------------------------------------------------------------------
def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Fill ``cfg.n`` real images under the mask; errors on the masked pixels; PNG, tensors, report."""
    family = ctx.family
    if not isinstance(family, Inpainter):
        raise Unsupported.lacking("inpaint", family, Inpainter)
    require_images("inpaint", ctx, TASKS["inpaint"].families)
    check_options(cfg)
    levels = ctx.info.levels
    x, y = ctx.real(cfg.split, cfg.n)
    labels = label_kwargs(ctx, y, cfg.label).get("y")
    missing = make_mask(cfg.mask, len(x), tuple(ctx.info.shape), cfg.box_frac, cfg.random_p,
                        stream_seed(cfg.seed, "mask")).to(x.device)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    label_parts = batches(labels, cfg.batch_size) if labels is not None else [None] * len(x)
    parts = [family.inpaint(ctx.nets, xb, mb, cfg, **({} if yb is None else {"y": yb}))
             for xb, mb, yb in zip(batches(x, cfg.batch_size), batches(missing, cfg.batch_size), label_parts)]
    seconds = time.perf_counter() - t0
    filled = torch.where(missing, torch.cat(parts).to(x.dtype), x)  # the invariant: observed pixels untouched
    baseline = mean_fill(x, missing, levels)
    noise = noise_fill(x, missing, levels, torch.Generator().manual_seed(stream_seed(cfg.seed, "noise_fill")))
    metrics = {name: masked_errors(img, x, missing, levels)
               for name, img in (("model", filled), ("mean_fill", baseline), ("noise_fill", noise))}
    result = {"method": family.inpaint_method, "exact": family.inpaint_is_exact(ctx.nets, missing),
              "seconds": seconds, "metrics": metrics}
    return _write(ctx, cfg, x, missing, filled, baseline, result)


def check_options(cfg: Config) -> None:
    """Refuse option values no method can use, before any work (a method's own options, e.g.
    RePaint's ``jump`` / ``resample``, are checked by the method)."""
    if cfg.steps is not None and cfg.steps < 1:
        raise TaskError(f"steps={cfg.steps} must be >= 1 (or null for the method's default)")
    if cfg.iters < 1:
        raise TaskError(f"iters={cfg.iters} must be >= 1 (encode-decode-replace rounds)")


def _write(ctx: TaskContext, cfg: Config, x: Tensor, missing: Tensor, filled: Tensor, baseline: Tensor,
           result: dict[str, Any]) -> dict[str, Any]:
    """PNG, tensors, inpaint.json / .md; the report."""
    levels = ctx.info.levels
    out = ctx.out_dir
    k = max(1, min(cfg.show, len(x)))
    png = save_rows([x[:k], show_missing(x[:k], missing[:k], levels), filled[:k]], levels, out / "inpaint.png",
                    ["original", "masked", "filled"])
    pt = out / "inpaint.pt"
    torch.save({"real": x.cpu(), "missing": missing.cpu(), "filled": filled.cpu(), "mean_fill": baseline.cpu()}, pt)
    report = {
        "task": "inpaint", "family": ctx.family.name, "method": result["method"], "exact": result["exact"],
        "checkpoint": str(ctx.ckpt), "dataset": ctx.info.name, "split": cfg.split, "n": len(x),
        "mask": {"kind": cfg.mask, "box_frac": cfg.box_frac, "random_p": cfg.random_p,
                 "missing_fraction": float(missing.float().mean())},
        "config": asdict(cfg), "seconds": result["seconds"], "metrics": result["metrics"],
        "files": {"png": str(png), "tensors": str(pt)},
    }
    report["summary"] = _summary(report)
    write_report(out, "inpaint", report, _markdown(report))
    return report


def _summary(r: dict[str, Any]) -> list[str]:
    exact = "" if r["exact"] is None else f" ({'exact' if r['exact'] else 'not exact'} conditional)"
    lines = [f"inpaint: {r['family']} by {r['method']}{exact}, mask={r['mask']['kind']} "
             f"({100 * r['mask']['missing_fraction']:.0f}% missing), {r['n']} images of {r['dataset']}/{r['split']}"]
    for name, m in r["metrics"].items():
        lines.append(f"  {name:<10}  masked MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  PSNR {m['psnr']:.2f} dB")
    return lines


def _markdown(r: dict[str, Any]) -> str:
    exact = {None: "", True: " — exact conditional", False: " — not exact (observed pixels after a missing one "
             "in the generation order are ignored; use mask=bottom for the exact conditional)"}[r["exact"]]
    rows = "\n".join(f"| {name} | {m['mse']:.4f} | {m['mae']:.4f} | {m['psnr']:.2f} |"
                     for name, m in r["metrics"].items())
    return (f"# Inpainting: {r['family']}\n\n"
            f"Method: {r['method']}{exact}.\n\n"
            f"Checkpoint `{r['checkpoint']}`; {r['n']} images of {r['dataset']}/{r['split']}; "
            f"mask `{r['mask']['kind']}` "
            f"({100 * r['mask']['missing_fraction']:.1f}% of the pixels missing); {r['seconds']:.2f} s.\n\n"
            "Errors on the masked pixels, values in [0, 1] (`mean_fill`: the mean of each image's observed "
            "pixels; `noise_fill`: uniform random levels):\n\n"
            "| fill | MSE | MAE | PSNR (dB) |\n|---|---:|---:|---:|\n"
            f"{rows}\n\n![inpainting](inpaint.png)\n")
