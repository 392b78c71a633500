"""Generative adversarial networks (Goodfellow et al. 2014), trained through the generic module.

Two players: a generator ``G: z -> y`` with ``z ~ N(0, I)`` and ``y = tanh(G_net(z)) in (-1, 1)^D``,
and a discriminator / critic ``D: y -> R``. The objective (the ``loss`` group,
:mod:`genlab.families.gan.objectives`) gives ``L_D(D(x), D(G(z)))`` and ``L_G(D(G(z)))``.

Contract: :meth:`GAN.param_groups` returns one optimizer per player (``generator``,
``discriminator``; each a list of param-group dicts that carry the per-player learning rate
and betas, TTUR: Heusel et al. 2017), :meth:`GAN.schedule` is ``n_critic`` discriminator steps
then one generator step, and ``loss(nets, batch, group=...)`` returns that player's loss.

Data mapping (:class:`genlab.data.scaling.BinScale` on ``[-1, 1]``): discrete ``x in {0..L-1}^D`` ->
``y = 2 (x + u) / L - 1`` with ``u ~ U[0, 1)`` (uniform dequantisation, so real and generated data
are both continuous) or, without it, the bin centres ``u = 1/2``; samples map back by
``x = floor((y + 1) L / 2)`` (the bin of ``y``).

Sampling uses an exponential moving average of the generator's weights (Karras et al. 2018;
Yazici et al. 2019), ``nets["generator_ema"]``, updated at every generator step, through the
configured sampler ``model.sampler`` (:class:`genlab.families.gan.sampler.GANSampler`): a pipeline
propose -> latent refinement (Tanaka 2019) -> Jacobian truncation (Tanielian et al. 2020) ->
discriminator rejection (Azadi et al. 2019), each step off unless configured. Rejection sampling's
calibration lives in the nets (``nets["rejection"]``), fitted on held-out real images at every
validation by :class:`genlab.families.gan.callbacks.RejectionCalibrator` (the GAN model configs'
``callbacks.gan_rejection``).

Optionally (``categorical_codes = K``), the latent also carries a uniform categorical code
``c in {0..K-1}`` (one-hot, appended to ``z``) and the discriminator a second head ``Q(c | y)``
trained with the generator to recover ``c`` from ``G(z, c)``: InfoGAN's variational lower bound
on the mutual information ``I(c; G(z, c))`` (Chen et al. 2016, Eq. 5), weight ``info_weight``
in both players' losses. No labels are used. A continuous generator of a unimodal ``z`` must put
mass between separated modes (Khayatkhoei et al. 2018); a discrete code lets it jump between
them, and the information term makes it use the code (on the ring of 8 each code takes one mode;
on MNIST it did not raise the confident share, docs/lab/benchmarks-history.md).
No likelihood: ``nll_kind = "none"``.

Class-conditional (``+conditional=class``; :mod:`genlab.families.gan.conditional`): the generator
``G(z, y)`` has conditional batch norm, a per-class gain and bias of every batch norm from a linear
map of the class embedding, initialised to gain 1 and bias 0 (de Vries et al. 2017; Miyato & Koyama
2018); a generator without batch norm (the MLP) takes the embedding concatenated to ``z``. The
discriminator is the projection discriminator ``D(x, y) = psi(phi(x)) + <e_y, phi(x)>`` (Miyato &
Koyama 2018, Eq. (3)). Both players train on the batch's labels (the fakes get the real batch's
labels); label dropout (none by default) trains the null label too. Sampling draws one class at a
time through the whole pipeline (refinement, Jacobian truncation and rejection see the class's
samples only, and the discriminator scores them with that label); rejection's calibration fits on
held-out images with their labels. The EMA generator, InfoGAN codes and top-k training work as
unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as spectral_norm_of
from torch.optim.swa_utils import AveragedModel

from genlab.callbacks.ema import EMAWarmup
from genlab.data.base import DataInfo
from genlab.data.scaling import BinScale
from genlab.families.base import Conditional, Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.gan.conditional import ProjectionDiscriminator, conditional_generator, last_linear
from genlab.families.gan.generation import Generation
from genlab.families.gan.nets import add_spectral_norm
from genlab.families.gan.objectives import GANObjective, NonSaturating
from genlab.families.gan.rejection import RejectionCalibration
from genlab.families.gan.sampler import GANSampler, Propose
from genlab.families.gan.topk import TopK
from genlab.nets import input_kind_error

Group = Literal["generator", "discriminator"]


def labelled(y: Tensor | None) -> tuple[Tensor, ...]:
    """The label argument of a call that takes one only when conditional: ``(y,)``, or ``()`` for None
    (an unconditional GAN calls its heads as it always did)."""
    return () if y is None else (y,)


class GAN(Family, Conditional):
    """GAN family for images and 2-D points (see module docstring). Class-conditional with a run
    condition: conditional batch norm in ``G`` (the MLP generator: ``[z, e_y]`` concatenated) and the
    projection discriminator (module docstring); no label dropout by default, no guidance.

    Args:
        generator: factory ``generator(in_dim=latent_dim, out_dim=data shape)`` (``_partial_``).
        discriminator: factory ``discriminator(in_dim=data shape, out_dim=1)``.
        latent_dim: size of ``z``.
        spectral_norm: spectral normalisation on every discriminator layer (Miyato et al. 2018).
        lr_generator, lr_discriminator: per-player learning rates (None: ``optimizer.lr``).
        betas: Adam betas for both players (None: the optimizer's); DCGAN: ``(0.5, 0.999)``.
        ema_decay: decay of the generator EMA used for sampling (None: sample the raw generator).
        dequantize: uniform dequantisation of the real data (else bin centres).
        divergence_threshold: stop when a discriminator step's ``|L_D|`` or the gap
            ``|mean D(x) - mean D(G(z))|`` exceeds this (a collapsed discriminator).
        categorical_codes: ``K > 0``: InfoGAN's categorical code in the latent and ``Q`` head on
            the discriminator (module docstring); 0: off.
        info_weight: ``lambda`` of the information term (1 in Chen et al. 2016 for discrete codes).
        top_k: top-k generator training (Sinha et al. 2020; :mod:`genlab.families.gan.topk`):
            ``{min_fraction, gamma, every}``, the generator loss over the ``k`` fakes the
            discriminator rates most real; None: off.
        sampler: the default sampler (``model.sampler``, :class:`~genlab.families.gan.sampler.GANSampler`
            or a mapping of its steps); None: plain samples of the generator EMA. With its
            ``rejection`` step the nets carry the rejection calibration.
        objective: the GAN loss (``loss`` group); non-saturating by default.
    """

    why_not = {
        Inpainter: ("a GAN has neither a likelihood nor an encoder to condition on the observed pixels (it would "
                    "need an optimisation over its latent, not implemented)"),
        Likelihood: "a GAN defines no likelihood (nll_kind none)",
        Encoder: "it has no encoder (no map from an image to a latent code)",
    }
    name = "gan"
    compare_rank = 60
    objective_type = GANObjective
    nll_kind = "none"

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        latent_dim: int = 64,
        spectral_norm: bool = False,
        lr_generator: float | None = None,
        lr_discriminator: float | None = None,
        betas: Sequence[float] | None = None,
        ema_decay: float | None = 0.999,
        dequantize: bool = True,
        divergence_threshold: float = 1.0e3,
        categorical_codes: int = 0,
        info_weight: float = 1.0,
        top_k: dict[str, Any] | None = None,
        sampler: GANSampler | Mapping[str, Any] | None = None,
        objective: GANObjective | None = None,
    ) -> None:
        super().__init__(objective if objective is not None else NonSaturating())
        self.generator_factory, self.discriminator_factory = generator, discriminator
        self.latent_dim, self.spectral_norm = latent_dim, spectral_norm
        self.lr = {"generator": lr_generator, "discriminator": lr_discriminator}
        self.betas = tuple(betas) if betas is not None else None
        self.ema_decay, self.dequantize = ema_decay, dequantize
        self.divergence_threshold = divergence_threshold
        if categorical_codes < 0 or categorical_codes == 1:
            raise ValueError(f"model.categorical_codes={categorical_codes}: use 0 (off) or a number of codes >= 2")
        if info_weight < 0:
            raise ValueError(f"model.info_weight={info_weight} must be >= 0")
        self.codes, self.info_weight = categorical_codes, info_weight
        self.top_k = TopK.check_config(top_k) if top_k is not None else None  # checked now, not at a G step
        self.sampler = GANSampler.of(sampler)

    # -- configs of older versions ---------------------------------------------------------
    LEGACY_SAMPLING = ("refine", "jacobian_truncation", "rejection_sampling", "rejection_quantile")

    @classmethod
    def upgrade_config(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """A stored ``model`` config from before ``model.sampler`` as this version builds it: the
        sampling options ``refine``, ``jacobian_truncation``, ``rejection_sampling`` and
        ``rejection_quantile`` become the steps of ``sampler`` (a given ``sampler`` node wins)."""
        model = dict(model)
        if not any(k in model for k in cls.LEGACY_SAMPLING):
            return model
        refine, jacobian = model.pop("refine", None), model.pop("jacobian_truncation", None)
        reject, quantile = model.pop("rejection_sampling", False), model.pop("rejection_quantile", 0.95)
        steps = {"_target_": "genlab.families.gan.GANSampler", "propose": None, "refine": refine,
                 "jacobian_truncation": jacobian, "rejection": {"quantile": quantile} if reject else None}
        model["sampler"] = {**steps, **dict(model.get("sampler") or {})}
        return model

    # -- setup -----------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind not in ("image", "points"):
            return f"a GAN generates continuous values binned into levels: image or points data, not {info.kind}"
        for role, factory in (("generator", self.generator_factory), ("discriminator", self.discriminator_factory)):
            if reason := input_kind_error(factory, info.kind, role):
                return reason
        return self.sampler_error(self.sampler, info)

    @staticmethod
    def sampler_error(sampler: GANSampler, info: DataInfo) -> str | None:
        """Why ``sampler`` cannot sample ``info``'s data, or None."""
        jt = sampler.jacobian_truncation
        if jt is not None and jt.ink_power and info.kind != "image":
            return ("model.sampler.jacobian_truncation.ink_power normalises by an image's ink (its total intensity); "
                    f"{info.kind} data has none: set model.sampler.jacobian_truncation.ink_power=0")
        return None

    def build(self, info: DataInfo) -> Nets:
        generator = self.build_generator(info)
        modules: dict[str, nn.Module] = {"generator": generator, "discriminator": self.build_discriminator(info)}
        if self.ema_decay is not None:
            ema = AveragedModel(generator, multi_avg_fn=EMAWarmup(self.ema_decay), use_buffers=True)
            modules["generator_ema"] = ema.requires_grad_(False)
        if self.sampler.rejection is not None:
            modules["rejection"] = RejectionCalibration(self.sampler.rejection.quantile)
        if self.top_k is not None:
            modules["top_k"] = TopK(**self.top_k)
        return Nets(info, modules)

    def build_generator(self, info: DataInfo) -> nn.Module:
        """``G(z[, c])``; with a condition ``G(z[, c], y)`` (:func:`.conditional.conditional_generator`,
        a class embedding of width ``latent_dim``)."""
        in_dim = self.latent_dim + self.codes
        if self.condition is None:
            return self.generator_factory(in_dim=in_dim, out_dim=info.shape)
        return conditional_generator(self.generator_factory, in_dim, info.shape,
                                     self.condition.embedding(self.latent_dim))

    def build_discriminator(self, info: DataInfo) -> nn.Module:
        """``D`` (then ``Q``'s logits) with spectral norm where configured; with a condition the
        projection discriminator, its embedding (the width of ``phi``) spectrally normalised too
        where ``spectral_norm`` is on (as Miyato & Koyama 2018)."""
        net = self.discriminator_factory(in_dim=info.shape, out_dim=1 + self.codes)  # D, then Q logits
        net = add_spectral_norm(net) if self.spectral_norm else net
        if self.condition is None:
            return net
        embedding = self.condition.embedding(last_linear(net).in_features)
        if self.spectral_norm:
            spectral_norm_of(embedding.table)
        return ProjectionDiscriminator(net, embedding)

    def adapt_state(self, nets: Nets, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoint weights for these nets: a rejection calibration the configured sampler does not
        use is dropped; one from before the calibration kept its quantile, proposal key and
        log-ratios gets them (:meth:`RejectionCalibration.complete`); a run trained without one
        cannot sample with ``model.sampler.rejection`` (a clear error)."""
        if "rejection" not in nets:
            return {k: v for k, v in state.items() if not k.startswith("rejection.")}
        if not any(k.startswith("rejection.") for k in state):
            raise ValueError("model.sampler.rejection: this checkpoint holds no rejection calibration (the run was "
                             "trained without model.sampler.rejection, and calibrating needs held-out images during "
                             "training); use model.sampler.rejection=null, or train with it")
        return nets["rejection"].complete(state, "rejection.", self.sampler.proposal_key())

    def param_groups(self, nets: nn.ModuleDict) -> dict[str, list[dict[str, Any]]]:
        """``{player: [{"params": ..., "lr": ..., "betas": ...}]}``: torch optimizers take a list
        of param-group dicts, whose ``lr``/``betas`` override the optimizer factory's defaults."""
        return {group: [self._param_group(nets[group], self.lr[group])] for group in ("generator", "discriminator")}

    def _param_group(self, net: nn.Module, lr: float | None) -> dict[str, Any]:
        group: dict[str, Any] = {"params": list(net.parameters())}
        if lr is not None:
            group["lr"] = lr
        if self.betas is not None:
            group["betas"] = self.betas
        return group

    def schedule(self) -> list[str]:
        """``n_critic`` discriminator steps, then one generator step (cycled by the module)."""
        return ["discriminator"] * self.objective.n_critic + ["generator"]

    # -- data mapping ---------------------------------------------------------------------
    def to_model(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``(B, *shape)`` -> ``y in [-1, 1)``: ``2 (x + u) / L - 1`` (see module docstring)."""
        scale = BinScale(nets.info.levels)
        return scale.uniform(x) if self.dequantize else scale.centres(x)

    def to_data(self, nets: Nets, y: Tensor) -> Tensor:
        """``y in [-1, 1]`` -> the bin index ``floor((y + 1) L / 2)`` in ``{0..L-1}`` (uint8 up to 256 levels)."""
        return BinScale(nets.info.levels).to_data(y)

    def generation(self, nets: Nets, generator: nn.Module | None = None, propose: Propose | None = None,
                   label: int | None = None) -> Generation:
        """``generator`` (default: the one ``propose`` chooses, :meth:`sampling_generator`), the
        discriminator head and the latent layout, as the sampler steps use them; ``label``: the class
        of every sample (conditional GANs; the discriminator scores with it)."""
        net = generator if generator is not None else self.sampling_generator(nets, propose)
        return Generation(net, partial(self.discriminate, nets, y=label), self.latent_dim, self.codes,
                          tuple(nets.info.shape), next(nets.parameters()).device, label)

    def sampling_generator(self, nets: nn.ModuleDict, propose: Propose | None = None) -> nn.Module:
        """The generator that samples (``propose``, default the configured sampler's): the EMA where
        there is one."""
        return (propose or self.sampler.propose).network(nets)

    def draw(self, nets: Nets, generator: nn.Module, n: int, z: Tensor | None = None,
             sampler: GANSampler | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples of ``generator`` in model space through the latent steps of ``sampler``
        (default: the configured one; rejection aside): ``z``: the latents, ``(proposals, latent_dim)``
        (:meth:`GANSampler.proposals`); None: fresh ones. ``y``: labels ``(n,)`` of a conditional GAN
        (None: drawn from the prior), one class at a time (:meth:`by_class`); latents ``z`` go with
        labels of one class."""
        s = self.sampler if sampler is None else sampler
        if z is not None and z.shape[0] != (m := s.proposals(n)):
            raise ValueError(f"GAN.draw: {n} samples take {m} latents (GANSampler.proposals), got {z.shape[0]}")
        labels = self.condition_labels(n, y, next(nets.parameters()).device)
        if z is not None and labels is not None and len(labels.unique()) > 1:
            raise ValueError("GAN.draw: given latents z= are drawn for one class at a time (each class goes through "
                             "the sampler steps on its own); pass labels y= of a single class")
        return self.by_class(labels, n, lambda label, k: s.draw(self.generation(nets, generator, label=label), k, z))

    # -- labels (conditional GANs) -----------------------------------------------------------
    def condition_labels(self, n: int, y: Tensor | int | None, device: Any) -> Tensor | None:
        """``(n,)`` labels for a conditional GAN: ``y`` checked (the null label allowed), one class
        ``y`` for all, or (None) drawn from the prior; None for an unconditional GAN, which refuses a ``y``."""
        if isinstance(y, int):
            y = torch.full((n,), y, dtype=torch.long)
        return self.method_labels(n, y, device, sampling=True)

    def by_class(self, labels: Tensor | None, n: int, draw: Callable[[int | None, int], Tensor]) -> Tensor:
        """``n`` rows from ``draw(label, k)`` called once per class of ``labels`` (``k``: its count; in
        increasing class order), each class's rows put where its labels are; ``draw(None, n)`` without
        labels."""
        if labels is None:
            return draw(None, n)
        if not len(labels):
            return draw(self.condition.null_label, 0)  # type: ignore[union-attr]
        out: Tensor | None = None
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().flatten()
            part = draw(int(c), len(rows))
            out = part.new_empty((n, *part.shape[1:])) if out is None else out
            out[rows] = part
        return out

    # -- contract ----------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor], group: Group | None = None) -> LossOutput:
        """The loss of player ``group`` on ``batch`` (its size sets the number of fakes)."""
        steps = {"discriminator": self.discriminator_step, "generator": self.generator_step}
        if group not in steps:
            raise ValueError(f"GAN.loss needs group= one of {list(steps)} (the schedule's names), got {group!r}")
        y = self.training_labels(batch) if self.condition is not None else None
        return steps[group](nets, batch["x"], y)

    def fakes(self, nets: Nets, n: int, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``n`` fakes ``tanh(G(z[, c][, y]))`` of the raw generator (training; ``y``: their labels, a
        conditional GAN) and their codes (None without)."""
        gen = self.generation(nets, nets["generator"])
        z, code, c = gen.latents(n)
        return gen.fake(z, code, y), c

    def discriminator_step(self, nets: Nets, x: Tensor, y: Tensor | None = None) -> LossOutput:
        """``L_D`` (+ the objective's penalty) on real ``x`` and as many fresh fakes; a conditional
        GAN's fakes get the real batch's labels ``y`` and both are scored with them.

        Logs ``d_loss`` (without penalty), ``gp`` (the penalty, where there is one), and the
        mean outputs ``d_real``, ``d_fake``."""
        real = self.to_model(nets, x)
        with torch.no_grad():
            fake, c = self.fakes(nets, real.shape[0], y)
        d, q = self.heads(nets, torch.cat([real, fake]), *labelled(None if y is None else torch.cat([y, y])))
        d_real, d_fake = d.chunk(2)
        d_loss = self.objective.discriminator_loss(d_real, d_fake)
        logs = {"d_loss": d_loss.detach(), "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
        loss = d_loss
        if c is not None:  # Q learns to recover the code of the fakes
            info = F.cross_entropy(q[real.shape[0]:].float(), c)
            loss, logs["info_ce"] = loss + self.info_weight * info, info.detach()
        penalty = self.objective.penalty(partial(self.discriminate, nets, y=y), real, fake)  # D alone, not Q
        if penalty is None:
            return LossOutput(loss, logs)
        return LossOutput(loss + penalty, {**logs, "gp": penalty.detach()})

    def generator_step(self, nets: Nets, x: Tensor, y: Tensor | None = None) -> LossOutput:
        """``L_G`` on ``len(x)`` fakes (with top-k training, on the ``k`` the discriminator rates
        most real; a conditional GAN's fakes get the batch's labels ``y``); first moves the EMA towards
        the current generator (so the EMA lags the raw generator by one update). Logs ``g_loss``,
        ``d_fake`` (all fakes) and ``top_k``."""
        if "generator_ema" in nets:
            nets["generator_ema"].update_parameters(nets["generator"])
        fake, c = self.fakes(nets, x.shape[0], y)
        d_fake, q = self.heads(nets, fake, *labelled(y))
        logs = {"d_fake": d_fake.mean().detach()}
        if "top_k" in nets:
            kept = nets["top_k"](d_fake)
            g_loss, logs["top_k"] = self.objective.generator_loss(kept), torch.tensor(float(kept.shape[0]))
        else:
            g_loss = self.objective.generator_loss(d_fake)
        logs["g_loss"] = g_loss.detach()
        if c is None:
            return LossOutput(g_loss, logs)
        info = F.cross_entropy(q.float(), c)  # the generator makes its code recoverable
        return LossOutput(g_loss + self.info_weight * info, {**logs, "info_ce": info.detach()})

    def heads(self, nets: nn.ModuleDict, v: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Discriminator outputs ``(B,)`` and, with codes, ``Q``'s logits ``(B, K)`` for model-space
        ``v``; ``y``: the labels ``(B,)`` the projection discriminator scores with (conditional GANs)."""
        out = (nets["discriminator"](v) if y is None else nets["discriminator"](v, y)).view(v.shape[0], -1)
        return out[:, 0], (out[:, 1:] if self.codes else None)

    def discriminate(self, nets: nn.ModuleDict, v: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Discriminator outputs ``(B,)`` for model-space inputs ``(B, *shape)``; a conditional GAN
        scores with labels ``y`` (``(B,)``, one class for all, or None: drawn from the prior)."""
        return self.heads(nets, v, *labelled(self.condition_labels(v.shape[0], y, v.device)))[0]

    def diverged(self, out: LossOutput) -> str | None:
        """A collapsed discriminator: a discriminator step whose ``|L_D|`` or real/fake gap
        ``|mean D(x) - mean D(G(z))|`` exceeds ``divergence_threshold`` (the gap is invariant
        to the critic's offset, which the WGAN losses leave free)."""
        if "d_real" not in out.logs:
            return None
        gap = float(out.logs["d_real"] - out.logs["d_fake"])
        worst = max(abs(float(out.loss.detach())), abs(gap))
        if worst <= self.divergence_threshold:
            return None
        return (
            "Discriminator collapse (it separates real from generated data by an exploding margin, so the "
            "generator's gradients are useless; fix: model.spectral_norm=true, loss=hinge or loss=wgan_gp, a lower "
            "model.lr_discriminator or fewer critic steps loss.n_critic; raise the threshold if such margins are "
            f"expected): |d_loss| or |d_real - d_fake| = {worst:.4g} exceeds "
            f"model.divergence_threshold={self.divergence_threshold:g}"
        )

    # -- sampling --------------------------------------------------------------------------
    def resolve_sampler(self, nets: Nets, sampler: GANSampler | Mapping[str, Any] | None) -> GANSampler:
        """``sampler`` (None: the configured ``model.sampler``) as a :class:`GANSampler` that fits the data."""
        s = self.sampler if sampler is None else GANSampler.of(sampler)
        if reason := self.sampler_error(s, nets.info):
            raise ValueError(reason)
        return s

    @torch.no_grad()
    def calibrate_rejection(self, nets: Nets, x: Tensor, sampler: GANSampler | None = None,
                            y: Tensor | None = None) -> dict[str, float]:
        """Fit the rejection calibration (``nets["rejection"]``) on held-out real data ``x``
        (discrete, ``(N, *shape)``) against as many draws of ``sampler``'s steps before rejection
        (default: the configured sampler), at its rejection quantile. A conditional GAN needs the
        images' labels ``y``: the fakes get the same labels, and both are scored with them."""
        s = self.resolve_sampler(nets, sampler)
        if s.rejection is None:
            raise ValueError("GAN.calibrate_rejection: the sampler has no rejection step (model.sampler.rejection)")
        real = self.to_model(nets, x)
        if self.condition is not None:
            y = self.condition.check(y, len(x))  # the held-out images' own labels, required
        labels = self.condition_labels(len(x), y, real.device)
        fake = self.by_class(labels, len(x), lambda label, k: s.draw(self.generation(nets, propose=s.propose,
                                                                                     label=label), k))
        return nets["rejection"].calibrate(self.discriminate(nets, real, labels), self.discriminate(nets, fake, labels),
                                           nets["discriminator"], s.rejection.quantile, s.proposal_key())

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: GANSampler | Mapping[str, Any] | None = None,
               y: Tensor | None = None) -> Tensor:
        """``n`` samples in data space (uint8) through ``sampler`` (None: the configured
        ``model.sampler``): from the generator EMA where there is one, through the latent steps
        that are on, and rejection sampling with the nets' calibration when that step is on. A
        conditional GAN samples labels ``y`` ``(n,)`` (None: drawn from the prior), one class at a time
        through the whole pipeline (:meth:`by_class`); an unconditional one refuses ``y``."""
        s = self.resolve_sampler(nets, sampler)
        calibration = nets["rejection"] if "rejection" in nets else None
        labels = self.condition_labels(n, y, next(nets.parameters()).device)
        out = self.by_class(labels, n, lambda label, k: s.sample(self.generation(nets, propose=s.propose, label=label),
                                                                 k, calibration, nets["discriminator"]))
        return self.to_data(nets, out)
