"""Autoregressive family: exact likelihood by the chain rule (PixelCNN, Transformer LM).

``log P(x) = sum_i log P(x_{o(i)} | x_{o(<i)})`` where ``o`` is the net's generation order and
each conditional is a discrete observation model (the ``loss`` group: ``categorical`` over the
levels or ``logistic_mixture``, PixelCNN++) whose parameters the causal net outputs. The NLL is
exact (``nll_kind: exact``); training minimises it in nats per dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.distributions import Categorical, DiscreteObservation, check_observation
from genlab.families.base import Family, LossOutput
from genlab.metrics.likelihood import LN2, LogLikelihood
from genlab.nets import input_kind_error
from genlab.nets.ar import ARNet


class Autoregressive(Family):
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
        self.info: DataInfo | None = None

    def check_data(self, info: DataInfo) -> str | None:
        return input_kind_error(self.net_factory, info.kind) or check_observation(self.objective, info.kind, info.levels)

    def build(self, info: DataInfo) -> nn.ModuleDict:
        self.info = info
        net = self.net_factory(shape=info.shape, levels=info.levels, num_params=self.objective.num_params(info.levels))
        return nn.ModuleDict({"net": net})

    def log_px_per_dim(self, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        """``log P(x_d | x_<d)`` for every dimension, ``(B, D)`` in nats."""
        params = nets["net"](x)
        return self.objective.log_prob_per_dim(params, x.reshape(x.shape[0], -1), self.info.levels)

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        nll = -self.log_px_per_dim(nets, batch["x"]).sum(-1)  # (B,) nats
        d = self.info.dims
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
    def sample(self, nets: nn.ModuleDict, n: int) -> Tensor:
        """Ancestral sampling, one dimension at a time in the net's order, batched over ``n``."""
        net: ARNet = nets["net"]
        dtype = torch.long if self.info.kind == "text" else torch.uint8
        x = torch.zeros(n, *self.info.shape, dtype=dtype, device=next(net.parameters()).device)
        flat = x.view(n, -1)
        state = net.init_state(x)
        for step, pos in enumerate(net.order().tolist()):
            params = self._adjust(net.next_params(x, step, state))
            flat[:, pos] = self.objective.sample(params.unsqueeze(-1), self.info.levels)[:, 0].to(dtype)
        return x
