"""Jacobian-based truncation of GAN samples (Tanielian et al. 2020, "Learning disconnected
manifolds: a no GAN's land").

A generator maps one connected latent (a Gaussian) onto data whose classes are disconnected
(the ten digits), so some latents must land *between* classes: the blends of two digits that a
classifier cannot name. There the generator changes fast, from one class to the other, so its
Jacobian ``J(z) = dG/dz`` is large. Truncation draws ``ceil(n / keep)`` proposals and keeps the
``n`` with the smallest

    score(z) = ||J(z)||_F^2 / ink(G(z))^ink_power,

in their drawing order. ``||J||_F^2`` is estimated per sample with ``probes`` random probes ``v``
in image space (Hutchinson): ``E_v ||J^T v||^2 = tr(J J^T) = ||J||_F^2``, one backward pass of
the generator each. The probes are Rademacher (entries +-1): their estimate's variance,
``2 sum_{i != j} (J J^T)_ij^2``, is below the Gaussian probes' and zero where ``J J^T`` is diagonal.
``ink`` is the image's total intensity ``sum((x + 1) / 2)`` (``x`` in ``[-1, 1]``): ``||J||_F^2``
grows with the number of pixels that can change, so without this normalisation thin digits
("1") win and the class mix drifts (docs/lab/benchmarks-history.md); ``ink_power = 0`` is the paper's score.
Samples only: training is unchanged; the discriminator is not used. Cost: ``probes`` backward
passes of the generator per proposal, and ``1 / keep`` proposals per sample.

For a generator ``G(z) = tanh(a z)`` of a 1-D latent, ``|J| = a sech^2(a z)`` decreases in
``|z|``, so truncation keeps exactly the proposals with the largest ``|z|``
(tests/test_gan_jacobian.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import parse_node
from genlab.families.gan.generation import Generation


@dataclass(frozen=True)
class JacobianTruncation:
    """``model.sampler.jacobian_truncation``: keep the share ``keep`` of proposals with the smallest
    (ink-normalised) generator Jacobian norm (module docstring)."""

    keep: float = 0.8
    probes: int = 4
    ink_power: float = 0.0
    batch: int = 500

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"model.sampler.jacobian_truncation.keep must be in (0, 1] (the share of proposals kept), "
                             f"got {self.keep!r}; model.sampler.jacobian_truncation=null turns it off")
        for key in ("probes", "batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.sampler.jacobian_truncation.{key} must be a whole number >= 1, got {value!r}")
        if not self.ink_power >= 0:
            raise ValueError(f"model.sampler.jacobian_truncation.ink_power must be >= 0 (0: the plain Jacobian norm), "
                             f"got {self.ink_power!r}")

    @classmethod
    def parse(cls, config: Mapping[str, Any] | None) -> JacobianTruncation | None:
        """``model.sampler.jacobian_truncation`` (a mapping or None); a clear error for unknown keys or bad
        values."""
        return parse_node(cls, config, "sampler.jacobian_truncation", "{keep: 0.8, ink_power: 2}")

    def apply(self, gen: Generation, z: Tensor, code: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The sampler step: of the :meth:`proposals` latents ``z`` (with their codes), the ``n`` with
        the smallest scores, in drawing order."""
        keep = self.select(self.scores(gen.fake, z, code), n)
        return z[keep], code[keep]

    def proposals(self, n: int) -> int:
        """How many latents to draw for ``n`` samples: ``ceil(n / keep)``."""
        return math.ceil(n / self.keep - 1e-9)

    def scores(self, fake: Callable[..., Tensor], z: Tensor, cond: Tensor | None = None, seed: int = 0) -> Tensor:
        """``(B,)`` scores of latents ``z`` ``(B, d)``; ``fake(z)`` (or ``fake(z, cond)``, with the
        rows of ``cond`` that go with ``z``'s: codes held fixed) is the generator's output in
        ``[-1, 1]`` (per sample: batch norm in eval mode). The probes are seeded (``seed``), so the
        selection does not consume the caller's random stream."""
        gen = torch.Generator(device=z.device).manual_seed(seed)
        out = []
        chunks = z.detach().split(self.batch)
        extra = [(c,) for c in cond.split(self.batch)] if cond is not None else [()] * len(chunks)
        with torch.enable_grad(), torch.autocast(z.device.type, enabled=False):
            for chunk, args in zip(chunks, extra, strict=True):
                zz = chunk.clone().requires_grad_(True)
                y = fake(zz, *args).float()
                sq = torch.zeros(len(zz), device=z.device, dtype=torch.float64)
                for i in range(self.probes):
                    v = torch.randint(0, 2, y.shape, generator=gen, device=z.device).to(y.dtype) * 2 - 1
                    (g,) = torch.autograd.grad(y, zz, v, retain_graph=i + 1 < self.probes)
                    sq += g.double().pow(2).flatten(1).sum(1)
                score = sq / self.probes
                if self.ink_power:
                    ink = ((y.detach().double() + 1) / 2).flatten(1).sum(1).clamp_min(1e-6)
                    score = score / ink**self.ink_power
                out.append(score)
        return torch.cat(out)

    def select(self, scores: Tensor, n: int) -> Tensor:
        """Indices of the ``n`` smallest ``scores``, in increasing index order (the drawing order)."""
        if n > len(scores):
            raise ValueError(f"Jacobian truncation: {n} samples asked from {len(scores)} proposals")
        return scores.argsort(stable=True)[:n].sort().values
