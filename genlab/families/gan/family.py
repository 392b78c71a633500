"""Generative adversarial networks (Goodfellow et al. 2014), trained through the generic module.

Two players: a generator ``G: z -> y`` with ``z ~ N(0, I)`` and ``y = tanh(G_net(z)) in (-1, 1)^D``,
and a discriminator / critic ``D: y -> R``. The objective (the ``loss`` group,
:mod:`genlab.families.gan.objectives`) gives ``L_D(D(x), D(G(z)))`` and ``L_G(D(G(z)))``.

Contract: :meth:`GAN.param_groups` returns one optimizer per player (``generator``,
``discriminator``; each a list of param-group dicts that carry the per-player learning rate
and betas, TTUR: Heusel et al. 2017), :meth:`GAN.schedule` is ``n_critic`` discriminator steps
then one generator step, and ``loss(nets, batch, group=...)`` returns that player's loss.

Data mapping: discrete ``x in {0..L-1}^D`` -> ``y = 2 (x + u) / L - 1`` with ``u ~ U[0, 1)``
(uniform dequantisation, so real and generated data are both continuous) or, without it,
the bin centres ``u = 1/2``; samples map back by ``x = floor((y + 1) L / 2)`` (the bin of ``y``).

Sampling uses an exponential moving average of the generator's weights (Karras et al. 2018;
Yazici et al. 2019), ``nets["generator_ema"]``, updated at every generator step.
Optionally (``rejection_sampling``), samples pass through discriminator rejection sampling
(Azadi et al. 2019; :mod:`genlab.families.gan.rejection`), calibrated on held-out real images at
every validation by :class:`genlab.families.gan.callbacks.RejectionCalibrator`.
Optionally (``refine``), each sample's latent is first moved a few Adam steps up the
discriminator's score, held near its start by a distance penalty (discriminator optimal
transport, Tanaka 2019; :mod:`genlab.families.gan.refine`).
Optionally (``jacobian_truncation``), more latents are drawn and only the share whose generator
Jacobian is smallest is kept: those away from the blends between classes (Tanielian et al. 2020;
:mod:`genlab.families.gan.jacobian`).

Optionally (``categorical_codes = K``), the latent also carries a uniform categorical code
``c in {0..K-1}`` (one-hot, appended to ``z``) and the discriminator a second head ``Q(c | y)``
trained with the generator to recover ``c`` from ``G(z, c)``: InfoGAN's variational lower bound
on the mutual information ``I(c; G(z, c))`` (Chen et al. 2016, Eq. 5), weight ``info_weight``
in both players' losses. No labels are used. A continuous generator of a unimodal ``z`` must put
mass between separated modes (Khayatkhoei et al. 2018); a discrete code lets it jump between
them, and the information term makes it use the code (on the ring of 8 each code takes one mode;
on MNIST it did not raise the confident share, docs/benchmarks.md).
No likelihood: ``nll_kind = "none"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from genlab.callbacks.ema import warm_decay
from genlab.data.base import DataInfo
from genlab.families.base import Family, LossOutput
from genlab.families.gan.jacobian import JacobianTruncation
from genlab.families.gan.nets import add_spectral_norm
from genlab.families.gan.objectives import GANObjective, NonSaturating
from genlab.families.gan.refine import LatentRefinement
from genlab.families.gan.rejection import RejectionCalibration, rejection_sample
from genlab.families.gan.topk import TopK
from genlab.nets import input_kind_error

Group = Literal["generator", "discriminator"]


class EMAWarmup:
    """``multi_avg_fn`` of :class:`~torch.optim.swa_utils.AveragedModel`: an EMA whose decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's
    ``ExponentialMovingAverage(num_updates)``), so short runs are not dominated by the
    initial weights. Integer buffers (BatchNorm's counter) are copied."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    @torch.no_grad()
    def __call__(self, ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        weight = 1.0 - warm_decay(self.decay, n_averaged)
        if ema[0].is_floating_point():
            torch._foreach_lerp_(ema, current, weight)
        else:
            torch._foreach_copy_(ema, current)


class GAN(Family):
    """GAN family for images and 2-D points (see module docstring).

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
        rejection_sampling: draw samples by discriminator rejection sampling (Azadi et al.
            2019): keep a generated ``y`` with probability ``min(1, r(y) / M)``, ``r`` the
            discriminator's calibrated density ratio; calibrated at every validation (needs the
            ``gan_rejection`` callback, on by default). Off: plain samples of the generator.
        rejection_quantile: ``M`` as this quantile of the generated samples' ratios (1: their
            maximum, exact but wasteful; 0.95 keeps about a third to a half of proposals).
        categorical_codes: ``K > 0``: InfoGAN's categorical code in the latent and ``Q`` head on
            the discriminator (module docstring); 0: off.
        info_weight: ``lambda`` of the information term (1 in Chen et al. 2016 for discrete codes).
        top_k: top-k generator training (Sinha et al. 2020; :mod:`genlab.families.gan.topk`):
            ``{min_fraction, gamma, every}``, the generator loss over the ``k`` fakes the
            discriminator rates most real; None: off.
        refine: discriminator-driven latent refinement of the samples (Tanaka 2019;
            :mod:`genlab.families.gan.refine`): ``{steps, lr, penalty}``, Adam steps on each
            latent maximising ``D(G(z)) - penalty ||z - z0||``; None: off. Samples only.
        jacobian_truncation: Jacobian-based truncation of the samples (Tanielian et al. 2020;
            :mod:`genlab.families.gan.jacobian`): ``{keep, probes, ink_power}``, keep the share
            ``keep`` of (refined) proposals with the smallest generator Jacobian norm; None: off.
        objective: the GAN loss (``loss`` group); non-saturating by default.
    """

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
        rejection_sampling: bool = False,
        rejection_quantile: float = 0.95,
        categorical_codes: int = 0,
        info_weight: float = 1.0,
        top_k: dict[str, Any] | None = None,
        refine: dict[str, Any] | None = None,
        jacobian_truncation: dict[str, Any] | None = None,
        objective: GANObjective | None = None,
    ) -> None:
        super().__init__(objective if objective is not None else NonSaturating())
        self.generator_factory, self.discriminator_factory = generator, discriminator
        self.latent_dim, self.spectral_norm = latent_dim, spectral_norm
        self.lr = {"generator": lr_generator, "discriminator": lr_discriminator}
        self.betas = tuple(betas) if betas is not None else None
        self.ema_decay, self.dequantize = ema_decay, dequantize
        self.divergence_threshold = divergence_threshold
        self.rejection_sampling = rejection_sampling
        self.rejection_quantile = RejectionCalibration.check_quantile(rejection_quantile)
        if categorical_codes < 0 or categorical_codes == 1:
            raise ValueError(f"model.categorical_codes={categorical_codes}: use 0 (off) or a number of codes >= 2")
        if info_weight < 0:
            raise ValueError(f"model.info_weight={info_weight} must be >= 0")
        self.codes, self.info_weight = categorical_codes, info_weight
        self.top_k = TopK.check_config(top_k) if top_k is not None else None  # checked now, not at a G step
        self.refine = LatentRefinement.parse(refine)
        self.jacobian_truncation = JacobianTruncation.parse(jacobian_truncation)
        self.info: DataInfo | None = None

    # -- setup -----------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind not in ("image", "points"):
            return f"a GAN generates continuous values binned into levels: image or points data, not {info.kind}"
        for role, factory in (("generator", self.generator_factory), ("discriminator", self.discriminator_factory)):
            if reason := input_kind_error(factory, info.kind, role):
                return reason
        if self.jacobian_truncation and self.jacobian_truncation.ink_power and info.kind != "image":
            return ("model.jacobian_truncation.ink_power normalises by an image's ink (its total intensity); "
                    f"{info.kind} data has none: set model.jacobian_truncation.ink_power=0")
        return None

    def build(self, info: DataInfo) -> nn.ModuleDict:
        self.info = info
        generator = self.generator_factory(in_dim=self.latent_dim + self.codes, out_dim=info.shape)
        discriminator = self.discriminator_factory(in_dim=info.shape, out_dim=1 + self.codes)  # D, then Q logits
        nets = nn.ModuleDict({"generator": generator,
                              "discriminator": add_spectral_norm(discriminator) if self.spectral_norm else discriminator})
        if self.ema_decay is not None:
            nets["generator_ema"] = AveragedModel(generator, multi_avg_fn=EMAWarmup(self.ema_decay), use_buffers=True)
            nets["generator_ema"].requires_grad_(False)
        if self.rejection_sampling:
            nets["rejection"] = RejectionCalibration(self.rejection_quantile)
        if self.top_k is not None:
            nets["top_k"] = TopK(**self.top_k)
        return nets

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
    def to_model(self, x: Tensor) -> Tensor:
        """Discrete ``(B, *shape)`` -> ``y in [-1, 1)``: ``2 (x + u) / L - 1`` (see module docstring)."""
        u = torch.rand(x.shape, device=x.device) if self.dequantize else torch.full(x.shape, 0.5, device=x.device)
        return 2.0 * (x.float() + u) / self.info.levels - 1.0

    def to_data(self, y: Tensor) -> Tensor:
        """``y in [-1, 1]`` -> the bin index ``floor((y + 1) L / 2)`` in ``{0..L-1}``, uint8."""
        levels = self.info.levels
        return torch.floor((y + 1.0) * levels / 2.0).clamp(0, levels - 1).to(torch.uint8)

    def latent(self, n: int, device: torch.device, z: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The generator's input ``(n, latent_dim [+ K])`` and the codes ``c`` ``(n,)`` (None without
        codes): ``z ~ N(0, I)`` (or the given ``z``), ``c ~ U{0..K-1}`` appended one-hot."""
        z = torch.randn(n, self.latent_dim, device=device) if z is None else z
        if not self.codes:
            return z, None
        c = torch.randint(0, self.codes, (n,), device=device)
        return torch.cat([z, F.one_hot(c, self.codes).to(z.dtype)], dim=1), c

    def generate_with_codes(self, generator: nn.Module, n: int, device: torch.device,
                            z: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``tanh(G(z[, c]))`` ``(n, *shape)`` in model space, and the codes ``c`` (None without codes)."""
        inp, c = self.latent(n, device, z)
        return torch.tanh(generator(inp)).view(n, *self.info.shape), c

    def generate(self, generator: nn.Module, n: int, device: torch.device, z: Tensor | None = None) -> Tensor:
        """``tanh(G(z[, c]))``: ``(n, *shape)`` in model space."""
        return self.generate_with_codes(generator, n, device, z)[0]

    def proposals(self, n: int) -> int:
        """How many latents :meth:`draw` uses for ``n`` samples (more than ``n`` with Jacobian truncation)."""
        return self.jacobian_truncation.proposals(n) if self.jacobian_truncation else n

    def draw(self, nets: nn.ModuleDict, generator: nn.Module, n: int, device: torch.device,
             z: Tensor | None = None) -> Tensor:
        """``n`` samples of ``generator`` in model space, through latent refinement when ``refine`` is
        set (the codes, with ``categorical_codes``, are drawn once and kept; only ``z`` moves), then
        Jacobian truncation when ``jacobian_truncation`` is set. ``z``: the latents, ``(proposals(n),
        latent_dim)``; None: fresh ones."""
        m = self.proposals(n)
        if z is not None and z.shape[0] != m:
            raise ValueError(f"GAN.draw: {n} samples take {m} latents (GAN.proposals), got {z.shape[0]}")
        if self.refine is None and self.jacobian_truncation is None:
            return self.generate(generator, n, device, z)
        inp, _ = self.latent(m, device, z)
        z0, code = inp[:, : self.latent_dim], inp[:, self.latent_dim:]

        def fake(zz: Tensor, cc: Tensor = code) -> Tensor:
            return torch.tanh(generator(torch.cat([zz, cc], dim=1))).view(zz.shape[0], *self.info.shape)

        z1 = z0 if self.refine is None else self.refine(lambda zz: self.discriminate(nets, fake(zz)), z0)
        if self.jacobian_truncation is not None:
            keep = self.jacobian_truncation.select(self.jacobian_truncation.scores(fake, z1, code), n)
            z1, code = z1[keep], code[keep]
        with torch.no_grad():
            return fake(z1, code)

    # -- contract ----------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor], group: Group | None = None) -> LossOutput:
        """The loss of player ``group`` on ``batch`` (its size sets the number of fakes)."""
        steps = {"discriminator": self.discriminator_step, "generator": self.generator_step}
        if group not in steps:
            raise ValueError(f"GAN.loss needs group= one of {list(steps)} (the schedule's names), got {group!r}")
        return steps[group](nets, batch["x"])

    def discriminator_step(self, nets: nn.ModuleDict, x: Tensor) -> LossOutput:
        """``L_D`` (+ the objective's penalty) on real ``x`` and as many fresh fakes.

        Logs ``d_loss`` (without penalty), ``gp`` (the penalty, where there is one), and the
        mean outputs ``d_real``, ``d_fake``."""
        real = self.to_model(x)
        with torch.no_grad():
            fake, c = self.generate_with_codes(nets["generator"], real.shape[0], real.device)
        d, q = self.heads(nets, torch.cat([real, fake]))
        d_real, d_fake = d.chunk(2)
        d_loss = self.objective.discriminator_loss(d_real, d_fake)
        logs = {"d_loss": d_loss.detach(), "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
        loss = d_loss
        if c is not None:  # Q learns to recover the code of the fakes
            info = F.cross_entropy(q[real.shape[0]:].float(), c)
            loss, logs["info_ce"] = loss + self.info_weight * info, info.detach()
        penalty = self.objective.penalty(partial(self.discriminate, nets), real, fake)  # D alone, not Q
        if penalty is None:
            return LossOutput(loss, logs)
        return LossOutput(loss + penalty, {**logs, "gp": penalty.detach()})

    def generator_step(self, nets: nn.ModuleDict, x: Tensor) -> LossOutput:
        """``L_G`` on ``len(x)`` fakes (with top-k training, on the ``k`` the discriminator rates
        most real); first moves the EMA towards the current generator (so the EMA lags the raw
        generator by one update). Logs ``g_loss``, ``d_fake`` (all fakes) and ``top_k``."""
        if "generator_ema" in nets:
            nets["generator_ema"].update_parameters(nets["generator"])
        fake, c = self.generate_with_codes(nets["generator"], x.shape[0], x.device)
        d_fake, q = self.heads(nets, fake)
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

    def heads(self, nets: nn.ModuleDict, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Discriminator outputs ``(B,)`` and, with codes, ``Q``'s logits ``(B, K)``."""
        out = nets["discriminator"](y).view(y.shape[0], -1)
        return out[:, 0], (out[:, 1:] if self.codes else None)

    def discriminate(self, nets: nn.ModuleDict, y: Tensor) -> Tensor:
        """Discriminator outputs ``(B,)`` for model-space inputs ``(B, *shape)``."""
        return self.heads(nets, y)[0]

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

    def sampling_generator(self, nets: nn.ModuleDict) -> nn.Module:
        """The generator that samples: the EMA where there is one."""
        return nets["generator_ema"] if "generator_ema" in nets else nets["generator"]

    @torch.no_grad()
    def calibrate_rejection(self, nets: nn.ModuleDict, x: Tensor) -> dict[str, float]:
        """Fit the rejection sampler (``nets["rejection"]``) on held-out real data ``x``
        (discrete, ``(N, *shape)``) against as many samples of the sampling generator."""
        real = self.to_model(x)
        fake = self.draw(nets, self.sampling_generator(nets), real.shape[0], real.device)
        return nets["rejection"].calibrate(self.discriminate(nets, real), self.discriminate(nets, fake),
                                           nets["discriminator"])

    @torch.no_grad()
    def sample(self, nets: nn.ModuleDict, n: int) -> Tensor:
        """``n`` samples in data space (uint8), from the generator EMA where there is one; with
        latent refinement when ``refine`` is set, and through discriminator rejection sampling
        (of the refined proposals) when it is on and calibrated."""
        generator = self.sampling_generator(nets)
        device = next(nets.parameters()).device
        rejection = nets["rejection"] if "rejection" in nets else None
        if rejection is None or not rejection.ready:
            return self.to_data(self.draw(nets, generator, n, device))
        if not rejection.ready_for(nets["discriminator"]):  # (shown once per call site)
            warnings.warn("GAN rejection sampling: the calibration was fitted for other discriminator weights "
                          "(it is refitted at every validation); sampling without rejection until then",
                          stacklevel=2)
            return self.to_data(self.draw(nets, generator, n, device))

        def propose(m: int) -> tuple[Tensor, Tensor]:
            y = self.draw(nets, generator, m, device)
            return y, rejection.log_ratio(self.discriminate(nets, y).double())

        y, _ = rejection_sample(propose, n, rejection.bound.item(), rejection.acceptance.item())
        return self.to_data(y)

