"""Discrete levels <-> the continuous space a family models: the two named conventions.

Data live in memory as discrete levels ``x in {0..L-1}`` (uint8 images, int64 where ``L > 256``).
A family that models continuous values maps them to an interval ``[low, high]`` in one of two ways,
and back to the nearest level for its samples:

* :class:`GridScale` — *grid points*: level ``v`` sits at ``low + v (high - low) / (L - 1)``, the end
  levels on the interval's ends (diffusion: ``2 v / (L - 1) - 1``, the discretised Gaussian decoder
  of Ho et al. 2020, Eq. 13, integrates over a bin of width ``2 / (L - 1)`` around each point).
* :class:`BinScale` — *bins*: the interval is cut into ``L`` bins of width ``w = (high - low) / L``,
  level ``v`` is the bin ``[low + v w, low + (v + 1) w)``; its centre ``low + (v + 1/2) w`` and
  uniform dequantisation ``low + (v + u) w``, ``u ~ U[0, 1)`` (Theis et al. 2016). A density ``p``
  on the bins gives the discrete bound ``log P(v) >= E_u log p(y) + D log w``
  (:func:`genlab.metrics.likelihood.continuous_to_discrete`). Flow matching, GANs and EBMs use
  ``[-1, 1]``, normalizing flows ``[0, 1]``.

Both map back by :meth:`to_data` (nearest point / containing bin, clamped; NaN to the middle) and to
the ``[0, 1]`` level scale by :meth:`to_unit` (``v -> v / (L - 1)``), where errors such as PSNR are
measured. The arithmetic keeps one operation order per convention, so a family's numbers do not
depend on which module computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def data_dtype(levels: int) -> torch.dtype:
    """The in-memory dtype of discrete data with ``levels`` levels: uint8, or int64 past 256."""
    return torch.uint8 if levels <= 256 else torch.long


@dataclass(frozen=True)
class GridScale:
    """Level ``v`` at the grid point ``low + v * step``, ``step = (high - low) / (L - 1)`` (module docstring)."""

    levels: int
    low: float = -1.0
    high: float = 1.0

    @property
    def step(self) -> float:
        """Distance between neighbouring levels (``2 / (L - 1)`` on ``[-1, 1]``)."""
        return (self.high - self.low) / (self.levels - 1)

    def to_model(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Discrete ``x`` -> grid points."""
        return x.to(dtype) * self.step + self.low

    def to_data(self, y: Tensor) -> Tensor:
        """Model values -> nearest level (NaN to the middle, infinities to the ends)."""
        y = torch.nan_to_num(y.float(), nan=(self.low + self.high) / 2, posinf=self.high, neginf=self.low)
        return ((y - self.low) / self.step).round().clamp(0, self.levels - 1).to(data_dtype(self.levels))

    def to_unit(self, y: Tensor) -> Tensor:
        """Model values -> the ``[0, 1]`` level scale (level ``v`` at ``v / (L - 1)``)."""
        return (y - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class BinScale:
    """Level ``v`` is the bin ``[low + v w, low + (v + 1) w)``, ``w = (high - low) / L`` (module docstring)."""

    levels: int
    low: float = -1.0
    high: float = 1.0

    @property
    def width(self) -> float:
        """Bin width ``w`` (``2 / L`` on ``[-1, 1]``, ``1 / L`` on ``[0, 1]``)."""
        return (self.high - self.low) / self.levels

    def dequantize(self, x: Tensor, u: Tensor | float) -> Tensor:
        """``low + (x + u) w`` for ``u`` in ``[0, 1)`` (a tensor like ``x``, or 0.5 for the centres)."""
        return (self.high - self.low) * (x + u) / self.levels + self.low

    def centres(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Discrete ``x`` -> bin centres."""
        return self.dequantize(x.to(dtype), 0.5)

    def uniform(self, x: Tensor, dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None) -> Tensor:
        """Discrete ``x`` -> uniform dequantisation ``low + (x + u) w``, ``u ~ U[0, 1)``."""
        xf = x.to(dtype)
        u = torch.rand(xf.shape, generator=generator, dtype=dtype, device=x.device) if generator else torch.rand_like(xf)
        return self.dequantize(xf, u)

    def to_data(self, y: Tensor) -> Tensor:
        """Model values -> the level of the containing bin (clamped; NaN to the middle bin)."""
        y = torch.nan_to_num(y.float(), nan=(self.low + self.high) / 2, posinf=self.high, neginf=self.low)
        levels = self.levels
        return torch.floor((y - self.low) * levels / (self.high - self.low)).clamp(0, levels - 1).to(data_dtype(levels))

    def to_levels(self, y: Tensor) -> Tensor:
        """Model values -> continuous level coordinates (bin centre of ``v`` at ``v``), unclamped."""
        return (y - self.low) * self.levels / (self.high - self.low) - 0.5

    def to_unit(self, y: Tensor) -> Tensor:
        """Model values -> the ``[0, 1]`` level scale (bin centre of ``v`` at ``v / (L - 1)``)."""
        return self.to_levels(y) / (self.levels - 1)
