"""Inpainting masks and the error measures on the masked pixels.

A mask is a boolean tensor ``(N, C, H, W)`` that is ``True`` on the MISSING sub-pixels; it is the
same for all channels of a pixel (a pixel is either seen or not). Kinds (stable names):

* ``box``: a centred square of side ``round(box_frac * H)`` x ``round(box_frac * W)``, the same
  for every image;
* ``random``: every pixel missing independently with probability ``random_p`` (a fresh draw
  per image, from a seeded generator);
* ``bottom``: the bottom half of the rows (``h >= H // 2``) — with raster-order autoregressive
  models the one mask whose missing pixels all come after the observed ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genlab.tasks.base import TaskError, psnr


def _box(n: int, h: int, w: int, frac: float, g: torch.Generator) -> Tensor:
    bh, bw = max(1, round(frac * h)), max(1, round(frac * w))
    top, left = (h - bh) // 2, (w - bw) // 2
    m = torch.zeros(n, 1, h, w, dtype=torch.bool)
    m[:, :, top:top + bh, left:left + bw] = True
    return m


def _random(n: int, h: int, w: int, p: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, 1, h, w, generator=g) < p


def _bottom(n: int, h: int, w: int, _: float, g: torch.Generator) -> Tensor:
    m = torch.zeros(n, 1, h, w, dtype=torch.bool)
    m[:, :, h // 2:] = True
    return m


# name -> (builder(n, h, w, parameter, generator) -> (N, 1, H, W) bool, the Config field of its parameter)
MASKS: dict[str, tuple[Callable[[int, int, int, float, torch.Generator], Tensor], str]] = {
    "box": (_box, "box_frac"),
    "random": (_random, "random_p"),
    "bottom": (_bottom, ""),
}


def make_mask(kind: str, n: int, shape: tuple[int, int, int], box_frac: float = 0.5, random_p: float = 0.5,
              seed: int = 0) -> Tensor:
    """Missing-pixel mask ``(n, C, H, W)`` bool of ``kind`` (module docstring), on the CPU."""
    if kind not in MASKS:
        raise TaskError(f"mask={kind!r} is unknown; choose one of {', '.join(MASKS)} (e.g. mask=box box_frac=0.5)")
    if not 0 < box_frac <= 1:
        raise TaskError(f"box_frac={box_frac} must be in (0, 1]: the box side as a fraction of the image side")
    if not 0 < random_p < 1:
        raise TaskError(f"random_p={random_p} must be in (0, 1): the probability that a pixel is missing")
    c, h, w = shape
    build, param = MASKS[kind]
    m = build(n, h, w, box_frac if param == "box_frac" else random_p, torch.Generator().manual_seed(seed))
    return m.expand(n, c, h, w).clone()


def masked_errors(pred: Tensor, target: Tensor, missing: Tensor, levels: int) -> dict[str, float]:
    """MSE, MAE and PSNR (dB, peak 1) on the missing sub-pixels, values scaled to ``[0, 1]``
    (level ``v`` -> ``v / (L - 1)``); ``pixels``: how many sub-pixels were scored."""
    a = pred[missing].double() / (levels - 1)
    b = target[missing].double() / (levels - 1)
    if a.numel() == 0:
        return {"mse": math.nan, "mae": math.nan, "psnr": math.nan, "pixels": 0}
    return {"mse": float((a - b).pow(2).mean()), "mae": float((a - b).abs().mean()), "psnr": psnr(a, b, 1.0),
            "pixels": int(a.numel())}


def mean_fill(x: Tensor, missing: Tensor, levels: int) -> Tensor:
    """Baseline: every missing sub-pixel set to the (rounded) mean of the observed ones of its
    image; mid-grey for an image with nothing observed. Same dtype as ``x``."""
    seen = (~missing).flatten(1)
    xf = x.flatten(1).double()
    count = seen.sum(1)
    mean = torch.where(count > 0, (xf * seen).sum(1) / count.clamp_min(1), torch.full_like(xf[:, 0], (levels - 1) / 2))
    fill = mean.round().clamp(0, levels - 1).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(missing, fill.expand_as(x), x)


def noise_fill(x: Tensor, missing: Tensor, levels: int, generator: torch.Generator) -> Tensor:
    """Baseline: every missing sub-pixel drawn uniformly from the ``L`` levels."""
    u = torch.randint(0, levels, x.shape, generator=generator).to(x.device, x.dtype)
    return torch.where(missing, u, x)


def show_missing(x: Tensor, missing: Tensor, levels: int) -> Tensor:
    """The observed image with its missing pixels painted mid-grey (for the PNG)."""
    return torch.where(missing, torch.full_like(x, (levels - 1) // 2), x)
