"""Variational autoencoder (Kingma & Welling 2014) with a discrete decoder.

Generative model ``p(z) = N(0, I)``, ``p(x|z) = prod_d P(x_d | decoder(z)_d)`` with a discrete
observation model (:mod:`genlab.distributions`) over the data's levels, so ``log p(x|z)`` is a
log *probability* of the discrete data and every bound below is directly in the shared unit.
Encoder ``q(z|x) = N(mu(x), diag sigma^2(x))``.

Training objectives (the ``loss`` group, :mod:`genlab.families.vae.objectives`): ``elbo``
(β-weighted) and ``iwae`` (k samples). Test NLL: the importance-weighted estimate
(Burda et al. 2016, Eq. 8)::

    log p(x) ≈ log (1/k) sum_i p(x, z_i) / q(z_i|x),   z_i ~ q(z|x)

labelled ``estimate`` for k > 1 and ``bound`` (the ELBO) for k = 1.

Capabilities: :class:`~genlab.families.base.Likelihood`, :class:`Encoder` (the posterior mean
``mu(x)``, decoded by the decoder's mean: a reconstruction, not exact) and :class:`Inpainter` —
*iterated reconstruction*: start the missing pixels at the mean of the observed ones, then
``iters`` times encode (posterior mean), decode (the decoder's mean) and put the known pixels
back; the deterministic variant of the imputation chain of Rezende et al. 2014 ("Stochastic
Backpropagation and Approximate Inference in Deep Generative Models", Sec. 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.scaling import GridScale
from genlab.distributions import DiscreteObservation, check_observation, default_observation
from genlab.families.base import Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.metrics.likelihood import LogLikelihood
from genlab.nets import input_kind_error

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, diag exp(logvar))`` summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` in closed form, summed over the last dim."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


class VAEObjective:
    """Base class of the VAE training objectives (``loss`` group)."""

    def __call__(self, vae: "VAE", nets: nn.ModuleDict, x: Tensor) -> LossOutput:
        raise NotImplementedError


class VAE(Family, Likelihood, Encoder, Inpainter):
    """VAE family.

    Args:
        encoder: backbone factory ``encoder(in_dim, out_dim)`` (``_partial_`` in config).
        decoder: backbone factory ``decoder(in_dim, out_dim)``.
        observation: discrete observation model of ``p(x|z)``; None picks
            :func:`genlab.distributions.default_observation` for the data's levels at build time.
        latent_dim: size of ``z``.
        val_k, test_k: importance samples for validation / test NLL.
        objective: training objective (``elbo``, ``iwae``).
    """

    name = "vae"
    compare_rank = 20
    objective_type = VAEObjective

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        observation: DiscreteObservation | None = None,
        latent_dim: int = 32,
        val_k: int = 1,
        test_k: int = 500,
        objective: VAEObjective | None = None,
    ) -> None:
        super().__init__(objective)
        self.encoder_factory, self.decoder_factory = encoder, decoder
        self.observation = observation
        self.latent_dim, self.val_k, self.test_k = latent_dim, val_k, test_k

    @property
    def nll_kind(self) -> str:
        """Kind of the test NLL: the ELBO bound for ``test_k = 1``, else the IW estimate."""
        return "bound" if self.test_k == 1 else "estimate"

    # -- setup -----------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        for role, factory in (("encoder", self.encoder_factory), ("decoder", self.decoder_factory)):
            if reason := input_kind_error(factory, info.kind, role):
                return reason
        return check_observation(self.observation, info.kind, info.levels) if self.observation else None

    def _in_dim(self, info: DataInfo) -> tuple[int, ...]:
        return (info.shape[0], info.levels) if info.kind == "text" else info.shape

    def observation_for(self, info: DataInfo) -> DiscreteObservation:
        """The configured observation model, or the default for the data's levels."""
        return self.observation or default_observation(info.levels)

    def build(self, info: DataInfo) -> Nets:
        p = self.observation_for(info).num_params(info.levels)
        out = (p * info.shape[0], *info.shape[1:]) if info.kind == "image" else (p, *info.shape)
        return Nets(info, {
            "encoder": self.encoder_factory(in_dim=self._in_dim(info), out_dim=2 * self.latent_dim),
            "decoder": self.decoder_factory(in_dim=self.latent_dim, out_dim=out),
        })

    # -- pieces used by the objectives -------------------------------------------------
    @staticmethod
    def encoder_input(info: DataInfo, x: Tensor) -> Tensor:
        """Discrete data -> network input: images at the grid points of [-1, 1], text one-hot."""
        if info.kind == "text":
            return F.one_hot(x.long(), info.levels).float()
        return GridScale(info.levels).to_model(x)

    def encode(self, nets: nn.ModuleDict, x: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z|x)`` parameters: ``mu, logvar``, each ``(B, Z)``."""
        mu, logvar = nets["encoder"](self.encoder_input(nets.info, x)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_params(self, nets: nn.ModuleDict, z: Tensor) -> Tensor:
        """Observation parameters ``(B, P, D)`` for latents ``(B, Z)``."""
        out = nets["decoder"](z)
        levels = nets.info.levels
        return out.reshape(out.shape[0], self.observation_for(nets.info).num_params(levels), -1)

    def log_px_given_z(self, nets: nn.ModuleDict, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x|z)`` in nats, ``(B,)``; ``x`` discrete ``(B, *shape)``."""
        obs = self.observation_for(nets.info)
        return obs.log_prob(self.decoder_params(nets, z), x.reshape(x.shape[0], -1), nets.info.levels)

    def log_weights(self, nets: nn.ModuleDict, x: Tensor, k: int) -> Tensor:
        """Importance log-weights ``log p(x, z_i) - log q(z_i|x)``, shape ``(k, B)``.

        Evaluated in chunks of samples so that memory stays bounded for large ``k``.
        """
        mu, logvar = self.encode(nets, x)
        b = x.shape[0]
        per_sample = b * nets.info.dims * self.observation_for(nets.info).num_params(nets.info.levels)
        chunk = max(1, min(k, int(2e7 // max(per_sample, 1))))
        out = []
        for start in range(0, k, chunk):
            kc = min(chunk, k - start)
            z = mu + torch.randn(kc, *mu.shape, device=mu.device) * (0.5 * logvar).exp()  # (kc, B, Z)
            log_q = gaussian_log_prob(z, mu, logvar)
            log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
            xs = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])
            log_px = self.log_px_given_z(nets, z.reshape(kc * b, -1), xs).view(kc, b)
            out.append(log_px + log_pz - log_q)
        return torch.cat(out)

    def iw_bound(self, nets: nn.ModuleDict, x: Tensor, k: int) -> Tensor:
        """``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, ``(B,)``: the IWAE bound (ELBO for k = 1)."""
        return torch.logsumexp(self.log_weights(nets, x, k), 0) - math.log(k)

    # -- contract ----------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        return self.objective(self, nets, batch["x"])

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        k = self.val_k if stage == "val" else self.test_k
        return LogLikelihood(self.iw_bound(nets, batch["x"], k), "bound" if k == 1 else "estimate")

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None) -> Tensor:
        z = torch.randn(n, self.latent_dim, device=next(nets.parameters()).device)
        x = self.observation_for(nets.info).sample(self.decoder_params(nets, z), nets.info.levels)
        return self.to_data(nets.info, x)

    @staticmethod
    def to_data(info: DataInfo, x: Tensor) -> Tensor:
        """Flat level ids ``(B, D)`` -> data space (uint8 images / int64 text)."""
        x = x.view(-1, *info.shape)
        return x if info.kind == "text" else x.to(torch.uint8)

    def decoder_mean(self, nets: Nets, z: Tensor) -> Tensor:
        """The decoder's mean for latents ``(B, Z)``, in level units ``(B, *shape)`` (float)."""
        info = nets.info
        return self.observation_for(info).mean(self.decoder_params(nets, z), info.levels).view(-1, *info.shape)

    # -- Encoder: the posterior mean ------------------------------------------------------------
    encoder_kind = "posterior mean"

    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None) -> Tensor:
        """The posterior mean ``mu(x)`` ``(B, Z)``."""
        return self.encode(nets, x)[0]

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None) -> Tensor:
        return self.decoder_mean(nets, z)

    @torch.no_grad()
    def interpolate(self, nets: Nets, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """Decoder means along the line between the posterior means of ``x_a`` and ``x_b``
        ``(B, *shape)``: ``(B, steps, *shape)`` float, level units ``[0, L-1]``."""
        mu_a, mu_b = self.to_latent(nets, x_a), self.to_latent(nets, x_b)
        t = torch.linspace(0, 1, steps, device=mu_a.device).view(1, steps, 1)
        z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (B, steps, Z)
        return self.decoder_mean(nets, z.flatten(0, 1)).view(x_a.shape[0], steps, *nets.info.shape)

    # -- Inpainter: iterated reconstruction (module docstring) ------------------------------------
    inpaint_method = "iterated reconstruction"

    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object) -> Tensor:
        """``options.iters`` rounds of encode (posterior mean) -> decoder mean -> known pixels back,
        from the per-image mean of the observed pixels."""
        from genlab.tasks.masks import mean_fill  # the baseline fill the task reports beside it

        levels = nets.info.levels
        known = x.float()
        cur = mean_fill(x, missing, levels).float()
        for _ in range(options.iters):
            recon = self.decoder_mean(nets, self.to_latent(nets, cur)).view_as(cur)
            cur = torch.where(missing, recon, known)
        return cur.round().clamp(0, levels - 1).to(x.dtype)

