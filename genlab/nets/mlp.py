"""Multi-layer perceptron backbone, shared by every family that needs one."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

Shape = int | Sequence[int]


def _numel(shape: Shape) -> int:
    return shape if isinstance(shape, int) else math.prod(shape)


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with an activation between layers.

    ``in_dim``/``out_dim`` are sizes or shapes: input ``(B, *in_dim)`` is flattened, and the
    output is ``(B, out_dim)`` or reshaped to ``(B, *out_dim)``. Accepts images and text.
    """

    input_kinds = ("image", "text", "points")

    def __init__(self, in_dim: Shape, out_dim: Shape, hidden: Sequence[int] = (512, 256), activation: str = "SiLU"):
        super().__init__()
        dims = [_numel(in_dim), *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), getattr(nn, activation)()]
        layers.append(nn.Linear(dims[-1], _numel(out_dim)))
        self.net = nn.Sequential(*layers)
        self.out_shape = (out_dim,) if isinstance(out_dim, int) else tuple(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).view(-1, *self.out_shape)
