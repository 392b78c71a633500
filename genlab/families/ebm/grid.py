"""The enumerable grid of an EBM on small discrete data: its cells and the cached partition function.

Where ``L^D`` is small (2-D points on 256 x 256 bins), every cell ``x'`` of ``{0..L-1}^D`` can be
scored, and ``log Z = logsumexp_{x'} -E(c(x'))`` normalises the energy exactly. Computing it costs
``L^D`` energy evaluations, so :class:`PartitionCache` (a stateless module of the nets: nothing in
the checkpoint) keeps the last value with the version of the energy net's weights it was computed for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def grid_cells(start: int, stop: int, levels: int, shape: tuple[int, ...]) -> Tensor:
    """Cells ``start..stop-1`` of the full grid ``{0..L-1}^D`` in row-major order, ``(n, *shape)`` long."""
    flat = torch.arange(start, stop, dtype=torch.long)
    d = math.prod(shape)
    powers = levels ** torch.arange(d - 1, -1, -1, dtype=torch.long)
    return ((flat[:, None] // powers) % levels).view(-1, *shape)


def weights_version(net: nn.Module) -> tuple:
    """A key that changes whenever ``net``'s tensors change: its identity, mode and the version counters of
    its parameters and buffers (they move with every in-place update: an optimizer step, a load)."""
    return (id(net), net.training, *(t._version for t in [*net.parameters(), *net.buffers()]))


class PartitionCache(nn.Module):
    """The last ``log Z`` and the :func:`weights_version` it belongs to; no parameters or buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.key: tuple | None = None
        self.value: Tensor | None = None

    def get(self, net: nn.Module, compute: Callable[[], Tensor]) -> Tensor:
        """``log Z`` for ``net``'s current weights: the cached value, or ``compute()`` (then cached)."""
        key = weights_version(net)
        if self.key != key or self.value is None:
            self.key, self.value = key, compute()
        return self.value
