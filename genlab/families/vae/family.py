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

Class-conditional (``+conditional=class``): the conditional VAE of Sohn et al. 2015 ("Learning
Structured Output Representation using Deep Conditional Generative Models", Sec. 4.1). A learned
label embedding ``e(y)`` (``model.label_dim`` features) is given to the encoder ``q(z|x, y)`` and the
decoder ``p(x|z, y)`` (the backbones' ``cond_dim`` input: concatenated to the MLP's input, a channel
bias and head input of the conv encoder, concatenated to the conv decoder's latent); the prior is
``p(z|y) = N(mu(y), diag exp(logvar(y)))`` with ``[mu, logvar] = W e(y) + b`` zero-initialised
(``model.conditional_prior: true``, Sohn et al.'s "conditional prior network"), or ``N(0, I)``
(``false``). Every bound above becomes one of ``log p(x|y)``::

    log p(x|y) >= log (1/k) sum_i p(x|z_i, y) p(z_i|y) / q(z_i|x, y),   z_i ~ q(z|x, y)

with the ELBO's KL in closed form between the two diagonal Gaussians. Without a condition the nets,
their parameters and every number are the unconditional VAE's.
"""

from __future__ import annotations

import math
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.scaling import GridScale
from genlab.distributions import DiscreteObservation, check_observation, default_observation
from genlab.families.base import Conditional, Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.vae.restore import VAERestorer
from genlab.families.vae.latents import KLFirstStage
from genlab.metrics.likelihood import LogLikelihood
from genlab.nets import input_kind_error

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, diag exp(logvar))`` summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` in closed form, summed over the last dim."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_gaussians(mu: Tensor, logvar: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu, diag e^logvar) || N(mu_p, diag e^logvar_p))`` in closed form, summed over the last dim::

        1/2 sum [logvar_p - logvar + (e^logvar + (mu - mu_p)^2) e^-logvar_p - 1]
    """
    return 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p) ** 2) * torch.exp(-logvar_p) - 1.0).sum(-1)


def takes_condition(factory: Callable[..., nn.Module]) -> bool:
    """Whether a backbone factory accepts ``cond_dim`` (a condition input, :mod:`genlab.nets.mlp`)."""
    try:
        return "cond_dim" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: let the build say
        return True


class VAEObjective:
    """Base class of the VAE training objectives (``loss`` group)."""

    def __call__(self, vae: "VAE", nets: nn.ModuleDict, x: Tensor, c: Tensor | None = None) -> LossOutput:
        """The loss on discrete ``x``; ``c``: the label embedding ``e(y)`` ``(B, E)`` of a conditional VAE
        (passed only when the VAE is conditional)."""
        raise NotImplementedError


