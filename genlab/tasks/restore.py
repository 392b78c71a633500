"""Inverse problems with a generative prior: recover images ``x`` from ``y = A(x) + noise * eps``.

The operator ``A`` (``operator=mask|downsample|blur|fourier|projection``, :mod:`genlab.tasks.operators`)
acts on the images in the ``[0, 1]`` unit scale (level ``v`` at ``v / (L - 1)``), where ``noise`` is the
measurement noise std. Every family that is a :class:`~genlab.families.base.Restorer` solves it by its own
methods (``method=``; listed by ``genlab-task restore --help``): a corrected denoiser in the reverse chain
or ODE (diffusion, flow matching: ``pigdm``, ``dps``, ``projection``), a latent MAP or Langevin posterior
(flows, VAEs), Langevin on energy + measurement term (EBMs), the exact conditional (autoregressive, masks
only). The others are refused with their reason.

Reported against the originals, estimates clamped to ``[0, 1]``: PSNR (dB, per image, averaged) and SSIM
(torchmetrics; Gaussian window of 11 pixels, or the largest odd size that fits), the measurement
consistency ``||y - A(x_hat)||_2`` per image beside the noise's own norm ``noise sqrt(M)``, and seconds.
Baselines: the pseudo-inverse ``A^+ y`` (zero-filled for masks and Fourier, nearest upsampling for
downsampling) and Tikhonov regularisation ``argmin ||A x - y||^2 + lam ||grad x||^2`` (conjugate
gradients), ``lam`` the best of a grid for these very images (an oracle: the strongest version of the
baseline). Sampling methods run ``samples`` draws: mean and spread of the metrics over the draws, and the
metrics of their average (the posterior-mean estimate). Writes ``restore.png`` (rows: originals,
measurements in image space, Tikhonov, restorations), ``restore.pt`` and ``restore.json`` / ``restore.md``.

:func:`compare` runs the task over several checkpoints (or every run of a sweep) and operators and
writes one table (family x operator -> PSNR / SSIM / consistency / seconds) and one PNG montage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Restorer
from genlab.runs import sweep_results
from genlab.tasks.base import (
    TaskConfig, TaskContext, TaskError, Unsupported, batches, label_kwargs, require_images, save_rows, stream_seed,
    write_report,
)
from genlab.tasks.operators import OPERATORS, Measurement, Operator, make_operator
from genlab.tasks.registry import TASKS

LAMBDAS = tuple(10.0 ** (k / 2) for k in range(-8, 3))  # Tikhonov's grid, 1e-4 .. 10


@dataclass
class Config(TaskConfig):
    """operator: mask, downsample, blur, fourier or projection (the measurement, in the [0, 1] image scale).
    noise: std of the Gaussian measurement noise in the [0, 1] scale.
    factor: downsample: the pooling factor (must divide the image size).
    sigma: blur: the Gaussian kernel's std in pixels.
    keep: fourier: the share of Fourier coefficients measured; projection: measurements per pixel.
    center: fourier: the share of the measured coefficients that are the lowest frequencies.
    mask, box_frac, random_p: mask: the missing pixels (box, random, bottom), as genlab-task inpaint.
    method: the family's method (null: its default; --help lists them).
    samples: draws per image of a sampling method (mean and spread of the metrics; 1 for estimates).
    steps: chain / ODE / Langevin steps (null: the method's default: min(T, 100) reverse steps, the
    ODE solver's steps, the EBM sampler's sample_steps, iters for latent Langevin).
    eta: diffusion: DDIM's eta of the restoring chain (1: ancestral, 0: deterministic).
    dps_scale: dps: the step zeta of Chung et al.'s Algorithm 1 along -grad ||y - A x0_hat|| (null: their
    Gaussian likelihood weight 1/(2 noise^2) in Tweedie's correction instead).
    iters: latent MAP: L-BFGS iterations (latent Langevin: its steps when steps is null).
    step_size: latent Langevin: the step in units of the posterior's curvature.
    show: images in restore.png.
    label: a class-conditional model restores every image as this class (null: each image's own label).
    """

    operator: str = "downsample"
    noise: float = 0.05
    factor: int = 2
    sigma: float = 1.5
    keep: float = 0.25
    center: float = 0.5
    mask: str = "box"
    box_frac: float = 0.5
    random_p: float = 0.5
    method: str | None = None
    samples: int = 1
    steps: int | None = None
    eta: float = 1.0
    dps_scale: float | None = 1.0
    iters: int = 200
    step_size: float = 0.1
    show: int = 16
    label: int | None = None


# -- who can ----------------------------------------------------------------------------------------------------------
def able_under(operator: str) -> str:
    """The registered restorers whose methods take ``operator`` (computed from the registered families)."""
    from genlab.families.base import registered

    names = [c.name for c in registered() if issubclass(c, Restorer)
             and (not c.restore_operators or operator in c.restore_operators)]
    return ", ".join(names) or "none of the registered families"


def check_family(ctx: TaskContext, cfg: Config) -> str:
    """The method to run: refuse families without the capability or the operator, and unknown methods."""
    family = ctx.family
    if not isinstance(family, Restorer):
        raise Unsupported.lacking("restore", family, Restorer)
    require_images("restore", ctx, TASKS["restore"].families)
    if family.restore_operators and cfg.operator not in family.restore_operators:
        raise Unsupported("restore", family.name, f"it restores only under operator={'|'.join(family.restore_operators)}: "
                          f"{family.restore_limit}", f"operator={cfg.operator}: {able_under(cfg.operator)}")
    method = cfg.method or family.restore_methods[0]
    if method not in family.restore_methods:
        raise TaskError(f"method={method} is not available for {family.name}; choose one of "
                        f"{', '.join(family.restore_methods)}")
    return method


def check_options(cfg: Config) -> None:
    """Refuse option values no method can use, before any work."""
    if cfg.operator not in OPERATORS:
        raise TaskError(f"operator={cfg.operator!r} is unknown; choose one of {', '.join(OPERATORS)} "
                        "(genlab-task restore --help)")
    if not cfg.noise >= 0:
        raise TaskError(f"noise={cfg.noise} must be >= 0 (the measurement noise std in the [0, 1] scale)")
    if cfg.samples < 1:
        raise TaskError(f"samples={cfg.samples} must be >= 1 (draws per image of a sampling method)")
    if cfg.steps is not None and cfg.steps < 1:
        raise TaskError(f"steps={cfg.steps} must be >= 1 (or null for the method's default)")


# -- the task -----------------------------------------------------------------------------------------------------
def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Measure ``cfg.n`` real images, restore them with the family's method; metrics, baselines, PNG, report."""
    check_options(cfg)
    method = check_family(ctx, cfg)
    family, top = ctx.family, ctx.info.levels - 1
    x, y_real = ctx.real(cfg.split, cfg.n)
    labels = label_kwargs(ctx, y_real, cfg.label).get("y")
    truth = x.double() / top
    op = make_operator(cfg.operator, tuple(ctx.info.shape), len(x), cfg, stream_seed(cfg.seed, "operator"))
    problem = Measurement.of(op, truth, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "measure")))
    draws = cfg.samples if method in family.restore_samplers else 1
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    estimates = torch.stack([restore_all(ctx, problem, method, cfg, labels) for _ in range(draws)])
    seconds = time.perf_counter() - t0
    result = {"method": method, "draws": draws, "sampler": method in family.restore_samplers, "seconds": seconds,
              "metrics": method_metrics(estimates, truth, problem)}
    baselines = {"pseudo_inverse": op.pinv(problem.y).clamp(0, 1), "tikhonov": tikhonov(problem, truth)}
    result["baselines"] = {k: {**scores(v[0] if isinstance(v, tuple) else v, truth, problem),
                               **({"lam": v[1]} if isinstance(v, tuple) else {})} for k, v in baselines.items()}
    return _write(ctx, cfg, truth, problem, estimates, baselines["tikhonov"][0], result)


