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

Class-conditional (``+conditional=class``), JEM-style (Grathwohl et al. 2020, "Your classifier is
secretly an energy based model"): the energy net outputs ``K`` logits ``f(y)``, and::

    E(y, c) = -f(y)[c],        E(y) = -logsumexp_c f(y)[c],        p(c | y) = softmax(f(y))

(the null label ``K`` of label dropout is the marginal energy ``E(y)``). Training is contrastive
divergence on ``E(y, c)`` with SGLD chains on ``E(., c)`` for the batch's labels, from a per-class
replay buffer (:class:`.sampler.ReplayBuffer`); sampling runs the chains of the requested labels.
On an enumerable grid each class is normalised on its own::

    log P(x | c) = -E(c(x), c) - log Z_c,      Z_c = sum_{x'} exp(-E(c(x'), c))

(exact), and :meth:`EBM.class_logits` is the generative classifier ``log p(x, c)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.scaling import BinScale
from genlab.families.base import Conditional, EnergyScorer, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.ebm.restore import EBMRestorer
from genlab.families.ebm.grid import PartitionCache, grid_cells
from genlab.families.ebm.sampler import Langevin, ReplayBuffer
from genlab.metrics.likelihood import LogLikelihood, NLLKind
from genlab.nets import input_kind_error

__all__ = ["EBM", "EBMObjective", "apply_spectral_norm", "grid_cells"]

UNCONDITIONAL = ("this model is unconditional (trained without +conditional=class) and takes no labels y=; call it "
                 "without y, or train with +conditional=class")


