"""Latent exploration: interpolate between pairs of real images in a model's latent space.

Every family that is an :class:`~genlab.families.base.Encoder` maps an image to a latent code and
back (each documents how: a posterior mean, an exact bijection, ODE or DDIM inversion of the
generative process; listed by ``genlab-task interpolate --help``). Between the two codes:
``path=linear`` (straight line) or ``slerp`` (spherical, Shoemake 1985: keeps the norm of Gaussian
codes typical, the usual choice for noise latents); ``auto`` takes the family's default (its first
``latent_paths``). Endpoint reconstruction error is reported: how faithful the code is. Writes
``interpolate.png`` (one row per pair: the real image a, the decoded path from a to b, the real
image b), ``interpolate.pt`` (the decoded paths) and ``interpolate.json`` / ``.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.families.base import Encoder
from genlab.tasks.base import (TaskConfig, TaskContext, TaskError, Unsupported, label_kwargs, require_images,
                               save_rows, write_report)
from genlab.tasks.registry import TASKS

@dataclass
class Config(TaskConfig):
    """pairs: image pairs (the first 2*pairs examples of split: a = 0..pairs-1, b = pairs..2*pairs-1).
    steps: images along each path, endpoints included.
    path: auto, linear or slerp.
    inversion_steps: steps of an encoder computed by integration (DDIM inversion steps; ODE steps of a
    fixed-step solver; null = the model's sampling solver); ignored by closed-form encoders.
    label: a class-conditional model encodes and decodes everything as this class (null: each image is
    encoded with its own label, a path decoded with a's label on its first half and b's on the second).
    """

    pairs: int = 4
    steps: int = 8
    path: str = "auto"
    inversion_steps: int | None = 50
    label: int | None = None


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


# -- the task -----------------------------------------------------------------------------------
def paths(ctx: TaskContext, x_a: Tensor, x_b: Tensor, cfg: Config,
          y: Tensor | None = None) -> tuple[Tensor, Tensor, str]:
    """``(decoded paths (B, S, *shape) in levels, endpoint reconstructions (2B, *shape), path)``; ``y``: the
    labels ``(2B,)`` of ``[x_a, x_b]`` for a conditional model (encoded with their own labels; a path
    decoded with ``a``'s label on its first half, ``b``'s on the second)."""
    family, nets = ctx.family, ctx.nets
    if cfg.path not in ("auto", "linear", "slerp"):
        raise TaskError(f"path={cfg.path!r}: choose auto, linear or slerp")
    if not isinstance(family, Encoder):
        raise Unsupported.lacking("interpolate", family, Encoder)
    path = family.latent_paths[0] if cfg.path == "auto" else cfg.path
    if path not in family.latent_paths:
        raise TaskError(f"path={path} is not available for {family.name} (its interpolate is "
                        f"{' or '.join(family.latent_paths)}); use path={family.latent_paths[0]}")
    z = family.to_latent(nets, torch.cat([x_a, x_b]), cfg.inversion_steps, **({} if y is None else {"y": y}))
    za, zb = z[: len(x_a)], z[len(x_a):]
    zs = _between(za, zb, cfg.steps, path)  # (B, S, ...)
    kw = {} if y is None else {"y": _path_labels(y, len(x_a), cfg.steps)}
    out = family.from_latent(nets, zs.flatten(0, 1), cfg.inversion_steps, **kw).float().round()
    out = out.view(len(x_a), cfg.steps, *ctx.info.shape)
    return out, torch.cat([out[:, 0], out[:, -1]]), path


def _path_labels(y: Tensor, pairs: int, steps: int) -> Tensor:
    """Labels of the ``pairs * steps`` decoded points: ``a``'s on the first half of each path, ``b``'s after."""
    first = torch.arange(steps, device=y.device) < (steps + 1) // 2
    return torch.where(first[None], y[:pairs, None], y[pairs:, None]).flatten()


def run(ctx: TaskContext, cfg: Config) -> dict:
    require_images("interpolate", ctx, TASKS["interpolate"].families)
    if cfg.steps < 2 or cfg.pairs < 1:
        raise TaskError(f"need steps >= 2 and pairs >= 1, got steps={cfg.steps}, pairs={cfg.pairs}")
    x, y = ctx.real(cfg.split, 2 * cfg.pairs)
    if len(x) < 2 * cfg.pairs:
        raise TaskError(f"split {cfg.split} has only {len(x)} examples; lower pairs= (need 2 per pair)")
    x_a, x_b = x[: cfg.pairs], x[cfg.pairs:]
    torch.manual_seed(cfg.seed)
    out, ends, path = paths(ctx, x_a, x_b, cfg, label_kwargs(ctx, y, cfg.label).get("y"))
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
