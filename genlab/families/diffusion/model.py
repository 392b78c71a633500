"""The diffusion model seam: a denoiser = network + prediction + variance + noise process.

What the objectives, the samplers, the bound and the capabilities (denoising, RePaint, DDIM
inversion) depend on is :class:`DiffusionModel`, not the :class:`~genlab.families.diffusion.Diffusion`
family, which only assembles it from its configuration and the run's nets
(:meth:`Diffusion.model <genlab.families.diffusion.family.Diffusion.model>`). It defines the reverse
process (Ho et al. 2020, Eq. 1, 6-7)::

    p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat(x_t, t)), Sigma_t)

with ``x0_hat`` read from the network ``net(x_t, t / T)`` through a :mod:`prediction
<genlab.families.diffusion.predictions>` and ``Sigma_t`` fixed (``small``: ``beta~_t``; ``large``:
``beta_t``) or learned (``u log beta_t + (1 - u) log beta~_t``, Nichol & Dhariwal 2021, Eq. 15).

A model is a small immutable value: :meth:`DiffusionModel.on` puts the same network on another
process (a respaced or truncated chain), :meth:`DiffusionModel.with_guidance` changes the guidance
weight (:mod:`~genlab.families.diffusion.guidance`) for one sampling call.

**Conditions.** A class-conditional model carries its labels: ``labels`` ``(B,)``, one per example of
the batch it runs on, and the network is then called as ``net(x_t, t, labels)`` (a
:class:`~genlab.nets.unet.LabelConditioned`). Everything that runs the model — the objectives, every
sampler through the one reverse-chain loop, the bound, denoising, RePaint, DDIM inversion — is thereby
conditional without knowing it. Its guide (:meth:`DiffusionModel.guide_output`) is the autoguidance
snapshot conditioned on the same labels, or, without one, the network with the null label
``null_label`` (classifier-free guidance; None where the model was trained without label dropout and
so has no unconditional model to guide with).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from genlab.data.scaling import GridScale
from genlab.families.diffusion.guidance import GuideNet, guided
from genlab.families.diffusion.predictions import Prediction
from genlab.families.diffusion.process import GaussianDiffusion, discretized_gaussian_log_prob, normal_kl

# fixed reverse variances: name (stable API) -> table of GaussianDiffusion (log variance per step)
FIXED_VARIANCES: dict[str, str] = {"small": "post_logvar", "large": "log_betas_clipped"}


@dataclass
class ReverseStep:
    """``p(x_{t-1} | x_t) = N(mean, exp(logvar))`` and the predictions it is made of (all ``(B, *shape)``)."""

    x0: Tensor
    eps: Tensor
    mean: Tensor
    logvar: Tensor


@dataclass(frozen=True, eq=False)
class DiffusionModel:
    """A denoiser on a noise process (module docstring).

    Args:
        net: ``net(x_t, t)`` with ``t in [0, 1)``: ``(B, C, ...)``, or ``(B, 2C, ...)`` with learned variances.
        process: the chain the model runs on (the training chain, or a respaced / truncated one).
        prediction: what the net predicts (``eps``, ``x0``, ``v``).
        shape: the data's shape ``(C, ...)`` (the first ``C`` output channels are the prediction).
        scale: the data's grid in ``[-1, 1]`` (level ``v`` at ``2 v / (L - 1) - 1``; the decoder's bins).
        learns_variance: whether the output's second block sets ``Sigma_t`` (``loss=hybrid``).
        fixed_variance: ``Sigma_t`` otherwise: ``small`` (``beta~_t``) or ``large`` (``beta_t``).
        clip_denoised: whether samplers clip ``x0_hat`` to ``[-1, 1]`` (never in the bound).
        guide: the frozen guide of autoguidance, or None.
        guidance_weight: ``w`` of ``guide + w (net - guide)`` in the samplers (1: unguided); with a
            conditional model and no ``guide``, classifier-free guidance (``w = 1 + w_HS``).
        labels: the class of each example ``(B,)`` of a conditional model (the net is ``net(x, t, y)``);
            None: unconditional (``net(x, t)``).
        null_label: the label of the unconditional model (the guide of classifier-free guidance); None:
            there is none (an unconditional model, or one trained without label dropout).
    """

    net: nn.Module
    process: GaussianDiffusion
    prediction: Prediction
    shape: tuple[int, ...]
    scale: GridScale
    learns_variance: bool = False
    fixed_variance: str = "small"
    clip_denoised: bool = True
    guide: GuideNet | None = None
    guidance_weight: float = 1.0
    labels: Tensor | None = None
    null_label: int | None = None

    def on(self, process: GaussianDiffusion) -> DiffusionModel:
        """The same network on ``process`` (a respaced or truncated chain of the same ``alpha_bar``)."""
        return replace(self, process=process)

    def with_guidance(self, weight: float) -> DiffusionModel:
        """The model sampled with guidance weight ``weight`` (1: unguided); ``w != 1`` needs a guide: an
        autoguidance snapshot, or (classifier-free) a conditional model trained with label dropout."""
        if weight != 1.0 and self.guide is None:
            _check_classifier_free(weight, self.labels, self.null_label)
        return replace(self, guidance_weight=weight)

    def tiled(self, k: int) -> DiffusionModel:
        """The model on ``k`` stacked copies of its batch (``x.repeat(k, ...)``): the labels repeated alike."""
        return self if self.labels is None or k == 1 else replace(self, labels=self.labels.repeat(k))

    @property
    def channels(self) -> int:
        """``C``: the prediction's channels (a second block of ``C`` holds learned variances)."""
        return self.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The network's parameter dtype (float64 in the closed-form tests)."""
        return next(self.net.parameters()).dtype

    def noise(self, n: int) -> Tensor:
        """``x ~ N(0, I)`` ``(n, *shape)`` on the network's device and dtype."""
        p = next(self.net.parameters())
        return torch.randn(n, *self.shape, device=p.device, dtype=p.dtype)

    # -- the network ---------------------------------------------------------------------------
    def output(self, x_t: Tensor, t: Tensor, guide: bool = False) -> Tensor:
        """Raw network output at ``(x_t, t)`` (given the labels of a conditional model); ``guide``: the
        guided prediction where the weight is not 1 and there is a guide (the samplers; never the bound)."""
        time = self.process.net_time(t)
        out = _fp32(self.net(x_t, time) if self.labels is None else self.net(x_t, time, self.labels))
        if guide and self.guided():
            out = guided(out, _fp32(self.guide_output(x_t, time)), self.guidance_weight, self.channels)
        return out

    def guide_output(self, x_t: Tensor, time: Tensor) -> Tensor:
        """The guide's output at network time ``time``: the autoguidance snapshot (given the same labels),
        else the network with the null label (classifier-free guidance, Ho & Salimans 2022)."""
        if self.guide is not None:
            return self.guide(x_t, time) if self.labels is None else self.guide(x_t, time, self.labels)
        return self.net(x_t, time, torch.full_like(self.labels, self.null_label))

    def guided(self) -> bool:
        """Whether sampling is guided: weight other than 1 and a guide — classifier-free (the null label),
        or the autoguidance snapshot once taken (before, it warns, once per guide, and samples unguided)."""
        if self.guidance_weight == 1.0:
            return False
        if self.guide is None:
            return self.labels is not None and self.null_label is not None
        if self.guide.ready:
            return True
        if not self.guide.warned:
            self.guide.warned = True
            when = f"after {self.guide.at:g} of training" if self.guide.at is not None else "during training"
            warnings.warn(f"sampling without guidance: the guide snapshot is taken {when} and this model has not "
                          "reached it yet", stacklevel=2)
        return False

    def split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Network output -> (prediction, variance interpolation ``v`` or None)."""
        if not self.learns_variance:
            return out, None
        return out[:, : self.channels], out[:, self.channels:]

    # -- the reverse process -------------------------------------------------------------------
    def log_variance(self, t: Tensor, x_t: Tensor, v: Tensor | None) -> Tensor:
        """``log Sigma_t``: fixed, or ``u log beta_t + (1 - u) log beta~_t``, ``u = (v + 1) / 2``
        (Nichol & Dhariwal 2021, Eq. 15; ``beta~_0`` is clipped to ``beta~_1``)."""
        p = self.process
        if v is None:
            return p.at(FIXED_VARIANCES[self.fixed_variance], t, x_t).expand_as(x_t)
        u = (v + 1) / 2
        return u * p.at("log_betas", t, x_t) + (1 - u) * p.at("post_logvar", t, x_t)

    def reverse_from_output(self, x_t: Tensor, t: Tensor, out: Tensor, clip: bool = False) -> ReverseStep:
        """``p(x_{t-1} | x_t)`` from a network output: ``mean = mu~_t(x_t, x0_hat)`` (Ho et al. Eq. 7)."""
        pred, v = self.split(out)
        x0, eps = self.prediction.to_x0_eps(self.process, t, x_t, pred)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = self.process.eps_from_x0(x_t, t, x0)
        mean, _ = self.process.q_posterior(x0, x_t, t)
        return ReverseStep(x0, eps, mean, self.log_variance(t, x_t, v))

    def reverse(self, x_t: Tensor, t: Tensor, clip: bool = False, guide: bool = False) -> ReverseStep:
        """``p(x_{t-1} | x_t)`` on this model's process; ``guide``: with the autoguided prediction."""
        return self.reverse_from_output(x_t, t, self.output(x_t, t, guide), clip)

    # -- the terms of the variational bound -------------------------------------------------------
    def vb_term(self, x0: Tensor, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` for ``t >= 1`` and ``L_0 = -log
        P(x | x_0)`` (discretised Gaussian, Ho et al. Eq. 13) for ``t = 0``, per example in nats ``(B,)``,
        from the network output ``out`` at ``x_t``."""
        rev = self.reverse_from_output(x_t, t, out)
        true_mean, _ = self.process.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, self.process.at("post_logvar", t, x0), rev.mean, rev.logvar).flatten(1).sum(1)
        nll = -discretized_gaussian_log_prob(x0, rev.mean, 0.5 * rev.logvar, self.scale.step).flatten(1).sum(1)
        return torch.where(t == 0, nll, kl)

    def draw_term(self, x0: Tensor, t: Tensor) -> Tensor:
        """A one-draw estimate of ``L_{t-1}`` (``L_0`` at ``t = 0``) per example, ``x_t ~ q(x_t | x0)``."""
        x_t = self.process.q_sample(x0, t, torch.randn_like(x0))
        return self.vb_term(x0, x_t, t, self.output(x_t, t))


def _check_classifier_free(weight: float, labels: Tensor | None, null_label: int | None) -> None:
    """Refuse a guidance weight that has no guide: an unconditional model without an autoguidance
    snapshot, or a conditional one trained without label dropout (no unconditional model)."""
    if labels is None:
        raise ValueError(f"guidance weight {weight:g} needs a guide snapshot (autoguidance) or a class-conditional "
                         "model (classifier-free guidance), and this model is unconditional without a snapshot. Fix: "
                         "train with e.g. model.guidance='{weight: 3.0, at: 0.25}', or with +conditional=class, or "
                         "leave the weight at 1")
    if null_label is None:
        raise ValueError(f"classifier-free guidance weight {weight:g} needs the unconditional model, which this "
                         "conditional model never learned (it was trained with conditional.dropout=0, so the null "
                         "label was never seen). Fix: retrain with conditional.dropout=0.1, or use autoguidance "
                         "(model.guidance='{weight: 3.0, at: 0.25}'), or leave the weight at 1")


def _fp32(out: Tensor) -> Tensor:
    """fp32 maths after a bf16-autocast net; float64 (the closed-form tests) stays float64."""
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