def restore_all(ctx: TaskContext, problem: Measurement, method: str, cfg: Config, labels: Tensor | None) -> Tensor:
    """One draw of the family's estimate of every image, in batches, clamped to ``[0, 1]`` ``(N, C, H, W)``."""
    out = []
    for start in range(0, len(problem.y), cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        kw = {} if labels is None else {"y": labels[rows]}
        part = problem.rows(rows)
        part = Measurement(part.operator, part.y.float().to(ctx.device), part.noise)
        out.append(ctx.family.restore(ctx.nets, part, method, cfg, **kw).detach().double().cpu())
    est = torch.cat(out)
    if not torch.isfinite(est).all():
        raise TaskError(f"method={method} diverged (non-finite estimates) on operator={problem.operator.name} "
                        f"noise={problem.noise}: use smaller steps (dps_scale, step_size) or more steps")
    return est.clamp(0, 1)


# -- metrics ------------------------------------------------------------------------------------------------------
def ssim_kernel(shape: tuple[int, ...]) -> int:
    """SSIM's Gaussian window: 11 pixels, or the largest odd size that fits the image."""
    side = min(shape[-2:])
    return min(11, side if side % 2 else side - 1)


def scores(est: Tensor, truth: Tensor, problem: Measurement) -> dict[str, float]:
    """PSNR (dB) and SSIM against ``truth`` (means over the images), and ``||y - A(est)||`` (mean)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr = peak_signal_noise_ratio(est, truth, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(est.float(), truth.float(), data_range=1.0,
                                               kernel_size=ssim_kernel(truth.shape), reduction="none")
    return {"psnr": float(psnr.clamp(max=100.0).mean()), "ssim": float(ssim.mean()),
            "consistency": float(problem.consistency(est).mean())}


def method_metrics(estimates: Tensor, truth: Tensor, problem: Measurement) -> dict[str, Any]:
    """Per draw scores of ``estimates`` ``(K, N, ...)``: their mean and spread (std over the ``K`` draws), and
    the scores of the draws' average where ``K > 1``; ``noise_norm``: ``noise sqrt(M)``, the consistency of
    the truth in expectation."""
    per = [scores(e, truth, problem) for e in estimates]
    out: dict[str, Any] = {k: float(sum(p[k] for p in per) / len(per)) for k in per[0]}
    spread = {k: (sum((p[k] - out[k]) ** 2 for p in per) / max(len(per) - 1, 1)) ** 0.5 for k in per[0]}
    out["spread"] = spread if len(per) > 1 else None
    out["posterior_mean"] = scores(estimates.mean(0), truth, problem) if len(per) > 1 else None
    out["noise_norm"] = problem.noise * math.sqrt(problem.operator.measurements())
    return out


# -- the classical baseline --------------------------------------------------------------------------------------
def grad_norm_op(x: Tensor) -> Tensor:
    """``D^T D x`` for the circular forward differences ``D`` along H and W (the periodic Laplacian, negated)."""
    out = torch.zeros_like(x)
    for dim in (-2, -1):
        d = torch.roll(x, -1, dim) - x
        out = out + (torch.roll(d, 1, dim) - d)
    return out


def conjugate_gradient(apply: Any, b: Tensor, iters: int = 200, tol: float = 1e-10) -> Tensor:
    """Solve ``apply(x) = b`` for symmetric positive-definite ``apply``, every example of the batch on its own."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r.flatten(1).pow(2).sum(1)
    for _ in range(iters):
        ap = apply(p)
        alpha = rs / (p * ap).flatten(1).sum(1).clamp_min(1e-300)
        x = x + alpha.view(-1, *[1] * (b.ndim - 1)) * p
        r = r - alpha.view(-1, *[1] * (b.ndim - 1)) * ap
        rs_new = r.flatten(1).pow(2).sum(1)
        if float(rs_new.max()) < tol * max(float(b.flatten(1).pow(2).sum(1).max()), 1e-300):
            break
        p = r + (rs_new / rs.clamp_min(1e-300)).view(-1, *[1] * (b.ndim - 1)) * p
        rs = rs_new
    return x


def tikhonov(problem: Measurement, truth: Tensor, lambdas: tuple[float, ...] = LAMBDAS) -> tuple[Tensor, float]:
    """``argmin ||A x - y||^2 + lam ||D x||^2`` by conjugate gradients for each ``lam`` of the grid; the estimate
    (clamped to ``[0, 1]``) of the ``lam`` with the best mean PSNR against ``truth`` (an oracle choice), and it."""
    op, y = problem.operator, problem.y.double()
    best: tuple[float, Tensor, float] | None = None
    for lam in lambdas:
        est = conjugate_gradient(lambda v: op.adjoint(op(v)) + lam * grad_norm_op(v), op.adjoint(y)).clamp(0, 1)
        psnr = scores(est, truth, problem)["psnr"]
        if best is None or psnr > best[0]:
            best = (psnr, est, lam)
    return best[1], best[2]


# -- report --------------------------------------------------------------------------------------------------------
def to_levels(u: Tensor, top: int) -> Tensor:
    """Unit-scale images -> the nearest levels (uint8 / int64), for the PNG."""
    from genlab.data.scaling import data_dtype

    return (u.clamp(0, 1) * top).round().to(data_dtype(top + 1))


def _write(ctx: TaskContext, cfg: Config, truth: Tensor, problem: Measurement, estimates: Tensor, tik: Tensor,
           result: dict[str, Any]) -> dict[str, Any]:
    """PNG, tensors, restore.json / .md; the report."""
    top, out, op = ctx.info.levels - 1, ctx.out_dir, problem.operator
    k = max(1, min(cfg.show, len(truth)))
    shown = op.rows(slice(0, k)).show(problem.y[:k].double())
    rows = [truth[:k], shown, tik[:k], estimates[0, :k]] + ([estimates[:, :k].mean(0)] if len(estimates) > 1 else [])
    names = ["original", "measured", "Tikhonov", result["method"]] + (["mean of draws"] if len(estimates) > 1 else [])
    png = save_rows([to_levels(r, top) for r in rows], ctx.info.levels, out / "restore.png", names)
    pt = out / "restore.pt"
    torch.save({"real": truth.float(), "measured": op.show(problem.y.double()).float(), "estimates": estimates.float(),
                "tikhonov": tik.float()}, pt)
    report = {
        "task": "restore", "family": ctx.family.name, "method": result["method"], "checkpoint": str(ctx.ckpt),
        "dataset": ctx.info.name, "split": cfg.split, "n": len(truth), "operator": cfg.operator,
        "operator_desc": op.describe(), "noise": cfg.noise, "draws": result["draws"], "sampler": result["sampler"],
        "config": asdict(cfg), "seconds": result["seconds"], "metrics": result["metrics"],
        "baselines": result["baselines"], "files": {"png": str(png), "tensors": str(pt)},
    }
    report["summary"] = _summary(report)
    write_report(out, "restore", report, _markdown(report))
    return report


def _fmt(m: dict[str, Any], spread: dict[str, float] | None = None) -> str:
    pm = (lambda key: f" ± {spread[key]:.2f}") if spread else (lambda key: "")
    return f"PSNR {m['psnr']:.2f}{pm('psnr')} dB  SSIM {m['ssim']:.3f}  ||y - A x|| {m['consistency']:.3f}"


def _summary(r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    lines = [f"restore: {r['family']} by {r['method']} ({r['draws']} draw(s)), {r['operator_desc']}, noise {r['noise']}, "
             f"{r['n']} images of {r['dataset']}/{r['split']}, {r['seconds']:.1f} s",
             f"  {r['method']:<14}  {_fmt(m, m['spread'])}"]
    if m["posterior_mean"]:
        lines.append(f"  {'mean of draws':<14}  {_fmt(m['posterior_mean'])}")
    lines += [f"  {name:<14}  {_fmt(v)}" for name, v in r["baselines"].items()]
    return lines


def _markdown(r: dict[str, Any]) -> str:
    m = r["metrics"]
    spread = m["spread"] or {}
    rows = [f"| {r['method']} | {m['psnr']:.2f}" + (f" ± {spread['psnr']:.2f}" if spread else "") +
            f" | {m['ssim']:.3f}" + (f" ± {spread['ssim']:.3f}" if spread else "") + f" | {m['consistency']:.3f} |"]
    if m["posterior_mean"]:
        pmean = m["posterior_mean"]
        rows.append(f"| mean of {r['draws']} draws | {pmean['psnr']:.2f} | {pmean['ssim']:.3f} | {pmean['consistency']:.3f} |")
    rows += [f"| {name}{' (lam ' + format(v['lam'], 'g') + ')' if 'lam' in v else ''} | {v['psnr']:.2f} | "
             f"{v['ssim']:.3f} | {v['consistency']:.3f} |" for name, v in r["baselines"].items()]
    return (f"# Restoration: {r['family']}\n\n"
            f"Method `{r['method']}` ({r['draws']} draw(s) per image); operator: {r['operator_desc']}; noise std "
            f"{r['noise']} in the [0, 1] scale. Checkpoint `{r['checkpoint']}`; {r['n']} images of "
            f"{r['dataset']}/{r['split']}; {r['seconds']:.2f} s.\n\n"
            f"Against the originals (estimates clamped to [0, 1]; ± the spread over draws); consistency is "
            f"||y - A x||₂ per image, the noise's own being {m['noise_norm']:.3f}. Tikhonov's lam is the best of a "
            "grid for these images (an oracle).\n\n"
            "| estimate | PSNR (dB) | SSIM | consistency |\n|---|---:|---:|---:|\n" + "\n".join(rows) +
            "\n\n![restoration](restore.png)\n")


# -- comparison over runs and operators ---------------------------------------------------------------------------------
def find_runs(sources: list[str]) -> list[str]:
    """Run directories and checkpoints: each ``.ckpt`` or run dir as given, each other directory searched for
    the runs (``results.json``) of a sweep under it."""
    runs: list[str] = []
    for src in sources:
        path = Path(src)
        if path.suffix == ".ckpt" or (path / "results.json").exists():
            runs.append(str(path))
        elif path.is_dir():
            runs += [str(p.parent) for p in sweep_results(path)]
        else:
            raise TaskError(f"{src} is neither a checkpoint, a run directory nor a sweep directory")
    if not runs:
        raise TaskError(f"no runs (results.json) under {sources}: pass run directories, .ckpt files or a sweep dir")
    return runs


def compare(sources: list[str], operators: list[list[str]], options: list[str], out: str | Path) -> dict[str, Any]:
    """``genlab-task restore`` for every run of ``sources`` (:func:`find_runs`) under every operator
    (``operators[i]``: its ``key=value`` options, e.g. ``["operator=blur", "sigma=1.5"]``) with the shared
    ``options``; writes ``restore_compare.json`` / ``.md`` (family x operator -> PSNR / SSIM / consistency /
    seconds, with the baselines, and refusals with their reason) and ``restore_compare.png`` in ``out``."""
    from genlab.tasks.cli import run_task

    out = Path(out)
    rows: list[dict[str, Any]] = []
    for i, run_path in enumerate(find_runs(sources)):
        for spec in operators:
            name = "_".join(a.split("=", 1)[1] for a in spec)
            try:
                report = run_task("restore", [f"ckpt={run_path}", f"out={out / f'run{i}' / name}", *spec, *options])
                rows.append(compare_row(run_path, name, report))
            except TaskError as e:
                rows.append({"run": run_path, "operator": name, "refused": str(e)})
    summary = {"rows": rows, "options": options, "operators": operators}
    (out / "restore_compare.json").write_text(json.dumps(summary, indent=2))
    (out / "restore_compare.md").write_text(compare_markdown(rows))
    summary["png"] = str(compare_montage(rows, out / "restore_compare.png"))
    return summary


def compare_row(run_path: str, operator: str, report: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison from a task report."""
    m = report["metrics"]
    return {"run": run_path, "operator": operator, "family": report["family"], "method": report["method"],
            "draws": report["draws"], "psnr": m["psnr"], "psnr_spread": (m["spread"] or {}).get("psnr"),
            "ssim": m["ssim"], "consistency": m["consistency"], "noise_norm": m["noise_norm"],
            "seconds": report["seconds"], "baselines": report["baselines"], "tensors": report["files"]["tensors"],
            "dataset": report["dataset"]}


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison table: one line per (run, operator), the baselines once per operator."""
    lines = ["| operator | family | method | PSNR (dB) | SSIM | consistency | seconds |",
             "|---|---|---|---:|---:|---:|---:|"]
    seen: set[str] = set()
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['operator']} | {r['run']} | refused | — | — | — | — |")
            continue
        if r["operator"] not in seen:
            seen.add(r["operator"])
            lines += [f"| {r['operator']} | *{name}* | — | {b['psnr']:.2f} | {b['ssim']:.3f} | {b['consistency']:.3f} | — |"
                      for name, b in r["baselines"].items()]
        spread = f" ± {r['psnr_spread']:.2f}" if r["psnr_spread"] is not None else ""
        lines.append(f"| {r['operator']} | {r['family']} | {r['method']} | {r['psnr']:.2f}{spread} | {r['ssim']:.3f} | "
                     f"{r['consistency']:.3f} | {r['seconds']:.2f} |")
    refusals = [f"- {r['run']} / {r['operator']}: {r['refused']}" for r in rows if "refused" in r]
    return ("# Restoration: families x operators\n\n" + "\n".join(lines) +
            ("\n\nRefused:\n\n" + "\n".join(refusals) if refusals else "") + "\n\n![montage](restore_compare.png)\n")


def compare_montage(rows: list[dict[str, Any]], path: Path, k: int = 8) -> Path | None:
    """Per operator: the originals, the measurements, Tikhonov and each run's first draw (``k`` images each)."""
    images, labels = [], []
    for operator in dict.fromkeys(r["operator"] for r in rows if "refused" not in r):
        done = [r for r in rows if r["operator"] == operator and "refused" not in r]
        first = torch.load(done[0]["tensors"])
        images += [first["real"][:k], first["measured"][:k], first["tikhonov"][:k]]
        labels += [f"{operator}: original", f"{operator}: measured", f"{operator}: Tikhonov"]
        for r in done:
            if r["dataset"] == done[0]["dataset"]:
                images.append(torch.load(r["tensors"])["estimates"][0, :k])
                labels.append(f"{operator}: {r['family']}")
    if not images:
        return None
    n = min(len(im) for im in images)
    return save_rows([to_levels(im[:n].double(), 255) for im in images], 256, path, labels)


def run_many(sources: list[str], args: list[str]) -> dict[str, Any]:
    """``genlab-task restore ckpt=<sweep dir | run,run,...> operator=... [options]``: :func:`compare` over those
    runs with the one operator given (``out=``: default ``<first source>/restore_compare``)."""
    from genlab.tasks.cli import parse

    check_options(parse("restore", [f"ckpt={sources[0]}", *(a for a in args if not a.startswith("ckpt="))]))
    opts = [a for a in args if not a.startswith(("ckpt=", "out="))]
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), str(Path(sources[0]) / "restore_compare"))
    spec = [a for a in opts if a.startswith("operator=")] or ["operator=mask"]
    summary = compare(sources, [spec], [a for a in opts if a not in spec], out)
    done = [r for r in summary["rows"] if "refused" not in r]
    summary["summary"] = [f"{len(done)} runs restored ({len(summary['rows']) - len(done)} refused) under {spec[0]}",
                          f"table: {Path(out) / 'restore_compare.md'}", f"montage: {summary['png']}"]
    summary["out_dir"] = out
    return summary
