"""Denoising: remove Gaussian noise from real images by running the model's generative process
from the noise level that matches it.

The input is ``y = x + sigma * eps``, ``eps ~ N(0, I)``, with ``x`` the clean image in the model's
``[-1, 1]`` data scale and ``sigma`` (option) the noise std in that scale. A diffusion or
flow-matching model knows how to go from *some* noise level to the data; the trick is to rescale
``y`` so that it looks exactly like a point of its noising process, and start there:

* ``diffusion`` — ``q(x_t | x) = N(sqrt(alpha_bar_t) x, (1 - alpha_bar_t) I)`` (Ho et al. 2020,
  Eq. 4). ``sqrt(alpha_bar) y = sqrt(alpha_bar) x + sqrt(alpha_bar) sigma eps`` has that law when
  ``alpha_bar sigma^2 = 1 - alpha_bar``, i.e. ``alpha_bar = 1 / (1 + sigma^2)``: take the step
  ``t`` whose ``alpha_bar_t`` is closest, start at ``x_t = sqrt(alpha_bar_t) y`` and run the
  reverse process from ``t`` down to the data — deterministic DDIM (Song et al. 2021, Eq. 12,
  ``eta = 0``; ``method=ddim``, default) or ancestral sampling (Ho et al. 2020, Alg. 2;
  ``method=ddpm``) on ``steps`` evenly spaced steps of ``0..t`` (the chain truncated at ``t``
  and respaced as in Nichol & Dhariwal 2021, Sec. 4). This is the "denoise from an intermediate
  step" use of diffusion models (SDEdit, Meng et al. 2022; Kawar et al. 2022).
* ``flow_matching`` — the path ``x_t = alpha_t x_1 + sigma_t x_0`` (Lipman et al. 2023, Eq. 10;
  ``x_1`` data, ``x_0 ~ N(0, I)``, :mod:`genlab.families.flow_matching.paths`): ``x_t / alpha_t =
  x_1 + (sigma_t / alpha_t) x_0``, so take the ``t`` with ``sigma_t / alpha_t = sigma``
  (bisection; ``t = 1 / (1 + sigma)`` on the straight OT path), start at ``x_t = alpha_t y`` and
  integrate the ODE ``dx/dt = v(x, t)`` from ``t`` to 1 (``method=ode``; the model's solver
  method with ``steps`` steps).

``method=mean`` (both families) stops after one network call at the matching level: the
posterior mean ``E[x | x_t]`` (Tweedie's formula; Efron 2011, "Tweedie's Formula and Selection
Bias"): the network's ``x0_hat`` for diffusion, ``(sigma'_t x_t - sigma_t v) / (sigma'_t alpha_t -
sigma_t alpha'_t)`` for flow matching. It minimises the expected squared error, so it has the
highest PSNR; the generative methods draw a plausible image instead (a posterior sample has
about twice the MMSE), sharper but farther from the clean image on average.

Reported: PSNR (dB) and MSE in the ``[0, 1]`` scale (level ``v`` -> ``v / (L - 1)``) of the noisy
input (as given, and quantised to the nearest level: what clipping and rounding alone achieve)
and of the denoised output, against the clean images. Writes ``denoise.png`` (rows: clean, noisy
quantised, denoised), ``denoise.pt`` (``clean``, ``noisy`` in model scale, ``noisy_quantized``,
``denoised``) and ``denoise.json`` / ``denoise.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genlab.tasks.base import (
    TaskConfig, TaskContext, TaskError, Unsupported, batches, psnr, require_images, save_rows, stream_seed,
    write_report,
)
from genlab.tasks.registry import TASKS


@dataclass
class Config(TaskConfig):
    """sigma: std of the Gaussian noise added, in the model's [-1, 1] data scale (0.2 = 10% of the range).
    method: diffusion: ddim (deterministic, default), ddpm (ancestral) or mean; flow_matching: ode (default)
    or mean; null: the default. mean: one network call to the posterior mean E[x | x_t] (Tweedie's formula):
    the least-squares estimate, so the highest PSNR, but blurry where the generative methods draw detail.
    steps: diffusion: reverse steps from the matching timestep t down to 0 (null: min(t + 1, 50));
    flow_matching: steps of the model's ODE solver from the matching time to 1 (null: model.solver.steps).
    show: images in denoise.png.
    """

    sigma: float = 0.2
    method: str | None = None
    steps: int | None = None
    show: int = 16


# -- matching noise levels (closed forms; tested against the noising processes) -------------------------------
def match_timestep(process: Any, sigma: float) -> int:
    """The step ``t`` of a :class:`~genlab.families.diffusion.process.GaussianDiffusion` whose
    ``alpha_bar_t`` is closest to ``1 / (1 + sigma^2)``: then ``sqrt(alpha_bar_t) (x + sigma eps)``
    has (nearly) the law of ``q(x_t | x)`` (module docstring)."""
    target = 1.0 / (1.0 + sigma**2)
    return int((process.tables["alpha_bar"] - target).abs().argmin())


def truncated_chain(process: Any, t: int, steps: int) -> Any:
    """The chain's steps ``0..t`` (same ``alpha_bar``, same network times) respaced to ``steps``."""
    from genlab.families.diffusion.process import GaussianDiffusion

    head = GaussianDiffusion(process.tables["betas"][: t + 1], process.timesteps[: t + 1], process.train_timesteps)
    return head.respace(min(steps, t + 1))


def match_time(path: Any, sigma: float, iters: int = 100) -> float:
    """The time ``t in (0, 1]`` with ``sigma_t / alpha_t = sigma`` on an affine path whose ratio
    falls from ``+inf`` at ``t = 0`` (pure noise) to ``sigma_1 / alpha_1`` at ``t = 1`` (bisection
    in float64). Raises :class:`TaskError` when ``sigma`` is below the ratio at the data end."""
    def ratio(t: float) -> float:
        tt = torch.tensor([t], dtype=torch.float64)
        return float(path.sigma(tt) / path.alpha(tt))

    if sigma <= ratio(1.0):
        raise TaskError(f"sigma={sigma} is below the noise the flow's path keeps at the data end "
                        f"(sigma_1 / alpha_1 = {ratio(1.0):.3g}); use a larger sigma")
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) > sigma else (lo, mid)
    return 0.5 * (lo + hi)


