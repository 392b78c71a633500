"""Stochastic-gradient Langevin dynamics and the persistent replay buffer of an EBM.

Langevin dynamics (Welling & Teh 2011; Du & Mordatch 2019, Eq. 2) samples ``p(x) ∝ exp(-E(x))``
by iterating, with step ``ε``::

    x_{k+1} = x_k - (ε/2) ∇_x E(x_k) + sqrt(ε) ξ_k,        ξ_k ~ N(0, I)

:class:`Langevin` uses the decoupled parametrisation of Du & Mordatch (2019, Sec. 3.1)::

    x_{k+1} = clamp(x_k - step_size * clip(∇_x E(x_k)) + noise_std * ξ_k, low, high)

which is the proper Langevin step above for ``step_size = ε/2`` and ``noise_std = sqrt(ε)``:
``noise_std = None`` selects exactly that (``noise_std = sqrt(2 step_size)``), so the chain
targets ``exp(-E)`` itself (needed where the EBM's exact likelihood is reported). A smaller
``noise_std`` samples a colder ``exp(-E/T)``, as image EBMs do in practice.

:class:`ReplayBuffer` keeps persistent chains (Du & Mordatch 2019, Sec. 3.1; the fixed-size
variant of Grathwohl et al. 2020, "JEM", Alg. 1): every training step draws ``B`` states,
re-initialises a share ``reinit_prob`` of them from uniform noise, runs SGLD and writes them
back. It is an ``nn.Module`` with a registered buffer, so it lives in the checkpoint and a
resumed run continues the same chains. A class-conditional EBM's buffer is per class (as JEM's
class-conditional sampler, Grathwohl et al. 2020, App. H): ``partitions = K`` equal parts of the
slots, part ``y`` holding the chains of ``p(x | y)``; a draw for a label takes slots of its part,
a draw for the null label (the marginal ``p(x)``) or without labels takes any slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

EnergyFn = Callable[[Tensor], Tensor]


class Langevin:
    """SGLD sampler (see module docstring).

    Args:
        step_size: coefficient of the energy gradient (``ε/2`` of the proper Langevin step).
        noise_std: std of the Gaussian noise per step; None: ``sqrt(2 step_size)`` (targets exp(-E)).
        train_steps: SGLD steps per training step (from the replay buffer).
        sample_steps: SGLD steps when drawing samples for a user (``Family.sample``).
        grad_clip: clamp each gradient entry to ``[-grad_clip, grad_clip]`` (None: no clipping).
        bounds: box the chains stay in, ``(low, high)`` (the data's continuous range); None: unbounded.
    """

    def __init__(
        self,
        step_size: float = 1.0,
        noise_std: float | None = 0.01,
        train_steps: int = 20,
        sample_steps: int = 100,
        grad_clip: float | None = None,
        bounds: Sequence[float] | None = (-1.0, 1.0),
    ) -> None:
        if step_size <= 0 or train_steps < 0 or sample_steps < 0:
            raise ValueError(f"Langevin needs step_size > 0 and steps >= 0, got {step_size}, {train_steps}, {sample_steps}")
        self.step_size = step_size
        self.noise_std = math.sqrt(2 * step_size) if noise_std is None else noise_std
        self.train_steps, self.sample_steps = train_steps, sample_steps
        self.grad_clip = grad_clip
        self.bounds = tuple(bounds) if bounds is not None else None

    def step(self, x: Tensor, grad: Tensor) -> Tensor:
        """One update ``x - step_size * clip(grad) + noise_std * ξ``, clamped to ``bounds``."""
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        x = x - self.step_size * grad + self.noise_std * torch.randn_like(x)
        return x.clamp(*self.bounds) if self.bounds is not None else x

    def __call__(self, energy: EnergyFn, x: Tensor, steps: int, free: Tensor | None = None) -> Tensor:
        """Run ``steps`` SGLD steps from ``x`` ``(B, *shape)``; returns detached states.

        ``free`` (bool, like ``x``): only these entries move, the others stay at their values in
        ``x`` after every step (a sampler of ``exp(-E)`` conditioned on them: inpainting); None: all.
        Works under ``no_grad`` / ``inference_mode`` (validation hooks): gradients w.r.t. the
        states are switched on locally; the energy network's weights get no ``.grad``.
        """
        with torch.inference_mode(False), torch.enable_grad(), parametrize.cached():
            x = x.detach().clone()
            fixed = None if free is None else x.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(energy(x).sum(), x)
                x = self.step(x.detach(), grad)
                if fixed is not None:
                    x = torch.where(free, x, fixed)
        return x.detach()


class ReplayBuffer(nn.Module):
    """Fixed-size store of persistent SGLD states, ``samples``: ``(capacity, *shape)``.

    Initialised with uniform noise in ``[low, high]``; a registered (persistent) buffer, so it
    is saved in and restored from checkpoints with the networks. ``partitions = K > 1``: per-class
    chains, slot ``i`` of class ``i // (capacity // K)`` (module docstring).
    """

    def __init__(self, capacity: int, shape: Sequence[int], low: float = -1.0, high: float = 1.0,
                 partitions: int = 1) -> None:
        super().__init__()
        if capacity < max(1, partitions):
            raise ValueError(f"the replay buffer needs capacity >= 1 and at least one slot per class "
                             f"({partitions}), got {capacity} (model.buffer_size)")
        self.low, self.high, self.partitions = low, high, partitions
        self.register_buffer("samples", self.noise(capacity, tuple(shape)))

    def noise(self, n: int, shape: tuple[int, ...] | None = None, device: torch.device | None = None) -> Tensor:
        """``n`` uniform draws in ``[low, high]``, shape ``(n, *shape)``."""
        shape = tuple(self.samples.shape[1:]) if shape is None else shape
        return torch.rand(n, *shape, device=device) * (self.high - self.low) + self.low

    def draw(self, n: int, reinit_prob: float = 0.0, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` random slots and their states; a share ``reinit_prob`` replaced by fresh noise.
        ``labels`` ``(n,)`` (a per-class buffer): each slot from its label's part (any slot for a
        label ``>= partitions``, the null label).

        Returns:
            ``(idx, x)``: slot indices ``(n,)`` and states ``(n, *shape)`` (a copy).
        """
        if labels is None or self.partitions == 1:
            idx = torch.randint(0, len(self.samples), (n,), device=self.samples.device)
        else:
            idx = self.class_slots(labels.to(self.samples.device))
        x = self.samples[idx].clone()
        fresh = torch.rand(n, device=x.device) < reinit_prob
        x[fresh] = self.noise(int(fresh.sum()), device=x.device)
        return idx, x

    def class_slots(self, labels: Tensor) -> Tensor:
        """A random slot of each label's part ``(n,)`` (any slot for the null label)."""
        size = len(self.samples)
        per = size // self.partitions
        u = torch.rand(labels.shape, dtype=torch.float64, device=labels.device)
        within = labels * per + (u * per).long().clamp(max=per - 1)
        return torch.where(labels < self.partitions, within, (u * size).long().clamp(max=size - 1))

    @torch.no_grad()
    def update(self, idx: Tensor, x: Tensor) -> None:
        """Write states ``x`` back to slots ``idx``."""
        self.samples[idx] = x.detach().to(self.samples.dtype)
