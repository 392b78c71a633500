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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit


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
        num_templates: ``K`` for ``templates`` mode (at most ``levels``).
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
        if mode not in ("independent", "templates"):
            raise DataError(f"dataset.mode={mode!r} is unknown; valid: independent, templates")
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

    @property
    def info(self) -> DataInfo:
        return DataInfo(
            name="toy", kind="image", shape=self.shape, levels=self.levels, entropy_nats=self.entropy_nats()
        )

    def entropy_nats(self) -> float:
        """Exact entropy of one example in nats."""
        if self.mode == "independent":
            return float(categorical_entropy(self._probs).sum())
        d = math.prod(self.shape)
        return math.log(self.num_templates) + (d - 1) * noise_entropy(self.eps, self.levels)

    def draw(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` i.i.d. examples as uint8 ``(n, C, H, W)``."""
        if self.mode == "independent":
            x = torch.multinomial(self._probs.float(), n, replacement=True, generator=g).T
        else:
            k = torch.randint(0, self.num_templates, (n,), generator=g)
            x = self._templates[k].clone()
            noisy = torch.rand(x.shape, generator=g) < self.eps
            noisy[:, 0] = False
            x[noisy] = torch.randint(0, self.levels, (int(noisy.sum()),), generator=g)
        return x.to(torch.uint8).reshape(n, *self.shape)

    def load_splits(self) -> dict[str, TensorSplit]:
        out = {}
        for i, (split, n) in enumerate(self.sizes.items()):
            out[split] = TensorSplit(self.draw(n, torch.Generator().manual_seed(self.seed * 31 + 1 + i)))
        return out
