"""Time-conditioned backbones ``net(x, t, c=None) -> (B, out_mult * C, ...)`` for diffusion and flow matching.

Both take ``t`` of shape ``(B,)`` in ``[0, 1]`` (families rescale their own time, e.g.
``t = step / T``), embed it with sinusoids (Vaswani et al. 2017, as in DDPM), and return a
tensor shaped like ``x`` with ``out_mult`` times its channels, so that a family can ask for
two outputs per dimension (e.g. a mean and a variance) with ``out_mult=2``.

* :class:`UNet`: the DDPM / improved-DDPM UNet (Ho et al. 2020, Nichol & Dhariwal 2021) —
  residual blocks with GroupNorm, SiLU, the time embedding added per block, self-attention
  at the lowest resolutions, and skip connections; any image size (decoder upsampling
  matches the encoder's sizes, so 28x28 -> 14 -> 7 works).
* :class:`TimeMLP`: the same contract for vectors and small images (toy data, 2-D points).

**Conditions.** Both take an optional condition embedding ``c`` ``(B, condition_dim)``, ADDED to the
time embedding before it reaches the blocks (the class conditioning of guided-diffusion, Dhariwal &
Nichol 2021, and EDM, Karras et al. 2022): ``temb(t) + c``. The nets own no label table — the family
builds one of width :func:`condition_dim` (:meth:`genlab.conditioning.ClassCondition.embedding`) and
:class:`LabelConditioned` puts the two together as ``net(x, t, y)``. Without ``c`` a net is exactly
the unconditional one (same parameters, same state-dict keys, same numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.conditioning import ConditionError


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


def _with_condition(temb: Tensor, c: Tensor | None) -> Tensor:
    """``temb + c`` (the condition embedding added to the time embedding); ``temb`` itself without ``c``."""
    if c is None:
        return temb
    if c.shape != temb.shape:
        raise ValueError(f"the condition embedding must be (B, {temb.shape[-1]}) like the time embedding, got "
                         f"{tuple(c.shape)}")
    return temb + c.to(temb.dtype)


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


def _attention(ch: int, heads: int) -> Attention:
    """Self-attention on ``ch`` channels with ``heads`` heads, or one head where ``heads`` does not divide ``ch``."""
    return Attention(ch, heads if ch % heads == 0 else 1)


@dataclass(frozen=True)
class _Widths:
    """What every level of a :class:`UNet` is built from: level ``lvl`` has ``channels *
    channel_mults[lvl]`` channels and, if ``lvl in attn``, self-attention after each block."""

    channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attn: frozenset[int]
    heads: int
    t_dim: int
    dropout: float

    def blocks(self, c_in: int, lvl: int) -> list[nn.Module]:
        """One block of level ``lvl`` from ``c_in`` channels: a :class:`ResBlock`, then attention if any."""
        c_out = self.channels * self.channel_mults[lvl]
        blocks: list[nn.Module] = [ResBlock(c_in, c_out, self.t_dim, self.dropout)]
        if lvl in self.attn:
            blocks.append(_attention(c_out, self.heads))
        return blocks


def _encoder(w: _Widths) -> tuple[nn.ModuleList, list[int]]:
    """The downsampling path: per level ``num_res_blocks`` blocks, then (except at the lowest
    resolution) a stride-2 conv. Returns the path and the channels of every skip it leaves
    (the stem's first), in order; the last entry is the path's output width."""
    down, skips, ch = nn.ModuleList(), [w.channels], w.channels
    for lvl, mult in enumerate(w.channel_mults):
        for _ in range(w.num_res_blocks):
            down.append(nn.ModuleList(w.blocks(ch, lvl)))
            ch = w.channels * mult
            skips.append(ch)
        if lvl < len(w.channel_mults) - 1:
            down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
            skips.append(ch)
    return down, skips


def _decoder(w: _Widths, ch: int, skips: list[int]) -> tuple[nn.ModuleList, int]:
    """The upsampling path from ``ch`` channels: per level (lowest resolution first)
    ``num_res_blocks + 1`` blocks, each on its input concatenated with the next skip
    (``skips`` is consumed from its end), the last one of every level but the full-resolution
    one followed by an :class:`_Upsample`. Returns the path and its output width."""
    up = nn.ModuleList()
    for lvl, mult in reversed(list(enumerate(w.channel_mults))):
        for i in range(w.num_res_blocks + 1):
            blocks = w.blocks(ch + skips.pop(), lvl)
            ch = w.channels * mult
            if lvl > 0 and i == w.num_res_blocks:
                blocks.append(_Upsample(ch))
            up.append(nn.ModuleList(blocks))
    return up, ch


def _head(ch: int, c_out: int) -> nn.Sequential:
    """GroupNorm-SiLU-conv to ``c_out`` channels, the conv zero-initialised (the net starts at 0)."""
    head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, c_out, 3, padding=1))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


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
        attn = frozenset(attn_levels) if attn_levels is not None else frozenset({len(channel_mults) - 1})
        # registration (= state-dict) order, and the order the weights are drawn in:
        # time, stem, down, mid, up, head
        self.time = TimeEmbedding(channels, time_scale)
        t_dim = self.time.out_dim
        widths = _Widths(channels, tuple(channel_mults), num_res_blocks, attn, heads, t_dim, dropout)
        self.stem = nn.Conv2d(shape[0], channels, 3, padding=1)
        self.down, skips = _encoder(widths)
        ch = skips[-1]
        self.mid = nn.ModuleList([ResBlock(ch, ch, t_dim, dropout), _attention(ch, heads),
                                  ResBlock(ch, ch, t_dim, dropout)])
        self.up, ch = _decoder(widths, ch, skips)
        self.head = _head(ch, out_mult * shape[0])

    @property
    def condition_dim(self) -> int:
        """The width of the time embedding, which a condition embedding ``c`` is added to."""
        return self.time.out_dim

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """``x``: (B, C, H, W) float; ``t``: (B,) in [0, 1]; ``c``: None or (B, condition_dim), added to
        the time embedding -> (B, out_mult*C, H, W)."""
        temb = _with_condition(self.time(t.expand(x.shape[0]) if t.dim() == 0 or t.numel() == 1 else t), c)
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

    @property
    def condition_dim(self) -> int:
        """The width of the time embedding, which a condition embedding ``c`` is added to."""
        return self.time.out_dim

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """``x``: (B, *shape); ``t``: (B,) in [0, 1]; ``c``: None or (B, condition_dim), added to the time
        embedding -> (B, out_mult * shape[0], *shape[1:])."""
        b = x.shape[0]
        temb = _with_condition(self.time(t.expand(b) if t.numel() == 1 else t), c)
        h = self.inp(x.reshape(b, -1))
        for block in self.blocks:
            h = h + block(torch.cat([F.silu(h), temb], dim=-1))
        out = self.out(h)
        if self.out_mult == 1:
            return out.view(b, *self.shape)
        # (B, out_mult, D) -> stacked along dim 1 like the UNet's channels
        return out.view(b, self.out_mult, *self.shape).reshape(b, self.out_mult * self.shape[0], *self.shape[1:])


def condition_dim(net: nn.Module) -> int:
    """The width of the condition embedding ``net`` adds to its time embedding (:attr:`UNet.condition_dim`);
    a clear error for a backbone that takes no condition."""
    dim = getattr(net, "condition_dim", None)
    if not isinstance(dim, int):
        raise ConditionError(f"{type(net).__name__} takes no condition embedding, so it cannot be class-conditional: "
                         "use genlab.nets.unet.UNet or genlab.nets.unet.TimeMLP as model.net, or drop +conditional")
    return dim


class LabelConditioned(nn.Module):
    """``net(x, t, y) = backbone(x, t, c = embed(y))``: a backbone and a label table
    (:class:`genlab.conditioning.LabelEmbedding`, ``y (B,) -> (B, condition_dim)``) as one network of
    ``(x, t, y)``. It holds the two modules as they are (no copy): a view of a run's nets for the
    samplers, or, deep-copied, a frozen guide that keeps its own labels (autoguidance)."""

    def __init__(self, net: nn.Module, embed: nn.Module) -> None:
        super().__init__()
        self.net, self.embed = net, embed

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(x, t, self.embed(y))
