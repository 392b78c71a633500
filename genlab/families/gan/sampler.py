"""GAN samplers as objects: ``model.sampler``, a pipeline of steps in a fixed order

    propose -> refine -> jacobian_truncation -> rejection

each step an object with its own options, null where it is off:

* :class:`Propose` — latents ``z ~ N(0, I)`` (truncated to ``[-a, a]`` with ``truncation = a``,
  Brock et al. 2019) through the generator EMA (``generator: ema``; the raw generator with
  ``raw``), batch norm with its running statistics or, ``batch_stats: true``, the sampled batch's own;
* ``refine`` — :class:`~genlab.families.gan.refine.LatentRefinement`, Adam steps of each ``z`` up
  ``D(G(z)) - penalty ||z - z0||`` (Tanaka 2019);
* ``jacobian_truncation`` — :class:`~genlab.families.gan.jacobian.JacobianTruncation`, of
  ``ceil(n / keep)`` (refined) latents the ``n`` with the flattest generator (Tanielian et al. 2020);
* ``rejection`` — :class:`~genlab.families.gan.rejection.Rejection`, discriminator rejection
  sampling of what the earlier steps draw (Azadi et al. 2019), with the calibration in the nets.

The latent steps (refine, Jacobian truncation) map latents to latents, each row keeping its
InfoGAN code; rejection wraps the whole draw as its proposal. With no step after ``propose`` the
sampler is plain ``tanh(G(z))``. On the command line (``genlab-train`` / ``genlab-eval``)::

    model.sampler.refine='{steps: 20, lr: 0.05, penalty: 1.0}'
    model.sampler.jacobian_truncation='{keep: 0.8, ink_power: 2}'
    model.sampler.rejection='{quantile: 0.95}'          # or {} for the defaults
    model.sampler.propose.truncation=1.0  model.sampler.refine=null
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from genlab.families.base import parse_node
from genlab.families.gan.generation import Generation
from genlab.families.gan.jacobian import JacobianTruncation
from genlab.families.gan.refine import LatentRefinement
from genlab.families.gan.rejection import Rejection, RejectionCalibration

STEPS = ("propose", "refine", "jacobian_truncation", "rejection")


@dataclass(frozen=True)
class Propose:
    """``model.sampler.propose``: the first step, which latents and which generator (module docstring)."""

    generator: str = "ema"
    truncation: float | None = None
    batch_stats: bool = False

    def __post_init__(self) -> None:
        if self.generator not in ("ema", "raw"):
            raise ValueError(f"model.sampler.propose.generator must be ema (the generator EMA, where the run keeps "
                             f"one) or raw (the trained generator), got {self.generator!r}")
        if self.truncation is not None and not self.truncation > 0:
            raise ValueError(f"model.sampler.propose.truncation must be > 0 (z truncated to [-a, a]) or null, "
                             f"got {self.truncation!r}")
        if not isinstance(self.batch_stats, bool):
            raise ValueError(f"model.sampler.propose.batch_stats must be true or false, got {self.batch_stats!r}")

    @classmethod
    def parse(cls, config: Mapping[str, Any] | None) -> Propose:
        """``model.sampler.propose`` (a mapping; None: the defaults); a clear error for unknown keys."""
        return parse_node(cls, {} if config is None else config, "sampler.propose", "{generator: ema, truncation: 1.0}")

    def network(self, nets: nn.ModuleDict) -> nn.Module:
        """The generator that samples: the EMA where there is one (``ema``) or the raw one; with
        ``batch_stats``, a copy whose batch-norm layers normalise with each batch's own statistics."""
        net = nets["generator_ema"] if self.generator == "ema" and "generator_ema" in nets else nets["generator"]
        if not self.batch_stats:
            return net
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            raise ValueError("model.sampler.propose.batch_stats=true: this generator has no batch-norm layers "
                             "(nothing to change); use false")
        net = copy.deepcopy(net).eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        return net


def _canonical(step: Any) -> tuple:
    """A step as a tuple of its name and option values, numbers as floats (``2`` and ``2.0`` alike)."""
    values = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in astuple(step))
    return (type(step).__name__, *values)


