"""Gaussian diffusion in closed form (Ho et al. 2020; Nichol & Dhariwal 2021).

Indices are 0-based, ``t = 0..T-1``: ``x_t`` is the latent after ``t + 1`` noising steps and
``x_{-1} = x_0^data`` (written ``x0`` below). With ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s<=t} alpha_s``:

* forward marginal (Ho et al. Eq. 4):  ``q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)``;
* posterior (Ho et al. Eq. 6-7):       ``q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I)`` with
  ``mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t``
  and ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t`` (``alpha_bar_{-1} = 1``).

A *respaced* process (:meth:`GaussianDiffusion.respace`, Nichol & Dhariwal 2021, Sec. 4) keeps a
subsequence ``tau_1 < ... < tau_S`` of the steps with ``beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}``:
the same marginals on the kept steps, so the same network serves it, and every formula above
holds for it unchanged (this is what DDIM and strided ancestral sampling run on).

All schedule tensors are float64; :meth:`GaussianDiffusion.at` gathers them per example and
casts to the data's dtype and device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianDiffusion:
    """The forward process of a schedule ``betas`` ``(T,)`` and its closed forms.

    Args:
        betas: per-step variances in ``(0, 1)``, float64 ``(T,)``.
        timesteps: for a respaced process, the original step index of each kept step (what
            the network is conditioned on); default ``0..T-1``.
        train_timesteps: length of the original chain (``T`` of the network's time ``t / T``).
    """

    def __init__(self, betas: Tensor, timesteps: Tensor | None = None, train_timesteps: int | None = None) -> None:
        betas = betas.detach().to(torch.float64).cpu()
        if betas.ndim != 1 or len(betas) == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must be a non-empty 1-D tensor with values in (0, 1), got {betas}")
        self.T = len(betas)
        self.train_timesteps = train_timesteps or self.T
        self.timesteps = torch.arange(self.T) if timesteps is None else timesteps.long().cpu()
        self.tables: dict[str, Tensor] = self._tables(betas)
        self._cache: dict[tuple, dict[str, Tensor]] = {}

    @staticmethod
    def _tables(b: Tensor) -> dict[str, Tensor]:
        ab = torch.cumprod(1 - b, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = b * (1 - ab_prev) / (1 - ab)  # beta~_t (Eq. 7); 0 at t = 0
        # log beta~_t with t = 0 replaced by beta~_1 (improved-diffusion): the decoder's variance
        post_var_1 = post_var[1] if len(b) > 1 else b[0]
        post_logvar = torch.log(torch.cat([post_var_1.view(1), post_var[1:]]))
        return {
            "betas": b, "log_betas": torch.log(b),
            "log_betas_clipped": torch.log(torch.cat([post_var_1.view(1), b[1:]])),  # "fixed large"
            "alpha_bar": ab, "alpha_bar_prev": ab_prev,
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1 - ab).sqrt(),
            "sqrt_ab_prev": ab_prev.sqrt(), "sqrt_1m_ab_prev": (1 - ab_prev).sqrt(),
            "post_var": post_var, "post_logvar": post_logvar,
            "post_coef_x0": b * ab_prev.sqrt() / (1 - ab),
            "post_coef_xt": (1 - b).sqrt() * (1 - ab_prev) / (1 - ab),
        }

    # -- gathering --------------------------------------------------------------------------
    def at(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Table ``name`` at indices ``t`` ``(B,)``, shaped ``(B, 1, ..., 1)`` like ``x``."""
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = {k: v.to(x.device, x.dtype) for k, v in self.tables.items()}
        return self._cache[key][name][t].view(-1, *([1] * (x.ndim - 1)))

    def net_time(self, t: Tensor) -> Tensor:
        """The network's time input in ``[0, 1)``: original step index / original ``T``, ``(B,)``."""
        return self.timesteps.to(t.device)[t].float() / self.train_timesteps

    # -- forward process --------------------------------------------------------------------
    def q_mean_var(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_t | x0)`` (Ho et al. Eq. 4); variance ``(B, 1, ...)``."""
        return self.at("sqrt_ab", t, x0) * x0, 1 - self.at("alpha_bar", t, x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (reparametrised Eq. 4)."""
        return self.at("sqrt_ab", t, x0) * x0 + self.at("sqrt_1m_ab", t, x0) * noise

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps`` (Ho et al. Eq. 2)."""
        beta = self.at("betas", t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``mu~_t`` and variance ``beta~_t`` of ``q(x_{t-1} | x_t, x0)`` (Ho et al. Eq. 6-7)."""
        mean = self.at("post_coef_x0", t, x0) * x0 + self.at("post_coef_xt", t, x0) * x_t
        return mean, self.at("post_var", t, x0)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """``L_T = KL(q(x_{T-1} | x0) || N(0, I))`` in nats, summed per example, ``(B,)``."""
        t = torch.full((x0.shape[0],), self.T - 1, device=x0.device, dtype=torch.long)
        mean, var = self.q_mean_var(x0, t)
        var = var.expand_as(mean)
        return normal_kl(mean, var.log(), torch.zeros_like(mean), torch.zeros_like(mean)).flatten(1).sum(1)

    # -- conversions between x0, eps and x_t (from Eq. 4) -------------------------------------
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (x_t - self.at("sqrt_1m_ab", t, x_t) * eps) / self.at("sqrt_ab", t, x_t)

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (x_t - self.at("sqrt_ab", t, x_t) * x0) / self.at("sqrt_1m_ab", t, x_t)

    # -- respacing ----------------------------------------------------------------------------
    def respace(self, steps: int | None) -> GaussianDiffusion:
        """The process on ``steps`` evenly spaced steps from ``0`` to ``T-1`` (both kept); itself if
        ``steps`` is None or ``T``. ``beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}``."""
        if steps is None or steps == self.T:
            return self
        if not 1 <= steps <= self.T:
            raise ValueError(f"cannot respace a chain of T={self.T} steps to {steps} steps: choose 1..{self.T}")
        keep = torch.arange(steps) * (self.T - 1) // max(steps - 1, 1) if steps > 1 else torch.tensor([self.T - 1])
        ab = self.tables["alpha_bar"][keep]
        betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
        return GaussianDiffusion(betas, self.timesteps[keep], self.train_timesteps)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _log1mexp(z: Tensor) -> Tensor:
    """``log(1 - exp(z))`` for ``z < 0``, accurate at both ends (Maechler 2012)."""
    z = z.clamp(max=-1e-12)
    return torch.where(z > -math.log(2), torch.log(-torch.expm1(z)), torch.log1p(-torch.exp(z)))


def log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for standardised ``lo < hi``, stable in both tails."""
    flip = lo > 0  # right tail: Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    a, b = torch.where(flip, -lo, hi), torch.where(flip, -hi, lo)
    log_a = torch.special.log_ndtr(a)
    return log_a + _log1mexp(torch.special.log_ndtr(b) - log_a)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float) -> Tensor:
    """Elementwise ``log P(x)`` of the discretised Gaussian decoder (Ho et al. 2020, Eq. 13).

    ``P(x) = Phi((x + w/2 - mean) / sigma) - Phi((x - w/2 - mean) / sigma)`` for a bin centre
    ``x`` in ``[-1, 1]`` of width ``w = 2 / (levels - 1)``; the edge bins ``x = -1`` and
    ``x = 1`` extend to ``-inf`` and ``+inf``, so the probabilities over the levels sum to 1.
    """
    inv = torch.exp(-log_scale)
    lo, hi = (x - bin_width / 2 - mean) * inv, (x + bin_width / 2 - mean) * inv
    edge = bin_width / 4
    left, right = x < -1 + edge, x > 1 - edge
    middle = log_normal_mass(lo, hi)
    return torch.where(left, torch.special.log_ndtr(hi), torch.where(right, torch.special.log_ndtr(-lo), middle))


def stratified_timesteps(n: int, count: int, low: int, high: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """One uniform draw per stratum of ``{low..high-1}`` split into ``count`` near-equal strata,
    independently for ``n`` examples.

    Returns:
        ``t`` ``(count, n)`` long and the stratum sizes ``(count,)`` float64: ``sum_k size_k f(t_k)``
        is an unbiased estimate of ``sum_{t=low}^{high-1} f(t)``.
    """
    if not 1 <= count <= high - low:
        raise ValueError(f"cannot draw {count} strata from the {high - low} steps {low}..{high - 1}")
    edges = low + torch.arange(count + 1) * (high - low) // count  # every stratum has >= 1 step
    sizes = (edges[1:] - edges[:-1]).to(torch.float64)
    u = torch.rand(count, n, generator=generator, dtype=torch.float64)
    t = edges[:-1, None] + (u * sizes[:, None]).floor().long()
    return t.to(device), sizes


def validate_steps(steps: int | None, what: str, total: int) -> None:
    """Raise ValueError unless ``steps`` is None or in ``1..total``."""
    if steps is not None and not (isinstance(steps, int) and 1 <= steps <= total):
        raise ValueError(f"{what}={steps} is not a number of steps in 1..{total} (or null for all {total})")

