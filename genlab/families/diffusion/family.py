"""Gaussian diffusion: DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal 2021).

Data mapping: discrete ``x in {0..L-1}^D`` sits on the grid ``x0 = 2 x / (L - 1) - 1`` in ``[-1, 1]``
(:class:`~genlab.data.scaling.GridScale`); samples are mapped back by rounding. The family only
assembles the pieces: :meth:`Diffusion.model` puts the run's network (a shared time-conditioned
backbone, :mod:`genlab.nets.unet`), the :mod:`prediction <genlab.families.diffusion.predictions>`,
the reverse variances and the noise process together as the denoiser
:class:`~genlab.families.diffusion.model.DiffusionModel`, which the objectives, the samplers, the
bound and the capabilities take.

Likelihood: the variational bound on the DISCRETE data (:mod:`~genlab.families.diffusion.bound`),
in nats per example (``nll_kind = "bound"``), with the ``T - 1`` KL terms summed exactly
(``{val,test}_timesteps: null``) or estimated from ``K`` stratified timesteps. The Monte Carlo
variance of that estimate rides in ``LogLikelihood.extras["kl_var"]``, and
:meth:`Diffusion.summarize_likelihood` turns the epoch's sums into ``{stage}/nll_bpd_se`` and
``{stage}/nll_bpd_se_timesteps`` (bits/dim).

Capabilities: :class:`~genlab.families.base.Denoiser` (from the matching step of the chain,
:mod:`~genlab.families.diffusion.denoising`), :class:`~genlab.families.base.Inpainter` (RePaint,
:mod:`~genlab.families.diffusion.repaint`) and :class:`~genlab.families.base.Encoder` (DDIM
inversion, :mod:`~genlab.families.diffusion.inversion`).

Class-conditional (``+conditional=class``; :class:`~genlab.families.base.Conditional`): a learned
label table of the backbone's time-embedding width is added to the time embedding (guided-diffusion,
Dhariwal & Nichol 2021; EDM), trained with label dropout (0.1 by default) to the null label, so that
the same network is also the unconditional model. Samples are classifier-free guided (Ho & Salimans
2022) with the sampler's weight ``w`` (``model.sampler.guidance=W``; ``w = 1``: unguided, Ho &
Salimans' ``w_HS = w - 1``), or autoguided by the snapshot conditioned on the same label where
``model.guidance`` is set (:mod:`~genlab.families.diffusion.guidance`). The bound is ``-log p(x | y)``
of the unguided conditional model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo, check_discrete
from genlab.data.scaling import GridScale
from genlab.families.base import Conditional, Denoiser, Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.diffusion.restore import DiffusionRestorer
import genlab.families.diffusion.denoising as denoising
import genlab.families.diffusion.inversion as inversion
import genlab.families.diffusion.repaint as repaint
from genlab.families.diffusion.bound import BoundEstimate, standard_errors, variational_bound
from genlab.families.diffusion.guidance import Guidance, GuideNet, guide_source
from genlab.families.diffusion.model import FIXED_VARIANCES, DiffusionModel
from genlab.families.diffusion.objectives import DiffusionObjective, SimpleLoss
from genlab.families.diffusion.predictions import PREDICTIONS, Prediction
from genlab.families.diffusion.process import GaussianDiffusion
from genlab.families.diffusion.samplers import SAMPLERS, DDIM, Sampler
from genlab.families.diffusion.schedules import SCHEDULES, NoiseSchedule
from genlab.metrics.likelihood import LN2, LogLikelihood
from genlab.nets import input_kind_error
from genlab.nets.unet import LabelConditioned, condition_dim


def resolve(value: Any, registry: dict[str, type], base: type, key: str) -> Any:
    """A config value that is either an instance of ``base`` or the stable name of one."""
    if isinstance(value, base):
        return value
    if isinstance(value, str) and value in registry:
        return registry[value]()
    raise ValueError(
        f"model.{key}={value!r} is not a valid {key}: valid names are {', '.join(registry)} "
        f"(e.g. model.{key}={next(iter(registry))}), or a config node with the _target_ of a {base.__name__}"
    )


def check_options(timesteps: int, fixed_variance: str, val_timesteps: int | None, test_timesteps: int | None) -> None:
    """Refuse a chain shorter than 2 steps, an unknown fixed variance and bound subsamples below 1."""
    if timesteps < 2:
        raise ValueError(f"model.timesteps={timesteps}: a diffusion chain needs at least 2 steps")
    if fixed_variance not in FIXED_VARIANCES:
        raise ValueError(f"model.fixed_variance={fixed_variance!r} is not valid: choose one of "
                         f"{', '.join(FIXED_VARIANCES)}")
    for key, k in (("val_timesteps", val_timesteps), ("test_timesteps", test_timesteps)):
        if k is not None and k < 1:
            raise ValueError(f"model.{key}={k}: use a number of timesteps >= 1, or null for all of them")


class Diffusion(Family, Likelihood, Denoiser, Inpainter, Encoder, Conditional, DiffusionRestorer):
    """Gaussian diffusion family (module docstring). Images (UNet) and points / small images (TimeMLP).

    Conditional (``self.condition`` set): ``nets["label"]``, a table ``y -> (B, temb_dim)`` added to the
    net's time embedding (``net(x, t, c)``, :class:`~genlab.nets.unet.LabelConditioned`); training drops
    a share :meth:`label_dropout` of the labels to the null label; every sampler, the bound and the
    capabilities run the :class:`~genlab.families.diffusion.model.DiffusionModel` that carries the labels.
    Guidance weight ``w`` (the sampler's ``guidance``, else ``model.guidance.weight``, else 1): with
    ``model.guidance`` the guide is the autoguidance snapshot given the same labels; without it, on a
    conditional model, the network given the null label (classifier-free, ``D_∅ + w (D_y - D_∅)``,
    Ho & Salimans' ``w_HS = w - 1``). A weight other than 1 on an unconditional model without
    ``model.guidance`` is refused with the fix.

    Args:
        net: backbone factory ``net(shape=..., out_mult=...)`` with ``forward(x, t)``, ``t in [0, 1]``
            (``_partial_`` in config), e.g. :class:`genlab.nets.unet.UNet`.
        schedule: noise schedule, an object or its stable name (``linear``, ``cosine``).
        prediction: what the net predicts, an object or its name (``eps``, ``x0``, ``v``).
        sampler: default sampler, an object or its name (``ddpm``, ``ddim``); default DDIM, 50 steps.
        timesteps: ``T``, length of the diffusion chain (at least 2).
        fixed_variance: reverse variance when it is not learned: ``small`` (``beta~_t``) or ``large`` (``beta_t``).
        clip_denoised: clip ``x0_hat`` to ``[-1, 1]`` while sampling (not in the bound).
        val_timesteps, test_timesteps: KL terms evaluated for the val / test bound (stratified
            subsample of ``1..T-1``); None (or ``>= T-1``): all of them.
        eval_chunk: most (example, timestep) pairs in one network call of the bound (memory vs speed).
        objective: the training loss (``loss`` group); ``simple`` by default.
        guidance: autoguidance (:mod:`~genlab.families.diffusion.guidance`): ``{weight, at}``
            keeps a frozen copy of the EMA weights from the share ``at`` of training as the guide
            and samples with ``guide + weight * (model - guide)`` (a sampler's own ``guidance``
            weight overrides ``weight`` for its samples); None: no guide (a conditional model is then
            guided classifier-free by a sampler's ``guidance`` weight).
    """

    name = "diffusion"
    compare_rank = 40
    objective_type = DiffusionObjective
    nll_kind = "bound"
    denoise_methods = denoising.METHODS
    inpaint_method = repaint.METHOD
    latent_paths = ("slerp", "linear")
    encoder_kind = "DDIM inversion"
    default_label_dropout = 0.1
    # the capability's report line; an instance's ``guidance`` is its autoguidance config (model.guidance)
    guidance_key = "model.sampler.guidance"  # classifier-free guidance weight (1 = unguided)

    def __init__(
        self,
        net: Callable[..., nn.Module],
        schedule: NoiseSchedule | str = "linear",
        prediction: Prediction | str = "eps",
        sampler: Sampler | str | None = None,
        timesteps: int = 1000,
        fixed_variance: str = "small",
        clip_denoised: bool = True,
        val_timesteps: int | None = 8,
        test_timesteps: int | None = 32,
        eval_chunk: int = 4096,
        objective: DiffusionObjective | None = None,
        guidance: Guidance | dict[str, float] | None = None,
    ) -> None:
        super().__init__(objective or SimpleLoss())
        check_options(timesteps, fixed_variance, val_timesteps, test_timesteps)
        self.net_factory = net
        # not ``self.schedule``: Family.schedule() is the optimizer cycle
        self.noise_schedule = resolve(schedule, SCHEDULES, NoiseSchedule, "schedule")
        self.prediction = resolve(prediction, PREDICTIONS, Prediction, "prediction")
        self.sampler = DDIM(steps=50) if sampler is None else resolve(sampler, SAMPLERS, Sampler, "sampler")
        self.process = GaussianDiffusion(self.noise_schedule.betas(timesteps))
        self.fixed_variance, self.clip_denoised = fixed_variance, clip_denoised
        self.val_timesteps, self.test_timesteps, self.eval_chunk = val_timesteps, test_timesteps, eval_chunk
        self.guidance = Guidance.parse(guidance)

    # -- setup -----------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind == "text":
            return ("Gaussian diffusion adds Gaussian noise to values on an ordered scale [-1, 1]; text is "
                    "categorical token ids with no order or distance, so noising and the discretised-Gaussian "
                    "decoder are meaningless for it (use an autoregressive model, e.g. model=transformer)")
        if reason := input_kind_error(self.net_factory, info.kind):
            return f"{reason}: use model=ddpm_mlp (a TimeMLP backbone) for {info.kind} data"
        return None

    @property
    def learns_variance(self) -> bool:
        """Whether the objective learns the reverse variances (a second output block, Eq. 15)."""
        return isinstance(self.objective, DiffusionObjective) and self.objective.learns_variance

    def build(self, info: DataInfo) -> Nets:
        out_mult = 2 if self.learns_variance else 1  # a second block for the variances (Eq. 15)
        nets = Nets(info, {"net": self.net_factory(shape=tuple(info.shape), out_mult=out_mult)})
        if self.condition is not None:  # the label table, added to the time embedding
            nets["label"] = self.condition.embedding(condition_dim(nets["net"]))
        if self.guidance is not None:  # filled in during training by callbacks.GuideSnapshot
            nets["guide"] = GuideNet(guide_source(nets), at=self.guidance.at)
        return nets

    def adapt_state(self, nets: nn.ModuleDict, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The guide snapshot: required with ``model.guidance`` (it cannot be made after training),
        ignored with ``model.guidance=null``."""
        saved = any(k.startswith("guide.") for k in state)
        if "guide" in nets and not saved:
            raise ValueError("this checkpoint was trained without model.guidance, so it holds no guide snapshot for "
                             "autoguidance (the guide is frozen during training). Fix: drop the model.guidance "
                             "override, or retrain with e.g. model.guidance='{weight: 3.0, at: 0.25}'.")
        if "guide" not in nets and saved:
            return {k: v for k, v in state.items() if not k.startswith("guide.")}
        return state

    def with_guidance(self, guidance: Guidance | dict[str, float] | None) -> Diffusion:
        """A copy of this family configured with ``guidance`` (e.g. for a guide lent from another run);
        this one is left as it is."""
        out = copy.copy(self)
        out.guidance = Guidance.parse(guidance)
        return out

    # -- data space <-> [-1, 1] ----------------------------------------------------------------
    @staticmethod
    def grid(nets: Nets) -> GridScale:
        """The data's grid in ``[-1, 1]``: level ``v`` at ``2 v / (L - 1) - 1``."""
        return GridScale(nets.info.levels)

    @staticmethod
    def check_discrete(nets: Nets, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, nets.info,
                              "pass the dataset's uint8/int64 tensors, not values already scaled to [-1, 1]")

    def scale(self, nets: Nets, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Discrete ``x`` -> grid points ``2 x / (L - 1) - 1`` in ``[-1, 1]``."""
        return self.grid(nets).to_model(x, dtype)

    def to_data(self, nets: Nets, y: Tensor) -> Tensor:
        """``y`` in ``[-1, 1]`` -> nearest level, uint8 (int64 where ``L > 256``)."""
        return self.grid(nets).to_data(y)

    def to_unit(self, nets: Nets, y: Tensor) -> Tensor:
        """``[-1, 1]`` -> ``[0, 1]`` (level ``v`` at ``v / (L - 1)``)."""
        return self.grid(nets).to_unit(y)

    def noise_space(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` -> ``[-1, 1]`` in the nets' dtype: the scale in which denoising's ``sigma`` is given."""
        return self.scale(nets, x, next(nets.parameters()).dtype)

    # -- the model seam ---------------------------------------------------------------------------
    def model(self, nets: Nets, labels: Tensor | None = None) -> DiffusionModel:
        """The denoiser of this run: its network (and guide) on the training chain; a conditional one given
        ``labels`` ``(B,)`` (required then: :meth:`method_labels`), with the null label for classifier-free
        guidance where it was trained with label dropout."""
        if (labels is None) != (self.condition is None):
            raise ValueError("a conditional diffusion model needs labels and an unconditional one takes none: "
                             "model(nets, labels) with labels from method_labels(n, y, device)")
        return DiffusionModel(
            net=nets["net"] if labels is None else LabelConditioned(nets["net"], nets["label"]),
            process=self.process, prediction=self.prediction, shape=tuple(nets.info.shape),
            scale=self.grid(nets), learns_variance=self.learns_variance, fixed_variance=self.fixed_variance,
            clip_denoised=self.clip_denoised, guide=nets["guide"] if "guide" in nets else None,
            guidance_weight=self.guidance.weight if self.guidance is not None else 1.0, labels=labels,
            null_label=self.condition.null_label if labels is not None and self.label_dropout() > 0 else None)

    def bound(self, nets: Nets, x0: Tensor, timesteps: int | None = None,
              labels: Tensor | None = None) -> BoundEstimate:
        """The variational bound on ``-log P(x)`` (``-log p(x | y)`` given a conditional model's ``labels``,
        unguided) for ``x0`` in ``[-1, 1]``, ``K = timesteps`` stratified KL terms (None: all ``T - 1``);
        :func:`~genlab.families.diffusion.bound.variational_bound`."""
        return variational_bound(self.model(nets, labels), x0, timesteps, self.eval_chunk)

    # -- contract ---------------------------------------------------------------------------------
    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        """The objective on the batch (given its labels, with label dropout, where conditional)."""
        x0 = self.scale(nets, self.check_discrete(nets, batch["x"]))
        labels = self.training_labels(batch) if self.condition is not None else None
        return self.objective(self.model(nets, labels), x0)

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood:
        """The bound as ``log P(x) >= -(L_T + sum L_{t-1} + L_0)`` per example (``log p(x | y)`` with the
        batch's ``y`` where conditional, unguided), with ``stage``'s number of KL terms;
        ``extras["kl_var"]``: the Monte Carlo variance of the KL estimate per example."""
        x0 = self.scale(nets, self.check_discrete(nets, batch["x"]), next(nets.parameters()).dtype)
        labels = self.labels(batch).to(x0.device) if self.condition is not None else None
        est = self.bound(nets, x0, self.val_timesteps if stage == "val" else self.test_timesteps, labels)
        return LogLikelihood(-est.nll.double(), "bound", {"kl_var": est.kl_var.detach()})

    def summarize_likelihood(self, nets: Nets, n: int, sums: dict[str, float]) -> dict[str, float]:
        """``nll_bpd_se`` (spread of the bounds over the ``n`` examples, ``sd / sqrt(n)``) and
        ``nll_bpd_se_timesteps`` (Monte Carlo error of the timestep subsample alone, 0 when every
        timestep is evaluated), bits/dim, from the sums of ``nll``, ``nll_sq`` and ``kl_var``
        (:func:`~genlab.families.diffusion.bound.standard_errors`)."""
        if n == 0:
            return {}
        se = standard_errors(n, sums["nll"], sums["nll_sq"], sums["kl_var"])
        to_bpd = 1.0 / (nets.info.dims * LN2)
        return {"nll_bpd_se": se["examples"] * to_bpd, "nll_bpd_se_timesteps": se["timesteps"] * to_bpd}

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: Sampler | str | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples in data space with ``sampler`` (default ``model.sampler``), of the classes ``y``
        ``(n,)`` where conditional (None: drawn from ``p(y)``); guided when ``model.guidance`` (or the
        sampler's ``guidance``) says so: autoguided with a snapshot, else classifier-free."""
        s = self.sampler if sampler is None else resolve(sampler, SAMPLERS, Sampler, "sampler")
        labels = self.method_labels(n, y, next(nets.parameters()).device, sampling=True)
        return self.to_data(nets, s(self.model(nets, labels), n))

    # -- capabilities -----------------------------------------------------------------------------
    def denoise_plan(self, nets: Nets, sigma: float, steps: int | None) -> dict[str, Any]:
        return denoising.denoise_plan(self.process, sigma, steps)

    def describe_plan(self, plan: dict[str, Any], method: str) -> str:
        return denoising.describe_plan(plan, method)

    def denoise(self, nets: Nets, y: Tensor, plan: dict[str, Any], method: str,
                labels: Tensor | None = None) -> Tensor:
        """Noisy ``y`` -> denoised (:mod:`~genlab.families.diffusion.denoising`); a conditional model given
        ``labels`` (``y`` is the noisy input here; None: the null label, :meth:`method_labels`)."""
        return denoising.denoise(self.model(nets, self.method_labels(len(y), labels, y.device)), y, plan, method)

    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: Any, y: Tensor | None = None) -> Tensor:
        """RePaint (:mod:`~genlab.families.diffusion.repaint`) with ``options.steps``, ``.jump``, ``.resample``;
        a conditional model given the classes ``y`` (None: the null label, :meth:`method_labels`)."""
        x0 = self.scale(nets, x, next(nets.parameters()).dtype)
        model = self.model(nets, self.method_labels(len(x), y, x.device))
        filled = repaint.repaint(model, x0, missing, options.steps, options.jump, options.resample)
        return self.to_data(nets, filled).to(x.dtype)

    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """DDIM inversion (:mod:`~genlab.families.diffusion.inversion`) of discrete ``x`` on ``steps`` steps
        (unguided), given the classes ``y`` where conditional (None: the null label)."""
        x0 = self.scale(nets, self.check_discrete(nets, x), next(nets.parameters()).dtype)
        return inversion.ddim_encode(self.model(nets, self.method_labels(len(x), y, x.device)), x0, steps)

    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Codes -> discrete levels by deterministic DDIM from the codes on ``steps`` steps, given the
        classes ``y`` where conditional (None: the null label)."""
        model = self.model(nets, self.method_labels(len(z), y, z.device))
        return self.to_data(nets, inversion.ddim_decode(model, z, steps))
