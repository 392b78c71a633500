"""Conditions: what a conditional model is given besides the data (class labels now, vectors later).

One condition embedding enters every family through the contract: the batch carries ``y``
(``(B,)`` int64 class ids), :meth:`Family.loss` and :meth:`Family.log_likelihood` read
``batch["y"]``, :meth:`Family.sample` takes ``y=`` (``(n,)``). A family never builds its own
label table: it asks the run's condition for an embedding of the width it needs,
``family.condition.embedding(dim)``, a module ``y (B,) -> (B, dim)``. A later vector condition (a
text encoder's output) implements the same two methods (``embedding``, ``drop``) and the families
do not change.

**Label dropout** (classifier-free guidance, Ho & Salimans 2022): during training a share
``dropout`` of the labels is replaced by the *null label* ``num_classes`` (its own learned row of
the table), so that one network learns both ``p(x | y)`` and ``p(x)``; at sampling the null label
gives the unconditional prediction that guidance extrapolates away from.

**Marginal likelihood**: a conditional model's ``log p(x) = logsumexp_y [log p(x | y) + log p(y)]``
with ``p(y)`` the train split's label frequencies (:attr:`ClassCondition.prior`). A sum of exact
terms is exact; a sum of lower bounds ``exp(L_y) <= p(x|y)`` is a lower bound of ``p(x)``, so the
marginal keeps the kind of the conditional (bound stays bound; an unbiased estimate of each
``log p(x|y)`` gives a consistent, slightly biased estimate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


class ConditionError(ValueError):
    """A condition that does not fit the data or the model (raised with the fix in the message)."""


class LabelEmbedding(nn.Module):
    """``y`` ``(B,)`` in ``0..K`` (``K``: the null label) -> ``(B, dim)``: one learned row per class and
    one for "no label". Initialised with small normal values, so that an untrained conditional model
    starts close to the unconditional one."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, y: Tensor) -> Tensor:
        return self.table(y)


@dataclass
class ClassCondition:
    """A class label per example (``+conditional=class``; configs/conditional/class.yaml).

    Args:
        num_classes: ``K``, labels ``0..K-1``; ``K`` itself is the null label.
        prior: ``p(y)``, the train split's label frequencies (sums to 1).
        dropout: share of training labels replaced by the null label (classifier-free guidance);
            None: the family's default (:attr:`genlab.families.base.Conditional.default_label_dropout`).
    """

    num_classes: int
    prior: Sequence[float] = field(default_factory=tuple)
    dropout: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ConditionError(f"a class condition needs num_classes >= 1, got {self.num_classes!r}")
        prior = tuple(float(p) for p in self.prior) or (1.0 / self.num_classes,) * self.num_classes
        if len(prior) != self.num_classes or any(p < 0 for p in prior) or abs(sum(prior) - 1) > 1e-6:
            raise ConditionError(f"the class prior must be {self.num_classes} non-negative frequencies summing to 1, "
                                 f"got {prior}")
        self.prior = prior
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise ConditionError(f"conditional.dropout={self.dropout}: the share of training labels dropped for "
                                 "classifier-free guidance must lie in [0, 1) (e.g. 0.1), or null for the family's "
                                 "default")

    @property
    def null_label(self) -> int:
        """The id of "no label" (the last row of every :class:`LabelEmbedding`)."""
        return self.num_classes

    def embedding(self, dim: int) -> LabelEmbedding:
        """A fresh learned table ``y -> (B, dim)`` (with the null row)."""
        return LabelEmbedding(self.num_classes, dim)

    def log_prior(self, device: torch.device | str | None = None) -> Tensor:
        """``log p(y)`` ``(K,)`` (float64; ``-inf`` for a class absent from the train split)."""
        p = torch.tensor(self.prior, dtype=torch.float64, device=device)
        return torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))

    def check(self, y: Tensor | None, n: int | None = None, allow_null: bool = False) -> Tensor:
        """``y`` as int64 labels, checked: present, ``(n,)`` where ``n`` is given, within
        ``0..K-1`` (``0..K`` with ``allow_null``). The error names the fix."""
        if y is None:
            raise ConditionError(
                f"this model is class-conditional ({self.num_classes} classes) and needs a label per example. Fix: "
                "pass y= (int64 labels), or use a dataset with labels (the batch's 'y')")
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.ndim != 1 or (n is not None and len(y) != n):
            raise ConditionError(f"labels must be a 1-D integer tensor{f' of {n} labels' if n is not None else ''}, "
                                 f"got {y.dtype} of shape {tuple(y.shape)}")
        top = self.num_classes if allow_null else self.num_classes - 1
        if len(y) and (int(y.min()) < 0 or int(y.max()) > top):
            raise ConditionError(f"labels must lie in 0..{top} (the model has {self.num_classes} classes), got "
                                 f"{int(y.min())}..{int(y.max())}. Fix: pass labels of the dataset the model was "
                                 "trained on")
        return y.long()

    def drop(self, y: Tensor, rate: float) -> Tensor:
        """``y`` with a share ``rate`` of its labels replaced by the null label (torch's global
        generator: the module re-seeds it every step, so resumes repeat the same drops)."""
        if rate <= 0:
            return y
        keep = torch.rand(y.shape, device=y.device) >= rate
        return torch.where(keep, y, torch.full_like(y, self.null_label))

    def sample_labels(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` labels drawn from the prior ``p(y)`` (samples of the marginal ``p(x)``)."""
        p = torch.tensor(self.prior, dtype=torch.float64)
        return torch.multinomial(p, n, replacement=True).to(device)

    def grid_labels(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Labels for a sample grid with one row per class: ``0 .. 0, 1 .. 1, ...`` (``n // K`` of each,
        at least one)."""
        per = max(1, n // self.num_classes)
        return torch.arange(self.num_classes, device=device).repeat_interleave(per)


def label_prior(y: Tensor, num_classes: int) -> tuple[float, ...]:
    """The label frequencies of a split ``(N,)`` -> ``(K,)`` that sum to 1."""
    counts = torch.bincount(y.long().flatten(), minlength=num_classes)[:num_classes].double()
    return tuple((counts / counts.sum()).tolist())


def marginal_log_likelihood(log_px_given_y: Tensor, log_prior: Tensor) -> Tensor:
    """``log p(x) = logsumexp_y [log p(x | y) + log p(y)]``: ``(B, K)`` and ``(K,)`` -> ``(B,)``."""
    return torch.logsumexp(log_px_given_y.double() + log_prior.to(log_px_given_y.device), dim=1)
