"""DCGAN generator and discriminator (Radford et al. 2016), sized from the image shape.

Both use the resolution ladder of :mod:`genlab.nets.conv`: ``n = num_downsamples(max(H, W), min_size)``
stride-2 steps between the image and a ``<= min_size`` feature map, doubling the channels
at each step down (with ``min_size=4``: 8x8 digits get one step, 28x28 MNIST and 32x32 CIFAR
three; ``min_size=7`` gives MNIST's classic 7 -> 14 -> 28 ladder). The generator crops its
output to the exact ``(H, W)``. Also :func:`add_spectral_norm`, which
puts spectral normalisation (Miyato et al. 2018) on every linear / conv layer of a net.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.nets.conv import num_downsamples

SN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


def add_spectral_norm(net: nn.Module) -> nn.Module:
    """Reparametrise every linear / conv weight as ``W / sigma(W)`` (one power iteration per
    training forward; Miyato et al. 2018, Eq. 8), in place; returns ``net``."""
    for module in list(net.modules()):
        if isinstance(module, SN_LAYERS):
            spectral_norm(module)
    return net


class DCGANGenerator(nn.Module):
    """``z (B, in_dim) -> (B, C, H, W)`` (pre-activation; the family applies ``tanh``).

    Linear projection to ``(channels * 2^(n-1), ceil(H / 2^n), ceil(W / 2^n))`` + BatchNorm +
    ReLU, then ``n - 1`` x [ConvTranspose 4x4 stride 2, BatchNorm, ReLU] halving the channels,
    then a last ConvTranspose 4x4 stride 2 to ``C`` channels (Radford et al. 2016, Fig. 1);
    ``n = 0`` (images of at most ``min_size``): a 3x3 conv instead. ``out_dim = (C, H, W)``.
    ``extra_convs = k`` adds ``k`` x [Conv 3x3 stride 1, BatchNorm, ReLU] at every resolution
    before the output layer (after the projection and after each intermediate upsampling):
    a deeper generator at the same resolutions.
    """

    input_kinds = ("image",)

    def __init__(self, in_dim: int, out_dim: tuple[int, int, int], channels: int = 64, min_size: int = 4,
                 batch_norm: bool = True, extra_convs: int = 0) -> None:
        super().__init__()
        _check_extra(extra_convs)
        c, h, w = out_dim
        n = num_downsamples(max(h, w), min_size)
        self.out_hw = (h, w)
        self.start = (channels * 2 ** max(n - 1, 0), math.ceil(h / 2**n), math.ceil(w / 2**n))
        self.head = nn.Linear(in_dim, math.prod(self.start))
        ch = self.start[0]
        layers: list[nn.Module] = [_norm(ch, batch_norm), nn.ReLU()]
        layers += _extra(ch, extra_convs, lambda: _norm(ch, batch_norm), nn.ReLU)
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1), _norm(ch // 2, batch_norm), nn.ReLU()]
            ch //= 2
            layers += _extra(ch, extra_convs, lambda: _norm(ch, batch_norm), nn.ReLU)
        layers.append(nn.ConvTranspose2d(ch, c, 4, stride=2, padding=1) if n else nn.Conv2d(ch, c, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        x = self.body(self.head(z).view(-1, *self.start))  # (B, C, >=H, >=W)
        return x[..., : self.out_hw[0], : self.out_hw[1]]


class DCGANDiscriminator(nn.Module):
    """``(B, C, H, W) -> (B, out_dim)`` logits / critic values. ``in_dim = (C, H, W)``.

    ``n`` x [Conv 4x4 stride 2, LeakyReLU(0.2)] from ``C`` to ``channels`` channels, doubling
    after that (Radford et al. 2016), then a linear head; ``n = 0``: one 3x3 conv. No
    normalisation layer: batch norm would couple the examples of a batch, which the gradient
    penalty forbids (Gulrajani et al. 2017, Sec. 4); use the family's ``spectral_norm`` option.
    ``extra_convs = k`` adds ``k`` x [Conv 3x3 stride 1, LeakyReLU] after each stride-2 conv (after
    the first 3x3 conv when ``n = 0``): a deeper discriminator at the same resolutions, close to
    SNGAN's "standard CNN" (Miyato et al. 2018, Table 3) with ``k = 1``.
    """

    input_kinds = ("image",)

    def __init__(self, in_dim: tuple[int, int, int], out_dim: int = 1, channels: int = 64, min_size: int = 4,
                 negative_slope: float = 0.2, extra_convs: int = 0) -> None:
        super().__init__()
        _check_extra(extra_convs)
        c, h, w = in_dim
        n = num_downsamples(max(h, w), min_size)
        act = partial(nn.LeakyReLU, negative_slope)
        layers: list[nn.Module] = [] if n else [nn.Conv2d(c, channels, 3, padding=1), act(),
                                                *_extra(channels, extra_convs, None, act)]
        ch_in, ch = c, channels
        for _ in range(n):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), act(), *_extra(ch, extra_convs, None, act)]
            ch_in, ch, h, w = ch, ch * 2, h // 2, w // 2  # kernel 4, stride 2, padding 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear((ch_in if n else channels) * h * w, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def _check_extra(extra_convs: int) -> None:
    if not isinstance(extra_convs, int) or isinstance(extra_convs, bool) or extra_convs < 0:
        raise ValueError(f"extra_convs must be a whole number >= 0 (3x3 convs per resolution), got {extra_convs!r}")


def _extra(ch: int, k: int, norm: Callable[[], nn.Module] | None, act: Callable[[], nn.Module]) -> list[nn.Module]:
    """``k`` x [Conv 3x3 stride 1 (``ch -> ch``), norm (if any), activation]."""
    layers: list[nn.Module] = []
    for _ in range(k):
        layers += [nn.Conv2d(ch, ch, 3, padding=1), *([norm()] if norm else []), act()]
    return layers


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
