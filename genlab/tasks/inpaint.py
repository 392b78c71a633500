"""Inpainting: fill the missing pixels of real images given the observed ones.

The mask (``mask=box|random|bottom``, :mod:`genlab.tasks.masks`) marks the MISSING pixels, the
same for all channels of a pixel. One method per family, each written against the family's
public pieces:

* ``autoregressive`` — *conditional ancestral sampling*: walk the net's generation order; an
  observed dimension keeps its value, a missing one is drawn from the model's conditional
  ``P(x_d | x_{<d})`` (temperature 1) given everything before it, observed or already drawn.
  When every missing dimension comes after every observed one in the order (``mask=bottom``
  with raster order) this draws exactly from ``P(x_missing | x_observed)`` (the chain rule);
  otherwise the observed pixels that come *later* than a missing one are ignored when it is
  drawn, and the report says ``exact: false``.
* ``diffusion`` — RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
  Probabilistic Models", Alg. 1): ancestral reverse steps on the chain respaced to ``steps``
  steps; after each step ``x_t -> x_{t-1}`` the known region is replaced by a fresh draw of
  ``q(x_{t-1} | x0) = N(sqrt(alpha_bar_{t-1}) x0, (1 - alpha_bar_{t-1}) I)`` of the real image
  (Eq. 8-9 of the paper). With ``resample=r > 1`` the chain jumps ``jump`` steps back up by the
  forward process ``r - 1`` times at every ``jump``-th step (their resampling schedule,
  Sec. 4.2), which harmonises the two regions at ``r`` times the cost.
* ``flow_matching`` — the same replacement along the probability path: the ODE
  ``dx/dt = v(x, t)`` is integrated from ``t = 0`` (noise) to ``t = 1`` (data) on ``steps``
  intervals, and after each the known region is set to its point on the conditional path,
  ``x_t = alpha_t x_1 + sigma_t x_0`` (:mod:`genlab.families.flow_matching.paths`), with ``x_1``
  the (dequantised) real image and ``x_0`` one fixed noise draw, the one the ODE started from.
* ``vae`` — iterated reconstruction: start the missing pixels at the mean of the observed ones,
  then ``iters`` times encode (posterior mean), decode (the decoder's mean) and put the known
  pixels back; the deterministic variant of the imputation chain of Rezende et al. 2014
  ("Stochastic Backpropagation and Approximate Inference in Deep Generative Models", Sec. 5).
* ``ebm`` — Langevin dynamics (the model's SGLD sampler) on the missing pixels with the known
  ones clamped to their bin centres: a sampler of ``exp(-E(y))`` restricted to the observed
  values, starting from uniform noise.

Normalizing flows and GANs have no such conditional (:data:`UNSUPPORTED`). In every case the
output equals the input outside the mask, exactly (a final ``torch.where``).

Reported: MSE, MAE and PSNR on the masked pixels in the ``[0, 1]`` scale, for the model and two
trivial fills for context (``mean_fill``: the mean of the observed pixels of each image;
``noise_fill``: uniform random levels). Writes ``inpaint.png`` (rows: originals, masked with the
missing pixels grey, filled), ``inpaint.pt`` (``real``, ``missing``, ``filled``, ``mean_fill``
uint8/bool tensors) and ``inpaint.json`` / ``inpaint.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

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
    steps: diffusion: reverse steps of the respaced chain (null: min(T, 100)); flow_matching: ODE
    intervals, the known region is replaced after each (null: model.solver.steps); ebm: Langevin
    steps (null: model.sampler.sample_steps).
    resample: diffusion (RePaint): passes through every jump-length stretch of the chain (1: none).
    jump: diffusion (RePaint): jump length of the resampling, in steps of the respaced chain.
    iters: vae: encode-decode-replace iterations.
    show: images in inpaint.png.
    """

    mask: str = "box"
    box_frac: float = 0.5
    random_p: float = 0.5
    steps: int | None = None
    resample: int = 1
    jump: int = 10
    iters: int = 20
    show: int = 16


