"""Top-k generator training (Sinha et al. 2020, "Top-k Training of GANs: Improving GAN Performance
by Throwing Away Bad Samples").

At each generator step only the ``k`` generated samples that the discriminator rates most real
(largest ``D(G(z))``) enter the generator loss; the others get no gradient. Their gradients
point towards the "mean" of the discriminator's acceptance region, not towards the data, so
dropping them late in training is reported to improve FID across GAN variants. ``k`` starts at
the batch size and shrinks geometrically with training:

    k(s) = max(ceil(min_fraction * B), ceil(B * gamma ** floor(s / every)))

for the ``s``-th generator step (the paper: ``gamma = 0.99`` per epoch, ``min_fraction`` 0.5
to 0.75). The step count is a buffer, so it is saved in checkpoints and a resumed run continues
the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class TopK(nn.Module):
    """Selects the top-``k`` discriminator outputs of a generator step (module docstring).

    Args:
        min_fraction: the floor of ``k / B``, in ``(0, 1]`` (1: plain training).
        gamma: the decay factor of ``k / B``, in ``(0, 1]``.
        every: generator steps per decay (about one epoch: the paper decays once per epoch).
    """

    def __init__(self, min_fraction: float = 0.5, gamma: float = 0.99, every: int = 500) -> None:
        super().__init__()
        if not 0.0 < min_fraction <= 1.0:
            raise ValueError(f"model.top_k.min_fraction must be in (0, 1] (the least share of fakes kept), "
                             f"got {min_fraction}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"model.top_k.gamma must be in (0, 1] (the decay of k per `every` steps), got {gamma}")
        if every < 1:
            raise ValueError(f"model.top_k.every must be >= 1 generator steps, got {every}")
        self.min_fraction, self.gamma, self.every = min_fraction, gamma, every
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @staticmethod
    def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
        """``model.top_k`` as TopK's keyword arguments; a clear error for unknown keys or bad values."""
        config = dict(config)
        unknown = set(config) - {"min_fraction", "gamma", "every"}
        if unknown:
            raise ValueError(f"model.top_k has unknown keys {sorted(unknown)}: use min_fraction, gamma, every "
                             "(or model.top_k=null for plain training)")
        TopK(**config)  # the value checks of __init__
        return config

    def k(self, batch: int, steps: int | None = None) -> int:
        """``k`` for a batch of ``batch`` fakes after ``steps`` generator steps (default: the count so far)."""
        s = int(self.steps.item()) if steps is None else steps
        fraction = max(self.min_fraction, self.gamma ** (s // self.every))
        return max(1, min(batch, math.ceil(batch * fraction - 1e-9)))

    def forward(self, d_fake: Tensor) -> Tensor:
        """The ``k`` largest of ``d_fake`` ``(B,)`` (differentiable; the others drop out), and one
        step on the schedule. Call once per generator step, in training only."""
        k = self.k(d_fake.shape[0])
        self.steps += 1
        if k == d_fake.shape[0]:
            return d_fake
        return torch.topk(d_fake, k, sorted=False).values

    def extra_repr(self) -> str:
        return f"min_fraction={self.min_fraction}, gamma={self.gamma}, every={self.every}"
