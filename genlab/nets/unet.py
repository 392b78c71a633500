"""Time-conditioned backbones ``net(x, t) -> (B, out_mult * C, ...)`` for diffusion and flow matching.

Both take ``t`` of shape ``(B,)`` in ``[0, 1]`` (families rescale their own time, e.g.
``t = step / T``), embed it with sinusoids (Vaswani et al. 2017, as in DDPM), and return a
tensor shaped like ``x`` with ``out_mult`` times its channels, so that a family can ask for
two outputs per dimension (e.g. a mean and a variance) with ``out_mult=2``.

* :class:`UNet`: the DDPM / improved-DDPM UNet (Ho et al. 2020, Nichol & Dhariwal 2021) —
  residual blocks with GroupNorm, SiLU, the time embedding added per block, self-attention
  at the lowest resolutions, and skip connections; any image size (decoder upsampling
  matches the encoder's sizes, so 28x28 -> 14 -> 7 works).
* :class:`TimeMLP`: the same contract for vectors and small images (toy data, 2-D points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``scale * t`` (``t``: (B,)) -> (B, dim): ``[cos(w_i s t), sin(w_i s t)]``
    with ``w_i = max_period ** (-i / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and ch // g >= 2 or g == 1)


class TimeEmbedding(nn.Module):
    """``t`` (B,) -> (B, dim): sinusoids followed by a two-layer MLP."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, 4 * dim))
        self.out_dim = 4 * dim

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim, self.scale))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding (per channel), GroupNorm-SiLU-dropout-conv, + skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2, self.drop = nn.GroupNorm(_groups(c_out), c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.t_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.out = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, HW, c/heads)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """DDPM-style UNet on images ``(B, C, H, W)``.

    Args:
        shape: the data shape ``(C, H, W)``.
        out_mult: output channels = ``out_mult * C``.
        channels: base width; level ``i`` has ``channels * channel_mults[i]`` channels.
        channel_mults: one entry per resolution; ``len - 1`` downsamplings by 2.
        num_res_blocks: residual blocks per level (encoder; the decoder has one more).
        attn_levels: levels (0 = full resolution) with self-attention after each block;
            by default the lowest resolution only.
        heads: attention heads.
        dropout: dropout inside the residual blocks.
        time_scale: the sinusoids see ``time_scale * t``.
    """

    input_kinds = ("image",)

    def __init__(
        self,
        shape: Sequence[int],
        out_mult: int = 1,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] | None = None,
        heads: int = 4,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        c_data = shape[0]
        levels = len(channel_mults)
        attn = set(attn_levels) if attn_levels is not None else {levels - 1}
        self.time = TimeEmbedding(channels, time_scale)
        t_dim = self.time.out_dim
        self.stem = nn.Conv2d(c_data, channels, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [channels], channels
        for lvl, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, channels * mult, t_dim, dropout)]
                ch = channels * mult
                if lvl in attn:
                    blocks.append(Attention(ch, heads if ch % heads == 0 else 1))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if lvl < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, t_dim, dropout), Attention(ch, heads if ch % heads == 0 else 1),
                                  ResBlock(ch, ch, t_dim, dropout)])
        self.up = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), channels * mult, t_dim, dropout)]
                ch = channels * mult
                if lvl in attn:
                    blocks.append(Attention(ch, heads if ch % heads == 0 else 1))
                if lvl > 0 and i == num_res_blocks:
                    blocks.append(_Upsample(ch))
                self.up.append(nn.ModuleList(blocks))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_mult * c_data, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x``: (B, C, H, W) float; ``t``: (B,) in [0, 1] -> (B, out_mult*C, H, W)."""
        temb = self.time(t.expand(x.shape[0]) if t.dim() == 0 or t.numel() == 1 else t)
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, temb) if not isinstance(block, nn.Conv2d) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for block in blocks:
                h = block(h, temb, hs[-1].shape[-2:]) if isinstance(block, _Upsample) else block(h, temb)
        return self.head(h)


class _Upsample(nn.Module):
    """Nearest upsampling to the next skip's size (handles odd sizes: 7 -> 14), then a conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, temb: Tensor, size: torch.Size) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class TimeMLP(nn.Module):
    """``net(x, t)`` for vectors or small images: flatten, concatenate the time embedding into
    every hidden layer's input (residual SiLU MLP), reshape to ``(B, out_mult * C, ...)``.

    Args:
        shape: the data shape, e.g. ``(2,)`` for points or ``(1, 8, 8)``.
        out_mult: outputs per input dimension (stacked along dim 1).
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        time_dim: size of the sinusoidal time embedding.
        time_scale: the sinusoids see ``time_scale * t``.
    """

    input_kinds = ("image", "points")

    def __init__(
        self,
        shape: Sequence[int],
        out_mult: int = 1,
        hidden: int = 256,
        layers: int = 3,
        time_dim: int = 64,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.shape, self.out_mult = tuple(shape), out_mult
        d = math.prod(self.shape)
        self.time = TimeEmbedding(time_dim, time_scale)
        self.inp = nn.Linear(d, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden + self.time.out_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(layers)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_mult * d))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x``: (B, *shape); ``t``: (B,) in [0, 1] -> (B, out_mult * shape[0], *shape[1:])."""
        b = x.shape[0]
        temb = self.time(t.expand(b) if t.numel() == 1 else t)
        h = self.inp(x.reshape(b, -1))
        for block in self.blocks:
            h = h + block(torch.cat([F.silu(h), temb], dim=-1))
        out = self.out(h)
        if self.out_mult == 1:
            return out.view(b, *self.shape)
        # (B, out_mult, D) -> stacked along dim 1 like the UNet's channels
        return out.view(b, self.out_mult, *self.shape).reshape(b, self.out_mult * self.shape[0], *self.shape[1:])
