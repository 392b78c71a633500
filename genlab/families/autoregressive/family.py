"""Autoregressive family: exact likelihood by the chain rule (PixelCNN, Transformer LM).

``log P(x) = sum_i log P(x_{o(i)} | x_{o(<i)})`` where ``o`` is the net's generation order and
each conditional is a discrete observation model (the ``loss`` group: ``categorical`` over the
levels or ``logistic_mixture``, PixelCNN++) whose parameters the causal net outputs. The NLL is
exact (``nll_kind: exact``); training minimises it in nats per dimension.

Capabilities: :class:`~genlab.families.base.Likelihood` (exact), :class:`SequentialCoder` (the
conditionals in the net's order: lossless compression) and :class:`Inpainter` — *conditional
ancestral sampling*: walk the generation order; an observed dimension keeps its value, a missing
one is drawn from ``P(x_d | x_{<d})`` (temperature 1) given everything before it. When every missing
dimension comes after every observed one in the order (the bottom half in raster order) this draws
exactly from ``P(x_missing | x_observed)`` (the chain rule); otherwise the observed dimensions that
come later than a missing one are ignored when it is drawn (:func:`order_is_exact`).

:class:`~genlab.families.base.Conditional` (``+conditional=class``): ``log P(x | y) = sum_i log
P(x_{o(i)} | x_{o(<i)}, y)``, every conditional given the class embedding ``c = E[y]`` (the
condition's :class:`~genlab.conditioning.LabelEmbedding`, ``nets["label"]``, of the net's
``cond_dim``): the PixelCNN adds ``V^T c`` to every gate of both stacks (van den Oord et al. 2016,
Eq. 4), the Transformer reads ``c`` as its first token instead of BOS. The chain rule still holds
for each ``y``, so the conditional likelihood is exact and normalised; no label dropout and no
guidance by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.conditioning import ConditionError
from genlab.data.base import DataInfo
from genlab.distributions import Categorical, DiscreteObservation, check_observation
from genlab.families.base import Conditional, Family, Inpainter, Likelihood, LossOutput, Nets, SequentialCoder
from genlab.families.autoregressive.restore import AutoregressiveRestorer
from genlab.metrics.likelihood import LN2, LogLikelihood
from genlab.nets import input_kind_error
from genlab.nets.ar import ARNet


def level_log_probs(objective: DiscreteObservation, params: Tensor, levels: int) -> Tensor:
    """``log P(x = l)`` for every level ``l``, ``(B, L)``, from one position's ``params (B, P)``:
    ``log_prob_per_dim`` with the parameters repeated over ``L`` pseudo-dimensions (any model)."""
    b, p = params.shape
    grid = torch.arange(levels, device=params.device).expand(b, levels)
    return objective.log_prob_per_dim(params.unsqueeze(-1).expand(b, p, levels), grid, levels)


def order_is_exact(order: Tensor, missing: Tensor) -> bool:
    """Whether every missing dimension comes after every observed one in the generation ``order``
    (flat indices, ``(D,)``), in every example of ``missing`` ``(B, ...)``: then conditional
    ancestral sampling draws exactly from ``P(x_missing | x_observed)``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    miss = missing.reshape(len(missing), -1).to(order.device)
    big = len(order)
    last_seen = torch.where(~miss, rank, torch.full_like(rank, -1)).amax(1)
    first_missing = torch.where(miss, rank, torch.full_like(rank, big)).amin(1)
    return bool((last_seen < first_missing).all())


@dataclass
class CodingState:
    """What :meth:`Autoregressive.start_coding` returns: the net's incremental state (which carries
    the condition) and the labels the coding conditions on (None: unconditional)."""

    net: Any
    labels: Tensor | None


