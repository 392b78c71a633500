"""Discrete observation models over ``L`` levels per dimension.

Shared by every family that outputs a distribution over pixels/characters (VAE decoders,
autoregressive heads). Each model reads ``params`` of shape ``(B, P, D)`` — ``P`` parameters
for each of ``D`` dimensions — and discrete data ``x`` of shape ``(B, D)`` with values in
``{0, ..., L-1}``, and returns ``log P(x)`` summed over dimensions, shape ``(B,)``, in nats.
Every model is a normalised distribution over the ``L`` levels (a test enumerates them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class DiscreteObservation:
    """Interface: ``num_params``, ``log_prob``, ``sample``, ``mean``.

    ``ordinal`` models assume the levels are ordered intensities (images), so they do not fit
    categorical symbols such as text characters.
    """

    name: str = "base"
    ordinal: bool = False

    def num_params(self, levels: int) -> int:
        raise NotImplementedError

    def check_levels(self, levels: int) -> str | None:
        """Why this model cannot represent data with ``levels`` levels, or None."""
        return None

    def log_prob(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        """``sum_d log P(x_d | params_d)``, shape ``(B,)``."""
        return self.log_prob_per_dim(params, x, levels).sum(-1)

    def log_prob_per_dim(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor, levels: int) -> Tensor:
        """A draw of ``x``, ``(B, D)`` int64."""
        raise NotImplementedError

    def mean(self, params: Tensor, levels: int) -> Tensor:
        """``E[x] = sum_l l P(l)`` in level units (float in ``[0, L-1]``), ``(B, D)``, by
        enumerating the levels."""
        b, _, d = params.shape
        total = torch.zeros(b, d, device=params.device)
        for level in range(levels):
            x = torch.full((b, d), level, device=params.device, dtype=torch.long)
            total += level * self.log_prob_per_dim(params, x, levels).exp()
        return total


class Categorical(DiscreteObservation):
    """A free categorical over the ``L`` levels: ``P = L`` logits per dimension."""

    name = "categorical"

    def num_params(self, levels: int) -> int:
        return levels

    def log_prob_per_dim(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        logp = F.log_softmax(params.float(), dim=1)  # (B, L, D)
        return logp.gather(1, x.long().unsqueeze(1)).squeeze(1)

    def sample(self, params: Tensor, levels: int) -> Tensor:
        probs = F.softmax(params.float(), dim=1).transpose(1, 2)  # (B, D, L)
        return torch.multinomial(probs.reshape(-1, levels), 1).view(probs.shape[:2])

    def mean(self, params: Tensor, levels: int) -> Tensor:
        probs = F.softmax(params.float(), dim=1)
        grid = torch.arange(levels, device=params.device, dtype=probs.dtype).view(1, -1, 1)
        return (probs * grid).sum(1)


class Bernoulli(DiscreteObservation):
    """Binary data only: one logit per dimension, ``P(x=1) = sigmoid(logit)``."""

    name = "bernoulli"

    def num_params(self, levels: int) -> int:
        return 1

    def check_levels(self, levels: int) -> str | None:
        return None if levels == 2 else f"the Bernoulli decoder needs binary data (2 levels), the data has {levels}"

    def log_prob_per_dim(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params[:, 0].float(), x.float(), reduction="none")

    def sample(self, params: Tensor, levels: int) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params[:, 0].float())).long()

    def mean(self, params: Tensor, levels: int) -> Tensor:
        return torch.sigmoid(params[:, 0].float())


class DiscretizedLogistic(DiscreteObservation):
    """Logistic density discretised into ``L`` bins on ``[-1, 1]`` (PixelCNN++, Salimans et al.
    2017, Eq. 2), one component: ``P = 2`` (mean ``mu``, log-scale ``log s``).

    Level ``x`` sits at ``c = 2x/(L-1) - 1`` with half-width ``h = 1/(L-1)``;
    ``P(x) = σ((c+h-μ)/s) - σ((c-h-μ)/s)``, with the edge bins extended to ``±∞``.
    """

    name = "logistic"
    ordinal = True
    min_log_scale = -7.0

    def num_params(self, levels: int) -> int:
        return 2

    def log_prob_per_dim(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        mu, log_s = params[:, 0].float(), params[:, 1].float().clamp_min(self.min_log_scale)
        c = 2.0 * x.float() / (levels - 1) - 1.0
        h = 1.0 / (levels - 1)
        inv_s = torch.exp(-log_s)
        plus, minus = inv_s * (c + h - mu), inv_s * (c - h - mu)
        log_cdf_plus = -F.softplus(-plus)  # log σ(plus): the bottom edge bin
        log_one_minus_cdf_min = -F.softplus(minus)  # log(1-σ(minus)): the top edge bin
        diff = torch.sigmoid(plus) - torch.sigmoid(minus)
        # log density at the bin centre times the width, where the difference underflows
        mid = inv_s * (c - mu)
        log_pdf_mid = mid - log_s - 2.0 * F.softplus(mid) + torch.log(torch.tensor(2.0 * h))
        log_mid = torch.where(diff > 1e-5, torch.log(diff.clamp_min(1e-12)), log_pdf_mid)
        out = torch.where(x == 0, log_cdf_plus, log_mid)
        return torch.where(x == levels - 1, log_one_minus_cdf_min, out)

    def mean(self, params: Tensor, levels: int) -> Tensor:
        """``E[x] = sum_{l >= 1} P(x >= l) = sum_{l=1}^{L-1} sigmoid((mu - (c_l - h)) / s)``: the same sum as
        the enumeration of the levels, in one vectorised op (differentiable, as latent MAP needs)."""
        mu, log_s = params[:, 0].float(), params[:, 1].float().clamp_min(self.min_log_scale)
        lower = 2.0 * torch.arange(1, levels, device=params.device, dtype=mu.dtype) / (levels - 1) - 1.0 - 1.0 / (levels - 1)
        return torch.sigmoid((mu.unsqueeze(-1) - lower) * torch.exp(-log_s).unsqueeze(-1)).sum(-1)

    def sample(self, params: Tensor, levels: int) -> Tensor:
        mu, log_s = params[:, 0].float(), params[:, 1].float().clamp_min(self.min_log_scale)
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        y = mu + log_s.exp() * (u.log() - (-u).log1p())
        return ((y.clamp(-1, 1) + 1) / 2 * (levels - 1)).round().long()


def default_observation(levels: int) -> DiscreteObservation:
    """A sensible observation model for data with ``levels`` levels: Bernoulli for binary data,
    a free categorical up to 64 levels, a discretised logistic beyond (a 256-way softmax per
    pixel makes decoders needlessly large)."""
    if levels == 2:
        return Bernoulli()
    return Categorical() if levels <= 64 else DiscretizedLogistic()


class DiscretizedLogisticMixture(DiscreteObservation):
    """Mixture of ``K`` discretised logistics per dimension (PixelCNN++, Salimans et al. 2017,
    Eq. 2 without the cross-channel coefficients: channel dependence comes from the AR order).

    ``P = 3K`` parameters per dimension: mixture logits, means, log-scales (in that order).
    ``P(x) = sum_k pi_k P_logistic(x; mu_k, s_k)``.
    """

    name = "logistic_mixture"
    ordinal = True

    def __init__(self, components: int = 5) -> None:
        self.k = components
        self._one = DiscretizedLogistic()

    def num_params(self, levels: int) -> int:
        return 3 * self.k

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        logits, mu, log_s = params.float().split(self.k, dim=1)  # each (B, K, D)
        return logits, torch.stack([mu, log_s], 2)  # (B, K, 2, D)

    def log_prob_per_dim(self, params: Tensor, x: Tensor, levels: int) -> Tensor:
        logits, comp = self._split(params)
        b, k, _, d = comp.shape
        xk = x.unsqueeze(1).expand(b, k, d).reshape(b * k, d)
        logp = self._one.log_prob_per_dim(comp.reshape(b * k, 2, d), xk, levels).view(b, k, d)
        return torch.logsumexp(F.log_softmax(logits, 1) + logp, dim=1)

    def sample(self, params: Tensor, levels: int) -> Tensor:
        logits, comp = self._split(params)
        b, k, _, d = comp.shape
        which = torch.multinomial(F.softmax(logits, 1).transpose(1, 2).reshape(-1, k), 1).view(b, 1, 1, d)
        chosen = comp.gather(1, which.expand(b, 1, 2, d)).squeeze(1)  # (B, 2, D)
        return self._one.sample(chosen, levels)


def check_observation(obs: DiscreteObservation, kind: str, levels: int) -> str | None:
    """Why ``obs`` cannot model data of this kind/levels, or None."""
    if obs.ordinal and kind == "text":
        return f"the {obs.name} output assumes ordered intensities; text characters need a categorical output"
    return obs.check_levels(levels)


def level_table(obs: DiscreteObservation, params: Tensor, levels: int, batch: int, dims: int) -> Tensor:
    """``log p(x_d = l)`` for every dimension and level, ``(B, D, L)``: ``obs``'s per-dimension log-probability
    at each level in turn (what an entropy coder needs of a factorised observation model)."""
    rows = [obs.log_prob_per_dim(params, torch.full((batch, dims), level, dtype=torch.long, device=params.device), levels)
            for level in range(levels)]
    return torch.stack(rows, dim=-1)
