"""Two-stage models: any family as a prior over the latents of a trained, frozen first stage.

The first stage (``model.stage1``: a run directory or checkpoint of a
:class:`~genlab.families.base.LatentAutoencoder`, e.g. a VQ-VAE) maps an image ``x`` to discrete latents
``z(x)`` (a ``(1, h, w)`` grid of codes with ``K`` levels) and has an explicit decoder likelihood
``p(x | z)``. The prior (``model.prior``: any family config, e.g. a gated PixelCNN) is built for the
latents as data (:meth:`LatentAutoencoder.latent_info`) and trained, unchanged, on ``z(x)`` of each
training batch (the first stage stays frozen). Like VQ-VAE + PixelCNN (van den Oord et al. 2017,
Sec. 4.2) and taming's / latent-diffusion's ``first_stage_config``, in one run.

Two ways to ask for one: ``genlab-train +stage1=<run dir> model=<any prior>`` (the builders wrap the
run's model in this family, :class:`~genlab.families.base.LatentPrior`), or a model config that names
both (``model=latent_pixelcnn model.stage1=<run dir>``). A prior must model the latents as data and
have a likelihood of them (the bound needs ``log P_prior(z)``); others are refused, naming the ones
that can.

Latents: each split is encoded once and cached on disk under a hash of the stage-1 checkpoint
(:mod:`genlab.data.latents`); training and evaluation batches find their latents there by content
(``nets["latents"]``, filled on first use); images in no cached split are encoded on the fly.

Likelihood, on the ORIGINAL discrete data (kind ``bound``): ``z(x)`` is one term of
``p(x) = sum_z P_prior(z) p(x | z)``, so::

    -log p(x) <= -log p(x | z(x)) - log P_prior(z(x))          (recon_nats + prior_nats)

with the prior's exact NLL (a PixelCNN's) or its bound (then the sum is still a bound). Both parts
are in ``LogLikelihood.extras`` and logged (``recon_nats``/``_bpd``, ``prior_nats``/``_bpd``, per data
dimension). Samples: ``z ~ P_prior``, decoded, ``x ~ p(x | z)``. The loss group (``loss=...``) is the
prior's objective.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from genlab.checkpoints import CheckpointError
from genlab.data.base import DataError, DataInfo
from genlab.data.latents import Encoding, LatentCache, LatentCacheWarning, LatentTable, state_digest
from genlab.families.base import (Encoder, Family, IncompatibleConfigError, LatentAutoencoder, LatentPrior, Likelihood,
                                  LossOutput, Nets)
from genlab.families.latent.coding import TwoPartCoder
from genlab.families.latent.stage1 import TRAIN_HINT, Frozen, Stage1, load_stage1, mismatch
from genlab.metrics.likelihood import LN2, LogLikelihood, NLLKind


def describe(latent: DataInfo) -> str:
    """``"mnist_vq64: image data of shape (1, 7, 7) with 64 levels"``: what the latents are, for messages."""
    return f"{latent.name}: {latent.kind} data of shape {tuple(latent.shape)} with {latent.levels} levels"


def parts_summary(n: int, sums: dict[str, float], dims: int) -> dict[str, float]:
    """The means of the ``*_nats`` parts over ``n`` examples, and each in bits per data dimension (``*_bpd``)."""
    out = {k: v / n for k, v in sums.items()} if n else {}
    return {**out, **{k.replace("_nats", "_bpd"): v / (dims * LN2) for k, v in out.items()}}


class TwoStage(Family, Likelihood, LatentPrior, Encoder, TwoPartCoder):
    """A prior family over a frozen first stage's latents (module docstring).

    Args:
        prior: the prior family (any family that can model the latents as data and has a likelihood).
        stage1: the first stage: a run directory or checkpoint path (loaded when the family is checked
            or built), or a loaded :class:`Stage1`; None is refused with the fix.
        objective: the prior's training objective (the ``loss`` group); None keeps the prior's own.
    """

    name = "two_stage"
    compare_rank = 30
    nll_kind = "bound"
    #: where the splits' latents are cached (:meth:`use_latent_cache`); None: every batch is encoded
    latent_cache: LatentCache | None = None

    def __init__(self, prior: Family, stage1: str | Stage1 | None = None, objective: Any = None) -> None:
        super().__init__(objective if objective is not None else prior.objective)
        if objective is not None:
            prior.objective = objective
        self.prior, self.stage1 = prior, stage1

    # -- LatentPrior -----------------------------------------------------------------------------
    @classmethod
    def over(cls, prior: Family, stage1: str) -> TwoStage:
        return cls(prior, stage1)

    def with_prior(self, prior: Family) -> TwoStage:
        return type(self)(prior, self.loaded())

    def check_prior(self) -> str | None:
        """Why :attr:`prior` cannot be the prior: it cannot model the latents, or has no likelihood of them."""
        latent = self.latent_info()
        if reason := self.prior.check_data(latent):
            return f"the prior cannot model the first stage's latents ({describe(latent)}): {reason}"
        if self.prior.likelihood_kind(latent) == "none":
            return (f"the prior ({self.prior.name}) has no likelihood of the latents, and the composed bound "
                    "-log p(x|z) - log P_prior(z) needs the prior's log P(z)")
        return None

    def use_latent_cache(self, cache: LatentCache) -> None:
        self.latent_cache = cache

    # -- the first stage -------------------------------------------------------------------------
    def loaded(self) -> Stage1:
        """The first stage, loaded from ``model.stage1`` once (its nets are copied into :meth:`build`'s)."""
        if self.stage1 is None:
            raise DataError(f"model.stage1 is not set: a two-stage model needs a trained first stage. "
                            f"Fix: {TRAIN_HINT}")
        if not isinstance(self.stage1, Stage1):
            self.stage1 = load_stage1(self.stage1)
        return self.stage1

    def coder(self) -> LatentAutoencoder:
        """The first stage's family (the encoder/decoder maths; its nets are ``nets["stage1"].nets``)."""
        return self.loaded().family  # type: ignore[return-value]

    def latent_info(self) -> DataInfo:
        """What the prior models: the first stage's latents as data."""
        stage = self.loaded()
        return stage.family.latent_info(stage.nets)  # type: ignore[attr-defined]

    # -- compatibility ---------------------------------------------------------------------------
    def check_objective(self, objective: Any) -> str | None:
        return self.prior.check_objective(objective)

    def check_data(self, info: DataInfo) -> str | None:
        try:
            stage = self.loaded()
        except (DataError, CheckpointError, IncompatibleConfigError) as err:
            return str(err)
        return mismatch(stage, info) or self.check_prior()

    def likelihood_kind(self, info: DataInfo) -> NLLKind:
        kind = self.prior.likelihood_kind(self.latent_info())
        return kind if kind in ("none", "estimate") else "bound"

    # -- contract --------------------------------------------------------------------------------
    def build(self, info: DataInfo) -> Nets:
        """``{"stage1": the first stage's nets (frozen), "prior": the prior's nets for the latents}``."""
        stage = self.loaded()
        if reason := mismatch(stage, info):
            raise DataError(reason)
        return Nets(info, {"stage1": Frozen(stage.nets), "prior": self.prior.build(self.latent_info()),
                           "latents": LatentTable()})

    def param_groups(self, nets: Nets) -> dict[str, Any]:
        return self.prior.param_groups(nets["prior"])

    def schedule(self) -> list[str]:
        return self.prior.schedule()

    def diverged(self, out: LossOutput) -> str | None:
        return self.prior.diverged(out)

    @torch.no_grad()
    def encode(self, nets: Nets, x: Tensor) -> Tensor:
        """``z(x)`` computed now by the first stage's encoder, no gradients."""
        return self.coder().encode_latents(nets["stage1"].nets, x)

    @torch.no_grad()
    def draw(self, nets: Nets, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log q(z | x))``: latents of ``x`` drawn from the first stage's posterior (for a deterministic
        encoder: ``z(x)`` and 0), from the cached encodings (:meth:`latents`)."""
        return self.coder().draw_latents(nets["stage1"].nets, self.latents(nets, x))

    @torch.no_grad()
    def latents(self, nets: Nets, x: Tensor) -> Tensor:
        """The first stage's encodings of ``x`` (its latents, or a stochastic encoder's posterior
        parameters): cached for the images of ``x`` that have them (:meth:`latent_table`), the
        others encoded now; no gradients."""
        table = self.latent_table(nets, x.device)
        if table is None:
            return self.encode(nets, x)
        z, hit = table.lookup(x)
        if bool(hit.all()):
            return z
        z = z.clone()
        z[~hit] = self.encode(nets, x[~hit]).to(z.dtype)
        return z

    def latent_table(self, nets: Nets, device: torch.device) -> LatentTable | None:
        """The run's table of cached latents, filled on first use from :attr:`latent_cache` (every split
        read from disk, or encoded once on ``device`` and written); None without a cache."""
        table = nets["latents"] if "latents" in nets else None
        if table is None or self.latent_cache is None:
            return None
        if not table.ready:
            stage = self.loaded()
            spec = Encoding.of(self.latent_info(), stage.family.encoding_shape(stage.nets))  # type: ignore[attr-defined]
            keys, codes = self.latent_cache.load(self.cache_key(nets), lambda xb: self.encode(nets, xb.to(device)), spec)
            table.fill(keys.to(device), codes.to(device))
        return table

    def cache_key(self, nets: Nets) -> str | None:
        """The first stage's cache key (:attr:`Stage1.digest`) while ``nets`` hold that checkpoint's weights;
        None (latents encoded in memory, nothing read or written) with a warning where they do not: a
        two-stage checkpoint keeps the stage-1 weights it was trained with, and the file may have changed."""
        stage = self.loaded()
        if stage.digest is None or state_digest(nets["stage1"].nets) == stage.weights:
            return stage.digest
        warnings.warn(f"the first stage's weights in this model are not those of {stage.source} (the file changed "
                      "after this model was trained): its latents are encoded in memory, not read from or written "
                      "to the cache of that file", LatentCacheWarning, stacklevel=2)
        return None

    def loss(self, nets: Nets, batch: dict[str, Tensor], **kwargs: Any) -> LossOutput:
        """The prior's objective on the batch's latents (``kwargs``: the prior's param group, if it has several)."""
        return self.prior.loss(nets["prior"], {"x": self.draw(nets, batch["x"])[0]}, **kwargs)

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood | None:
        """``log p(x | z(x)) + log P_prior(z(x))`` (module docstring); None where the prior has no likelihood."""
        x = batch["x"]
        z, log_q = self.draw(nets, x)
        prior = self.prior.log_likelihood(nets["prior"], {"x": z}, stage=stage) \
            if isinstance(self.prior, Likelihood) else None
        if prior is None:
            return None
        recon = self.coder().latent_log_likelihood(nets["stage1"].nets, x, z).double()
        prior_ll = prior.log_px.double()
        extras = {"recon_nats": -recon, "prior_nats": -prior_ll, "prior_nll_sq": prior_ll ** 2,
                  **{f"prior_{k}": v for k, v in prior.extras.items()}}
        if self.stochastic():  # the bits the posterior's spread gives back: bound = recon + prior - bitsback
            extras["bitsback_nats"] = -log_q.double()
        kind = "estimate" if prior.kind == "estimate" else "bound"
        return LogLikelihood(recon + prior_ll - log_q.double(), kind, extras)

    def stochastic(self) -> bool:
        """Whether the first stage's encoder is stochastic (its cache holds posterior parameters)."""
        stage = self.loaded()
        return stage.family.encoding_shape(stage.nets) is not None  # type: ignore[attr-defined]

    def summarize_likelihood(self, nets: Nets, n: int, sums: dict[str, float]) -> dict[str, float]:
        """Both parts in nats and bits per data dimension, and the prior's own statistics (``prior_*``)."""
        own = {k: v for k, v in sums.items() if k in ("recon_nats", "prior_nats", "bitsback_nats")}
        theirs = {k.removeprefix("prior_"): v for k, v in sums.items() if k.startswith("prior_") and k not in own}
        theirs["nll"] = sums.get("prior_nats", 0.0)  # the prior's own NLL sums, as its summary expects them
        stats = parts_summary(n, own, nets.info.dims)
        if isinstance(self.prior, Likelihood):
            prior = self.prior.summarize_likelihood(nets["prior"], n, theirs)
            stats.update({f"prior_{k}": v for k, v in prior.items()})
        return stats

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: Any = None) -> Tensor:
        """``z ~ P_prior`` (with the prior's ``sampler``), decoded: ``x ~ p(x | z)`` in data space."""
        z = self.prior.sample(nets["prior"], n, sampler)
        return self.coder().decode_latents(nets["stage1"].nets, z)

    # -- Encoder: the prior's latent space where it has one, else the first stage's ----------------
    encoder_kind = "the prior's encoder over the first stage's latents (a prior without one: the first stage's encoder)"
    latent_paths = ("linear", "slerp")

    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """A prior that is an :class:`Encoder` (DDIM / ODE inversion, a flow's bijection): its code of the
        first stage's most likely latents of ``x``; any other prior: the first stage's own code of ``x``."""
        stage = nets["stage1"].nets
        if isinstance(self.prior, Encoder):
            z = self.coder().mode_latents(stage, self.latents(nets, x))
            return self.prior.to_latent(nets["prior"], z, steps)
        return self.first_encoder().to_latent(stage, x, steps)

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Codes -> the first stage's decoder mean (level units) of the prior's decoded latents (rounded to
        the latents' levels), or of the first stage's own code."""
        stage = nets["stage1"].nets
        if not isinstance(self.prior, Encoder):
            return self.first_encoder().from_latent(stage, z, steps)
        latent = self.latent_info()
        levels = self.prior.from_latent(nets["prior"], z, steps).round().clamp(0, latent.levels - 1).long()
        return self.coder().decode_mean(stage, levels.view(-1, *latent.shape))

    def first_encoder(self) -> Encoder:
        """The first stage as an :class:`Encoder` (refused where it has no encoder and the prior neither)."""
        coder = self.coder()
        if not isinstance(coder, Encoder):
            raise IncompatibleConfigError(f"neither the prior ({self.prior.name}) nor the first stage ({coder.name}) "
                                          "maps images to latent codes: this two-stage model cannot interpolate")
        return coder
