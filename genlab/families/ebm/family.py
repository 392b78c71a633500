"""Energy-based models (Du & Mordatch 2019, "Implicit Generation and Generalization in
Energy-Based Models"): an energy network ``E_θ(y)`` on the continuous embedding of the data,
trained by contrastive divergence against SGLD samples from a persistent replay buffer.

Data mapping (:class:`genlab.data.scaling.BinScale` on ``[-1, 1]``). Discrete ``x in {0..L-1}^D`` is
embedded at its bin centre::

    c(x) = -1 + (2x + 1) / L          (bin width w = 2/L)

plus, in training (``dequantize``), uniform noise over the bin, ``y = c(x) + w (u - 1/2)``.
SGLD runs in the continuous box ``[-1, 1]^D``; samples go back to bins by
``x = clamp(floor((y + 1) L / 2), 0, L - 1)`` (uint8).

Model density on the DISCRETE data (where the grid of all ``L^D`` cells is enumerable,
``L^D <= max_grid``, e.g. 2-D points on 256 x 256 bins)::

    P_θ(x) = exp(-E_θ(c(x))) / Σ_{x'} exp(-E_θ(c(x')))

a normalised distribution over the grid: its NLL is exact (kind ``exact``; ``log Z`` is cached on
the nets, :class:`.grid.PartitionCache`). For larger data (images) the partition function is
intractable: :meth:`EBM.likelihood_kind` is ``none``, ``log_likelihood`` returns None and no number is
made up; anomaly detection then scores by the energy (:meth:`EBM.score_energy`).

Inpainting: Langevin dynamics (the model's SGLD sampler) on the missing pixels with the known ones
clamped to their bin centres, from uniform noise: a sampler of ``exp(-E(y))`` restricted to the
observed values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.scaling import BinScale
from genlab.families.base import EnergyScorer, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.ebm.grid import PartitionCache, grid_cells
from genlab.families.ebm.sampler import Langevin, ReplayBuffer
from genlab.metrics.likelihood import LogLikelihood, NLLKind
from genlab.nets import input_kind_error

__all__ = ["EBM", "EBMObjective", "apply_spectral_norm", "grid_cells"]


class EBMObjective:
    """Base class of EBM training objectives (``loss`` group): ``(ebm, nets, y_data, y_sample)``."""

    def __call__(self, ebm: "EBM", nets: nn.ModuleDict, y_data: Tensor, y_sample: Tensor) -> LossOutput:
        raise NotImplementedError


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Linear / Conv layer of ``net``, in place."""
    for m in list(net.modules()):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.utils.parametrizations.spectral_norm(m)
    return net


