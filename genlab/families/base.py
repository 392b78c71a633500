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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from torch import Tensor, nn

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


class Family:
    """Base class of generative families (see module docstring).

    Subclasses set :attr:`name` (stable API) and :attr:`objective_type` (the base class of the
    objectives they accept), and implement :meth:`build`, :meth:`loss`, :meth:`sample` and,
    where they have one, :meth:`log_likelihood`.
    """

    name: str = "base"
    objective_type: type = object
    nll_kind: NLLKind = "none"

    def __init__(self, objective: Any = None) -> None:
        self.objective = objective

    # -- compatibility (checked before anything is trained) -----------------------------
    def check_data(self, info: DataInfo) -> str | None:
        """Return why this family cannot model ``info``'s data, or None if it can."""
        return None

    def check_objective(self, objective: Any) -> str | None:
        """Return why ``objective`` is not a valid loss for this family, or None."""
        if not isinstance(objective, self.objective_type):
            return f"{type(objective).__name__} is not a {self.objective_type.__name__}"
        return None

    # -- contract ----------------------------------------------------------------------
    def build(self, info: DataInfo) -> nn.ModuleDict:
        """Networks sized for the data; ``nets`` in every other method."""
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

    def sample(self, nets: nn.ModuleDict, n: int) -> Tensor:
        raise NotImplementedError

    def adapt_state(self, nets: nn.ModuleDict, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint's weights of ``nets`` (keys relative to ``nets``) as this configuration of the
        family loads them, or a clear error where they cannot be; unchanged by default."""
        return state

    def log_likelihood(self, nets: nn.ModuleDict, batch: dict[str, Tensor], **kwargs) -> LogLikelihood | None:
        """Per-example discrete log-likelihood; None for families without one."""
        return None
