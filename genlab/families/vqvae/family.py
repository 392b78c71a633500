"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") with an explicit
discrete decoder.

An encoder maps an image to a grid of vectors ``z_e(x)`` ``(Dz, h, w)`` (``h = H / f``, ``f`` the
downsampling factor ``model.downsample``), each replaced by its nearest code of a ``K``-entry codebook
(:mod:`genlab.families.vqvae.quantizer`: EMA updates, dead-code restarts, straight-through
gradients). The decoder gives ``p(x | z_q)`` as a discrete observation model over the data's levels
(:mod:`genlab.distributions`; ``model.observation``, by default a categorical for few levels, a
discretised logistic for 8-bit data), so its log-likelihood is a log *probability* of the data.

With a uniform prior ``P(z) = K^{-h w}`` over the code grids, the encoder's grid is one term of
``p(x) = sum_z P(z) p(x | z)``, which gives the deterministic bound (kind ``bound``)::

    -log p(x) <= -log p(x | z_q(x)) + h w log K           (reconstruction nats + D_z log K)

``LogLikelihood.extras`` carries both parts (``recon_nats``, ``prior_nats``). A learned prior over
the codes (a two-stage model, :mod:`genlab.families.latent`) replaces ``h w log K`` by its own NLL.
Training (the ``vq`` loss, :class:`VQObjective`) minimises the reconstruction NLL per dimension plus
``β`` times the commitment loss (Eq. 3; the codebook follows by EMA, App. A.1).

Samples: a code grid drawn uniformly, decoded and drawn from ``p(x | z)``: the honest sampler of
this bound's model, and a weak one (a prior over the codes is what improves it).

