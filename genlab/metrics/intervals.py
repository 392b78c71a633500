"""Confidence intervals over seeds, and ranks that say when intervals do not separate them.

A figure of one training seed says nothing about how far another seed would land. Given the
values ``v_1 .. v_k`` of one configuration trained with ``k`` seeds, :func:`t_interval` gives
the Student-t interval of their mean,

    mean ± t_{(1 + level)/2, k-1} · s / sqrt(k),    s^2 = sum (v_i - mean)^2 / (k - 1),

which covers the mean over seeds with probability ``level`` if the values are normal. With
``k = 1`` there is no interval (``half = None``): an unknown spread, never a zero one.

:func:`tied_ranks` orders configurations (lower is better: NLL, FD) and marks those whose
intervals overlap another's as ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """``mean ± half`` over ``n`` values; ``half`` is None with fewer than two values."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half or 0.0)


def t_interval(values: list[float], level: float = 0.95) -> Interval | None:
    """The Student-t interval of the mean of ``values`` (None values and NaNs are dropped);
    None when no value is left."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return None
    mean = sum(v) / len(v)
    if len(v) < 2:
        return Interval(mean, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return Interval(mean, float(stats.t.ppf((1 + level) / 2, len(v) - 1)) * sd / math.sqrt(len(v)), len(v))


def separated(a: Interval, b: Interval) -> bool:
    """Whether the two intervals do not overlap (a value without an interval is a point)."""
    return a.high < b.low or b.high < a.low


def tied_ranks(cells: list[Interval | None]) -> list[str | None]:
    """Ranks, lower values first: ``1 + (the number of intervals entirely below this one)``, so that
    tied configurations share the better rank. ``"=2"``: its interval overlaps another's (the order
    between them is not supported); ``"2?"``: a single value (one seed, no interval) ordered by the value
    alone; ``"2"``: separated from every other. None where a cell has no value."""
    out: list[str | None] = []
    for i, a in enumerate(cells):
        if a is None:
            out.append(None)
            continue
        others = [b for j, b in enumerate(cells) if j != i and b is not None]
        rank = 1 + sum(b.high < a.low for b in others)
        if a.half is None:
            out.append(f"{rank}?")
        else:
            out.append(("=" if any(not separated(a, b) for b in others) else "") + str(rank))
    return out


def format_interval(cell: Interval | None, digits: int = 4) -> str:
    """``"1.234 ± 0.01"`` (``k`` >= 2 seeds) or ``"1.234"`` (one seed: no interval); "—" for none."""
    if cell is None:
        return "—"
    mean = _num(cell.mean, digits)
    return mean if cell.half is None else f"{mean} ± {_num(cell.half, 2, 10)}"


def _num(v: float, digits: int, fixed_from: float = 1e4) -> str:
    """``digits`` significant digits below ``fixed_from``, the integer above (no exponents)."""
    return f"{v:.{digits}g}" if abs(v) < fixed_from else f"{v:.0f}"
