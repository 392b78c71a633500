"""Latent exploration: interpolate between pairs of real images in a model's latent space.

Each family maps an image to a latent code and back:

* ``vae``: the posterior mean ``mu(x)``; decoded by the decoder mean (not exact: a reconstruction);
* ``flow``: the exact bijection ``z = f(y)`` at the bin centres ``y = (x + 1/2) / L``; decoding
  reproduces the endpoints exactly (up to float error);
* ``flow_matching``: ODE inversion — integrate the learned velocity backwards from the data
  (``t = 1``, bin centres) to the noise (``t = 0``), and forwards again to decode;
* ``diffusion``: DDIM inversion (Song et al. 2021, Sec. 4.3 / Dhariwal & Nichol 2021, App. F):
  the deterministic (``eta = 0``) DDIM update run from ``t = 0`` up to ``T``, then DDIM sampling
  from the interpolated codes.

Between the two codes: ``path=linear`` (straight line) or ``slerp`` (spherical, Shoemake 1985:
keeps the norm of Gaussian codes typical, the usual choice for noise latents); ``auto`` uses
linear for vae/flow and slerp for the noise codes of flow_matching and diffusion. Endpoint
reconstruction error is reported: how faithful the code is. Writes ``interpolate.png`` (one row per
pair: the real image a, the decoded path from a to b, the real image b), ``interpolate.pt``
(the decoded paths) and ``interpolate.json`` / ``.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.tasks.base import TaskConfig, TaskContext, TaskError, Unsupported, require_images, save_rows, write_report

SUPPORTED = "vae, flow, flow_matching (ODE inversion), diffusion (DDIM inversion)"


@dataclass
class Config(TaskConfig):
    """pairs: image pairs (the first 2*pairs examples of split: a = 0..pairs-1, b = pairs..2*pairs-1).
    steps: images along each path, endpoints included.
    path: auto, linear or slerp.
    inversion_steps: DDIM steps (diffusion) / ODE steps of the fixed-step solver (flow matching;
    null = the model's sampling solver).
    """

    pairs: int = 4
    steps: int = 8
    path: str = "auto"
    inversion_steps: int | None = 50


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """``(1 - t) a + t b`` for every ``t``: ``(B, ...)`` x ``(S,)`` -> ``(B, S, ...)``."""
    t = t.view(1, -1, *([1] * (a.ndim - 1)))
    return (1 - t) * a.unsqueeze(1) + t * b.unsqueeze(1)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of each flattened pair, ``(B, ...)`` x ``(S,)`` -> ``(B, S, ...)``;
    the norm is interpolated linearly, so endpoints are exact and the path is smooth."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    cos = ((fa / na) * (fb / nb)).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)  # (B, 1)
    tt = t.double().view(1, -1, 1)  # (1, S, 1)
    wa = torch.sin((1 - tt) * omega.unsqueeze(1)) / torch.sin(omega).unsqueeze(1)
    wb = torch.sin(tt * omega.unsqueeze(1)) / torch.sin(omega).unsqueeze(1)
    unit = wa * (fa / na).unsqueeze(1) + wb * (fb / nb).unsqueeze(1)  # (B, S, D)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    norm = (1 - tt) * na.unsqueeze(1) + tt * nb.unsqueeze(1)
    return (unit * norm).to(a.dtype).view(a.shape[0], -1, *a.shape[1:])


def _between(a: Tensor, b: Tensor, steps: int, path: str) -> Tensor:
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype)
    return lerp(a, b, t) if path == "linear" else slerp(a, b, t)


# -- flow matching: ODE inversion ---------------------------------------------------------------
def _fm_solver(family, steps: int | None):
    from genlab.families.flow_matching.ode import ODESolver

    s = family.solver
    return s if steps is None or s.adaptive else ODESolver(s.method, steps, s.rtol, s.atol)


@torch.no_grad()
def fm_encode(family, nets, x: Tensor, steps: int | None) -> Tensor:
    """Data -> noise code: the velocity ODE from ``t = 1`` back to ``t = 0``, from the bin centres."""
    from genlab.families.flow_matching.ode import CountedVelocity

    p = next(nets.parameters())
    y1 = 2.0 * (family.check_discrete(x).to(p.dtype) + 0.5) / family.info.levels - 1.0
    return _fm_solver(family, steps).integrate(CountedVelocity(nets["velocity"]), y1, 1.0, 0.0)


@torch.no_grad()
def fm_decode(family, nets, z: Tensor, steps: int | None) -> Tensor:
    from genlab.families.flow_matching.ode import CountedVelocity

    return family.to_data(_fm_solver(family, steps).integrate(CountedVelocity(nets["velocity"]), z, 0.0, 1.0))


# -- diffusion: DDIM inversion ------------------------------------------------------------------
@torch.no_grad()
def ddim_encode(family, nets, x: Tensor, steps: int | None) -> Tensor:
    """Data -> ``x_T`` by the deterministic DDIM update run forwards on ``steps`` respaced steps:
    ``x_{k+1} = sqrt(ab_{k+1}) x0_hat(x_k, k) + sqrt(1 - ab_{k+1}) eps_hat(x_k, k)``, from ``x_0``."""
    process = family.process.respace(min(steps or family.process.T, family.process.T))
    p = next(nets.parameters())
    y = family.scale(family.check_discrete(x), p.dtype)
    for k in range(process.T - 1):
        t = torch.full((y.shape[0],), k, device=y.device, dtype=torch.long)
        rev = family.reverse(nets, process, y, t, clip=False)
        t_next = t + 1
        y = process.at("sqrt_ab", t_next, y) * rev.x0 + process.at("sqrt_1m_ab", t_next, y) * rev.eps
    return y


@torch.no_grad()
def ddim_decode(family, nets, z: Tensor, steps: int | None) -> Tensor:
    from genlab.families.diffusion.samplers import DDIM

    return family.sample(nets, len(z), sampler=DDIM(steps=steps, eta=0.0), x_T=z)


# -- the task -----------------------------------------------------------------------------------
def paths(ctx: TaskContext, x_a: Tensor, x_b: Tensor, cfg: Config) -> tuple[Tensor, Tensor, str]:
    """``(decoded paths (B, S, *shape) in levels, endpoint reconstructions (2B, *shape), path)``."""
    family, nets, name = ctx.family, ctx.nets, ctx.family.name
    if cfg.path not in ("auto", "linear", "slerp"):
        raise TaskError(f"path={cfg.path!r}: choose auto, linear or slerp")
    if name in ("vae", "flow"):
        path = "linear" if cfg.path == "auto" else cfg.path
        if path != "linear":
            raise TaskError(f"path={path} is not available for {name} (its interpolate is linear); use path=linear")
        out = family.interpolate(nets, x_a, x_b, cfg.steps).round()
        ends = torch.cat([out[:, 0], out[:, -1]])
        return out, ends, path
    if name == "flow_matching":
        encode, decode = fm_encode, fm_decode
    elif name == "diffusion":
        encode, decode = ddim_encode, ddim_decode
    else:
        raise Unsupported("interpolate", name, "it has no encoder (no map from an image to a latent code)", SUPPORTED)
    path = "slerp" if cfg.path == "auto" else cfg.path
    z = encode(family, nets, torch.cat([x_a, x_b]), cfg.inversion_steps)
    za, zb = z[: len(x_a)], z[len(x_a):]
    zs = _between(za, zb, cfg.steps, path)  # (B, S, ...)
    out = decode(family, nets, zs.flatten(0, 1), cfg.inversion_steps).view(len(x_a), cfg.steps, *ctx.info.shape)
    return out.float(), torch.cat([out[:, 0], out[:, -1]]).float(), path


def run(ctx: TaskContext, cfg: Config) -> dict:
    require_images("interpolate", ctx, SUPPORTED)
    if cfg.steps < 2 or cfg.pairs < 1:
        raise TaskError(f"need steps >= 2 and pairs >= 1, got steps={cfg.steps}, pairs={cfg.pairs}")
    x, _ = ctx.real(cfg.split, 2 * cfg.pairs)
    if len(x) < 2 * cfg.pairs:
        raise TaskError(f"split {cfg.split} has only {len(x)} examples; lower pairs= (need 2 per pair)")
    x_a, x_b = x[: cfg.pairs], x[cfg.pairs:]
    torch.manual_seed(cfg.seed)
    out, ends, path = paths(ctx, x_a, x_b, cfg)
    levels = ctx.info.levels
    out = out.clamp(0, levels - 1).round().to(x.dtype)
    ends = ends.clamp(0, levels - 1).round()
    real_ends = torch.cat([x_a, x_b]).float()
    err = (ends - real_ends).abs()
    endpoint = {"mean_abs_error_levels": err.mean().item(), "exact_share": (err == 0).double().mean().item()}
    rows = [torch.cat([a[None], o, b[None]]) for a, o, b in zip(x_a, out, x_b)]
    png = save_rows(rows, levels, ctx.out_dir / "interpolate.png",
                    labels=[f"pair {i}" for i in range(cfg.pairs)])
    torch.save(out.cpu(), ctx.out_dir / "interpolate.pt")
    md = "\n".join([
        f"# Interpolation: {ctx.family.name} on {ctx.info.name}", "",
        f"checkpoint: `{ctx.ckpt}`; {cfg.pairs} pairs x {cfg.steps} steps, {path} path", "",
        "Each row: real image a | decoded path a -> b | real image b.", "",
        f"Endpoint reconstruction: mean |error| {endpoint['mean_abs_error_levels']:.4f} levels, "
        f"{100 * endpoint['exact_share']:.1f}% of pixels exact.", "", "![interpolation](interpolate.png)",
    ])
    report = {"task": "interpolate", "family": ctx.family.name, "dataset": ctx.info.name, "checkpoint": str(ctx.ckpt),
              "path": path, "pairs": cfg.pairs, "steps": cfg.steps, "endpoint": endpoint,
              "files": {"png": str(png), "paths": str(ctx.out_dir / "interpolate.pt")}}
    _, md_path = write_report(ctx.out_dir, "interpolate", report, md)
    report["summary"] = [f"{cfg.pairs} interpolations ({path}) by {ctx.family.name}: endpoints reproduced to "
                         f"{endpoint['mean_abs_error_levels']:.3f} levels on average "
                         f"({100 * endpoint['exact_share']:.1f}% exact)", f"strips: {png}", f"report: {md_path}"]
    return report
