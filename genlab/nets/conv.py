"""Convolutional encoder/decoder backbones sized from the image shape.

The encoder halves the resolution with stride-2 convolutions until it is at most
``min_size``; the decoder mirrors it with nearest upsampling and crops to the exact
``(H, W)`` (so 28x28, 8x8 and 32x32 all work with one definition).

Both take an optional condition vector ``cond`` ``(B, cond_dim)`` (e.g. a class embedding) when
built with ``cond_dim > 0`` (Sohn et al. 2015, CVAE: encoder ``q(z|x, y)``, decoder ``p(x|z, y)``):
the encoder adds a learned per-channel bias ``W c`` to its first feature map and concatenates ``c``
to the input of its linear head; the decoder concatenates ``c`` to the latent. ``cond_dim = 0``
(default): the unconditional nets, with the same parameters as always.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.nets.mlp import check_cond


def num_downsamples(size: int, min_size: int = 4) -> int:
    """How many stride-2 halvings take ``size`` to at most ``min_size``."""
    return max(0, math.ceil(math.log2(size / min_size))) if size > min_size else 0


class ConvEncoder(nn.Module):
    """``(B, C, H, W) -> (B, out_dim)``: conv stack + linear head. ``in_dim = (C, H, W)``;
    ``cond_dim``: width of the optional condition (module docstring)."""

    input_kinds = ("image",)

    def __init__(self, in_dim: tuple[int, int, int], out_dim: int, channels: int = 32, min_size: int = 4,
                 cond_dim: int = 0):
        super().__init__()
        self.cond_dim = cond_dim
        c, h, w = in_dim
        n = num_downsamples(max(h, w), min_size)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.SiLU()]
        ch = channels
        for _ in range(n):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.SiLU()]
            ch *= 2
            h, w = h // 2, w // 2  # kernel 4, stride 2, padding 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch * h * w + cond_dim, out_dim)
        if cond_dim:
            self.cond_bias = nn.Linear(cond_dim, channels)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        check_cond(cond, self.cond_dim, "ConvEncoder")
        if cond is None:
            return self.head(self.features(x).flatten(1))
        cond = cond.to(x.dtype)
        h = self.features[0](x) + self.cond_bias(cond)[:, :, None, None]  # a class bias per channel
        return self.head(torch.cat([self.features[1:](h).flatten(1), cond], 1))


class ConvDecoder(nn.Module):
    """``(B, in_dim) -> (B, *out_dim)``: linear + upsampling conv stack. ``out_dim = (C, H, W)``;
    ``cond_dim``: width of the optional condition, concatenated to the latent (module docstring)."""

    input_kinds = ("image",)

    def __init__(self, in_dim: int, out_dim: tuple[int, int, int], channels: int = 32, min_size: int = 4,
                 cond_dim: int = 0):
        super().__init__()
        self.cond_dim = cond_dim
        c, h, w = out_dim
        n = num_downsamples(max(h, w), min_size)
        self.out_hw = (h, w)
        self.h0, self.w0 = math.ceil(h / 2**n), math.ceil(w / 2**n)
        self.ch0 = channels * 2**n
        self.head = nn.Linear(in_dim + cond_dim, self.ch0 * self.h0 * self.w0)
        layers: list[nn.Module] = [nn.SiLU()]
        ch = self.ch0
        for _ in range(n):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.SiLU()]
            ch //= 2
        layers.append(nn.Conv2d(ch, c, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        check_cond(cond, self.cond_dim, "ConvDecoder")
        z = z if cond is None else torch.cat([z, cond.to(z.dtype)], 1)
        x = self.body(self.head(z).view(-1, self.ch0, self.h0, self.w0))
        return x[..., : self.out_hw[0], : self.out_hw[1]]