class EBM(Family, Likelihood, EnergyScorer, Inpainter):
    """Energy-based model with SGLD sampling from a replay buffer (see module docstring).

    Args:
        energy_net: backbone factory ``net(in_dim=shape, out_dim=1)`` (``_partial_``), e.g.
            :class:`genlab.nets.conv.ConvEncoder` (images) or :class:`genlab.nets.mlp.MLP`.
        sampler: the SGLD sampler (step size, noise, train / sample steps); ``sample(..., sampler=)``
            overrides it per call.
        buffer_size: replay-buffer capacity (persistent chains; stored in checkpoints).
        reinit_prob: share of buffer draws re-initialised from uniform noise (Du & Mordatch: 5%).
        sample_init: start of ``sample()``'s chains: ``buffer`` (persistent states) or ``noise``.
        spectral_norm: spectral normalisation of every layer of the energy net.
        dequantize: add uniform noise within the bin to training data.
        max_energy: training stops (``diverged``) once any ``|E|`` exceeds it, or it is NaN.
        max_grid: exact NLL where the grid has at most this many cells (``L^D``).
        grid_chunk: cells per energy evaluation when enumerating the grid.
        objective: training objective (``contrastive_divergence``).
    """

    name = "ebm"
    compare_rank = 70
    objective_type = EBMObjective
    nll_kind = "exact"  # where it has one: see likelihood_kind
    inpaint_method = "Langevin with the known pixels clamped"

    def __init__(
        self,
        energy_net: Callable[..., nn.Module],
        sampler: Langevin,
        buffer_size: int = 10000,
        reinit_prob: float = 0.05,
        sample_init: Literal["buffer", "noise"] = "buffer",
        spectral_norm: bool = False,
        dequantize: bool = True,
        max_energy: float = 1.0e4,
        max_grid: int = 2**20,
        grid_chunk: int = 65536,
        objective: EBMObjective | None = None,
    ) -> None:
        super().__init__(objective)
        if sample_init not in ("buffer", "noise"):
            raise ValueError(f"model.sample_init={sample_init!r} is unknown; valid: buffer, noise")
        self.energy_factory, self.sampler = energy_net, sampler
        self.buffer_size, self.reinit_prob, self.sample_init = buffer_size, reinit_prob, sample_init
        self.spectral_norm, self.dequantize = spectral_norm, dequantize
        self.max_energy, self.max_grid, self.grid_chunk = max_energy, max_grid, grid_chunk

    # -- setup -----------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind == "text":
            return ("an EBM samples by Langevin dynamics in a continuous embedding of ordered levels; "
                    "text ids are unordered categories")
        return input_kind_error(self.energy_factory, info.kind, "energy")

    def enumerable(self, info: DataInfo) -> bool:
        """Whether the grid of all ``L^D`` cells is small enough for the exact partition function."""
        return info.dims * math.log(info.levels) <= math.log(self.max_grid)

    def likelihood_kind(self, info: DataInfo) -> NLLKind:
        """The kind of :meth:`log_likelihood` on ``info``'s data: ``exact`` where the grid is
        enumerable, else ``none`` (it returns None)."""
        return "exact" if self.enumerable(info) else "none"

    def build(self, info: DataInfo) -> Nets:
        net = self.energy_factory(in_dim=info.shape, out_dim=1)
        low, high = self.sampler.bounds or (-1.0, 1.0)
        return Nets(info, {
            "energy": apply_spectral_norm(net) if self.spectral_norm else net,
            "buffer": ReplayBuffer(self.buffer_size, info.shape, low, high),
            "log_z": PartitionCache(),
        })

    # -- data mapping (bins of width 2/L in [-1, 1]) ----------------------------------
    @staticmethod
    def embed(nets: Nets, x: Tensor, dequantize: bool = False) -> Tensor:
        """Discrete ``x`` -> bin centres ``c(x) = -1 + (2x+1)/L`` (+ uniform in-bin noise)."""
        bins = BinScale(nets.info.levels)
        y = bins.centres(x)
        return y + (torch.rand_like(y) - 0.5) * bins.width if dequantize else y

    @staticmethod
    def to_data(nets: Nets, y: Tensor) -> Tensor:
        """Continuous ``y in [-1, 1]`` -> the bin it falls in, uint8 ``(B, *shape)``."""
        return BinScale(nets.info.levels).to_data(y)

    # -- energy and sampling ---------------------------------------------------------
    @staticmethod
    def energy(nets: nn.ModuleDict, y: Tensor) -> Tensor:
        """``E_θ(y)``, shape ``(B,)`` for ``y`` ``(B, *shape)``."""
        return nets["energy"](y).reshape(len(y))

    def negatives(self, nets: Nets, n: int) -> Tensor:
        """``n`` SGLD samples from the replay buffer (``train_steps`` steps), written back; detached."""
        buffer: ReplayBuffer = nets["buffer"]
        idx, y = buffer.draw(n, self.reinit_prob)
        y = self.sampler(lambda v: self.energy(nets, v), y, self.sampler.train_steps)
        buffer.update(idx, y)
        return y

    # -- contract --------------------------------------------------------------------
    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        y_data = self.embed(nets, batch["x"], dequantize=self.dequantize)
        return self.objective(self, nets, y_data, self.negatives(nets, len(y_data)))

    def diverged(self, out: LossOutput) -> str | None:
        """Energies beyond ``max_energy`` in magnitude, or NaN (logs ``e_data``, ``e_sample``, ``e_abs_max``)."""
        terms = {k: float(out.logs[k]) for k in ("e_data", "e_sample", "e_abs_max") if k in out.logs}
        bad = {k: v for k, v in terms.items() if not math.isfinite(v) or abs(v) > self.max_energy}
        if not bad:
            return None
        shown = ", ".join(f"{k}={v:.4g}" for k, v in bad.items())
        return (f"EBM energies exploded ({shown}; limit model.max_energy={self.max_energy:g}): the energy net "
                f"diverged from its SGLD samples. Fix: lower optimizer.lr, raise the L2 energy penalty loss.alpha, "
                f"or set model.spectral_norm=true")

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: Langevin | None = None) -> Tensor:
        """``n`` samples: ``sample_steps`` of SGLD (``sampler``; None: ``model.sampler``) from the buffer
        (or noise), binned to uint8."""
        sampler = sampler or self.sampler
        buffer: ReplayBuffer = nets["buffer"]
        y = buffer.draw(n)[1] if self.sample_init == "buffer" else buffer.noise(n, device=buffer.samples.device)
        y = sampler(lambda v: self.energy(nets, v), y, sampler.sample_steps)
        return self.to_data(nets, y)

    # -- exact likelihood on enumerable grids ----------------------------------------
    @torch.no_grad()
    def grid_energies(self, nets: Nets) -> Tensor:
        """``E_θ(c(x'))`` for every cell ``x'`` of the grid, ``(L^D,)`` float64 (row-major order)."""
        info, device = nets.info, next(nets["energy"].parameters()).device
        total = info.levels ** info.dims
        out = [self.energy(nets, self.embed(nets, grid_cells(s, min(s + self.grid_chunk, total), info.levels,
                                                             info.shape).to(device))).double()
               for s in range(0, total, self.grid_chunk)]
        return torch.cat(out)

    def log_partition(self, nets: Nets) -> Tensor:
        """``log Z = logsumexp_{x'} -E_θ(c(x'))`` over the grid, recomputed only when the energy
        net's tensors changed (cached in ``nets["log_z"]``, :class:`.grid.PartitionCache`)."""
        cache: PartitionCache = nets["log_z"]
        return cache.get(nets["energy"], lambda: torch.logsumexp(-self.grid_energies(nets), 0))

    def grid_log_probs(self, nets: Nets) -> Tensor:
        """``log P_θ(x')`` for every grid cell, ``(L^D,)`` float64; sums (in prob) to 1."""
        return -self.grid_energies(nets) - self.log_partition(nets)

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], **kwargs: Any) -> LogLikelihood | None:
        """Exact ``log P_θ(x) = -E_θ(c(x)) - log Z`` where the grid is enumerable, else None."""
        if self.likelihood_kind(nets.info) == "none":
            return None
        log_px = -self.score_energy(nets, batch["x"]).double() - self.log_partition(nets)
        return LogLikelihood(log_px, "exact")

    # -- EnergyScorer and Inpainter ----------------------------------------------------
    def score_energy(self, nets: Nets, x: Tensor) -> Tensor:
        """``E_θ(c(x))`` of discrete ``x`` at its bin centres, ``(B,)``."""
        return self.energy(nets, self.embed(nets, x))

    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: Any) -> Tensor:
        """SGLD (``model.sampler``'s step) for ``options.steps`` steps (None: ``model.sampler.sample_steps``)
        from uniform noise on the missing pixels, the known ones clamped to their bin centres."""
        steps = self.sampler.sample_steps if options.steps is None else options.steps
        y = torch.where(missing, nets["buffer"].noise(len(x), device=x.device), self.embed(nets, x))
        y = self.sampler(lambda v: self.energy(nets, v), y, steps, free=missing)
        return self.to_data(nets, y).to(x.dtype)