# -- per family -----------------------------------------------------------------------------------------
class DiffusionDenoiser:
    """Diffusion: ``x_t = sqrt(alpha_bar_t) y`` at the matching step, DDIM / ancestral to the data."""

    methods = ("ddim", "ddpm", "mean")

    def clean(self, family: Any, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        return family.scale(x, next(nets.parameters()).dtype)

    def unit(self, family: Any, y: Tensor) -> Tensor:
        """Model scale -> ``[0, 1]`` (level ``v`` at ``2 v / (L - 1) - 1``)."""
        return (y + 1) / 2

    def start(self, family: Any, sigma: float, steps: int | None) -> dict[str, Any]:
        t = match_timestep(family.process, sigma)
        ab = float(family.process.tables["alpha_bar"][t])
        return {"t": t, "timesteps": family.process.T, "alpha_bar": ab, "target_alpha_bar": 1 / (1 + sigma**2),
                "scale": math.sqrt(ab), "steps": min(50 if steps is None else steps, t + 1)}

    @torch.no_grad()
    def run(self, family: Any, nets: nn.ModuleDict, y: Tensor, start: dict[str, Any], method: str) -> Tensor:
        from genlab.families.diffusion.samplers import DDIM, Ancestral

        x = start["scale"] * y
        if method == "mean":  # one network call: x0_hat = E[x0 | x_t] (Tweedie)
            t = torch.full((len(x),), start["t"], device=x.device, dtype=torch.long)
            return family.reverse(nets, family.process, x, t, clip=family.clip_denoised).x0
        process = truncated_chain(family.process, start["t"], start["steps"])
        sampler = DDIM(steps=None, eta=0.0) if method == "ddim" else Ancestral()
        for k in reversed(range(process.T)):
            t = torch.full((len(x),), k, device=x.device, dtype=torch.long)
            x = sampler.step(family, nets, process, x, t, torch.randn_like(x))
        return x


class FlowMatchingDenoiser:
    """Flow matching: ``x_t = alpha_t y`` at the time with ``sigma_t / alpha_t = sigma``, ODE to ``t = 1``."""

    methods = ("ode", "mean")

    def clean(self, family: Any, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        return family.dequantize(nets, x)

    def unit(self, family: Any, y: Tensor) -> Tensor:
        """Model scale -> ``[0, 1]`` (level ``v`` at its bin centre ``2 (v + 1/2) / L - 1``)."""
        levels = family.info.levels
        return ((y + 1) * levels / 2 - 0.5) / (levels - 1)

    def start(self, family: Any, sigma: float, steps: int | None) -> dict[str, Any]:
        path = family.objective.path
        t = match_time(path, sigma)
        tt = torch.tensor([t], dtype=torch.float64)
        alpha, sig = float(path.alpha(tt)), float(path.sigma(tt))
        return {"t": t, "path": repr(path), "alpha_t": alpha, "sigma_t": sig, "ratio": sig / alpha,
                "scale": alpha, "steps": family.solver.steps if steps is None else steps, "solver": family.solver.method}

    @torch.no_grad()
    def run(self, family: Any, nets: nn.ModuleDict, y: Tensor, start: dict[str, Any], method: str) -> Tensor:
        from genlab.families.flow_matching.ode import CountedVelocity, ODESolver

        velocity = CountedVelocity(nets["velocity"])
        x_t = start["scale"] * y
        if method == "mean":
            v = velocity(torch.tensor(start["t"], device=x_t.device), x_t)
            out = self.posterior_mean(family.objective.path, x_t, v, start["t"])
        else:
            base = family.solver
            solver = ODESolver(base.method, steps=start["steps"], rtol=base.rtol, atol=base.atol)
            out = solver.integrate(velocity, x_t, start["t"], 1.0)
        family.nfe["denoise"] = velocity.nfe
        return out

    @staticmethod
    def posterior_mean(path: Any, x_t: Tensor, v: Tensor, t: float) -> Tensor:
        """``E[x_1 | x_t]`` from the velocity ``v = E[alpha'_t x_1 + sigma'_t x_0 | x_t]`` and
        ``x_t = alpha_t x_1 + sigma_t x_0`` (two linear equations in the two conditional means):
        ``(sigma'_t x_t - sigma_t v) / (sigma'_t alpha_t - sigma_t alpha'_t)``; ``x_t + (1 - t) v``
        on the straight OT path."""
        tt = torch.tensor([t], dtype=torch.float64)
        a, s, da, ds = (float(f(tt)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
        return (ds * x_t - s * v) / (ds * a - s * da)


DENOISERS: dict[str, DiffusionDenoiser | FlowMatchingDenoiser] = {
    "diffusion": DiffusionDenoiser(),
    "flow_matching": FlowMatchingDenoiser(),
}


def denoiser_for(family_name: str) -> DiffusionDenoiser | FlowMatchingDenoiser:
    """The family's denoiser, or :class:`Unsupported` naming the families that work."""
    if family_name not in DENOISERS:
        raise Unsupported("denoise", family_name, "denoising starts the model's generative process at the noise "
                          "level of the input, which needs a model of a Gaussian noising path (a diffusion chain "
                          "or a flow-matching probability path)", TASKS["denoise"].families)
    return DENOISERS[family_name]


# -- the task ---------------------------------------------------------------------------------------------------
def _scores(pred_unit: Tensor, clean_unit: Tensor) -> dict[str, float]:
    mse = float((pred_unit.double() - clean_unit.double()).pow(2).mean())
    return {"psnr": psnr(pred_unit, clean_unit, 1.0), "mse": mse}


def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Noise ``cfg.n`` real images, denoise them from the matching noise level; PSNR, PNG, tensors, report."""
    den = denoiser_for(ctx.family.name)
    require_images("denoise", ctx, TASKS["denoise"].families)
    method = cfg.method or den.methods[0]
    if method not in den.methods:
        raise TaskError(f"method={method} is not available for {ctx.family.name}; "
                        f"choose one of {', '.join(den.methods)}")
    if not cfg.sigma > 0:
        raise TaskError(f"sigma={cfg.sigma} must be > 0 (the noise std in the model's [-1, 1] scale)")
    if cfg.steps is not None and cfg.steps < 1:
        raise TaskError(f"steps={cfg.steps} must be >= 1 (or null for the default)")
    family, nets, levels = ctx.family, ctx.nets, ctx.info.levels
    x, _ = ctx.real(cfg.split, cfg.n)
    start = den.start(family, cfg.sigma, cfg.steps)
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "noise"))  # independent of the model's draws
    torch.manual_seed(cfg.seed)
    noisy, denoised, seconds = [], [], 0.0
    for xb in batches(x, cfg.batch_size):
        clean = den.clean(family, nets, xb)
        y = clean + cfg.sigma * torch.randn(clean.shape, generator=g, dtype=clean.dtype).to(clean.device)
        t0 = time.perf_counter()
        denoised.append(family.to_data(den.run(family, nets, y, start, method)).to(x.dtype))
        seconds += time.perf_counter() - t0
        noisy.append(y)
    noisy_t, denoised_t = torch.cat(noisy), torch.cat(denoised)
    quantized = family.to_data(noisy_t).to(x.dtype)
    clean_unit = x.double() / (levels - 1)
    metrics = {"noisy": _scores(den.unit(family, noisy_t), clean_unit),
               "noisy_quantized": _scores(quantized.double() / (levels - 1), clean_unit),
               "denoised": _scores(denoised_t.double() / (levels - 1), clean_unit)}

    out = ctx.out_dir
    k = max(1, min(cfg.show, len(x)))
    png = save_rows([x[:k], quantized[:k], denoised_t[:k]], levels, out / "denoise.png", ["clean", "noisy", "denoised"])
    pt = out / "denoise.pt"
    torch.save({"clean": x.cpu(), "noisy": noisy_t.cpu(), "noisy_quantized": quantized.cpu(),
                "denoised": denoised_t.cpu()}, pt)
    report = {
        "task": "denoise", "family": family.name, "method": method, "sigma": cfg.sigma, "start": start,
        "checkpoint": str(ctx.ckpt), "dataset": ctx.info.name, "split": cfg.split, "n": len(x),
        "config": asdict(cfg), "seconds": seconds, "metrics": metrics,
        "files": {"png": str(png), "tensors": str(pt)},
    }
    report["summary"] = _summary(report)
    write_report(out, "denoise", report, _markdown(report))
    return report


def _where(r: dict[str, Any]) -> str:
    s = r["start"]
    how = ("one step to the posterior mean" if r["method"] == "mean" else
           f"{s['steps']} {r['method'] if r['family'] == 'diffusion' else s['solver']} steps")
    if r["family"] == "diffusion":
        return (f"step t={s['t']} of {s['timesteps']} (alpha_bar {s['alpha_bar']:.4f}, target "
                f"{s['target_alpha_bar']:.4f}), {how}")
    return f"time t={s['t']:.4f} (sigma_t/alpha_t {s['ratio']:.4f}), {how}"


def _summary(r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    return [f"denoise: {r['family']}, sigma={r['sigma']} in [-1, 1], {r['n']} images of {r['dataset']}/{r['split']}; "
            f"from {_where(r)}",
            f"  PSNR noisy {m['noisy']['psnr']:.2f} dB (quantised {m['noisy_quantized']['psnr']:.2f} dB) -> "
            f"denoised {m['denoised']['psnr']:.2f} dB"]


def _markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(f"| {name} | {v['psnr']:.2f} | {v['mse']:.5f} |" for name, v in r["metrics"].items())
    return (f"# Denoising: {r['family']}\n\n"
            f"Gaussian noise of std {r['sigma']} in the model's [-1, 1] scale; denoised from {_where(r)}.\n"
            f"Checkpoint `{r['checkpoint']}`; {r['n']} images of {r['dataset']}/{r['split']}; {r['seconds']:.2f} s.\n\n"
            "Against the clean images, values in [0, 1] (`noisy_quantized`: the noisy input clipped and rounded "
            "to the nearest level):\n\n"
            f"| image | PSNR (dB) | MSE |\n|---|---:|---:|\n{rows}\n\n![denoising](denoise.png)\n")
