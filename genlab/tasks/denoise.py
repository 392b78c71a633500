"""Denoising: remove Gaussian noise from real images by running the model's generative process
from the noise level that matches it.

The input is ``y = x + sigma * eps``, ``eps ~ N(0, I)``, with ``x`` the clean image in the model's
``[-1, 1]`` data scale and ``sigma`` (option) the noise std in that scale. A model of a Gaussian
noising path (a :class:`~genlab.families.base.Denoiser`: a diffusion chain, a flow-matching
probability path) knows how to go from *some* noise level to the data: it rescales ``y`` so that it
looks like a point of its noising process and starts there (each family documents its matching
and its methods; ``method=mean`` is the one-call posterior mean ``E[x | x_t]``, Tweedie's formula,
the least-squares estimate: the highest PSNR, but blurry where the generative methods draw detail).

Reported: PSNR (dB) and MSE in the ``[0, 1]`` scale (level ``v`` -> ``v / (L - 1)``) of the noisy
input (as given, and quantised to the nearest level: what clipping and rounding alone achieve)
and of the denoised output, against the clean images. Writes ``denoise.png`` (rows: clean, noisy
quantised, denoised), ``denoise.pt`` (``clean``, ``noisy`` in model scale, ``noisy_quantized``,
``denoised``) and ``denoise.json`` / ``denoise.md``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Denoiser

from genlab.tasks.base import label_kwargs
from genlab.tasks.base import (
    TaskConfig, TaskContext, TaskError, Unsupported, batches, psnr, require_images, save_rows, stream_seed,
    write_report,
)
from genlab.tasks.registry import TASKS


@dataclass
class Config(TaskConfig):
    """sigma: std of the Gaussian noise added, in the model's [-1, 1] data scale (0.2 = 10% of the range).
    method: a chain: ddim (deterministic, default), ddpm (ancestral) or mean; a probability path: ode
    (default) or mean; null: the default. mean: one network call to the posterior mean E[x | x_t]
    (Tweedie's formula): the least-squares estimate, so the highest PSNR, but blurry where the
    generative methods draw detail.
    steps: a chain: reverse steps from the matching timestep t down to 0 (null: min(t + 1, 50)); a path:
    steps of the model's ODE solver from the matching time to 1 (null: model.solver.steps).
    show: images in denoise.png.
    label: a class-conditional model denoises every image as this class (null: each image's own label).
    """

    sigma: float = 0.2
    method: str | None = None
    steps: int | None = None
    show: int = 16
    label: int | None = None


# -- the task ---------------------------------------------------------------------------------------------------
def _scores(pred_unit: Tensor, clean_unit: Tensor) -> dict[str, float]:
    mse = float((pred_unit.double() - clean_unit.double()).pow(2).mean())
    return {"psnr": psnr(pred_unit, clean_unit, 1.0), "mse": mse}


def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Noise ``cfg.n`` real images, denoise them from the matching noise level; PSNR, PNG, tensors, report."""
    family, nets = ctx.family, ctx.nets
    if not isinstance(family, Denoiser):
        raise Unsupported.lacking("denoise", family, Denoiser)
    require_images("denoise", ctx, TASKS["denoise"].families)
    method = cfg.method or family.denoise_methods[0]
    if method not in family.denoise_methods:
        raise TaskError(f"method={method} is not available for {family.name}; "
                        f"choose one of {', '.join(family.denoise_methods)}")
    if not cfg.sigma > 0:
        raise TaskError(f"sigma={cfg.sigma} must be > 0 (the noise std in the model's [-1, 1] scale)")
    if cfg.steps is not None and cfg.steps < 1:
        raise TaskError(f"steps={cfg.steps} must be >= 1 (or null for the default)")
    x, y_real = ctx.real(cfg.split, cfg.n)
    labels = label_kwargs(ctx, y_real, cfg.label, key="labels").get("labels")
    plan = family.denoise_plan(nets, cfg.sigma, cfg.steps)
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "noise"))  # independent of the model's draws
    torch.manual_seed(cfg.seed)
    noisy, denoised, seconds = [], [], 0.0
    for i, xb in enumerate(batches(x, cfg.batch_size)):
        kw = {} if labels is None else {"labels": labels[i * cfg.batch_size:(i + 1) * cfg.batch_size]}
        clean = family.noise_space(nets, xb)
        y = clean + cfg.sigma * torch.randn(clean.shape, generator=g, dtype=clean.dtype).to(clean.device)
        t0 = time.perf_counter()
        denoised.append(family.to_data(nets, family.denoise(nets, y, plan, method, **kw)).to(x.dtype))
        seconds += time.perf_counter() - t0
        noisy.append(y)
    result = {"method": method, "start": plan, "where": family.describe_plan(plan, method), "seconds": seconds}
    return _write(ctx, cfg, x, torch.cat(noisy), torch.cat(denoised), result)


