"""Base class of autoregressive backbones (PixelCNN, Transformer).

An :class:`ARNet` maps discrete data to the parameters of a per-dimension output distribution,
such that the parameters of each dimension depend only on the dimensions that come *before* it
in the net's generation order.

Layout conventions (shared by every AR net):

* input ``x``: discrete data as stored, ``(B, *shape)`` — images ``(B, C, H, W)`` uint8, text
  ``(B, T)`` int64;
* output ``params``: ``(B, P, D)``, ``D = prod(shape)``, dimension ``d`` is the flat index of
  ``x.reshape(B, D)`` (so images are flattened in ``(C, H, W)`` layout);
* :meth:`ARNet.order` lists the flat indices in generation order. Images are generated in raster
  order ``(h, w, c)``: all channels of a pixel (R, then G, then B) before the next pixel.

Sampling goes through :meth:`ARNet.init_state` / :meth:`ARNet.next_params`; the default
recomputes the full forward pass at every step (O(D) passes); nets with incremental decoding
(a Transformer's KV cache) override both.

**Condition.** A net built with ``conditional=True`` sets :attr:`ARNet.cond_dim` and takes a
condition vector ``c (B, cond_dim)`` (a class embedding, from the family) in ``forward(x, c)`` and
``init_state(x, c)`` (the incremental state carries it): every conditional ``P(x_d | x_<d, c)`` sees
``c``, which depends on no dimension of ``x``, so causality is untouched and the chain rule gives
``log P(x | c)`` exactly. Built without it, ``cond_dim`` is None and the net is the unconditional one
(same parameters, same numbers); giving a condition to one and not the other is an error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def raster_order(shape: tuple[int, ...]) -> Tensor:
    """Flat ``(C, H, W)``-layout indices in ``(h, w, c)`` raster order; identity for 1-D shapes."""
    if len(shape) == 1:
        return torch.arange(shape[0])
    c, h, w = shape
    return torch.arange(c * h * w).view(c, h, w).permute(1, 2, 0).reshape(-1)


class ARNet(nn.Module):
    """Autoregressive backbone (see module docstring).

    Args:
        shape: shape of one example (``(C, H, W)`` or ``(T,)``).
        levels: number of discrete values per dimension (vocabulary size for text).
        num_params: ``P``, output parameters per dimension (from the observation model).
    """

    #: width of the condition vector ``c`` the net takes; None: unconditional (set by subclasses).
    cond_dim: int | None = None

    def __init__(self, shape: tuple[int, ...], levels: int, num_params: int) -> None:
        super().__init__()
        self.shape, self.levels, self.num_params = tuple(shape), levels, num_params
        self.dims = math.prod(self.shape)
        self.register_buffer("_order", raster_order(self.shape), persistent=False)

    def check_condition(self, x: Tensor, c: Tensor | None) -> None:
        """Raise where ``c`` does not fit the net: present iff :attr:`cond_dim` is set, ``(B, cond_dim)``."""
        if (c is None) != (self.cond_dim is None):
            need = "takes no condition" if self.cond_dim is None else f"needs a condition c of width {self.cond_dim}"
            raise ValueError(f"this {type(self).__name__} {need} (built with conditional={self.cond_dim is not None})")
        if c is not None and tuple(c.shape) != (x.shape[0], self.cond_dim):
            raise ValueError(f"the condition must be (B, cond_dim) = ({x.shape[0]}, {self.cond_dim}), got "
                             f"{tuple(c.shape)}")

    def order(self) -> Tensor:
        """Flat indices (``(C, H, W)`` layout) in generation order, ``(D,)``."""
        return self._order

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``x (B, *shape)`` discrete (and the condition ``c (B, cond_dim)`` of a conditional net) ->
        ``params (B, P, D)`` (causal in :meth:`order`)."""
        raise NotImplementedError

    # -- sampling ----------------------------------------------------------------------
    def init_state(self, x: Tensor, c: Tensor | None = None) -> Any:
        """State for incremental sampling of the batch ``x`` (all zeros at the start) given the
        condition ``c``. Default: the condition itself (None for an unconditional net)."""
        return c

    def next_params(self, x: Tensor, step: int, state: Any) -> Tensor:
        """Parameters ``(B, P)`` of dimension ``order()[step]``, given ``x`` whose dimensions
        ``order()[:step]`` are already filled in. Default: a full forward pass (``state``: the
        condition, None for an unconditional net)."""
        params = self.forward(x) if state is None else self.forward(x, state)
        return params[:, :, self._order[step]]