class EBMObjective:
    """Base class of EBM training objectives (``loss`` group): ``(ebm, nets, y_data, y_sample, labels)``;
    ``labels`` ``(B,)``: the classes of the data and of the negatives (conditional EBMs), else None."""

    def __call__(self, ebm: "EBM", nets: nn.ModuleDict, y_data: Tensor, y_sample: Tensor,
                 labels: Tensor | None = None) -> LossOutput:
        raise NotImplementedError


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Linear / Conv layer of ``net``, in place."""
    for m in list(net.modules()):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.utils.parametrizations.spectral_norm(m)
    return net


class EBM(Family, Likelihood, EnergyScorer, Inpainter, Conditional, EBMRestorer):
    """Energy-based model with SGLD sampling from a replay buffer (see module docstring).
    Class-conditional with a run condition, JEM-style: the energy net gives ``K`` logits ``f``,
    ``E(y, c) = -f(y)[c]``, SGLD on ``E(., c)`` from a per-class buffer, ``log p(x | c)`` exact per
    class on enumerable grids, :meth:`class_logits` the generative classifier; no label dropout by
    default, no guidance.

    Args:
        energy_net: backbone factory ``net(in_dim=shape, out_dim=1)`` (``_partial_``; ``out_dim=K``, the
            class logits, when conditional), e.g.
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

    @property
    def classes(self) -> int:
        """The energy net's outputs: ``K`` logits when conditional, else the one energy."""
        return self.condition.num_classes if self.condition is not None else 1

    def build(self, info: DataInfo) -> Nets:
        net = self.energy_factory(in_dim=info.shape, out_dim=self.classes)
        low, high = self.sampler.bounds or (-1.0, 1.0)
        return Nets(info, {
            "energy": apply_spectral_norm(net) if self.spectral_norm else net,
            "buffer": ReplayBuffer(self.buffer_size, info.shape, low, high, partitions=self.classes),
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
    def energy(self, nets: nn.ModuleDict, y: Tensor, labels: Tensor | None = None) -> Tensor:
        """``E_θ(y)``, shape ``(B,)`` for ``y`` ``(B, *shape)``; conditional: ``E(y, c) = -f(y)[c]`` for
        ``labels`` ``c`` ``(B,)`` (the null label, or None: the marginal ``-logsumexp_c f(y)[c]``)."""
        if self.condition is None:
            if labels is not None:
                raise ValueError(UNCONDITIONAL)
            return nets["energy"](y).reshape(len(y))
        logits = nets["energy"](y).reshape(len(y), self.classes)
        marginal = -torch.logsumexp(logits, dim=1)
        if labels is None:
            return marginal
        labels = labels.to(logits.device)
        picked = -logits.gather(1, labels.clamp(max=self.classes - 1)[:, None]).squeeze(1)
        return torch.where(labels < self.classes, picked, marginal)

    def label_energies(self, nets: nn.ModuleDict, y: Tensor) -> Tensor:
        """Every label's energy: ``(B,)`` unconditional; conditional ``(B, K + 1)``, the ``K`` classes'
        ``E(y, c)`` then the marginal ``E(y)`` (the null label's column)."""
        if self.condition is None:
            return self.energy(nets, y)
        logits = nets["energy"](y).reshape(len(y), self.classes)
        return -torch.cat([logits, torch.logsumexp(logits, dim=1, keepdim=True)], dim=1)

    def chains(self, nets: Nets, y: Tensor, steps: int, labels: Tensor | None, sampler: Langevin | None = None,
               free: Tensor | None = None) -> Tensor:
        """``steps`` SGLD steps (``sampler``, default ``model.sampler``) from ``y`` on ``E(., labels)``."""
        return (sampler or self.sampler)(lambda v: self.energy(nets, v, labels), y, steps, free=free)

    def negatives(self, nets: Nets, n: int, labels: Tensor | None = None) -> Tensor:
        """``n`` SGLD samples from the replay buffer (``train_steps`` steps), written back; detached.
        ``labels`` ``(n,)``: chains of those classes (per-class buffer, SGLD on ``E(., c)``)."""
        buffer: ReplayBuffer = nets["buffer"]
        idx, y = buffer.draw(n, self.reinit_prob, labels)
        y = self.chains(nets, y, self.sampler.train_steps, labels)
        buffer.update(idx, y)
        return y

    def condition_labels(self, n: int, y: Tensor | None, device: Any, default: bool = False) -> Tensor | None:
        """``(n,)`` labels of a conditional EBM: ``y`` checked, or (None) drawn from the prior (``default``:
        the null label, the marginal, instead); None for an unconditional EBM, which refuses a ``y``."""
        if y is None and default and self.condition is not None:  # the null label: E(x) = -logsumexp_y f(x)[y]
            y = torch.full((n,), self.condition.null_label, dtype=torch.long, device=device)
        return self.method_labels(n, y, device, sampling=True)

    # -- contract --------------------------------------------------------------------
    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        """Contrastive divergence (the ``loss`` group) on the batch, against as many SGLD negatives;
        conditional: on ``E(., y)`` for the batch's labels (label dropout applied), negatives of the same labels."""
        labels = self.training_labels(batch) if self.condition is not None else None
        y_data = self.embed(nets, batch["x"], dequantize=self.dequantize)
        negatives = self.negatives(nets, len(y_data), labels)
        return self.objective(self, nets, y_data, negatives, *(() if labels is None else (labels,)))

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
    def sample(self, nets: Nets, n: int, sampler: Langevin | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples: ``sample_steps`` of SGLD (``sampler``; None: ``model.sampler``) from the buffer
        (or noise), binned to uint8. Conditional: of ``p(x | y)`` for labels ``y`` ``(n,)`` (None: drawn
        from the prior; the null label: the marginal), from the chains of those classes."""
        sampler = sampler or self.sampler
        buffer: ReplayBuffer = nets["buffer"]
        labels = self.condition_labels(n, y, buffer.samples.device)
        start = buffer.draw(n, labels=labels)[1] if self.sample_init == "buffer" else \
            buffer.noise(n, device=buffer.samples.device)
        return self.to_data(nets, self.chains(nets, start, sampler.sample_steps, labels, sampler))

    # -- exact likelihood on enumerable grids ----------------------------------------
    @torch.no_grad()
    def grid_energies(self, nets: Nets) -> Tensor:
        """``E_θ(c(x'))`` for every cell ``x'`` of the grid, ``(L^D,)`` float64 (row-major order);
        conditional: ``(L^D, K + 1)``, every class's energy then the marginal's (:meth:`label_energies`)."""
        info, device = nets.info, next(nets["energy"].parameters()).device
        total = info.levels ** info.dims
        out = [self.label_energies(nets, self.embed(nets, grid_cells(s, min(s + self.grid_chunk, total), info.levels,
                                                                     info.shape).to(device))).double()
               for s in range(0, total, self.grid_chunk)]
        return torch.cat(out)

    def log_partition(self, nets: Nets) -> Tensor:
        """``log Z = logsumexp_{x'} -E_θ(c(x'))`` over the grid (conditional: ``(K + 1,)``, each class's
        ``log Z_c`` then the marginal's), recomputed only when the energy net's tensors changed (cached in
        ``nets["log_z"]``, :class:`.grid.PartitionCache`)."""
        cache: PartitionCache = nets["log_z"]
        return cache.get(nets["energy"], lambda: torch.logsumexp(-self.grid_energies(nets), 0))

    def grid_log_probs(self, nets: Nets) -> Tensor:
        """``log P_θ(x')`` for every grid cell, ``(L^D,)`` float64; sums (in prob) to 1. Conditional:
        ``(L^D, K + 1)``, ``log P(x' | c)`` per class then the marginal's, each column summing to 1."""
        return -self.grid_energies(nets) - self.log_partition(nets)

    @torch.no_grad()
    def log_likelihood(self, nets: Nets, batch: dict[str, Tensor], **kwargs: Any) -> LogLikelihood | None:
        """Exact ``log P_θ(x) = -E_θ(c(x)) - log Z`` where the grid is enumerable, else None. Conditional:
        ``log P(x | y) = -E(c(x), y) - log Z_y`` for the batch's labels ``y`` (module docstring)."""
        if self.likelihood_kind(nets.info) == "none":
            return None
        if self.condition is None:
            return LogLikelihood(-self.score_energy(nets, batch["x"]).double() - self.log_partition(nets), "exact")
        labels = self.labels(batch).to(batch["x"].device)
        log_z = self.log_partition(nets).to(labels.device)[labels]
        return LogLikelihood(-self.score_energy(nets, batch["x"], labels).double() - log_z, "exact")

    def class_scores(self, nets: Nets, x: Tensor) -> Tensor:
        """The generative classifier's scores (:class:`Conditional`): :meth:`class_logits`."""
        return self.class_logits(nets, x)

    def class_logits(self, nets: Nets, x: Tensor) -> Tensor:
        """The generative classifier: ``log p(x, c) = log p(x | c) + log p(c)`` ``(B, K)`` of discrete ``x``
        up to a per-example constant; ``softmax`` over ``c`` is ``p(c | x)``. On an enumerable grid exact,
        ``f(x)[c] - log Z_c + log p(c)``; elsewhere the ``Z_c`` are unknown and taken equal (JEM's
        ``p(c | x) = softmax(f(x))``, reweighted by the prior): ``f(x)[c] + log p(c)``."""
        if self.condition is None:
            raise ValueError("this model is unconditional (trained without +conditional=class) and has no class "
                             "logits; train with +conditional=class")
        logits = -self.label_energies(nets, self.embed(nets, x))[:, : self.classes].double()
        if self.likelihood_kind(nets.info) == "exact":
            logits = logits - self.log_partition(nets)[: self.classes].to(logits.device)
        return logits + self.condition.log_prior(logits.device)

    # -- EnergyScorer and Inpainter ----------------------------------------------------
    def score_energy(self, nets: Nets, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``E_θ(c(x))`` of discrete ``x`` at its bin centres, ``(B,)``; conditional: ``E(c(x), y)`` for
        labels ``y`` ``(B,)`` (None: the marginal energy ``-logsumexp_c f(c(x))[c]``)."""
        return self.energy(nets, self.embed(nets, x), self.condition_labels(len(x), y, x.device, default=True))

    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: Any, y: Tensor | None = None) -> Tensor:
        """SGLD (``model.sampler``'s step) for ``options.steps`` steps (None: ``model.sampler.sample_steps``)
        from uniform noise on the missing pixels, the known ones clamped to their bin centres;
        conditional: on ``E(., y)`` for labels ``y`` ``(B,)`` (None: the marginal energy)."""
        steps = self.sampler.sample_steps if options.steps is None else options.steps
        labels = self.condition_labels(len(x), y, x.device, default=True)
        y0 = torch.where(missing, nets["buffer"].noise(len(x), device=x.device), self.embed(nets, x))
        return self.to_data(nets, self.chains(nets, y0, steps, labels, free=missing)).to(x.dtype)
