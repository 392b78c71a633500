"""The VQ-VAE's convolutional encoder and decoder (van den Oord et al. 2017, Sec. 4.1).

Encoder ``(B, C, H, W) -> (B, Dz, H/f, W/f)``: a 3x3 convolution, ``log2 f`` stride-2 4x4
convolutions (``f``: the downsampling factor, a power of two), ``res_blocks`` residual blocks and a
1x1 convolution to the code dimension. Decoder ``(B, Dz, h, w) -> (B, out_channels, h f, w f)``:
the mirror image, with stride-2 4x4 transposed convolutions. 28x28 MNIST with ``f = 4`` gives a
7x7 grid of codes, 8x8 digits a 4x4 (``f = 2``) or 2x2 (``f = 4``) one. No batch statistics: each
example is encoded independently of its batch.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from genlab.nets.resnet import ResidualBlock


def halvings(downsample: int) -> int:
    """``log2`` of a downsampling factor, which must be a power of two (1 = none)."""
    n = int(round(math.log2(downsample))) if downsample >= 1 else -1
    if n < 0 or 2**n != downsample:
        raise ValueError(f"model.downsample={downsample} must be a power of two (1, 2, 4, 8)")
    return n


class GridEncoder(nn.Module):
    """``(B, in_channels, H, W) -> (B, code_dim, H/f, W/f)`` (module docstring)."""

    input_kinds = ("image",)

    def __init__(self, in_channels: int, code_dim: int, downsample: int = 4, channels: int = 64,
                 res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(halvings(downsample)):
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.ReLU()]
        layers += [ResidualBlock(channels) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class GridDecoder(nn.Module):
    """``(B, code_dim, h, w) -> (B, out_channels, h f, w f)`` (module docstring)."""

    input_kinds = ("image",)

    def __init__(self, code_dim: int, out_channels: int, downsample: int = 4, channels: int = 64,
                 res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1)]
        layers += [ResidualBlock(channels) for _ in range(res_blocks)]
        for _ in range(halvings(downsample)):
            layers += [nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)
