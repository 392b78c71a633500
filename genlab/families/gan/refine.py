"""Discriminator-driven latent refinement of GAN samples (Tanaka 2019, "Discriminator optimal
transport"; the same idea as collaborative sampling, Liu et al. 2020).

A trained discriminator knows more about the data than the generator it trained: where it rates
a sample ``G(z0)`` as fake, a small move of ``z0`` usually finds a nearby sample it rates more
real. Refinement takes each sample's latent ``z0`` and runs ``steps`` Adam steps (learning rate
``lr``) on

    maximise_z   D(G(z)) - penalty * ||z - z0||_2

per sample (the samples do not interact), then generates from the refined ``z``. The penalty
keeps each sample near its own start, so the mix of the samples (the classes, on MNIST) stays
the generator's; DOT sets it to the Lipschitz constant of ``D o G`` (its ``1 / k_eff``). With
``penalty = 0`` this is plain gradient ascent on the discriminator. Unlike rejection sampling
(:mod:`genlab.families.gan.rejection`) it keeps every proposal, so it costs ``steps`` forward and
backward passes of both nets per sample instead of extra proposals. Samples only: training is
unchanged.

For a score ``s(z) = -||z - m||^2 / 2`` the optimum is closed-form: ``z*`` lies on the segment from
``z0`` to ``m``, at distance ``max(0, ||m - z0|| - penalty)`` from ``z0`` (tests/test_gan_refine.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import parse_node
from genlab.families.gan.generation import Generation


@dataclass(frozen=True)
class LatentRefinement:
    """``model.sampler.refine``: ``steps`` Adam steps of size ``lr`` on each latent, maximising the
    discriminator's score minus ``penalty`` times the distance from the start (module docstring)."""

    steps: int = 20
    lr: float = 0.05
    penalty: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"model.sampler.refine.steps must be a whole number >= 1 (Adam steps on each latent), "
                             f"got {self.steps!r}; model.sampler.refine=null turns refinement off")
        if not self.lr > 0:
            raise ValueError(f"model.sampler.refine.lr must be > 0 (the Adam step size in latent space), "
                             f"got {self.lr!r}")
        if not self.penalty >= 0:
            raise ValueError(f"model.sampler.refine.penalty must be >= 0 (the weight of ||z - z0||; 0: plain ascent), "
                             f"got {self.penalty!r}")

    @classmethod
    def parse(cls, config: Mapping[str, Any] | None) -> LatentRefinement | None:
        """``model.sampler.refine`` (a mapping or None) as a :class:`LatentRefinement`; a clear error
        for unknown keys or bad values."""
        return parse_node(cls, config, "sampler.refine", "{steps: 20, lr: 0.05, penalty: 1.0}")

    def proposals(self, n: int) -> int:
        """Latents in for ``n`` out: ``n`` (every latent is kept)."""
        return n

    def apply(self, gen: Generation, z: Tensor, code: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The sampler step: each latent refined up ``D(G([z, code]))``, its code held fixed."""
        return self(lambda zz: gen.score(zz, code), z), code

    def __call__(self, score: Callable[[Tensor], Tensor], z0: Tensor) -> Tensor:
        """The refined latents: ``score(z)`` is the discriminator's output ``(B,)`` for latents
        ``(B, d)``; returns ``(B, d)`` without a graph."""
        z0 = z0.detach()
        with torch.enable_grad(), torch.autocast(z0.device.type, enabled=False):
            z = z0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.steps):
                # the distance's gradient at z = z0 (0/0) is taken as 0 by torch: the first step follows D alone
                objective = -score(z).float().sum() + self.penalty * (z - z0).norm(dim=1).sum()
                # the gradient for z alone: the nets' own .grad (training state) stay untouched
                (z.grad,) = torch.autograd.grad(objective, z)
                opt.step()
        return z.detach()
