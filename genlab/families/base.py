"""The family contract: what every generative family implements.

A family is a small object, not a LightningModule. It builds its networks for a dataset
(:meth:`Family.build`), and then every method takes those networks as an argument:

* ``loss(nets, batch) -> LossOutput``: the training objective (scalar) and named terms;
* ``sample(nets, n) -> Tensor``: ``n`` samples in DATA space (uint8 images / int64 ids);
* ``log_likelihood(nets, batch, **kw) -> LogLikelihood | None``: per-example ``log P(x)``
  in nats on the DISCRETE data, with its kind (exact / bound / estimate); ``None`` where
  the family has no likelihood.

The generic :class:`genlab.module.GenerativeModule` trains any family through this contract.
Families that need more than one optimizer (GANs) override :meth:`Family.param_groups` and
:meth:`Family.schedule`: the module then steps one optimizer per training step, cycling
through the schedule, and calls ``loss(nets, batch, group=<name>)``. Families detect their
own failure modes (an exploding discriminator or energy) in :meth:`Family.diverged`.
The training objective is a separate small callable (``objective``, the ``loss`` config
group) that the family validates in :meth:`Family.check_objective`.

A family keeps no run state: :meth:`Family.build` returns :class:`Nets` (the modules, and the
:class:`~genlab.data.base.DataInfo` they were built for, ``nets.info``), and everything else per
run lives in the nets or in returned values (:class:`LogLikelihood` carries its ``extras``).

**Capabilities.** What a family can do beyond the contract is a type it inherits from
(:class:`Likelihood`, :class:`Encoder`, :class:`Denoiser`, :class:`Inpainter`,
:class:`SequentialCoder`, :class:`EnergyScorer`, :class:`LatentAutoencoder`), implemented inside the family's
own folder.
Generic code asks ``isinstance(family, Denoiser)`` and calls the method; the lists of families
that can do a task are computed from the registered families (:func:`registered`), which are
every imported subclass of :class:`Family` that sets a ``name``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from genlab.conditioning import ClassCondition
from genlab.data.base import DataInfo
from genlab.metrics.likelihood import LogLikelihood, NLLKind


N = TypeVar("N")


def parse_node(cls: type[N], value: Any, key: str, example: str,
               convert: Callable[[Any], Any] | None = None) -> N | None:
    """A family option given as a config node (``model.<key>``: null or a mapping) as the dataclass
    ``cls``: None for null, ``cls`` itself passed through, else ``cls(**value)`` (each value through
    ``convert`` if given), which checks the values. A non-mapping or an unknown key gets an error that
    names the keys and ``example``."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"model.{key} must be a mapping such as model.{key}='{example}', or null (give null to "
                         f"turn it off); got {value!r}")
    known = {f.name for f in fields(cls)}
    if unknown := set(value) - known:
        raise ValueError(f"model.{key} has unknown keys {sorted(unknown)}: use {sorted(known)} (or model.{key}=null)")
    return cls(**{k: convert(v) if convert else v for k, v in value.items()})


class IncompatibleConfigError(ValueError):
    """A model, loss and dataset that cannot be combined (raised before training)."""