class VAE(Family, Likelihood, Encoder, Inpainter, Conditional, KLFirstStage, VAERestorer):
    """VAE family; with a condition, the CVAE of Sohn et al. 2015 (module docstring): the label
    embedding enters the encoder, the decoder and (``conditional_prior``) a learned Gaussian prior
    ``p(z|y)``; no label dropout by default, no guidance.

    Args:
        encoder: backbone factory ``encoder(in_dim, out_dim)`` (``_partial_`` in config).
        decoder: backbone factory ``decoder(in_dim, out_dim)``.
        observation: discrete observation model of ``p(x|z)``; None picks
            :func:`genlab.distributions.default_observation` for the data's levels at build time.
        latent_dim: size of ``z``.
        val_k, test_k: importance samples for validation / test NLL.
        objective: training objective (``elbo``, ``iwae``).
        label_dim: width of the label embedding (conditional runs only).
        conditional_prior: ``p(z|y)`` a learned diagonal Gaussian per class (conditional runs only);
            False: ``N(0, I)``.
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
        label_dim: int = 16,
        conditional_prior: bool = True,
    ) -> None:
        super().__init__(objective)
        self.encoder_factory, self.decoder_factory = encoder, decoder
        self.observation = observation
        self.latent_dim, self.val_k, self.test_k = latent_dim, val_k, test_k
        self.label_dim, self.conditional_prior = label_dim, conditional_prior

    @property
    def nll_kind(self) -> str:
        """Kind of the test NLL: the ELBO bound for ``test_k = 1``, else the IW estimate."""
        return "bound" if self.test_k == 1 else "estimate"

    # -- setup -----------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        for role, factory in (("encoder", self.encoder_factory), ("decoder", self.decoder_factory)):
            if reason := input_kind_error(factory, info.kind, role):
                return reason
            if self.condition is not None and not takes_condition(factory):
                return f"the {role} backbone takes no condition (no cond_dim argument), so it cannot see the labels"
        return check_observation(self.observation, info.kind, info.levels) if self.observation else None

    def _in_dim(self, info: DataInfo) -> tuple[int, ...]:
        return (info.shape[0], info.levels) if info.kind == "text" else info.shape

    def observation_for(self, info: DataInfo) -> DiscreteObservation:
        """The configured observation model, or the default for the data's levels."""
        return self.observation or default_observation(info.levels)

    def build(self, info: DataInfo) -> Nets:
        p = self.observation_for(info).num_params(info.levels)
        out = (p * info.shape[0], *info.shape[1:]) if info.kind == "image" else (p, *info.shape)
        cond = {} if self.condition is None else {"cond_dim": self.label_dim}
        nets = Nets(info, {
            "encoder": self.encoder_factory(in_dim=self._in_dim(info), out_dim=2 * self.latent_dim, **cond),
            "decoder": self.decoder_factory(in_dim=self.latent_dim, out_dim=out, **cond),
        })
        if self.condition is not None:
            nets["label"] = self.condition.embedding(self.label_dim)
            if self.conditional_prior:  # p(z|y) = N(W e(y) + b), N(0, I) at initialisation
                nets["prior"] = nn.Linear(self.label_dim, 2 * self.latent_dim)
                nn.init.zeros_(nets["prior"].weight)
                nn.init.zeros_(nets["prior"].bias)
        return nets

    # -- labels ------------------------------------------------------------------------
    def label_input(self, nets: nn.ModuleDict, y: Tensor | None) -> Tensor | None:
        """The label embedding ``e(y)`` ``(B, E)`` the nets take, or None (no labels: unconditional)."""
        return None if y is None else nets["label"](y)

    def prior_params(self, nets: nn.ModuleDict, c: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``p(z|y)``'s ``mu, logvar`` ``(B, Z)`` for the label embedding ``c``; None: ``p(z) = N(0, I)``."""
        if c is None or "prior" not in nets:
            return None
        mu, logvar = nets["prior"](c).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def kl(self, nets: nn.ModuleDict, mu: Tensor, logvar: Tensor, c: Tensor | None = None) -> Tensor:
        """``KL(q(z|x, y) || p(z|y))`` in closed form, ``(B,)`` (``p(z) = N(0, I)`` without a learned prior)."""
        prior = self.prior_params(nets, c)
        return kl_to_standard_normal(mu, logvar) if prior is None else kl_gaussians(mu, logvar, *prior)

    # -- pieces used by the objectives -------------------------------------------------
    @staticmethod
    def encoder_input(info: DataInfo, x: Tensor) -> Tensor:
        """Discrete data -> network input: images at the grid points of [-1, 1], text one-hot."""
        if info.kind == "text":
            return F.one_hot(x.long(), info.levels).float()
        return GridScale(info.levels).to_model(x)

    def encode(self, nets: nn.ModuleDict, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z|x)`` (``q(z|x, y)`` given the label embedding ``c``) parameters: ``mu, logvar``, each ``(B, Z)``."""
        inp = self.encoder_input(nets.info, x)
        out = nets["encoder"](inp) if c is None else nets["encoder"](inp, c)
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_params(self, nets: nn.ModuleDict, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Observation parameters ``(B, P, D)`` for latents ``(B, Z)`` (and label embeddings ``c`` ``(B, E)``)."""
        out = nets["decoder"](z) if c is None else nets["decoder"](z, c)
        levels = nets.info.levels
        return out.reshape(out.shape[0], self.observation_for(nets.info).num_params(levels), -1)

    def log_px_given_z(self, nets: nn.ModuleDict, z: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``log p(x|z)`` (``log p(x|z, y)`` given ``c``) in nats, ``(B,)``; ``x`` discrete ``(B, *shape)``."""
        obs = self.observation_for(nets.info)
        return obs.log_prob(self.decoder_params(nets, z, c), x.reshape(x.shape[0], -1), nets.info.levels)

    def log_weights(self, nets: nn.ModuleDict, x: Tensor, k: int, c: Tensor | None = None) -> Tensor:
        """Importance log-weights ``log p(x, z_i) - log q(z_i|x)``, shape ``(k, B)`` (given the label
        embedding ``c``: ``log p(x, z_i|y) - log q(z_i|x, y)``).

        Evaluated in chunks of samples so that memory stays bounded for large ``k``.
        """
        mu, logvar = self.encode(nets, x, c)
        prior = self.prior_params(nets, c)
        per_sample = x.shape[0] * nets.info.dims * self.observation_for(nets.info).num_params(nets.info.levels)
        chunk = max(1, min(k, int(2e7 // max(per_sample, 1))))
        return torch.cat([self._chunk_log_weights(nets, x, mu, logvar, prior, c, min(chunk, k - start))
                          for start in range(0, k, chunk)])

    def _chunk_log_weights(self, nets: nn.ModuleDict, x: Tensor, mu: Tensor, logvar: Tensor,
                           prior: tuple[Tensor, Tensor] | None, c: Tensor | None, kc: int) -> Tensor:
        """``kc`` importance log-weights ``(kc, B)`` from ``q = N(mu, e^logvar)`` and the prior (None: ``N(0, I)``)."""
        b = x.shape[0]
        z = mu + torch.randn(kc, *mu.shape, device=mu.device) * (0.5 * logvar).exp()  # (kc, B, Z)
        log_q = gaussian_log_prob(z, mu, logvar)
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) if prior is None else \
            gaussian_log_prob(z, *prior)
        xs = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])
        cs = None if c is None else c.repeat(kc, 1)  # row i * B + j is example j, like xs
        log_px = self.log_px_given_z(nets, z.reshape(kc * b, -1), xs, cs).view(kc, b)
        return log_px + log_pz - log_q

    def iw_bound(self, nets: nn.ModuleDict, x: Tensor, k: int, c: Tensor | None = None) -> Tensor:
        """``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, ``(B,)``: the IWAE bound (ELBO for k = 1); given the
        label embedding ``c``, the bound on ``log p(x|y)``."""
        return torch.logsumexp(self.log_weights(nets, x, k, c), 0) - math.log(k)

    # -- contract ----------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        if self.condition is None:
            return self.objective(self, nets, batch["x"])
        return self.objective(self, nets, batch["x"], self.label_input(nets, self.training_labels(batch)))

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        """``log p(x)`` (conditional: ``log p(x|y)``, ``y = batch["y"]``): the IW estimate, a bound for k = 1."""
        k = self.val_k if stage == "val" else self.test_k
        c = None if self.condition is None else self.label_input(nets, self.labels(batch))
        return LogLikelihood(self.iw_bound(nets, batch["x"], k, c), "bound" if k == 1 else "estimate")

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples ``z ~ p(z)``, ``x ~ p(x|z)``; conditional: ``z ~ p(z|y)``, ``x ~ p(x|z, y)`` with the
        labels ``y`` ``(n,)`` (None: drawn from ``p(y)``)."""
        device = next(nets.parameters()).device
        c = self.label_input(nets, self.method_labels(n, y, device, sampling=True))
        z = torch.randn(n, self.latent_dim, device=device)
        if (prior := self.prior_params(nets, c)) is not None:
            z = prior[0] + (0.5 * prior[1]).exp() * z
        x = self.observation_for(nets.info).sample(self.decoder_params(nets, z, c), nets.info.levels)
        return self.to_data(nets.info, x)

    @staticmethod
    def to_data(info: DataInfo, x: Tensor) -> Tensor:
        """Flat level ids ``(B, D)`` -> data space (uint8 images / int64 text)."""
        x = x.view(-1, *info.shape)
        return x if info.kind == "text" else x.to(torch.uint8)

    def decoder_mean(self, nets: Nets, z: Tensor, c: Tensor | None = None) -> Tensor:
        """The decoder's mean for latents ``(B, Z)`` (and label embeddings ``c``), in level units
        ``(B, *shape)`` (float)."""
        info = nets.info
        return self.observation_for(info).mean(self.decoder_params(nets, z, c), info.levels).view(-1, *info.shape)

    # -- Encoder: the posterior mean ------------------------------------------------------------
    encoder_kind = "posterior mean"

    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """The posterior mean ``mu(x)`` (conditional: ``mu(x, y)``, labels :meth:`method_labels`) ``(B, Z)``."""
        return self.encode(nets, x, self.label_input(nets, self.method_labels(len(x), y, x.device)))[0]

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """The decoder's mean for ``z`` (conditional: given ``y``, labels :meth:`method_labels`)."""
        return self.decoder_mean(nets, z, self.label_input(nets, self.method_labels(len(z), y, z.device)))

    @torch.no_grad()
    def interpolate(self, nets: Nets, x_a: Tensor, x_b: Tensor, steps: int = 8, y: Tensor | None = None) -> Tensor:
        """Decoder means along the line between the posterior means of ``x_a`` and ``x_b``
        ``(B, *shape)``: ``(B, steps, *shape)`` float, level units ``[0, L-1]``. Conditional: one label
        per pair (``y`` ``(B,)``, else :meth:`method_labels`) for both encodings and the whole path."""
        c = self.label_input(nets, self.method_labels(len(x_a), y, x_a.device))
        mu_a, mu_b = self.encode(nets, x_a, c)[0], self.encode(nets, x_b, c)[0]
        t = torch.linspace(0, 1, steps, device=mu_a.device).view(1, steps, 1)
        z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (B, steps, Z)
        cs = None if c is None else c.repeat_interleave(steps, 0)
        return self.decoder_mean(nets, z.flatten(0, 1), cs).view(x_a.shape[0], steps, *nets.info.shape)

    # -- Inpainter: iterated reconstruction (module docstring) ------------------------------------
    inpaint_method = "iterated reconstruction"

    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object, y: Tensor | None = None) -> Tensor:
        """``options.iters`` rounds of encode (posterior mean) -> decoder mean -> known pixels back,
        from the per-image mean of the observed pixels (conditional: given the labels ``y``, else
        :meth:`method_labels`)."""
        from genlab.tasks.masks import mean_fill  # the baseline fill the task reports beside it

        levels = nets.info.levels
        known = x.float()
        cur = mean_fill(x, missing, levels).float()
        c = self.label_input(nets, self.method_labels(len(x), y, x.device))
        for _ in range(options.iters):
            recon = self.decoder_mean(nets, self.encode(nets, cur, c)[0], c).view_as(cur)
            cur = torch.where(missing, recon, known)
        return cur.round().clamp(0, levels - 1).to(x.dtype)

