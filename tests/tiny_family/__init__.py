"""A family a newcomer adds without touching genlab/ or configs/: independent categorical pixels.

``P(x) = prod_d softmax(theta_d)[x_d]``: an exact likelihood, and exact conditionals in any order
(they are the marginals), so it is a :class:`Likelihood`, a :class:`SequentialCoder` (lossless
compression) and an :class:`Inpainter` (the missing pixels drawn from their marginals is an exact
draw from ``P(x_missing | x_observed)``); it has no encoder, no energy and no noising path. Conditional (``+conditional=class``): one logit table
per class and one for the null label, ``P(x | y) = prod_d softmax(theta_{y,d})[x_d]``, exact as well.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.distributions import Categorical
from genlab.families.base import Conditional, Family, Inpainter, Likelihood, LossOutput, Nets, SequentialCoder
from genlab.metrics.likelihood import LN2, LogLikelihood


class Logits(nn.Module):
    """One free logit vector per dimension: ``(D, L)``; with ``tables`` (classes + the null label), one
    such table per label ``(tables, D, L)``."""

    def __init__(self, dims: int, levels: int, tables: int | None = None) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dims, levels) if tables is None else torch.zeros(tables, dims, levels))

    def log_probs(self, y: Tensor | None = None) -> Tensor:
        """``(D, L)`` unconditionally, ``(B, D, L)`` for labels ``y``."""
        return (self.theta if y is None else self.theta[y]).log_softmax(-1)


class IndependentPixels(Family, Likelihood, SequentialCoder, Inpainter, Conditional):
    name = "independent"
    objective_type = Categorical
    nll_kind = "exact"
    inpaint_method = "independent marginals"

    def build(self, info: DataInfo) -> Nets:
        tables = None if self.condition is None else self.condition.num_classes + 1
        return Nets(info, {"logits": Logits(info.dims, info.levels, tables)})

    def log_px_per_dim(self, nets: Nets, x: Tensor, y: Tensor | None = None) -> Tensor:
        flat = x.reshape(len(x), -1).long()
        if y is None:
            return nets["logits"].log_probs().gather(1, flat.T).T  # (B, D)
        return nets["logits"].log_probs(y).gather(2, flat[..., None])[..., 0]

    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        y = self.training_labels(batch) if self.condition is not None else None
        nll = -self.log_px_per_dim(nets, batch["x"], y).sum(-1)
        d = nets.info.dims
        return LossOutput(nll.mean() / d, {"nll_bpd": nll.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood:
        y = self.labels(batch) if self.condition is not None else None
        return LogLikelihood(self.log_px_per_dim(nets, batch["x"], y).sum(-1), "exact")

    def _draw(self, nets: Nets, n: int, y: Tensor | None = None) -> Tensor:
        if y is not None:
            probs = nets["logits"].log_probs(y).exp().reshape(-1, nets.info.levels)  # (n * D, L)
            return torch.multinomial(probs, 1).view(n, *nets.info.shape).to(torch.uint8)
        probs = nets["logits"].log_probs().exp()  # (D, L)
        draws = torch.multinomial(probs, n, replacement=True).T  # (n, D)
        return draws.view(n, *nets.info.shape).to(torch.uint8)

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None, y: Tensor | None = None) -> Tensor:
        if self.condition is None:
            if y is not None:
                raise ValueError("this model is unconditional: it takes no labels")
            return self._draw(nets, n)
        return self._draw(nets, n, self.sampling_labels(n, y, nets["logits"].theta.device))

    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: object, y: Tensor | None = None) -> Tensor:
        labels = None if self.condition is None else self.sampling_labels(len(x), y, x.device)
        return torch.where(missing, self._draw(nets, len(x), labels).to(x.dtype), x)

    def inpaint_is_exact(self, nets: Nets, missing: Tensor) -> bool:
        return True

    def coding_order(self, nets: Nets) -> Tensor:
        return torch.arange(nets.info.dims)

    def start_coding(self, nets: Nets, x: Tensor) -> None:
        return None

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: None) -> Tensor:
        return nets["logits"].log_probs()[step].expand(len(x), -1)