@dataclass
class LossOutput:
    """Scalar training loss and named, detached terms for logging."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Nets(nn.ModuleDict):
    """The networks of one run (a ``ModuleDict``: checkpoint keys are ``<name>.<param>``) and the
    data they were built for, ``info`` (shapes, levels, kind)."""

    def __init__(self, info: DataInfo, modules: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(modules)
        self.info = info


_REGISTRY: dict[str, type[Family]] = {}


class Family:
    """Base class of generative families (see module docstring).

    Subclasses set :attr:`name` (stable API; setting it registers the class), :attr:`objective_type`
    (the base class of the objectives they accept) and :attr:`compare_rank` (their row in the
    comparison table), and implement :meth:`build`, :meth:`loss`, :meth:`sample` and the
    capabilities they have. :attr:`why_not` says, per capability they lack, why (shown when a
    task is refused); :attr:`compile_refusal`, where set, why their nets cannot run under
    ``torch.compile`` (the run config's ``compile`` key, :mod:`genlab.compile`), with the fix.
    """

    name: str = "base"
    objective_type: type = object
    nll_kind: NLLKind = "none"
    compare_rank: ClassVar[int] = 1000
    why_not: ClassVar[dict[type, str]] = {}
    compile_refusal: ClassVar[str | None] = None
    #: the run's condition (``+conditional=class``), set before :meth:`build` by the builders; None: unconditional.
    #: Only a :class:`Conditional` family accepts one (:func:`genlab.builders.build_family`).
    condition: ClassCondition | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY.setdefault(cls.name, cls)  # a subclass reusing a name does not replace it

    def __init__(self, objective: Any = None) -> None:
        self.objective = objective

    # -- compatibility (checked before anything is trained) -----------------------------
    @classmethod
    def upgrade_config(cls, model: Mapping[str, Any]) -> dict[str, Any]:
        """A ``model`` config stored by an older version, as this version builds it; unchanged by default."""
        return dict(model)

    def likelihood_kind(self, info: DataInfo) -> NLLKind:
        """The kind of :meth:`log_likelihood` on ``info``'s data (``none``: it returns None)."""
        return self.nll_kind if isinstance(self, Likelihood) else "none"

    def check_data(self, info: DataInfo) -> str | None:
        """Return why this family cannot model ``info``'s data, or None if it can."""
        return None

    def check_objective(self, objective: Any) -> str | None:
        """Return why ``objective`` is not a valid loss for this family, or None."""
        if not isinstance(objective, self.objective_type):
            return f"{type(objective).__name__} is not a {self.objective_type.__name__}"
        return None

    # -- contract ----------------------------------------------------------------------
    def build(self, info: DataInfo) -> Nets:
        """Networks sized for the data, with ``info`` (:class:`Nets`); ``nets`` in every other method."""
        raise NotImplementedError

    def param_groups(self, nets: nn.ModuleDict) -> dict[str, list[nn.Parameter] | list[dict[str, Any]]]:
        """Parameters per optimizer (what a torch optimizer takes: parameters, or param-group dicts
        with their own ``lr``/``betas``); one optimizer (``main``) by default."""
        return {"main": list(nets.parameters())}

    def schedule(self) -> list[str]:
        """Names of the param groups updated on successive training steps, cycled.

        Empty (the default): one optimizer, ``loss(nets, batch)``, Lightning's automatic
        optimisation. E.g. a GAN with two critic steps per generator step returns
        ``["discriminator", "discriminator", "generator"]`` and is called with ``group=``.
        """
        return []

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        raise NotImplementedError

    def diverged(self, out: LossOutput) -> str | None:
        """Why training has diverged given this step's loss terms (checked before the
        update), with the fix, or None. Non-finite losses are always caught by the module."""
        return None

    def sample(self, nets: nn.ModuleDict, n: int, sampler: Any = None) -> Tensor:
        """``n`` samples in DATA space; ``sampler``: a sampler object of this family (None: the
        configured ``model.sampler``)."""
        raise NotImplementedError

    def adapt_state(self, nets: nn.ModuleDict, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint's weights of ``nets`` (keys relative to ``nets``) as this configuration of the
        family loads them, or a clear error where they cannot be; unchanged by default."""
        return state

    def log_likelihood(self, nets: nn.ModuleDict, batch: dict[str, Tensor], **kwargs) -> LogLikelihood | None:
        """Per-example discrete log-likelihood; None for families without one."""
        return None


# -- registered families -----------------------------------------------------------------------------
def registered() -> list[type[Family]]:
    """Every registered family class, in comparison order (``compare_rank``, then name): the built-in
    ones (each sub-package of :mod:`genlab.families` is imported) and any other imported subclass."""
    import genlab.families as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.ispkg:
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    return sorted(_REGISTRY.values(), key=lambda c: (c.compare_rank, c.name))


def family_names() -> list[str]:
    """Names of the registered families in comparison order."""
    return [c.name for c in registered()]


def able(capability: type, label: Callable[[type], str] | None = None) -> str:
    """The registered families with ``capability``, comma-separated, each followed by ``label(cls)``
    in parentheses where it gives one: the "families that can" line of a task."""
    out = []
    for cls in registered():
        if issubclass(cls, capability):
            extra = label(cls) if label else ""
            out.append(f"{cls.name} ({extra})" if extra else cls.name)
    return ", ".join(out) or "none of the registered families"


# -- capabilities ------------------------------------------------------------------------------------
class Capability:
    """Base of the capability types. ``missing`` says, for any family without it, why a task that
    needs it cannot run (a family can say more in its :attr:`Family.why_not`)."""

    missing: ClassVar[str] = "it does not implement this capability"


class Likelihood(Capability):
    """``log P(x)`` of discrete data (:meth:`Family.log_likelihood` returns a
    :class:`LogLikelihood`, or None where this configuration has none, e.g. an EBM on data too large
    to normalise). :meth:`summarize_likelihood` turns the epoch's sums of the result's ``extras``
    into the logged statistics."""

    missing = "it defines no likelihood"

    def summarize_likelihood(self, nets: Nets, n: int, sums: dict[str, float]) -> dict[str, float]:
        """Logged statistics (``{stage}/<key>``) from the sums over ``n`` evaluated examples of
        ``nll`` (nats), ``nll_sq`` and every ``extras`` key; by default the mean of each extra."""
        return {k: v / n for k, v in sums.items() if k not in ("nll", "nll_sq")} if n else {}


class Encoder(Capability):
    """A map from data to a latent code and back. ``latent_paths``: the interpolation paths that are
    meaningful between codes, the first the default (``linear``; ``slerp`` for Gaussian noise codes);
    ``encoder_kind``: a few words on how (``posterior mean``, ``ODE inversion``)."""

    missing = "it has no encoder (no map from an image to a latent code)"
    latent_paths: ClassVar[tuple[str, ...]] = ("linear",)
    encoder_kind: ClassVar[str] = ""

    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Discrete ``x`` ``(B, *shape)`` -> codes ``(B, ...)``; ``steps``: the solver/inversion steps
        where the map is computed by integration (None: the family's default); ``y``: labels ``(B,)``
        of a :class:`Conditional` model (tasks pass them only to conditional models)."""
        raise NotImplementedError

    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Codes -> images in LEVEL units ``(B, *shape)`` (float where the decoder gives a mean,
        e.g. the VAE's; integer levels otherwise); the task rounds."""
        raise NotImplementedError


class Denoiser(Capability):
    """Denoise from a noise level: ``y = x + sigma * eps`` in the family's ``[-1, 1]`` model scale
    is treated as a point of its noising process at the matching level, and the generative process
    is run from there. ``denoise_methods``: the methods, the first the default."""

    missing = ("denoising starts the model's generative process at the noise level of the input, which needs a "
               "model of a Gaussian noising path (a diffusion chain or a flow-matching probability path)")
    denoise_methods: ClassVar[tuple[str, ...]] = ()

    def noise_space(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` -> the model scale in which ``sigma`` is defined."""
        raise NotImplementedError

    def to_unit(self, nets: Nets, y: Tensor) -> Tensor:
        """Model-scale values -> the ``[0, 1]`` level scale (level ``v`` at ``v / (L - 1)``)."""
        raise NotImplementedError

    def denoise_plan(self, nets: Nets, sigma: float, steps: int | None) -> dict[str, Any]:
        """Where the process starts for noise ``sigma`` and how many steps it takes (reported)."""
        raise NotImplementedError

    def describe_plan(self, plan: dict[str, Any], method: str) -> str:
        """One phrase for reports: where it starts and how it runs."""
        raise NotImplementedError

    def denoise(self, nets: Nets, y: Tensor, plan: dict[str, Any], method: str,
                labels: Tensor | None = None) -> Tensor:
        """Noisy ``y`` (model scale) -> denoised, model scale; ``labels``: a conditional model's classes."""
        raise NotImplementedError

    def to_data(self, nets: Nets, y: Tensor) -> Tensor:
        """Model scale -> discrete levels."""
        raise NotImplementedError


class Inpainter(Capability):
    """Fill the missing pixels of ``x`` given the observed ones. ``inpaint_method``: its name for
    reports (and the ``--help`` line)."""

    missing = "it has no method to fill missing pixels given the observed ones"
    inpaint_method: ClassVar[str] = ""

    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: Any, y: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)`` discrete and ``missing`` (bool, same shape) -> filled, discrete; the
        observed pixels may come back changed (the task puts them back). ``options``: the task's
        config (``steps``, ``resample``, ``jump``, ``iters``); ``y``: a conditional model's labels ``(B,)``."""
        raise NotImplementedError

    def inpaint_is_exact(self, nets: Nets, missing: Tensor) -> bool | None:
        """Whether the fill is an exact draw from ``P(x_missing | x_observed)`` for this mask; None
        where the method is approximate by design."""
        return None


class SequentialCoder(Capability):
    """Exact per-symbol conditionals ``P(x_d | x_<d)`` in a fixed order: what lossless compression
    with an entropy coder needs."""

    missing = ("rANS coding needs the model's exact conditionals P(x_d | x_<d) in a fixed order; latent-variable "
               "models would need bits-back coding, which is not implemented")

    def coding_order(self, nets: Nets) -> Tensor:
        """Flat positions of the message in the order they are coded, ``(D,)``."""
        raise NotImplementedError

    # The message is what is coded: by default the example itself; a model with a latent part (a two-stage
    # model's codes, then the image given them) codes a longer message and reads the example back from it.
    def message_shape(self, nets: Nets) -> tuple[int, ...]:
        """The shape of one example's message (default: the data's shape)."""
        return tuple(nets.info.shape)

    def message_dtype(self, nets: Nets) -> torch.dtype | None:
        """The dtype of the message (None: the data's)."""
        return None

    def to_message(self, nets: Nets, x: Tensor) -> Tensor:
        """Examples ``x`` -> their messages ``(B, *message_shape)`` (default: ``x``)."""
        return x

    def from_message(self, nets: Nets, message: Tensor) -> Tensor:
        """Decoded messages -> the examples (default: the message)."""
        return message

    def start_coding(self, nets: Nets, x: Tensor) -> Any:
        """The incremental state for coding the batch ``x`` (zeros where not yet decoded)."""
        raise NotImplementedError

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: Any) -> Tensor:
        """``log P(x_d = v | x_<d)`` for the ``step``-th position of the order: ``(B, L)``."""
        raise NotImplementedError


class EnergyScorer(Capability):
    """An energy ``E(x)`` (unnormalised ``-log p``) of discrete data."""

    missing = "it defines no energy"

    def score_energy(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` -> ``E`` per example ``(B,)``, higher = less likely."""
        raise NotImplementedError


class LatentAutoencoder(Capability):
    """The first stage of a two-stage model: an encoder of the data to latents that are discrete data
    themselves (:meth:`latent_info`: e.g. a ``(1, h, w)`` grid of codes with ``K`` levels, or a
    continuous posterior's draws binned to a fine grid), and a decoder with an explicit discrete
    likelihood ``log p(x | z)``. Any family that can model the latents is a prior over them, and the pair
    has the bound ``log p(x) >= E_q(z|x) [log p(x | z) + log P_prior(z) - log q(z | x)]``: for a
    deterministic encoder (a VQ-VAE) ``q`` is a point mass, ``log q = 0``, and the bound is one term of
    ``sum_z P(z) p(x | z)``.

    ``encode_latents`` gives what is cached per image (:meth:`encoding_shape`: the codes themselves, or
    a stochastic encoder's posterior parameters), :meth:`draw_latents` a draw ``z ~ q(z | x)`` from it."""

    missing = ("a two-stage model needs a first stage with an encoder to latents (discrete codes, or a posterior "
               "binned to a grid) and an explicit decoder likelihood p(x | z) (a VQ-VAE, a VAE)")

    def latent_info(self, nets: Nets) -> DataInfo:
        """What the latents are, as data: kind, shape, levels (the prior is built for it)."""
        raise NotImplementedError

    def encoding_shape(self, nets: Nets) -> tuple[int, ...] | None:
        """The shape of one example's :meth:`encode_latents` when it is float posterior parameters; None
        (the default): the encoding is the latents themselves (integer codes of :meth:`latent_info`)."""
        return None

    def encode_latents(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` ``(B, *shape)`` -> the encoding: latents ``(B, *latent_info.shape)`` in their
        discrete form, or posterior parameters ``(B, *encoding_shape)``; deterministic."""
        raise NotImplementedError

    def draw_latents(self, nets: Nets, encoding: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log q(z | x))``: a draw of the discrete latents from the encoding of ``x`` and its log-mass
        in nats ``(B,)``. The default (a deterministic encoder): the encoding itself, ``log q = 0``."""
        return encoding, torch.zeros(len(encoding), dtype=torch.float64, device=encoding.device)

    def mode_latents(self, nets: Nets, encoding: Tensor) -> Tensor:
        """The most likely latents of the encoding (a stochastic encoder's posterior mode, binned; the
        default: the encoding itself): what interpolations start from."""
        return encoding

    def decode_mean(self, nets: Nets, z: Tensor) -> Tensor:
        """Latents -> the decoder's mean in LEVEL units ``(B, *shape)``, float (for pictures of latents)."""
        raise NotImplementedError

    def decoder_log_probs(self, nets: Nets, z: Tensor) -> Tensor:
        """``log p(x_d = l | z)`` of every data dimension and level ``(B, D, L)`` (the decoder factorises
        over dimensions given ``z``): what codes the image given its latents."""
        raise NotImplementedError

    def latent_log_likelihood(self, nets: Nets, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` in nats per example ``(B,)``."""
        raise NotImplementedError

    def decode_latents(self, nets: Nets, z: Tensor) -> Tensor:
        """Latents -> a draw ``x ~ p(x | z)`` in DATA space ``(B, *shape)``."""
        raise NotImplementedError


class Conditional(Capability):
    """Class-conditional modelling (``+conditional=class``): with ``self.condition`` set (a
    :class:`~genlab.conditioning.ClassCondition`), :meth:`build` adds the condition's embedding to the
    nets, :meth:`Family.loss` and :meth:`Family.log_likelihood` read ``batch["y"]`` (``log p(x | y)``)
    and :meth:`Family.sample` takes ``y=`` (``(n,)`` labels; None draws them from the prior ``p(y)``).
    Without a condition the family is the unconditional model it always was.

    ``default_label_dropout``: the share of training labels replaced by the null label when
    ``conditional.dropout`` is null (> 0 for families with classifier-free guidance);
    ``guidance_key``: the config key of the sampler's guidance weight (``model.sampler.guidance``; 1 =
    unguided), for sweeps and reports (empty: the family has no guidance).
    """

    missing = "it has no class-conditional model yet"
    default_label_dropout: ClassVar[float] = 0.0
    guidance_key: ClassVar[str] = ""

    def label_dropout(self) -> float:
        """The share of training labels dropped (``conditional.dropout``, else the family's default)."""
        cond = self.condition  # type: ignore[attr-defined]
        return self.default_label_dropout if cond is None or cond.dropout is None else float(cond.dropout)

    def training_labels(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's labels, checked, with the label dropout applied: what :meth:`Family.loss` conditions on."""
        cond = self.condition  # type: ignore[attr-defined]
        return cond.drop(cond.check(batch.get("y"), len(batch["x"])), self.label_dropout())

    def labels(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's labels, checked (the null label allowed): what :meth:`Family.log_likelihood` conditions on."""
        return self.condition.check(batch.get("y"), len(batch["x"]), allow_null=True)  # type: ignore[attr-defined]

    def method_labels(self, n: int, y: Tensor | None, device: Any, sampling: bool = False) -> Tensor | None:
        """The labels ``(n,)`` a sampling or capability method conditions on: None for an unconditional
        model (which refuses a ``y``); else ``y`` checked (the null label allowed), or for ``y=None``
        draws from ``p(y)`` when ``sampling`` or when the nets had no label dropout, else the null label
        (the unconditional model that label dropout trained)."""
        cond = self.condition  # type: ignore[attr-defined]
        if cond is None:
            if y is not None:
                raise ValueError("this model is unconditional (trained without +conditional=class): it takes no "
                                 "labels y. Fix: drop y=, or train with +conditional=class")
            return None
        if y is None and not sampling and self.label_dropout() > 0:
            y = torch.full((n,), cond.null_label, dtype=torch.long, device=device)
        return self.sampling_labels(n, y, device)

    def class_scores(self, nets: Nets, x: Tensor) -> Tensor | None:
        """``log p(x, y)`` up to a per-example constant ``(B, K)``, where the family has its own
        classifier head (a JEM energy's logits); None (the default): the generative classifier is
        computed from :meth:`Family.log_likelihood` per class and the prior."""
        return None

    def sampling_labels(self, n: int, y: Tensor | None, device: Any) -> Tensor:
        """``y`` checked for ``n`` samples (the null label allowed), or ``n`` labels drawn from ``p(y)``."""
        cond = self.condition  # type: ignore[attr-defined]
        if y is None:
            return cond.sample_labels(n, device)
        return cond.check(y, n, allow_null=True).to(device)


class LatentPrior(Capability):
    """A family that models the data through a trained first stage's latents with any prior family
    (``+stage1=<run dir> model=<prior>``): :func:`genlab.builders.build_family` finds the registered
    family with this capability and wraps the run's model in it; its latents come from a
    :class:`genlab.data.latents.LatentCache`."""

    missing = "it is not a prior over a first stage's latents"

    @classmethod
    def over(cls, prior: Any, stage1: str) -> LatentPrior:
        """The composed family: ``prior`` over the first stage trained in ``stage1`` (a run dir or checkpoint)."""
        raise NotImplementedError

    def with_prior(self, prior: Any) -> LatentPrior:
        """The same first stage with another prior (to ask which priors fit)."""
        raise NotImplementedError

    def check_prior(self) -> str | None:
        """Why the prior cannot be one over these latents (it cannot model them, or has no likelihood of
        them for the composed bound), or None."""
        raise NotImplementedError

    def use_latent_cache(self, cache: Any) -> None:
        """Serve the prior's training latents from ``cache`` (set by the builders, like a condition)."""
        raise NotImplementedError


class Restorer(Capability):
    """Solve a linear inverse problem ``y = A(x) + noise`` with the model as the prior
    (:mod:`genlab.tasks.operators`, ``genlab-task restore``). ``restore_methods``: the methods, the
    first the default; ``restore_samplers``: those of them that draw posterior samples (the task
    reports the mean and spread over several draws; the others are estimates such as a MAP);
    ``restore_operators``: the operators the methods can use (empty: every one), and
    ``restore_limit`` why not the others."""

    missing = ("solving an inverse problem needs a prior the measurement can condition: a score or denoiser "
               "(diffusion, flow matching), a latent map with a known prior (flows, VAEs), an energy (EBMs) or "
               "exact conditionals (autoregressive, masks only)")
    restore_methods: ClassVar[tuple[str, ...]] = ()
    restore_samplers: ClassVar[tuple[str, ...]] = ()
    restore_operators: ClassVar[tuple[str, ...]] = ()
    restore_limit: ClassVar[str] = ""

    def restore(self, nets: Nets, problem: Any, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        """``problem``: a :class:`~genlab.tasks.operators.Measurement` of ``B`` images in the ``[0, 1]``
        unit scale -> the estimate ``(B, C, H, W)`` float in that scale. ``options``: the task's config
        (``steps``, ``eta``, ``dps_scale``, ``iters``, ``step_size``); ``y``: a conditional model's labels ``(B,)``."""
        raise NotImplementedError
