"""The VAE as the first stage of a two-stage model (:class:`~genlab.families.base.LatentAutoencoder`):
a KL-regularised autoencoder whose posterior ``q(z | x) = N(mu(x), diag sigma(x)^2)`` is read, as
in latent diffusion (Rombach et al. 2022, its ``DiagonalGaussianDistribution``), through draws.

**Binned latents, so that every prior models discrete data and the bound is exact maths.** The prior
families model discrete data (bits per dim on bins), so the latent ``z`` is binned: each coordinate's
range ``[-R, R]`` (``R = latent_range``) is cut into ``L = latent_levels`` bins of width
``2R / L``, the outer two open to infinity, and ``k(z)`` is the bin a draw falls in. The pair is then
the discrete latent-variable model ``p(x) = sum_k P_prior(k) p(x | c(k))``, with ``c(k)`` the bin's
centre fed to the decoder, and

    log p(x) >= E_{k ~ q(k | x)} [log p(x | c(k)) + log P_prior(k) - log q(k | x)],

where ``q(k | x) = prod_d [Phi((hi_d - mu_d) / sigma_d) - Phi((lo_d - mu_d) / sigma_d)]`` is the exact
posterior mass of the bin (computed from the normal CDF in float64). One draw per test image gives an
unbiased estimate of that bound (kind ``bound``, its Monte Carlo spread in the standard error). The
prior sees the latents as ``points`` data of shape ``(Z,)`` with ``L`` levels (a vector: an MLP
backbone, ``model=ddpm_mlp`` / ``flow_matching_mlp`` / ``realnvp``). The cache holds ``(mu, log
sigma^2)`` per image, so that every training step of the prior draws fresh latents without the encoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.families.base import LatentAutoencoder, Nets


def log_bin_mass(k: Tensor, mu: Tensor, logvar: Tensor, levels: int, half_range: float) -> Tensor:
    """``log q(k | x)`` in nats ``(B,)``: the mass of ``N(mu, exp(logvar))`` on bins ``k`` ``(B, Z)`` of
    the grid of ``levels`` bins over ``[-R, R]`` (the outer bins open), in float64. The mass of an
    interval is taken on the side of the mean where both CDF values are small, so no precision is lost
    in the tails."""
    width = 2 * half_range / levels
    mu, sd = mu.double(), (0.5 * logvar.double()).exp()
    lo = -half_range + k.double() * width
    hi = lo + width
    inf = torch.tensor(math.inf, dtype=torch.float64, device=mu.device)
    lo = torch.where(k == 0, -inf, lo)
    hi = torch.where(k == levels - 1, inf, hi)
    a, b = (lo - mu) / sd, (hi - mu) / sd
    upper = a > 0  # both ends above the mean: 1 - Phi, from the upper tail
    mass = torch.where(upper, torch.special.ndtr(-a) - torch.special.ndtr(-b),
                       torch.special.ndtr(b) - torch.special.ndtr(a))
    return mass.clamp_min(1e-300).log().sum(-1)


class KLFirstStage(LatentAutoencoder):
    """The :class:`LatentAutoencoder` of the VAE family (module docstring). ``latent_levels`` bins over
    ``[-latent_range, latent_range]`` per latent coordinate: fixed conventions (the posterior of a
    KL-regularised encoder lives within a few units of 0; bins of width 1/32 are far below its typical
    posterior spread)."""

    latent_levels = 256
    latent_range = 4.0

    def latent_info(self, nets: Nets) -> DataInfo:
        """The binned latent vector: ``points`` data of shape ``(Z,)`` with ``latent_levels`` levels."""
        return DataInfo(name=f"{nets.info.name}_kl{self.latent_dim}", kind="points",  # type: ignore[attr-defined]
                        shape=(self.latent_dim,), levels=self.latent_levels)  # type: ignore[attr-defined]

    def encoding_shape(self, nets: Nets) -> tuple[int, ...]:
        return (2 * self.latent_dim,)  # type: ignore[attr-defined]

    def check_first_stage(self) -> None:
        if self.condition is not None:  # type: ignore[attr-defined]
            raise ValueError("a class-conditional VAE cannot be a first stage (its encoder needs the label). "
                             "Fix: train the first stage without +conditional=class")

    @torch.no_grad()
    def encode_latents(self, nets: Nets, x: Tensor) -> Tensor:
        """``(mu, log sigma^2)`` of ``q(z | x)``, concatenated ``(B, 2 Z)``."""
        self.check_first_stage()
        return torch.cat(self.encode(nets, x), dim=-1).float()  # type: ignore[attr-defined]

    def bins(self, z: Tensor) -> Tensor:
        """The bins ``k`` ``(B, Z)`` (int64) of latent values ``z``."""
        width = 2 * self.latent_range / self.latent_levels
        return ((z + self.latent_range) / width).floor().clamp(0, self.latent_levels - 1).long()

    def centres(self, k: Tensor) -> Tensor:
        """The bins' centres ``c(k)`` ``(B, Z)``: what the decoder is given."""
        width = 2 * self.latent_range / self.latent_levels
        return -self.latent_range + (k.float() + 0.5) * width

    @torch.no_grad()
    def draw_latents(self, nets: Nets, encoding: Tensor) -> tuple[Tensor, Tensor]:
        """``k ~ q(k | x)`` (the bin of ``z ~ N(mu, sigma^2)``) and ``log q(k | x)``."""
        mu, logvar = encoding.float().chunk(2, dim=-1)
        k = self.bins(mu + (0.5 * logvar).exp() * torch.randn_like(mu))
        return k, log_bin_mass(k, mu, logvar, self.latent_levels, self.latent_range)

    def mode_latents(self, nets: Nets, encoding: Tensor) -> Tensor:
        """The bins of the posterior means."""
        return self.bins(encoding.float().chunk(2, dim=-1)[0])

    @torch.no_grad()
    def decode_mean(self, nets: Nets, z: Tensor) -> Tensor:
        return self.decoder_mean(nets, self.centres(z))  # type: ignore[attr-defined]

    @torch.no_grad()
    def latent_log_likelihood(self, nets: Nets, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | c(k))`` in nats ``(B,)``."""
        return self.log_px_given_z(nets, self.centres(z), x)  # type: ignore[attr-defined]

    @torch.no_grad()
    def decode_latents(self, nets: Nets, z: Tensor) -> Tensor:
        """``x ~ p(x | c(k))`` in data space."""
        params = self.decoder_params(nets, self.centres(z))  # type: ignore[attr-defined]
        x = self.observation_for(nets.info).sample(params, nets.info.levels)  # type: ignore[attr-defined]
        return self.to_data(nets.info, x)  # type: ignore[attr-defined]
