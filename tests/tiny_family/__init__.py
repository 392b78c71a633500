"""A family a newcomer adds without touching genlab/ or configs/: independent categorical pixels.

``P(x) = prod_d softmax(theta_d)[x_d]``: an exact likelihood, and exact conditionals in any order
(they are the marginals), so it is a :class:`Likelihood`, a :class:`SequentialCoder` (lossless
compression) and an :class:`Inpainter` (the missing pixels drawn from their marginals is an exact
draw from ``P(x_missing | x_observed)``); it has no encoder, no energy and no noising path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.distributions import Categorical
from genlab.families.base import Family, Inpainter, Likelihood, LossOutput, Nets, SequentialCoder
from genlab.metrics.likelihood import LN2, LogLikelihood


class Logits(nn.Module):
    """One free logit vector per dimension: ``(D, L)``."""

    def __init__(self, dims: int, levels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dims, levels))

    def log_probs(self) -> Tensor:
        return self.theta.log_softmax(-1)


class IndependentPixels(Family, Likelihood, SequentialCoder, Inpainter):
    name = "independent"
    objective_type = Categorical
    nll_kind = "exact"
    inpaint_method = "independent marginals"

    def build(self, info: DataInfo) -> Nets:
        return Nets(info, {"logits": Logits(info.dims, info.levels)})

    def log_px_per_dim(self, nets: Nets, x: Tensor) -> Tensor:
        logp = nets["logits"].log_probs()  # (D, L)
        flat = x.reshape(len(x), -1).long()
        return logp.gather(1, flat.T).T  # (B, D)

    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        nll = -self.log_px_per_dim(nets, batch["x"]).sum(-1)
        d = nets.info.dims
        return LossOutput(nll.mean() / d, {"nll_bpd": nll.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood:
        return LogLikelihood(self.log_px_per_dim(nets, batch["x"]).sum(-1), "exact")

    def _draw(self, nets: Nets, n: int) -> Tensor:
        probs = nets["logits"].log_probs().exp()  # (D, L)
        draws = torch.multinomial(probs, n, replacement=True).T  # (n, D)
        return draws.view(n, *nets.info.shape).to(torch.uint8)

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None) -> Tensor:
        return self._draw(nets, n)

    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object) -> Tensor:
        return torch.where(missing, self._draw(nets, len(x)).to(x.dtype), x)

    def inpaint_is_exact(self, nets: Nets, missing: Tensor) -> bool:
        return True

    def coding_order(self, nets: Nets) -> Tensor:
        return torch.arange(nets.info.dims)

    def start_coding(self, nets: Nets, x: Tensor) -> None:
        return None

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: None) -> Tensor:
        return nets["logits"].log_probs()[step].expand(len(x), -1)