class Autoregressive(Family, Likelihood, SequentialCoder, Inpainter, Conditional, AutoregressiveRestorer):
    """Autoregressive family.

    Conditional (``self.condition`` set): :meth:`build` adds the label table ``nets["label"]``
    (``y -> c (B, net.cond_dim)``) and builds the net with ``conditional=True``; every method then
    runs the net on ``(x, c)``: ``loss`` on the batch's labels (label dropout only if
    ``conditional.dropout`` asks), ``log_likelihood`` gives the exact ``log P(x | y)``, ``sample``,
    ``inpaint`` and the coder take ``y=``. Unconditional (``condition`` None): the same nets and
    numbers as without conditioning, and a ``y=`` is refused.

    Args:
        net: factory ``net(shape=..., levels=..., num_params=...) -> ARNet`` (``_partial_``).
        objective: the per-dimension output distribution (``loss`` group).
        temperature: sampling temperature (logits / temperature; scales for mixtures).
        top_k: keep only the ``k`` most likely levels when sampling (categorical outputs).
    """

    name = "autoregressive"
    compare_rank = 10
    objective_type = DiscreteObservation
    nll_kind = "exact"
    default_label_dropout = 0.0  # an exact conditional likelihood needs no null label; no guidance
    guidance_key = ""

    def __init__(
        self,
        net: Callable[..., ARNet],
        objective: DiscreteObservation | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> None:
        super().__init__(objective or Categorical())
        self.net_factory, self.temperature, self.top_k = net, temperature, top_k

    def check_data(self, info: DataInfo) -> str | None:
        return input_kind_error(self.net_factory, info.kind) or check_observation(self.objective, info.kind, info.levels)

    def build(self, info: DataInfo) -> Nets:
        """The net (and, when conditional, the label table ``nets["label"]`` of the net's ``cond_dim``)."""
        kw = {} if self.condition is None else {"conditional": True}
        net = self.net_factory(shape=info.shape, levels=info.levels, num_params=self.objective.num_params(info.levels),
                               **kw)
        if self.condition is None:
            return Nets(info, {"net": net})
        return Nets(info, {"net": net, "label": self.condition.embedding(net.cond_dim)})

    # -- the condition ----------------------------------------------------------------------------
    def run_net(self, nets: nn.ModuleDict, x: Tensor, labels: Tensor | None) -> Tensor:
        """``params (B, P, D)`` of ``x`` given the labels: the net on ``(x, c = E[y])``; on ``x`` alone when
        ``labels`` is None (unconditional)."""
        return nets["net"](x) if labels is None else nets["net"](x, nets["label"](labels))

    def start_net(self, nets: nn.ModuleDict, x: Tensor, labels: Tensor | None) -> Any:
        """The net's incremental state for ``x`` given the labels (it carries ``c = E[y]``)."""
        return nets["net"].init_state(x) if labels is None else nets["net"].init_state(x, nets["label"](labels))

    # -- training and likelihood ------------------------------------------------------------------
    def log_px_per_dim(self, nets: nn.ModuleDict, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``log P(x_d | x_<d, y)`` for every dimension, ``(B, D)`` in nats (``labels`` None: ``P(x_d | x_<d)``)."""
        params = self.run_net(nets, x, labels)
        return self.objective.log_prob_per_dim(params, x.reshape(x.shape[0], -1), nets.info.levels)

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        """Mean NLL per dimension, ``-log P(x | y) / D`` (``y``: the batch's labels after label dropout)."""
        labels = None if self.condition is None else self.training_labels(batch)
        nll = -self.log_px_per_dim(nets, batch["x"], labels).sum(-1)  # (B,) nats
        d = nets.info.dims
        return LossOutput(nll.mean() / d, {"nll_bpd": nll.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        """Exact ``log P(x)``, or ``log P(x | y)`` with ``y = batch["y"]`` when conditional (null label allowed)."""
        labels = None if self.condition is None else self.labels(batch)
        return LogLikelihood(self.log_px_per_dim(nets, batch["x"], labels).sum(-1), "exact")

    def _adjust(self, params: Tensor) -> Tensor:
        """Apply temperature / top-k to one position's parameters ``(B, P)``."""
        if isinstance(self.objective, Categorical):
            logits = params / self.temperature
            if self.top_k is not None and self.top_k < logits.shape[1]:
                kth = logits.topk(self.top_k, dim=1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            return logits
        return params

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None, y: Tensor | None = None) -> Tensor:
        """Ancestral sampling, one dimension at a time in the net's order, batched over ``n`` (temperature
        and top-k from the config); conditional: from ``P(x | y)``, ``y (n,)`` (None: drawn from ``p(y)``)."""
        info = nets.info
        dtype = torch.long if info.kind == "text" else torch.uint8
        device = next(nets["net"].parameters()).device
        labels = self.method_labels(n, y, device, sampling=True)
        x = torch.zeros(n, *info.shape, dtype=dtype, device=device)
        return self.ancestral(nets, x, torch.ones_like(x, dtype=torch.bool), adjust=True, labels=labels)

    def ancestral(self, nets: Nets, x: Tensor, draw: Tensor, adjust: bool = False,
                  labels: Tensor | None = None) -> Tensor:
        """Walk the net's order over ``x`` (in place): where ``draw`` (bool, like ``x``) is set, write a draw
        from ``P(x_d | x_<d, y)`` (with temperature / top-k when ``adjust``), elsewhere keep ``x``;
        ``labels``: ``y`` (checked; None for an unconditional model)."""
        net: ARNet = nets["net"]
        flat, where = x.view(len(x), -1), draw.reshape(len(x), -1)
        state = self.start_net(nets, x, labels)
        for step, pos in enumerate(net.order().tolist()):
            params = net.next_params(x, step, state)  # every step: incremental nets need them in order
            if bool(where[:, pos].any()):
                params = self._adjust(params) if adjust else params
                value = self.objective.sample(params.unsqueeze(-1), nets.info.levels)[:, 0].to(x.dtype)
                flat[:, pos] = torch.where(where[:, pos], value, flat[:, pos])
        return x

    # -- Inpainter: conditional ancestral sampling (module docstring) ------------------------------
    inpaint_method = "conditional ancestral sampling"

    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object = None,
                y: Tensor | None = None) -> Tensor:
        """Draw the missing dimensions in ``net.order()`` from ``P(x_d | x_<d, y)`` at temperature 1
        (``y``: labels of a conditional model; None: :meth:`method_labels`'s default)."""
        labels = self.method_labels(len(x), y, x.device)
        return self.ancestral(nets, torch.where(missing, torch.zeros_like(x), x), missing, labels=labels)

    def inpaint_is_exact(self, nets: Nets, missing: Tensor) -> bool:
        return order_is_exact(nets["net"].order(), missing)

    # -- SequentialCoder --------------------------------------------------------------------------
    def coding_order(self, nets: Nets) -> Tensor:
        return nets["net"].order()

    def start_coding(self, nets: Nets, x: Tensor, y: Tensor | None = None) -> CodingState:
        """The incremental state for coding ``x``, conditioned on ``y`` (a conditional model's labels,
        fixed for the whole coding; None: :meth:`method_labels`'s default, which the decoder must repeat)."""
        labels = self.method_labels(len(x), y, x.device)
        return CodingState(self.start_net(nets, x, labels), labels)

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: CodingState, y: Tensor | None = None) -> Tensor:
        """``(B, L)`` log-probabilities ``log P(x_d = l | x_<d, y)`` of the levels at the ``step``-th
        position, temperature 1. ``y`` is optional: the labels are those of :meth:`start_coding`, and
        a ``y`` given here must be the same."""
        if y is not None:
            labels = self.method_labels(len(x), y, x.device)
            if state.labels is None or not torch.equal(labels, state.labels):
                raise ConditionError("the labels of a coding are fixed when it starts: pass the same y to "
                                     "start_coding and next_log_probs")
        return level_log_probs(self.objective, nets["net"].next_params(x, step, state.net), nets.info.levels)
