"""Multi-layer perceptron backbone, shared by every family that needs one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

Shape = int | Sequence[int]


def _numel(shape: Shape) -> int:
    return shape if isinstance(shape, int) else math.prod(shape)


def check_cond(cond: Tensor | None, cond_dim: int, net: str) -> None:
    """Raise a clear error when a net built for a condition of ``cond_dim`` features (0: none) is
    called without one, or with one of another width."""
    if cond_dim == 0 and cond is None:
        return
    if cond is None or cond_dim == 0 or cond.shape[-1] != cond_dim:
        got = "none" if cond is None else f"{cond.shape[-1]} features"
        raise ValueError(f"this {net} was built for a condition of {cond_dim} features (cond_dim), got {got}")


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with an activation between layers.

    ``in_dim``/``out_dim`` are sizes or shapes: input ``(B, *in_dim)`` is flattened, and the
    output is ``(B, out_dim)`` or reshaped to ``(B, *out_dim)``. Accepts images and text.

    ``cond_dim > 0``: the net also takes a condition vector ``cond`` ``(B, cond_dim)`` (e.g. a class
    embedding), concatenated to the flattened input, ``f([x, c])`` (the conditional MLPs of Sohn et al.
    2015, CVAE). ``cond_dim = 0`` (default): the unconditional net, with the same parameters as always.
    """

    input_kinds = ("image", "text", "points")

    def __init__(self, in_dim: Shape, out_dim: Shape, hidden: Sequence[int] = (512, 256), activation: str = "SiLU",
                 cond_dim: int = 0):
        super().__init__()
        dims = [_numel(in_dim) + cond_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), getattr(nn, activation)()]
        layers.append(nn.Linear(dims[-1], _numel(out_dim)))
        self.net = nn.Sequential(*layers)
        self.out_shape = (out_dim,) if isinstance(out_dim, int) else tuple(out_dim)
        self.cond_dim = cond_dim

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        check_cond(cond, self.cond_dim, "MLP")
        h = x.flatten(1) if cond is None else torch.cat([x.flatten(1), cond.to(x.dtype)], 1)
        return self.net(h).view(-1, *self.out_shape)