def _write(ctx: TaskContext, cfg: Config, x: Tensor, noisy: Tensor, denoised: Tensor,
           result: dict[str, Any]) -> dict[str, Any]:
    """Scores, PNG, tensors, denoise.json / .md; the report."""
    family, nets, levels = ctx.family, ctx.nets, ctx.info.levels
    quantized = family.to_data(nets, noisy).to(x.dtype)
    clean_unit = x.double() / (levels - 1)
    metrics = {"noisy": _scores(family.to_unit(nets, noisy), clean_unit),
               "noisy_quantized": _scores(quantized.double() / (levels - 1), clean_unit),
               "denoised": _scores(denoised.double() / (levels - 1), clean_unit)}
    out = ctx.out_dir
    k = max(1, min(cfg.show, len(x)))
    png = save_rows([x[:k], quantized[:k], denoised[:k]], levels, out / "denoise.png", ["clean", "noisy", "denoised"])
    pt = out / "denoise.pt"
    torch.save({"clean": x.cpu(), "noisy": noisy.cpu(), "noisy_quantized": quantized.cpu(),
                "denoised": denoised.cpu()}, pt)
    report = {
        "task": "denoise", "family": family.name, "method": result["method"], "sigma": cfg.sigma,
        "start": result["start"], "where": result["where"],
        "checkpoint": str(ctx.ckpt), "dataset": ctx.info.name, "split": cfg.split, "n": len(x),
        "config": asdict(cfg), "seconds": result["seconds"], "metrics": metrics,
        "files": {"png": str(png), "tensors": str(pt)},
    }
    report["summary"] = _summary(report)
    write_report(out, "denoise", report, _markdown(report))
    return report


def _summary(r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    return [f"denoise: {r['family']}, sigma={r['sigma']} in [-1, 1], {r['n']} images of {r['dataset']}/{r['split']}; "
            f"from {r['where']}",
            f"  PSNR noisy {m['noisy']['psnr']:.2f} dB (quantised {m['noisy_quantized']['psnr']:.2f} dB) -> "
            f"denoised {m['denoised']['psnr']:.2f} dB"]


def _markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(f"| {name} | {v['psnr']:.2f} | {v['mse']:.5f} |" for name, v in r["metrics"].items())
    return (f"# Denoising: {r['family']}\n\n"
            f"Gaussian noise of std {r['sigma']} in the model's [-1, 1] scale; denoised from {r['where']}.\n"
            f"Checkpoint `{r['checkpoint']}`; {r['n']} images of {r['dataset']}/{r['split']}; {r['seconds']:.2f} s.\n\n"
            "Against the clean images, values in [0, 1] (`noisy_quantized`: the noisy input clipped and rounded "
            "to the nearest level):\n\n"
            f"| image | PSNR (dB) | MSE |\n|---|---:|---:|\n{rows}\n\n![denoising](denoise.png)\n")
