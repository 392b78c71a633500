"""Small residual convolutional network: the backbone of coupling layers (RealNVP, Glow).

``(B, in_channels, H, W) -> (B, out_channels, H, W)`` at constant resolution (any ``H, W``,
including 1x1): a 3x3 input convolution to ``hidden`` channels, ``blocks`` pre-activation
residual blocks ``h <- h + conv3x3(act(conv3x3(act(h))))``, and an activation + 3x3 output
convolution. The output convolution is zero-initialised, so a coupling layer built on it
starts as the identity map (Dinh et al. 2017; Kingma & Dhariwal 2018, Sec. 3.3).
No batch statistics are used: a flow must map every example independently of its batch.
"""

from __future__ import annotations

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """``h + conv3x3(act(conv3x3(act(h))))`` at ``channels`` channels."""

    def __init__(self, channels: int, activation: str = "ReLU") -> None:
        super().__init__()
        self.body = nn.Sequential(
            getattr(nn, activation)(),
            nn.Conv2d(channels, channels, 3, padding=1),
            getattr(nn, activation)(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ResNet(nn.Module):
    """Residual conv net ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, zero-init output.

    Args:
        in_channels, out_channels: channel counts of input and output.
        hidden: channels inside the network.
        blocks: number of residual blocks (0: conv - act - conv).
        activation: name of a ``torch.nn`` activation module.
    """

    input_kinds = ("image",)

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 2,
                 activation: str = "ReLU") -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, activation) for _ in range(blocks)])
        self.out = nn.Sequential(getattr(nn, activation)(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x)))