class GANSampler:
    """``model.sampler``: the pipeline of steps (module docstring); each argument is a step's options
    (a mapping, or the step object), None for off (``propose``: None for its defaults).

    Args:
        propose: :class:`Propose` options ``{generator, truncation, batch_stats}``.
        refine: :class:`~genlab.families.gan.refine.LatentRefinement` options ``{steps, lr, penalty}``.
        jacobian_truncation: :class:`~genlab.families.gan.jacobian.JacobianTruncation` options
            ``{keep, probes, ink_power, batch}``.
        rejection: :class:`~genlab.families.gan.rejection.Rejection` options ``{quantile}``.
    """

    def __init__(self, propose: Mapping[str, Any] | Propose | None = None,
                 refine: Mapping[str, Any] | LatentRefinement | None = None,
                 jacobian_truncation: Mapping[str, Any] | JacobianTruncation | None = None,
                 rejection: Mapping[str, Any] | Rejection | None = None, **unknown: Any) -> None:
        if unknown:
            raise ValueError(f"model.sampler has unknown steps {sorted(unknown)}: its steps are {', '.join(STEPS)} "
                             "(in that order; e.g. model.sampler.refine='{steps: 20, lr: 0.05, penalty: 1.0}')")
        self.propose = Propose.parse(propose)
        self.refine = LatentRefinement.parse(refine)
        self.jacobian_truncation = JacobianTruncation.parse(jacobian_truncation)
        self.rejection = Rejection.parse(rejection)

    @classmethod
    def of(cls, value: GANSampler | Mapping[str, Any] | None) -> GANSampler:
        """``value`` as a sampler: itself, the steps of a mapping (``model.sampler`` without its
        ``_target_``), or the defaults for None."""
        if value is None or isinstance(value, GANSampler):
            return value if value is not None else cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"model.sampler must be a GAN sampler or a mapping of its steps {', '.join(STEPS)}, "
                             f"got {value!r}")
        return cls(**{k: v for k, v in value.items() if k != "_target_"})

    @property
    def latent_steps(self) -> list[LatentRefinement | JacobianTruncation]:
        """The steps between propose and rejection that are on, in order."""
        return [s for s in (self.refine, self.jacobian_truncation) if s is not None]

    @property
    def steps(self) -> list[Any]:
        """Every step that is on, in the order they run (propose first)."""
        return [self.propose, *self.latent_steps, *([self.rejection] if self.rejection is not None else [])]

    def proposal_key(self) -> float:
        """A key of the steps before rejection (what draws its proposals), exact in float64: the
        calibration in the nets records it, as a Platt fit holds only for its own proposals."""
        digest = hashlib.sha256(repr([_canonical(s) for s in self.steps if not isinstance(s, Rejection)]).encode())
        return float(int.from_bytes(digest.digest()[:6], "big"))

    def proposals(self, n: int) -> int:
        """How many latents :meth:`draw` takes for ``n`` samples (more with Jacobian truncation)."""
        for step in reversed(self.latent_steps):
            n = step.proposals(n)
        return n

    def draw(self, gen: Generation, n: int, z: Tensor | None = None) -> Tensor:
        """``n`` samples ``(n, *shape)`` in model space through propose and the latent steps: latents
        ``z`` ``(proposals(n), d)`` (None: fresh ones), codes drawn once and kept with their row."""
        counts, m = [], n  # each latent step's output count; m: the latents drawn
        for step in reversed(self.latent_steps):
            counts, m = [m, *counts], step.proposals(m)
        z, code, _ = gen.latents(m, z, self.propose.truncation)
        for step, count in zip(self.latent_steps, counts, strict=True):
            z, code = step.apply(gen, z, code, count)
        with torch.no_grad():
            return gen.fake(z, code)

    def sample(self, gen: Generation, n: int, calibration: RejectionCalibration | None,
               discriminator: nn.Module) -> Tensor:
        """``n`` samples in model space: :meth:`draw`, through rejection when that step is on."""
        if self.rejection is None:
            return self.draw(gen, n)
        return self.rejection.apply(partial(self.draw, gen), gen.discriminate, n, calibration, discriminator,
                                    self.proposal_key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GANSampler) and self.steps == other.steps

    def __repr__(self) -> str:
        return f"GANSampler({', '.join(map(repr, self.steps))})"