Capabilities: :class:`~genlab.families.base.Likelihood` (the bound), :class:`Encoder` (the quantised
vectors ``z_q(x)`` ``(B, Dz, h, w)``; decoding snaps a vector to its nearest codes and takes the
decoder's mean) and :class:`LatentAutoencoder` (the code grid as a ``(1, h, w)`` image with ``K``
levels, the first stage of a two-stage model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.scaling import GridScale, data_dtype
from genlab.distributions import DiscreteObservation, check_observation, default_observation, level_table
from genlab.families.base import Encoder, Family, LatentAutoencoder, Likelihood, LossOutput, Nets
from genlab.families.vqvae.quantizer import VectorQuantizer, usage
from genlab.metrics.likelihood import LN2, LogLikelihood
from genlab.nets import input_kind_error


def bpd_summary(n: int, sums: dict[str, float], dims: int) -> dict[str, float]:
    """The mean of every ``*_nats`` extra over ``n`` examples, and the same in bits per dimension
    (``*_bpd``): the logged parts of a bound."""
    out = {k: v / n for k, v in sums.items() if k not in ("nll", "nll_sq")} if n else {}
    out.update({k.replace("_nats", "_bpd"): v / (dims * LN2) for k, v in out.items() if k.endswith("_nats")})
    return out


class VQObjective:
    """The ``vq`` loss: ``-log p(x | z_q(x)) / D + β ||z_e - sg(z_q)||^2`` (van den Oord et al. 2017,
    Eq. 3, with the codebook term replaced by the EMA update, which it applies to the batch).

    Args:
        commitment: ``β`` (0.25 in the paper).
    """

    def __init__(self, commitment: float = 0.25) -> None:
        self.commitment = commitment

    def __call__(self, vq: VQVAE, nets: Nets, x: Tensor) -> LossOutput:
        z_e = vq.encode(nets, x)
        quant = nets["quantizer"](z_e)
        recon = vq.log_px_given_vectors(nets, quant.z_st, x)  # (B,)
        nets["quantizer"].update(z_e, quant.codes)  # after the lookup: the batch used the codebook as it was
        d = nets.info.dims
        loss = -recon.mean() / d + self.commitment * quant.commitment.mean()
        prior = vq.prior_nats(nets.info)
        logs = {"recon_bpd": -recon.mean().detach() / (d * LN2), "commitment": quant.commitment.mean().detach(),
                "bound_bpd": (prior - recon.mean().detach()) / (d * LN2),
                **usage(quant.codes, vq.codebook_size)}
        return LossOutput(loss, logs)


class VQVAE(Family, Likelihood, Encoder, LatentAutoencoder):
    """VQ-VAE family (module docstring).

    Args:
        encoder: factory ``encoder(in_channels=, code_dim=, downsample=)`` (``_partial_`` in config).
        decoder: factory ``decoder(code_dim=, out_channels=, downsample=)``.
        observation: discrete observation model of ``p(x | z_q)``; None picks
            :func:`genlab.distributions.default_observation` for the data's levels.
        codebook_size: ``K``.
        code_dim: ``Dz``.
        downsample: the encoder's downsampling factor ``f`` (a power of two dividing ``H`` and ``W``).
        decay: the codebook's EMA decay ``γ``.
        restart_after: training steps a code may go unused before it is restarted (0: never).
        objective: the ``vq`` loss (:class:`VQObjective`).
    """

    name = "vqvae"
    compare_rank = 25
    objective_type = VQObjective
    nll_kind = "bound"
    encoder_kind = "nearest codebook vectors"

    def __init__(self, encoder: Callable[..., nn.Module], decoder: Callable[..., nn.Module],
                 observation: DiscreteObservation | None = None, codebook_size: int = 64, code_dim: int = 16,
                 downsample: int = 4, decay: float = 0.99, restart_after: int = 20,
                 objective: VQObjective | None = None) -> None:
        super().__init__(objective)
        self.encoder_factory, self.decoder_factory, self.observation = encoder, decoder, observation
        self.codebook_size, self.code_dim, self.downsample = codebook_size, code_dim, downsample
        self.decay, self.restart_after = decay, restart_after

    # -- setup -------------------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind != "image":
            return f"the VQ-VAE encodes images to a grid of codes; {info.kind} data are not images"
        h, w = info.shape[1:]
        if h % self.downsample or w % self.downsample:
            return (f"model.downsample={self.downsample} does not divide the {h}x{w} images (pass a power of two "
                    f"that divides both, e.g. model.downsample=2)")
        reason = input_kind_error(self.encoder_factory, info.kind, "encoder")
        return reason or check_observation(self.observation_for(info), info.kind, info.levels)

    def observation_for(self, info: DataInfo) -> DiscreteObservation:
        """The configured observation model, or the default for the data's levels."""
        return self.observation or default_observation(info.levels)

    def build(self, info: DataInfo) -> Nets:
        c = info.shape[0]
        p = self.observation_for(info).num_params(info.levels)
        return Nets(info, {
            "encoder": self.encoder_factory(in_channels=c, code_dim=self.code_dim, downsample=self.downsample),
            "decoder": self.decoder_factory(code_dim=self.code_dim, out_channels=p * c, downsample=self.downsample),
            "quantizer": VectorQuantizer(self.codebook_size, self.code_dim, self.decay, self.restart_after),
        })

    def grid(self, info: DataInfo) -> tuple[int, int]:
        """The code grid ``(h, w)`` of images of ``info``."""
        return info.shape[1] // self.downsample, info.shape[2] // self.downsample

    def prior_nats(self, info: DataInfo) -> float:
        """``-log P_uniform(z) = h w log K``."""
        h, w = self.grid(info)
        return h * w * math.log(self.codebook_size)

    # -- pieces --------------------------------------------------------------------------------------
    def encode(self, nets: Nets, x: Tensor) -> Tensor:
        """``z_e(x)`` ``(B, Dz, h, w)`` of discrete images ``x`` (input at the grid points of [-1, 1])."""
        return nets["encoder"](GridScale(nets.info.levels).to_model(x))

    def codes(self, nets: Nets, x: Tensor) -> Tensor:
        """The code grid ``k(z_e(x))`` ``(B, h, w)`` int64."""
        return nets["quantizer"].lookup(self.encode(nets, x))

    def decoder_params(self, nets: Nets, z: Tensor) -> Tensor:
        """Observation parameters ``(B, P, D)`` for code vectors ``(B, Dz, h, w)``."""
        out = nets["decoder"](z)
        return out.reshape(out.shape[0], self.observation_for(nets.info).num_params(nets.info.levels), -1)

    def log_px_given_vectors(self, nets: Nets, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)`` in nats ``(B,)`` for code vectors ``z`` ``(B, Dz, h, w)``."""
        obs = self.observation_for(nets.info)
        return obs.log_prob(self.decoder_params(nets, z), x.reshape(x.shape[0], -1), nets.info.levels)

    def to_data(self, info: DataInfo, flat: Tensor) -> Tensor:
        """Flat level ids ``(B, D)`` -> images ``(B, *shape)`` in the data's dtype."""
        return flat.view(-1, *info.shape).to(data_dtype(info.levels))

    # -- contract ------------------------------------------------------------------------------------
    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        return self.objective(self, nets, batch["x"])

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood:
        """The bound ``log p(x | z_q(x)) - h w log K`` (module docstring), with its two parts in nats."""
        x = batch["x"]
        recon = self.log_px_given_vectors(nets, nets["quantizer"].embed(self.codes(nets, x)), x).double()
        prior = torch.full_like(recon, self.prior_nats(nets.info))
        return LogLikelihood(recon - prior, "bound", {"recon_nats": -recon, "prior_nats": prior})

    def summarize_likelihood(self, nets: Nets, n: int, sums: dict[str, float]) -> dict[str, float]:
        return bpd_summary(n, sums, nets.info.dims)

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: Any = None) -> Tensor:
        """Code grids drawn uniformly, decoded, ``x ~ p(x | z_q)``."""
        h, w = self.grid(nets.info)
        device = nets["quantizer"].codebook.device
        codes = torch.randint(self.codebook_size, (n, 1, h, w), device=device)
        return self.decode_latents(nets, codes)

    # -- Encoder ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """The quantised vectors ``z_q(x)`` ``(B, Dz, h, w)``."""
        return nets["quantizer"].embed(self.codes(nets, x))

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Vectors ``(B, Dz, h, w)`` snapped to their nearest codes, decoded: the decoder's mean in level units."""
        q = nets["quantizer"]
        params = self.decoder_params(nets, q.embed(q.lookup(z)))
        return self.observation_for(nets.info).mean(params, nets.info.levels).view(-1, *nets.info.shape)

    # -- LatentAutoencoder -----------------------------------------------------------------------------
    def latent_info(self, nets: Nets) -> DataInfo:
        """The code grid as a ``(1, h, w)`` image with ``K`` levels."""
        return DataInfo(name=f"{nets.info.name}_vq{self.codebook_size}", kind="image",
                        shape=(1, *self.grid(nets.info)), levels=self.codebook_size)

    @torch.no_grad()
    def encode_latents(self, nets: Nets, x: Tensor) -> Tensor:
        return self.codes(nets, x).unsqueeze(1).to(data_dtype(self.codebook_size))

    @torch.no_grad()
    def latent_log_likelihood(self, nets: Nets, x: Tensor, z: Tensor) -> Tensor:
        return self.log_px_given_vectors(nets, nets["quantizer"].embed(z[:, 0]), x)

    @torch.no_grad()
    def decode_mean(self, nets: Nets, z: Tensor) -> Tensor:
        params = self.decoder_params(nets, nets["quantizer"].embed(z[:, 0]))
        return self.observation_for(nets.info).mean(params, nets.info.levels).view(-1, *nets.info.shape)

    @torch.no_grad()
    def decoder_log_probs(self, nets: Nets, z: Tensor) -> Tensor:
        params = self.decoder_params(nets, nets["quantizer"].embed(z[:, 0].long()))
        return level_table(self.observation_for(nets.info), params, nets.info.levels, len(z), nets.info.dims)

    @torch.no_grad()
    def decode_latents(self, nets: Nets, z: Tensor) -> Tensor:
        params = self.decoder_params(nets, nets["quantizer"].embed(z[:, 0]))
        return self.to_data(nets.info, self.observation_for(nets.info).sample(params, nets.info.levels))