# fill(family, nets, x (B, C, H, W) discrete, missing (B, C, H, W) bool, cfg) -> (B, C, H, W) discrete
Fill = Callable[[Any, nn.ModuleDict, Tensor, Tensor, Config], Tensor]


# -- autoregressive: conditional ancestral sampling --------------------------------------------------
def order_is_exact(order: Tensor, missing: Tensor) -> bool:
    """Whether every missing dimension comes after every observed one in the generation ``order``
    (flat indices, ``(D,)``), in every example of ``missing`` ``(B, ...)``: then conditional
    ancestral sampling draws exactly from ``P(x_missing | x_observed)``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    miss = missing.reshape(len(missing), -1).to(order.device)
    big = len(order)
    last_seen = torch.where(~miss, rank, torch.full_like(rank, -1)).amax(1)
    first_missing = torch.where(miss, rank, torch.full_like(rank, big)).amin(1)
    return bool((last_seen < first_missing).all())


@torch.no_grad()
def fill_autoregressive(family: Any, nets: nn.ModuleDict, x: Tensor, missing: Tensor,
                        cfg: Config | None = None) -> Tensor:
    """Draw the missing dimensions one at a time in ``net.order()`` from ``P(x_d | x_{<d})`` at
    temperature 1, observed dimensions kept (module docstring)."""
    net = nets["net"]
    out = torch.where(missing, torch.zeros_like(x), x)
    flat, miss = out.view(len(x), -1), missing.reshape(len(x), -1)
    state = net.init_state(out)
    for step, pos in enumerate(net.order().tolist()):
        params = net.next_params(out, step, state)  # every step: incremental nets need them in order
        if bool(miss[:, pos].any()):
            draw = family.objective.sample(params.unsqueeze(-1), family.info.levels)[:, 0].to(x.dtype)
            flat[:, pos] = torch.where(miss[:, pos], draw, flat[:, pos])
    return out


# -- diffusion: RePaint ---------------------------------------------------------------------------------
def repaint_schedule(steps: int, jump: int, resample: int) -> list[int]:
    """States visited by RePaint (Lugmayr et al. 2022, Sec. 4.2; their ``get_schedule_jump``):
    from ``steps - 1`` (pure noise) down to ``-1`` (the data), and ``resample - 1`` times at
    every ``jump``-th state back up ``jump`` states. A step down from state ``k`` is the reverse
    step at ``t = k``; a step up from ``k`` is one forward noising step."""
    if jump < 1 or resample < 1:
        raise TaskError(f"jump={jump} and resample={resample} must be >= 1 (resample=1: plain RePaint, no jumps)")
    pending = {j: resample - 1 for j in range(0, max(steps - jump, 0), jump)}
    t, states = steps, []
    while t >= 1:
        t -= 1
        states.append(t)
        if pending.get(t, 0) > 0:
            pending[t] -= 1
            for _ in range(jump):
                t += 1
                states.append(t)
    return [*states, -1]


@torch.no_grad()
def fill_diffusion(family: Any, nets: nn.ModuleDict, x: Tensor, missing: Tensor, cfg: Config) -> Tensor:
    """RePaint (module docstring) on the chain respaced to ``cfg.steps`` steps (default ``min(T, 100)``)."""
    from genlab.families.diffusion.samplers import Ancestral

    big_t = family.process.T
    steps = min(big_t, 100) if cfg.steps is None else cfg.steps
    if not 1 <= steps <= big_t:
        raise TaskError(f"steps={steps} must be in 1..{big_t} (the model's diffusion timesteps)")
    process, sampler = family.process.respace(steps), Ancestral()
    dtype = next(nets.parameters()).dtype
    x0 = family.scale(x, dtype)
    states = repaint_schedule(process.T, cfg.jump, cfg.resample)
    y = torch.randn_like(x0)
    for cur, nxt in zip(states[:-1], states[1:]):
        t = torch.full((len(x),), cur, device=x.device, dtype=torch.long)
        if nxt < cur:  # reverse step x_t -> x_{t-1}, then the known region from q(x_{t-1} | x0)
            unknown = sampler.step(family, nets, process, y, t, torch.randn_like(y))
            known = process.at("sqrt_ab_prev", t, x0) * x0 + process.at("sqrt_1m_ab_prev", t, x0) * torch.randn_like(x0)
            y = torch.where(missing, unknown, known)
        else:  # forward step x_t -> x_{t+1} ~ N(sqrt(1 - beta_{t+1}) x_t, beta_{t+1} I)
            beta = process.at("betas", t + 1, y)
            y = (1 - beta).sqrt() * y + beta.sqrt() * torch.randn_like(y)
    return family.to_data(y).to(x.dtype)


# -- flow matching: replacement along the probability path ------------------------------------------------
@torch.no_grad()
def fill_flow_matching(family: Any, nets: nn.ModuleDict, x: Tensor, missing: Tensor, cfg: Config) -> Tensor:
    """ODE from noise to data on ``cfg.steps`` intervals (default ``model.solver.steps``), the
    known region reset to ``alpha_t x_1 + sigma_t x_0`` after each (module docstring)."""
    from genlab.families.flow_matching.ode import CountedVelocity, ODESolver

    base = family.solver
    steps = base.steps if cfg.steps is None else cfg.steps
    if steps < 1:
        raise TaskError(f"steps={steps} must be >= 1 (ODE intervals)")
    path = family.objective.path
    one_step = ODESolver(base.method, steps=1, rtol=base.rtol, atol=base.atol)
    velocity = CountedVelocity(nets["velocity"])
    x1 = family.dequantize(nets, x)
    noise = torch.randn_like(x1)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()

    def on_path(t: float) -> Tensor:
        return path.x_t(noise, x1, torch.full((len(x),), t, device=x1.device, dtype=x1.dtype))

    y = torch.where(missing, noise, on_path(0.0))
    for t0, t1 in zip(grid[:-1], grid[1:]):
        y = torch.where(missing, one_step.integrate(velocity, y, t0, t1), on_path(t1))
    family.nfe["inpaint"] = velocity.nfe
    return family.to_data(y).to(x.dtype)


# -- vae: iterated reconstruction --------------------------------------------------------------------------
@torch.no_grad()
def fill_vae(family: Any, nets: nn.ModuleDict, x: Tensor, missing: Tensor, cfg: Config) -> Tensor:
    """``cfg.iters`` rounds of encode (posterior mean) -> decoder mean -> known pixels back,
    from the per-image mean of the observed pixels (module docstring)."""
    if cfg.iters < 1:
        raise TaskError(f"iters={cfg.iters} must be >= 1 (encode-decode-replace rounds)")
    levels = family.info.levels
    known = x.float()
    cur = mean_fill(x, missing, levels).float()
    for _ in range(cfg.iters):
        mu, _ = family.encode(nets, cur)
        recon = family.observation.mean(family.decoder_params(nets, mu), levels).view_as(cur)
        cur = torch.where(missing, recon, known)
    return cur.round().clamp(0, levels - 1).to(x.dtype)


# -- ebm: clamped Langevin -----------------------------------------------------------------------------------
def fill_ebm(family: Any, nets: nn.ModuleDict, x: Tensor, missing: Tensor, cfg: Config) -> Tensor:
    """SGLD (``model.sampler``'s step) for ``cfg.steps`` steps (default ``model.sampler.sample_steps``)
    from uniform noise on the missing pixels, the known ones clamped to their bin centres."""
    from torch.nn.utils import parametrize

    sampler = family.sampler
    steps = sampler.sample_steps if cfg.steps is None else cfg.steps
    known = family.embed(x)
    y = torch.where(missing, nets["buffer"].noise(len(x), device=x.device), known)
    with torch.inference_mode(False), torch.enable_grad(), parametrize.cached():
        for _ in range(steps):
            y = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(family.energy(nets, y).sum(), y)
            y = torch.where(missing, sampler.step(y.detach(), grad), known)
    return family.to_data(y.detach()).to(x.dtype)


@dataclass(frozen=True)
class Method:
    """How one family inpaints: a short name for reports, the fill function and, where the method
    is exact only for some masks, ``exact(nets, missing) -> bool``."""

    name: str
    fill: Fill
    exact: Callable[[nn.ModuleDict, Tensor], bool] | None = None


METHODS: dict[str, Method] = {
    "autoregressive": Method("conditional ancestral sampling", fill_autoregressive,
                             lambda nets, missing: order_is_exact(nets["net"].order(), missing)),
    "diffusion": Method("RePaint (Lugmayr et al. 2022)", fill_diffusion),
    "flow_matching": Method("replacement along the probability path", fill_flow_matching),
    "vae": Method("iterated reconstruction", fill_vae),
    "ebm": Method("Langevin with the known pixels clamped", fill_ebm),
}

UNSUPPORTED: dict[str, str] = {
    "flow": ("a normalizing flow has an exact density but no tractable conditional: its latent mixes every "
             "pixel, so drawing the missing pixels given the observed ones would need MCMC on the flow's "
             "density (not implemented)"),
    "gan": ("a GAN has neither a likelihood nor an encoder to condition on the observed pixels (it would need "
            "an optimisation over its latent, not implemented)"),
}


def method_for(family_name: str) -> Method:
    """The family's method, or :class:`Unsupported` naming the families that work."""
    if family_name in METHODS:
        return METHODS[family_name]
    why = UNSUPPORTED.get(family_name, "no inpainting method is implemented for it")
    raise Unsupported("inpaint", family_name, why, TASKS["inpaint"].families)


# -- the task ----------------------------------------------------------------------------------------------------
def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Fill ``cfg.n`` real images under the mask; errors on the masked pixels; PNG, tensors, report."""
    method = method_for(ctx.family.name)
    require_images("inpaint", ctx, TASKS["inpaint"].families)
    levels = ctx.info.levels
    x, _ = ctx.real(cfg.split, cfg.n)
    missing = make_mask(cfg.mask, len(x), tuple(ctx.info.shape), cfg.box_frac, cfg.random_p,
                        stream_seed(cfg.seed, "mask")).to(x.device)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    parts = [method.fill(ctx.family, ctx.nets, xb, mb, cfg)
             for xb, mb in zip(batches(x, cfg.batch_size), batches(missing, cfg.batch_size))]
    seconds = time.perf_counter() - t0
    filled = torch.where(missing, torch.cat(parts).to(x.dtype), x)  # the invariant: observed pixels untouched
    baseline = mean_fill(x, missing, levels)
    noise = noise_fill(x, missing, levels, torch.Generator().manual_seed(stream_seed(cfg.seed, "noise_fill")))
    metrics = {name: masked_errors(img, x, missing, levels)
               for name, img in (("model", filled), ("mean_fill", baseline), ("noise_fill", noise))}
    exact = method.exact(ctx.nets, missing) if method.exact else None

    out = ctx.out_dir
    k = max(1, min(cfg.show, len(x)))
    png = save_rows([x[:k], show_missing(x[:k], missing[:k], levels), filled[:k]], levels, out / "inpaint.png",
                    ["original", "masked", "filled"])
    pt = out / "inpaint.pt"
    torch.save({"real": x.cpu(), "missing": missing.cpu(), "filled": filled.cpu(), "mean_fill": baseline.cpu()}, pt)
    report = {
        "task": "inpaint", "family": ctx.family.name, "method": method.name, "exact": exact,
        "checkpoint": str(ctx.ckpt), "dataset": ctx.info.name, "split": cfg.split, "n": len(x),
        "mask": {"kind": cfg.mask, "box_frac": cfg.box_frac, "random_p": cfg.random_p,
                 "missing_fraction": float(missing.float().mean())},
        "config": asdict(cfg), "seconds": seconds, "metrics": metrics,
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
