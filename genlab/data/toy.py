"""Synthetic discrete images whose entropy is known exactly: the test bed for likelihoods.

Two generators (``mode``):

* ``independent``: every pixel ``d`` is an independent categorical with probabilities
  ``pi_d = softmax(sharpness * N(0, I))`` (seeded). Entropy ``H = sum_d H(pi_d)``.
* ``templates``: ``K`` random templates; a sample picks ``k ~ Uniform(K)`` and copies template
  ``k``, replacing each pixel except the first with a uniform draw over the ``L`` levels with
  probability ``eps``. The first pixel stores ``k`` itself (noise-free), so ``k`` is a function
  of ``x`` and ``H = log K + (D - 1) * h(eps)`` with
  ``h(eps) = -(1-eps+eps/L) log(1-eps+eps/L) - (L-1) (eps/L) log(eps/L)``.
  This data has structure (pixels are dependent) that a latent-variable model can exploit.
  The label ``y`` is ``k``.
* ``classes``: labelled data for conditional models: ``y ~ Uniform(K)``, then every pixel ``d`` an
  independent categorical ``pi_{y,d} = softmax(sharpness * N(0, I))`` (seeded, per class). The
  conditional entropy is ``H(X|Y) = mean_y sum_d H(pi_{y,d})``; ``H(X)`` and the Bayes-optimal
  accuracy ``E_x max_y p(y|x)`` are computed exactly by enumerating all ``L^D`` images (at most
  ``2^20``; larger images get no ``H(X)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit

MODES = ("independent", "templates", "classes")
ENUMERABLE = 2**20  # images enumerated for the exact H(X) of `classes` data


def categorical_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of categorical distributions along the last dimension."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def noise_entropy(eps: float, levels: int) -> float:
    """Entropy (nats) of one templated pixel: keep w.p. ``1-eps``, else uniform over levels."""
    p_keep = 1.0 - eps + eps / levels
    p_other = eps / levels
    h = -p_keep * math.log(p_keep)
    if p_other > 0:
        h -= (levels - 1) * p_other * math.log(p_other)
    return h


class ToyDataModule(InMemoryDataModule):
    """Seeded synthetic images with exactly known entropy (see module docstring).

    Args:
        mode: ``independent`` or ``templates``.
        shape: image shape ``(C, H, W)``.
        levels: number of grey levels.
        n_train, n_val, n_test: split sizes (all drawn i.i.d. from the same distribution).
        num_templates: ``K`` for ``templates`` mode (at most ``levels``), the number of classes for ``classes``.
        eps: pixel noise probability for ``templates`` mode.
        sharpness: scale of the Gaussian logits of the per-pixel categoricals (``independent``).
    """

    def __init__(
        self,
        mode: str = "templates",
        shape: tuple[int, int, int] = (1, 8, 8),
        levels: int = 4,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        num_templates: int = 4,
        eps: float = 0.1,
        sharpness: float = 1.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise DataError(f"dataset.mode={mode!r} is unknown; valid: {', '.join(MODES)}")
        if mode == "templates" and not 1 <= num_templates <= levels:
            raise DataError(f"dataset.num_templates={num_templates} must be between 1 and levels={levels}")
        self.mode, self.shape, self.levels = mode, tuple(shape), levels
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.num_templates, self.eps = num_templates, eps
        g = torch.Generator().manual_seed(self.seed)
        d = math.prod(self.shape)
        self._probs = torch.softmax(sharpness * torch.randn(d, levels, generator=g, dtype=torch.float64), -1)
        self._templates = torch.randint(0, levels, (num_templates, d), generator=g)
        self._templates[:, 0] = torch.arange(num_templates)
        if mode == "classes":  # per-class pixel probabilities (K, D, L), drawn after the others (same seeds above)
            self._class_probs = torch.softmax(
                sharpness * torch.randn(num_templates, d, levels, generator=g, dtype=torch.float64), -1)

    @property
    def info(self) -> DataInfo:
        labelled = self.mode != "independent"
        return DataInfo(
            name="toy", kind="image", shape=self.shape, levels=self.levels, entropy_nats=self.entropy_nats(),
            num_classes=self.num_templates if labelled else None,
            cond_entropy_nats=self.cond_entropy_nats() if labelled else None,
        )

    def cond_entropy_nats(self) -> float:
        """Exact ``H(X | Y)`` in nats per example (labelled modes)."""
        if self.mode == "classes":
            return float(categorical_entropy(self._class_probs).sum(-1).mean())
        return (math.prod(self.shape) - 1) * noise_entropy(self.eps, self.levels)

    def class_log_joint(self, x: Tensor) -> Tensor:
        """``log p(x, y)`` ``(N, K)`` float64 of images ``(N, *shape)`` (``classes`` mode): the exact
        generative model, for Bayes-optimal classification."""
        flat = x.reshape(len(x), -1).long()  # (N, D)
        logp = self._class_probs.log()  # (K, D, L)
        per_class = torch.stack([logp[k].gather(1, flat.T).sum(0) for k in range(self.num_templates)], 1)
        return per_class - math.log(self.num_templates)

    def _enumerated(self) -> Tensor | None:
        """``log p(x, y)`` of every image (``L^D`` rows), or None where there are more than :data:`ENUMERABLE`."""
        d = math.prod(self.shape)
        if self.levels**d > ENUMERABLE:
            return None
        grid = torch.cartesian_prod(*[torch.arange(self.levels)] * d).reshape(-1, d) if d > 1 else \
            torch.arange(self.levels)[:, None]
        return self.class_log_joint(grid)

    def bayes_accuracy(self) -> float | None:
        """The Bayes-optimal accuracy ``sum_x max_y p(x, y)`` (``classes`` mode, enumerable images)."""
        joint = self._enumerated() if self.mode == "classes" else None
        return None if joint is None else float(joint.exp().max(1).values.sum())

    def entropy_nats(self) -> float | None:
        """Exact entropy of one example in nats (None where it cannot be enumerated)."""
        if self.mode == "classes":
            joint = self._enumerated()
            if joint is None:
                return None
            log_px = torch.logsumexp(joint, 1)
            return float(-(log_px.exp() * log_px).sum())
        if self.mode == "independent":
            return float(categorical_entropy(self._probs).sum())
        d = math.prod(self.shape)
        return math.log(self.num_templates) + (d - 1) * noise_entropy(self.eps, self.levels)

    def draw(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` i.i.d. examples as uint8 ``(n, C, H, W)``."""
        return self.draw_labelled(n, g)[0]

    def draw_labelled(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """``n`` i.i.d. examples uint8 ``(n, C, H, W)`` and their labels ``(n,)`` (None: ``independent``)."""
        k = None
        if self.mode == "independent":
            x = torch.multinomial(self._probs.float(), n, replacement=True, generator=g).T
        elif self.mode == "classes":
            k = torch.randint(0, self.num_templates, (n,), generator=g)
            probs = self._class_probs[k].reshape(-1, self.levels).float()  # (n * D, L)
            x = torch.multinomial(probs, 1, generator=g).reshape(n, -1)
        else:
            k = torch.randint(0, self.num_templates, (n,), generator=g)
            x = self._templates[k].clone()
            noisy = torch.rand(x.shape, generator=g) < self.eps
            noisy[:, 0] = False
            x[noisy] = torch.randint(0, self.levels, (int(noisy.sum()),), generator=g)
        return x.to(torch.uint8).reshape(n, *self.shape), k

    def load_splits(self) -> dict[str, TensorSplit]:
        out = {}
        for i, (split, n) in enumerate(self.sizes.items()):
            out[split] = TensorSplit(*self.draw_labelled(n, torch.Generator().manual_seed(self.seed * 31 + 1 + i)))
        return out
