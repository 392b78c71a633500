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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.distributions import Categorical, DiscreteObservation, check_observation
from genlab.families.base import Family, Inpainter, Likelihood, LossOutput, Nets, SequentialCoder
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


class Autoregressive(Family, Likelihood, SequentialCoder, Inpainter):
    """Autoregressive family.

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
        net = self.net_factory(shape=info.shape, levels=info.levels, num_params=self.objective.num_params(info.levels))
        return Nets(info, {"net": net})

    def log_px_per_dim(self, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        """``log P(x_d | x_<d)`` for every dimension, ``(B, D)`` in nats."""
        params = nets["net"](x)
        return self.objective.log_prob_per_dim(params, x.reshape(x.shape[0], -1), nets.info.levels)

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        nll = -self.log_px_per_dim(nets, batch["x"]).sum(-1)  # (B,) nats
        d = nets.info.dims
        return LossOutput(nll.mean() / d, {"nll_bpd": nll.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        return LogLikelihood(self.log_px_per_dim(nets, batch["x"]).sum(-1), "exact")

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
    def sample(self, nets: Nets, n: int, sampler: None = None) -> Tensor:
        """Ancestral sampling, one dimension at a time in the net's order, batched over ``n`` (temperature
        and top-k from the config)."""
        info = nets.info
        dtype = torch.long if info.kind == "text" else torch.uint8
        x = torch.zeros(n, *info.shape, dtype=dtype, device=next(nets["net"].parameters()).device)
        return self.ancestral(nets, x, torch.ones_like(x, dtype=torch.bool), adjust=True)

    def ancestral(self, nets: Nets, x: Tensor, draw: Tensor, adjust: bool = False) -> Tensor:
        """Walk the net's order over ``x`` (in place): where ``draw`` (bool, like ``x``) is set, write a draw
        from ``P(x_d | x_<d)`` (with temperature / top-k when ``adjust``), elsewhere keep ``x``."""
        net: ARNet = nets["net"]
        flat, where = x.view(len(x), -1), draw.reshape(len(x), -1)
        state = net.init_state(x)
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
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object = None) -> Tensor:
        """Draw the missing dimensions in ``net.order()`` from ``P(x_d | x_<d)`` at temperature 1."""
        return self.ancestral(nets, torch.where(missing, torch.zeros_like(x), x), missing)

    def inpaint_is_exact(self, nets: Nets, missing: Tensor) -> bool:
        return order_is_exact(nets["net"].order(), missing)

    # -- SequentialCoder --------------------------------------------------------------------------
    def coding_order(self, nets: Nets) -> Tensor:
        return nets["net"].order()

    def start_coding(self, nets: Nets, x: Tensor) -> object:
        return nets["net"].init_state(x)

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: object) -> Tensor:
        """``(B, L)`` log-probabilities of the levels at the ``step``-th position, temperature 1."""
        return level_log_probs(self.objective, nets["net"].next_params(x, step, state), nets.info.levels)
