"""Likelihood accounting: one unit for every family, on the same discrete data.

Every family reports ``log P(x)`` of a *discrete* example ``x`` (``D`` dimensions, each with
``L`` levels) in nats, per example. From it:

* nats per example:  ``nll_nats = -log P(x)``
* bits per dim:      ``nll_bpd = nll_nats / (D * ln 2)``  (bits per char for text)

A family with a *continuous* density ``p(y)`` on ``y in R^D`` turns it into a discrete
likelihood by dequantisation. With uniform dequantisation ``y = (x + u) * w``,
``u ~ U[0,1)^D`` and bin width ``w`` (``w = 1/L`` for data scaled to ``[0, 1]``,
``w = 2/L`` for ``[-1, 1]``), Jensen's inequality gives the bound (Theis et al. 2016, Eq. 5)::

    log P(x) = log ∫_{[0,1)^D} p((x+u) w) w^D du  >=  E_u[log p((x+u) w)] + D log w

so ``log P(x) >= log p(y) + D log w`` in expectation: :func:`continuous_to_discrete`.

Each figure carries a kind (:data:`NLL_KINDS`):

* ``exact``: the discrete log-likelihood itself (autoregressive models, a uniform model);
* ``bound``: an upper bound on the NLL (−ELBO; dequantised densities);
* ``estimate``: a stochastic estimate (importance-weighted, Hutchinson traces);
* ``none``: the family has no likelihood (GANs): no number is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

NLLKind = Literal["exact", "bound", "estimate", "none"]
NLL_KINDS: tuple[str, ...] = ("exact", "bound", "estimate", "none")
LN2 = math.log(2.0)


@dataclass
class LogLikelihood:
    """Per-example discrete log-likelihoods in nats, shape ``(B,)``, with their kind, and ``extras``:
    per-example statistics ``(B,)`` of the computation (a Monte Carlo variance, function evaluations)
    that the generic module sums over an evaluation epoch and the family summarises
    (:meth:`genlab.families.base.Likelihood.summarize_likelihood`)."""

    log_px: Tensor
    kind: NLLKind
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in NLL_KINDS:
            raise ValueError(f"nll kind {self.kind!r} is not one of {NLL_KINDS}")


def nats_to_bpd(nats: Tensor | float, dims: int) -> Tensor | float:
    """Convert nats per example to bits per dimension: ``nats / (D ln 2)``."""
    return nats / (dims * LN2)


def bpd_to_nats(bpd: Tensor | float, dims: int) -> Tensor | float:
    """Convert bits per dimension to nats per example: ``bpd * D ln 2``."""
    return bpd * dims * LN2


def uniform_log_likelihood(x: Tensor, levels: int) -> Tensor:
    """``log P(x)`` under the uniform model over ``levels`` values per dim: ``-D log L``.

    Its NLL is exactly ``log2(L)`` bits/dim: the reference point of every table.
    """
    dims = x[0].numel()
    return torch.full((x.shape[0],), -dims * math.log(levels), dtype=torch.float64, device=x.device)


def uniform_dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Map discrete ``x in {0..L-1}`` to ``y = (x + u) / L in [0, 1)``, ``u ~ U[0,1)``."""
    from genlab.data.scaling import BinScale

    u = torch.rand(x.shape, generator=generator, device=x.device)
    return BinScale(levels, 0.0, 1.0).dequantize(x.float(), u)


def continuous_to_discrete(log_density: Tensor, dims: int, bin_width: float) -> Tensor:
    """Discrete log-likelihood from a continuous density of dequantised data (see module doc).

    Args:
        log_density: ``log p(y)`` per example, ``(B,)``, for ``y`` in the scaled space.
        dims: ``D``, number of dimensions.
        bin_width: width ``w`` of one discrete bin in the scaled space (``1/L`` for [0,1]).

    Returns:
        ``log p(y) + D log w``: a lower bound on ``log P(x)`` in expectation over ``u``.
    """
    return log_density + dims * math.log(bin_width)


def summarize_nll(log_px: Tensor, dims: int) -> dict[str, float]:
    """Mean NLL of a set of examples: ``{"nll_nats": ..., "nll_bpd": ...}``."""
    nats = float(-log_px.double().mean())
    return {"nll_nats": nats, "nll_bpd": float(nats_to_bpd(nats, dims))}
