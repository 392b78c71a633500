"""The generator side of a GAN as the sampler steps see it: latents in, model-space samples out.

A :class:`Generation` bundles one generator network ``G`` (the EMA, the raw one, or a copy with
batch statistics: :class:`genlab.families.gan.sampler.Propose` chooses), the discriminator head
``D`` and the latent layout: ``z ~ N(0, I_d)`` and, with ``K`` InfoGAN codes, a uniform code
``c in {0..K-1}`` fed one-hot after ``z``. Samples are ``y = tanh(G([z, onehot(c)])) in (-1, 1)``,
shape ``(B, *shape)``. The steps of :mod:`genlab.families.gan.sampler` move or select ``z`` and
keep each row's code. A class-conditional GAN samples one class at a time: ``label`` is the class
of every sample of the generation (``G([z, onehot(c)], y)``, and ``discriminate`` scores with the
same ``y``), so that the steps, which select and reorder rows, keep the labels right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Generation:
    """``G``, ``D`` and the latent layout of one GAN (module docstring)."""

    generator: nn.Module
    discriminate: Callable[[Tensor], Tensor]
    latent_dim: int
    codes: int
    shape: tuple[int, ...]
    device: torch.device
    label: int | None = None  # the class of every sample (conditional GANs); None: unconditional

    def labels(self, n: int) -> Tensor | None:
        """``(n,)`` copies of :attr:`label` (None for an unconditional generation)."""
        return None if self.label is None else torch.full((n,), self.label, dtype=torch.long, device=self.device)

    def latents(self, n: int, z: Tensor | None = None,
                truncation: float | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(z, onehot, c)``: ``z`` ``(n, d)`` (the given one, or ``N(0, I)``, truncated to
        ``[-truncation, truncation]`` when set: Brock et al. 2019), the one-hot codes ``(n, K)``
        (``(n, 0)`` without codes) and the code indices ``(n,)`` (None without codes)."""
        if z is None:
            z = torch.randn(n, self.latent_dim, device=self.device)
            if truncation:
                nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation)
        if not self.codes:
            return z, z.new_zeros(z.shape[0], 0), None
        c = torch.randint(0, self.codes, (z.shape[0],), device=self.device)
        return z, F.one_hot(c, self.codes).to(z.dtype), c

    def fake(self, z: Tensor, code: Tensor, y: Tensor | None = None) -> Tensor:
        """``tanh(G([z, code][, y]))`` ``(B, *shape)``; ``code`` ``(B, K)`` one-hot (``(B, 0)`` without
        codes); ``y`` ``(B,)`` labels (None: :attr:`label` for every row, or none when unconditional)."""
        inp = torch.cat([z, code], dim=1) if code.shape[1] else z
        y = self.labels(z.shape[0]) if y is None else y
        out = self.generator(inp) if y is None else self.generator(inp, y)
        return torch.tanh(out).view(z.shape[0], *self.shape)

    def score(self, z: Tensor, code: Tensor) -> Tensor:
        """``D(G([z, code]))`` ``(B,)``: what latent refinement climbs."""
        return self.discriminate(self.fake(z, code))
