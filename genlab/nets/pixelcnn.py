"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders", Sec. 2.1-2.2), an :class:`~genlab.nets.ar.ARNet` for images.

Two stacks of masked convolutions remove the blind spot of the original PixelCNN:

* the **vertical stack** sees the rows at and above the current one: a ``(k//2+1, k)`` kernel
  padded ``k//2`` rows on top only, so output row ``i`` covers input rows ``i-k//2 .. i``;
* the **horizontal stack** sees the current row up to the current pixel: a ``(1, k//2+1)``
  kernel padded ``k//2`` columns on the left. It also receives the vertical stack's
  pre-activation, **shifted down by one row** (so row ``i`` only gets rows ``< i``) through a
  1x1 convolution (the vertical -> horizontal link of Fig. 2).

Each layer is gated (Eq. 2): ``y = tanh(W_f * x) ⊙ σ(W_g * x)``; the horizontal stack has a
residual connection (from the second layer on) and a 1x1 skip output; the skips are summed and
fed to a ReLU-1x1-ReLU-1x1 head that outputs ``P`` parameters per colour channel.

Colour channels are generated R -> G -> B at each pixel (:func:`~genlab.nets.ar.raster_order`).
The hidden features are split into ``C`` contiguous groups, group ``c`` serving channel ``c``;
the current-pixel tap of every horizontal convolution and every 1x1 convolution on the
horizontal path carries a channel mask: type A (first layer, input -> features) lets group ``c``
see input channels ``< c``; type B (later layers, head) lets group ``c`` see groups ``<= c``.
The vertical stack needs no channel mask: it reaches the horizontal stack only after the shift.

**Conditional** (``conditional=True``, Sec. 2.3, Eq. 4): a condition vector ``h`` (the class
embedding, ``(B, cond_dim)``, ``cond_dim = channels``) enters every layer of BOTH stacks as a
per-channel bias of the gated pre-activation,
``y = tanh(W_{k,f} * x + V_{k,f}^T h) ⊙ σ(W_{k,g} * x + V_{k,g}^T h)``, with its own
``V = [V_f, V_g]`` (a bias-free linear map ``cond_dim -> 2n``) per layer and per stack. The bias is
the same at every position and depends on no pixel, so the masks keep the net causal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.scaling import GridScale
from genlab.nets.ar import ARNet


def feature_groups(n: int, colours: int) -> Tensor:
    """Colour group of each of ``n`` feature channels: ``colours`` contiguous blocks, ``(n,)``."""
    return torch.arange(n) * colours // n


def channel_mask(out_groups: Tensor, in_groups: Tensor, strict: bool) -> Tensor:
    """``(out, in)`` float mask: output group ``g`` sees input groups ``< g`` (type A, ``strict``)
    or ``<= g`` (type B)."""
    o, i = out_groups[:, None], in_groups[None, :]
    return (o > i if strict else o >= i).float()


def gate(x: Tensor) -> Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` of ``x = [a, b]`` ``(B, 2n, H, W) -> (B, n, H, W)``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: Tensor) -> Tensor:
    """Move every row one down (zero row on top): row ``i`` of the result is row ``i-1`` of ``x``."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class MaskedConv2d(nn.Conv2d):
    """Convolution with an optional fixed weight mask ``(out, in, kh, kw)`` and explicit
    (asymmetric) zero padding ``pad = (left, right, top, bottom)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], mask: Tensor | None = None,
                 pad: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        super().__init__(in_ch, out_ch, kernel)
        self.register_buffer("mask", None if mask is None else mask.expand_as(self.weight).clone(), persistent=False)
        self.pad = pad
        if self.mask is not None:
            with torch.no_grad():
                self.weight.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if self.mask is None else self.weight * self.mask
        return F.conv2d(F.pad(x, self.pad), weight, self.bias)


def pointwise(in_groups: Tensor, out_groups: Tensor, strict: bool = False) -> MaskedConv2d:
    """1x1 convolution whose output group ``g`` sees input groups ``<= g`` (``< g`` if strict)."""
    mask = channel_mask(out_groups, in_groups, strict)[:, :, None, None]
    return MaskedConv2d(len(in_groups), len(out_groups), (1, 1), mask)


class GatedLayer(nn.Module):
    """One gated layer with a vertical and a horizontal stack (Fig. 2 of the paper).

    The vertical stack never reads the horizontal one, so a net runs every layer's
    :meth:`vertical` first and then every layer's :meth:`horizontal`, which adds the vertical
    pre-activation shifted down by one row (the link).

    Args:
        in_groups: colour group of each input channel (``arange(C)`` for the image itself).
        hidden: feature channels ``n`` of both stacks.
        colours: ``C``.
        kernel_size: odd ``k``; vertical kernel ``(k//2+1, k)``, horizontal ``(1, k//2+1)``.
        first: mask A on the current pixel (and no residual), else mask B.
        cond_dim: width of the condition ``h``; None: unconditional (no ``V`` maps).
    """

    def __init__(self, in_groups: Tensor, hidden: int, colours: int, kernel_size: int, first: bool,
                 cond_dim: int | None = None) -> None:
        super().__init__()
        k, c_in = kernel_size // 2, len(in_groups)
        groups = feature_groups(hidden, colours)  # (n,)
        gated = groups.repeat(2)  # (2n,): [a, b] halves share the groups
        self.v_conv = MaskedConv2d(c_in, 2 * hidden, (k + 1, 2 * k + 1), pad=(k, k, k, 0))
        h_mask = torch.ones(2 * hidden, c_in, 1, k + 1)
        h_mask[:, :, 0, k] = channel_mask(gated, in_groups, strict=first)  # the current pixel
        self.h_conv = MaskedConv2d(c_in, 2 * hidden, (1, k + 1), h_mask, pad=(k, 0, 0, 0))
        self.link = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # rows above only: no channel mask
        self.out = pointwise(groups, groups.repeat(2))  # [residual update, skip]
        self.residual = not first
        # Eq. (4): V_{k,f}, V_{k,g} of each stack, stacked as [f, g]; None (no parameters) when unconditional
        self.v_class = None if cond_dim is None else nn.Linear(cond_dim, 2 * hidden, bias=False)
        self.h_class = None if cond_dim is None else nn.Linear(cond_dim, 2 * hidden, bias=False)

    @staticmethod
    def class_bias(pre: Tensor, proj: nn.Module | None, c: Tensor | None) -> Tensor:
        """``pre (B, 2n, H, W) + V^T c`` broadcast over positions (Eq. 4); ``pre`` itself when ``c`` is None."""
        return pre if c is None or proj is None else pre + proj(c).to(pre.dtype)[:, :, None, None]

    def vertical(self, v: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``v (B, C_in, H, W)`` (and the condition ``c (B, cond_dim)``) -> the next layer's vertical
        input ``(B, n, H, W)`` (row ``i`` sees input rows ``<= i``) and the link into the horizontal
        stack ``(B, 2n, H, W)``: the pre-activation shifted down one row (row ``i`` sees rows ``< i``)
        through a 1x1 conv."""
        v_pre = self.class_bias(self.v_conv(v), self.v_class, c)  # (B, 2n, H, W)
        return gate(v_pre), self.link(shift_down(v_pre))

    def horizontal(self, h: Tensor, link: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``h (B, C_in, H, W)``, the vertical ``link (B, 2n, H, W)`` (and the condition ``c``) -> new
        ``h`` and the skip output, each ``(B, n, H, W)``; pixel ``(i, j)`` sees ``h`` at ``(i, <= j)``."""
        h_pre = self.class_bias(self.h_conv(h) + link, self.h_class, c)  # (B, 2n, H, W)
        update, skip = self.out(gate(h_pre)).chunk(2, dim=1)  # (B, n, H, W) each
        return (update + h if self.residual else update), skip


class GatedPixelCNN(ARNet):
    """Gated PixelCNN, unconditional or class-conditional (see module docstring).

    Sampling (:meth:`next_params`) caches the vertical links into the current row, computed
    once per row, and runs only the horizontal stack of the current row at each step.

    Args:
        shape: ``(C, H, W)``; any ``H, W``, any number of colour channels ``C <= channels``.
        levels: discrete levels per sub-pixel; the input is scaled to ``[-1, 1]``.
        num_params: ``P`` output parameters per sub-pixel.
        channels: feature channels of both stacks.
        layers: gated layers; the receptive field reaches ``layers * (k//2)`` pixels left and
            up (plus one row through the link), for equal kernel sizes.
        kernel_size: odd ``k >= 3``.
        out_hidden: channels of the hidden 1x1 layer of the output head.
        first_kernel_size: odd kernel of the first (mask A) layer, default ``kernel_size``; it
            convolves only the ``C`` image channels, so a large one (7, as in the paper) widens
            the receptive field almost for free.
        conditional: take a condition vector ``c (B, channels)`` (:attr:`cond_dim`) that biases
            every gate of both stacks (Eq. 4); False: the unconditional net (no ``V`` parameters).
    """

    input_kinds = ("image",)

    def __init__(self, shape: tuple[int, int, int], levels: int, num_params: int, channels: int = 64,
                 layers: int = 6, kernel_size: int = 5, out_hidden: int = 128,
                 first_kernel_size: int | None = None, conditional: bool = False) -> None:
        super().__init__(shape, levels, num_params)
        c, k0 = self.shape[0], first_kernel_size or kernel_size
        if min(kernel_size, k0) < 3 or (kernel_size * k0) % 2 == 0 or layers < 1 or min(channels, out_hidden) < c:
            raise ValueError(f"GatedPixelCNN needs odd kernel sizes >= 3 (got {kernel_size}, {k0}), layers >= 1 "
                             f"(got {layers}) and channels, out_hidden >= {c} colour channels")
        groups, self.cond_dim = feature_groups(channels, c), channels if conditional else None
        self.layers = nn.ModuleList(
            [GatedLayer(torch.arange(c), channels, c, k0, first=True, cond_dim=self.cond_dim)]
            + [GatedLayer(groups, channels, c, kernel_size, first=False, cond_dim=self.cond_dim)
               for _ in range(layers - 1)]
        )
        hidden_groups = feature_groups(out_hidden, c)
        out_groups = torch.arange(c).repeat_interleave(num_params)  # channel c * P + p -> group c
        self.head = nn.Sequential(nn.ReLU(), pointwise(groups, hidden_groups), nn.ReLU(),
                                  pointwise(hidden_groups, out_groups))
        self.vertical_reach = k0 // 2 + (layers - 1) * (kernel_size // 2)  # input rows above a v output

    def _scale(self, x: Tensor) -> Tensor:
        """Discrete ``x`` -> the grid points of ``[-1, 1]`` in the weights' dtype."""
        return GridScale(self.levels).to_model(x, self.head[-1].weight.dtype)

    def _vertical(self, z: Tensor, c: Tensor | None = None) -> list[Tensor]:
        """Every layer's link into the horizontal stack, ``(B, 2n, H, W)`` each."""
        links, v = [], z
        for layer in self.layers:
            v, link = layer.vertical(v, c)  # (B, n, H, W), (B, 2n, H, W)
            links.append(link)
        return links

    def _horizontal(self, z: Tensor, links: list[Tensor], c: Tensor | None = None) -> Tensor:
        """Horizontal stack over ``z (B, C, H', W')`` -> head output ``(B, C*P, H', W')``."""
        h, skips = z, 0.0
        for layer, link in zip(self.layers, links, strict=True):
            h, skip = layer.horizontal(h, link, c)  # (B, n, H', W') each
            skips = skips + skip
        return self.head(skips)  # channel c*P + p

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)`` discrete (and ``c (B, cond_dim)`` when conditional) -> ``params
        (B, P, C*H*W)`` in ``(C, H, W)`` layout."""
        self.check_condition(x, c)
        b, ch, h, w = x.shape
        z = self._scale(x)  # (B, C, H, W)
        out = self._horizontal(z, self._vertical(z, c), c)  # (B, C*P, H, W)
        return out.view(b, ch, self.num_params, h, w).transpose(1, 2).reshape(b, self.num_params, ch * h * w)

    # -- sampling ----------------------------------------------------------------------
    def init_state(self, x: Tensor, c: Tensor | None = None) -> dict[str, Any]:
        """The row whose vertical links are cached (none yet), those links and the condition ``c``."""
        self.check_condition(x, c)
        return {"row": -1, "links": [], "c": c}

    def _links_of_row(self, x: Tensor, row: int, c: Tensor | None = None) -> list[Tensor]:
        """Vertical links into ``row``, ``(B, 2n, 1, W)`` per layer, from the rows above only
        (cropped to the ``vertical_reach`` rows that reach it: causal in rows, zero-padded on top)."""
        top = max(0, row - 1 - self.vertical_reach)
        padded = F.pad(x[:, :, top:row], (0, 0, 0, 1))  # (B, C, row-top+1, W): a dummy current row
        return [link[:, :, -1:] for link in self._vertical(self._scale(padded), c)]

    def next_params(self, x: Tensor, step: int, state: dict[str, Any]) -> Tensor:
        """Parameters ``(B, P)`` of ``order()[step]``, equal to ``forward(x)``'s: the vertical stack
        runs once per row (when the rows above are complete), then only the horizontal stack of
        the current row, up to the current column, at each step."""
        c, h, w = self.shape
        pos = int(self._order[step])
        ch, row, col = pos // (h * w), pos // w % h, pos % w
        if state["row"] != row:
            state["row"], state["links"] = row, self._links_of_row(x, row, state["c"])
        z = self._scale(x[:, :, row : row + 1, : col + 1])  # (B, C, 1, col+1)
        links = [link[..., : col + 1] for link in state["links"]]
        out = self._horizontal(z, links, state["c"])  # (B, C*P, 1, col+1)
        return out.view(x.shape[0], c, self.num_params, -1)[:, ch, :, -1]
