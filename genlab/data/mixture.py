"""2-D mixtures of Gaussians on a discrete grid: mode coverage and exact likelihoods in 2-D.

Points are drawn from an equal-weight mixture of isotropic Gaussians (``ring``: ``num_modes``
centres on a circle of ``radius``; ``grid``: a ``sqrt(num_modes)``-square grid spanning
``[-radius, radius]``) in the box ``[-1, 1]^2``, clamped to the box and binned into ``levels``
bins per coordinate: bin ``v`` covers ``[-1 + 2v/L, -1 + 2(v+1)/L)``. The data are the bin
indices, ``(2,)`` per example, so every family sees discrete data like any image, and
``P(bin)`` — hence the entropy — is known exactly (products of normal CDF differences, the
edge bins absorbing the tails).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataError, DataInfo, InMemoryDataModule, TensorSplit


class Mixture2DDataModule(InMemoryDataModule):
    """Seeded 2-D Gaussian mixture, discretised (see module docstring).

    Args:
        mode: ``ring`` or ``grid``.
        num_modes: number of components (a square number for ``grid``).
        radius: ring radius / half-width of the grid, inside ``[-1, 1]``.
        std: standard deviation of each component.
        levels: bins per coordinate (at most 256: stored as uint8).
        n_train, n_val, n_test: split sizes.
        quality_stds: a sample is "high quality" within this many ``std`` of its nearest centre.
    """

    def __init__(
        self,
        mode: str = "ring",
        num_modes: int = 8,
        radius: float = 0.7,
        std: float = 0.03,
        levels: int = 256,
        n_train: int = 20000,
        n_val: int = 2000,
        n_test: int = 2000,
        quality_stds: float = 3.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("ring", "grid"):
            raise DataError(f"dataset.mode={mode!r} is unknown; valid: ring, grid")
        side = math.isqrt(num_modes)
        if mode == "grid" and side * side != num_modes:
            raise DataError(f"dataset.num_modes={num_modes} must be a square number for mode=grid (e.g. 25)")
        if not 2 <= levels <= 256:
            raise DataError(f"dataset.levels={levels} must be between 2 and 256 (points are stored as uint8)")
        self.mode, self.num_modes, self.radius, self.std, self.levels = mode, num_modes, radius, std, levels
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.quality_stds = quality_stds
        self.centers = self._centers().double()

    def _centers(self) -> Tensor:
        if self.mode == "ring":
            a = 2 * math.pi * torch.arange(self.num_modes) / self.num_modes
            return self.radius * torch.stack([torch.cos(a), torch.sin(a)], -1)
        side = math.isqrt(self.num_modes)
        g = torch.linspace(-self.radius, self.radius, side)
        return torch.cartesian_prod(g, g)

    @property
    def info(self) -> DataInfo:
        return DataInfo(name=f"mixture2d_{self.mode}{self.num_modes}", kind="points", shape=(2,), levels=self.levels,
                        entropy_nats=self.entropy_nats(), num_classes=self.num_modes,
                        cond_entropy_nats=self.cond_entropy_nats())

    # -- exact probabilities -------------------------------------------------------------
    def bin_probs(self) -> Tensor:
        """``P(bin_x = i, bin_y = j)`` as an ``(L, L)`` float64 tensor (sums to 1)."""
        return self.component_bin_probs().mean(0)

    def component_bin_probs(self) -> Tensor:
        """``P(bin_x = i, bin_y = j | mode k)`` as a ``(K, L, L)`` float64 tensor (the label is the mode)."""
        edges = torch.linspace(-1, 1, self.levels + 1, dtype=torch.float64)
        edges[0], edges[-1] = -math.inf, math.inf  # the edge bins take the clamped tails
        normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
        cdf = normal.cdf((edges[None, :, None] - self.centers[:, None, :]) / self.std)  # (K, L+1, 2)
        mass = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0)  # (K, L, 2)
        return torch.einsum("ki,kj->kij", mass[..., 0], mass[..., 1])

    def entropy_nats(self) -> float:
        """Exact entropy of one discretised point in nats."""
        p = self.bin_probs()
        return float(-(p * p.clamp_min(1e-300).log()).sum())

    def cond_entropy_nats(self) -> float:
        """Exact ``H(X | Y)`` of a discretised point given its mode, in nats."""
        p = self.component_bin_probs()
        return float(-(p * p.clamp_min(1e-300).log()).sum((1, 2)).mean())

    # -- data ----------------------------------------------------------------------------
    def to_unit(self, x: Tensor) -> Tensor:
        """Bin indices -> bin centres in ``[-1, 1]^2``."""
        return -1 + (2 * x.double() + 1) / self.levels

    def draw(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` points (bins, uint8 ``(n, 2)``) and their modes ``(n,)`` (the labels)."""
        k = torch.randint(0, self.num_modes, (n,), generator=g)
        pts = self.centers[k] + self.std * torch.randn(n, 2, generator=g, dtype=torch.float64)
        bins = torch.floor((pts.clamp(-1, 1) + 1) * self.levels / 2).clamp(0, self.levels - 1)
        return bins.to(torch.uint8), k

    def load_splits(self) -> dict[str, TensorSplit]:
        return {split: TensorSplit(*self.draw(n, torch.Generator().manual_seed(self.seed * 31 + 7 + i)))
                for i, (split, n) in enumerate(self.sizes.items())}

    def sample_metrics(self, x: Tensor) -> dict[str, float]:
        """Mode coverage: ``modes_covered`` (components that received at least one high-quality
        sample and at least a fifth of their fair share), ``high_quality`` (share of samples
        within ``quality_stds`` std of their nearest centre)."""
        return mode_coverage(self.to_unit(x.reshape(-1, 2)), self.centers, self.std, self.quality_stds)


def mode_coverage(points: Tensor, centers: Tensor, std: float, quality_stds: float = 3.0) -> dict[str, float]:
    """Share of modes covered and of high-quality samples for points ``(N, 2)`` against ``centers`` ``(K, 2)``."""
    d = torch.cdist(points.double(), centers.double())  # (N, K)
    dist, nearest = d.min(dim=1)
    good = dist <= quality_stds * std
    counts = torch.bincount(nearest[good], minlength=len(centers))
    fair = len(points) / len(centers)
    covered = (counts >= max(1.0, 0.2 * fair)).sum().item()
    return {"modes_covered": float(covered), "modes_total": float(len(centers)),
            "mode_coverage": covered / len(centers), "high_quality": good.double().mean().item()}
