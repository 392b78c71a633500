"""The variational bound of a diffusion model on the DISCRETE data, and its standard errors.

Ho et al. 2020, Eq. 5; Sohl-Dickstein et al. 2015::

    -log P(x) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0
    L_T     = KL(q(x_{T-1} | x0) || N(0, I))                         (no parameters, exact)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))      (one draw of x_t per term)
    L_0     = E_q -log P(x | x_0),  P = discretised Gaussian (Eq. 13), bins of width 2/(L-1)

in nats per example (``-log p(x | y)`` of a conditional model given its labels; always the unguided
model: guidance changes the samples, not the bound). The ``T - 1`` KL terms are summed exactly or
estimated without bias from ``K`` stratified timesteps (one uniform draw from each of ``K`` near-equal
strata of ``1..T-1``, weighted by the stratum size ``n_k``): :func:`variational_bound`. The Monte
Carlo variance of that estimate, per example, treats the ``K`` weighted draws ``K n_k L_k`` as i.i.d.
(conservative for stratified draws): ``Var = sum_k (K n_k L_k - mean)^2 / (K (K - 1))``; 0 when every
term is evaluated, NaN for ``K = 1`` (one draw: unknown).

Over ``n`` evaluated examples with bounds ``b_i`` and variances ``v_i`` (:func:`standard_errors`),
in nats (divide by ``D ln 2`` for bits/dim):

* ``examples``: the spread of the bounds, ``sd(b) / sqrt(n)``, ``sd^2 = (sum b^2 / n - mean^2) n / (n - 1)``
  (data and Monte Carlo variation together: how far the mean is from that of the whole distribution);
* ``timesteps``: the Monte Carlo error of the timestep subsample alone, ``sqrt(sum_i v_i) / n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab import interrupt, progress
from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.process import stratified_timesteps


@dataclass
class BoundEstimate:
    """Terms of the variational bound per example in nats, ``(B,)`` each (module docstring)."""

    prior: Tensor  # L_T
    decoder: Tensor  # L_0
    kl: Tensor  # sum_{t=1}^{T-1} L_{t-1}, exact or estimated
    kl_var: Tensor  # Monte Carlo variance of ``kl`` from the timestep subsample (0 when exact)

    @property
    def nll(self) -> Tensor:
        return self.prior + self.decoder + self.kl


def kl_terms(model: DiffusionModel, x0: Tensor, ts: Tensor, chunk: int) -> Tensor:
    """One-draw ``L_{t-1}`` for timesteps ``ts`` ``(K, B)`` of the examples ``x0`` ``(B, ...)``: ``(K, B)``,
    with at most ``chunk`` (example, timestep) pairs per network call (a conditional model's labels
    tiled with the examples: :meth:`DiffusionModel.tiled`)."""
    k_per_call = max(1, chunk // x0.shape[0])
    rows = []
    with progress.bar(f"bound: {ts.shape[0]} KL terms of {x0.shape[0]} examples", total=ts.shape[0],
                      unit="timestep") as bar:
        for part in ts.split(k_per_call):
            interrupt.check("during the diffusion bound")  # a stop request between chunks of timesteps
            xs = x0.repeat(part.shape[0], *([1] * (x0.ndim - 1)))
            rows.append(model.tiled(part.shape[0]).draw_term(xs, part.flatten()).view(part.shape[0], -1))
            bar.advance(part.shape[0])
    return torch.cat(rows)


def kl_variance(weighted: Tensor, total: int) -> Tensor:
    """Monte Carlo variance per example of ``weighted.sum(0)`` (``(K, B)``: ``n_k L_k``), an estimate of
    the sum of ``total`` terms (module docstring)."""
    k, b = weighted.shape
    if k == total:
        return torch.zeros(b, device=weighted.device)  # every term evaluated: no timestep sampling error
    if k == 1:
        return torch.full((b,), math.nan, device=weighted.device)  # one draw: its variance is unknown
    return (k * weighted).var(0) / k


def variational_bound(model: DiffusionModel, x0: Tensor, timesteps: int | None = None,
                      chunk: int = 4096) -> BoundEstimate:
    """The bound on ``-log P(x)`` for ``x0`` in ``[-1, 1]`` on ``model.process`` (module docstring).

    Args:
        timesteps: ``K`` stratified KL terms; None or ``>= T - 1``: all ``T - 1`` terms.
        chunk: most (example, timestep) pairs in one network call.
    """
    b, big_t = x0.shape[0], model.process.T
    k = big_t - 1 if timesteps is None else min(timesteps, big_t - 1)
    if k == big_t - 1:
        ts = torch.arange(1, big_t, device=x0.device)[:, None].expand(k, b)
        sizes = torch.ones(k, dtype=torch.float64)
    else:
        ts, sizes = stratified_timesteps(b, k, 1, big_t, device=x0.device)
    weighted = sizes.to(x0.device, x0.dtype)[:, None] * kl_terms(model, x0, ts, chunk)  # (K, B)
    decoder = model.draw_term(x0, torch.zeros(b, dtype=torch.long, device=x0.device))
    return BoundEstimate(model.process.prior_kl(x0), decoder, weighted.sum(0), kl_variance(weighted, big_t - 1))


def standard_errors(n: int, nll: float, nll_sq: float, kl_var: float) -> dict[str, float]:
    """Standard errors (nats) of the mean bound over ``n`` examples from the sums of ``b``, ``b^2`` and
    ``v`` (module docstring): ``examples`` and ``timesteps``; empty for ``n = 0``."""
    if n == 0:
        return {}
    mean = nll / n
    var = max(nll_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return {"examples": math.sqrt(var / n), "timesteps": math.sqrt(kl_var) / n}
