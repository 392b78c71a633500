"""Samplers of the reverse process (stable names ``ddpm``, ``ddim``), selected in config, and the
one reverse-chain loop (:func:`run_chain`) that they, denoising, RePaint and DDIM decoding share.

Both samplers run on the process respaced to ``steps`` steps (:meth:`GaussianDiffusion.respace`;
all ``T`` by default for ``ddpm``) from ``x_{T-1} ~ N(0, I)`` down to the data, and return ``x0``
in the scaled space ``[-1, 1]`` (the family maps it to discrete data). Every step draws one
``z ~ N(0, I)`` (also where it is multiplied by 0), so that samplers that define the same chain
produce the same samples from the same seed: DDIM with ``eta = 1`` on all ``T`` steps *is*
ancestral DDPM with the posterior variance ``beta~_t``. With a guide snapshot and a weight other
than 1 (``model.guidance.weight``, or the sampler's own ``guidance``, e.g.
``model.sampler.guidance=3``) both use the autoguided prediction
(:mod:`genlab.families.diffusion.guidance`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from genlab.families.diffusion.model import DiffusionModel

# one reverse step x_t -> x_{t-1} on model.process with standard-normal noise z: (model, x_t, t, z) -> x_{t-1}
Step = Callable[[DiffusionModel, Tensor, Tensor, Tensor], Tensor]
# after a reverse step at t: (x_{t-1}, t) -> x_{t-1} (e.g. RePaint's known-region replacement)
Hook = Callable[[Tensor, Tensor], Tensor]


def descent(start: int) -> list[int]:
    """The states of a plain reverse chain from step ``start`` down to the data: ``start, ..., 0, -1``."""
    return list(range(start, -2, -1))


def run_chain(model: DiffusionModel, x: Tensor, step: Step, states: Sequence[int] | None = None,
              hook: Hook | None = None) -> Tensor:
    """Walk ``model.process`` through ``states`` (default :func:`descent` from ``T - 1``: ``x`` is
    ``x_{T-1}``) and return the last state (``-1``: the data).

    A move down from ``k`` is ``step`` at ``t = k`` (one ``z ~ N(0, I)`` drawn before it), then
    ``hook(x_{k-1}, t)``; a move up from ``k`` is one forward step ``q(x_{k+1} | x_k)``
    (:meth:`GaussianDiffusion.q_step`). A truncated chain (denoising) is a model on a shorter
    process; RePaint's schedule (:func:`genlab.families.diffusion.repaint.repaint_schedule`) moves
    both ways.
    """
    states = descent(model.process.T - 1) if states is None else states
    for cur, nxt in zip(states[:-1], states[1:]):
        t = torch.full((x.shape[0],), cur, device=x.device, dtype=torch.long)
        if nxt < cur:
            x = step(model, x, t, torch.randn_like(x))
            x = hook(x, t) if hook is not None else x
        else:
            x = model.process.q_step(x, t + 1, torch.randn_like(x))
    return x


def check_weight(weight: float | None) -> float | None:
    """A sampler's autoguidance weight: None (the model's) or a number >= 1."""
    if weight is not None and not weight >= 1.0:
        raise ValueError(f"sampler guidance={weight}: the guidance weight must be >= 1 (1 = unguided), or null "
                         "for model.guidance.weight")
    return None if weight is None else float(weight)


class Sampler:
    """Base class: ``sampler(model, n, x_T=None) -> x0`` in ``[-1, 1]``, ``(n, *shape)``.

    Args:
        steps: reverse steps (evenly spaced over the ``T`` training steps); None: all ``T``.
        guidance: autoguidance weight for these samples (>= 1; 1 = unguided); None: ``model.guidance.weight``.
    """

    name: str = "base"

    def __init__(self, steps: int | None = None, guidance: float | None = None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"sampler steps must be >= 1 (or null for all T), got {steps}")
        self.steps = steps
        self.guidance = check_weight(guidance)

    @torch.no_grad()
    def __call__(self, model: DiffusionModel, n: int, x_T: Tensor | None = None) -> Tensor:
        """``n`` samples from ``x_T`` (default ``N(0, I)``) on the chain respaced to :attr:`steps`."""
        T = model.process.T
        model = model.on(model.process.respace(min(self.steps or T, T)))
        if self.guidance is not None:
            model = model.with_guidance(self.guidance)
        return run_chain(model, model.noise(n) if x_T is None else x_T, self.step)

    def step(self, model: DiffusionModel, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """One reverse step ``x_t -> x_{t-1}`` on ``model.process`` with standard-normal noise ``z``."""
        raise NotImplementedError

    def with_guidance(self, weight: float | None) -> Sampler:
        """This sampler with autoguidance weight ``weight`` (None: the model's)."""
        out = copy.copy(self)
        out.guidance = check_weight(weight)
        return out

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not (k == "guidance" and v is None)}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"


class Ancestral(Sampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): ``x_{t-1} = mu_theta(x_t, t) + sigma_t z``
    with the model's variance (fixed ``beta~_t`` / ``beta_t``, or learned) and no noise at the last step."""

    name = "ddpm"

    def step(self, model: DiffusionModel, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        rev = model.reverse(x, t, clip=model.clip_denoised, guide=True)
        last = (t == 0).view(-1, *([1] * (x.ndim - 1)))
        return rev.mean + torch.where(last, 0.0, torch.exp(0.5 * rev.logvar)) * z


class DDIM(Sampler):
    """DDIM (Song et al. 2021, Eq. 12) on ``steps`` steps ``t -> s``::

        x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)   (Eq. 16)

    ``eta = 0``: deterministic (a discretised probability-flow ODE); ``eta = 1``: ancestral DDPM
    with variance ``beta~``.
    """

    name = "ddim"

    def __init__(self, steps: int | None = 50, eta: float = 0.0, guidance: float | None = None) -> None:
        super().__init__(steps, guidance)
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = eta

    def step(self, model: DiffusionModel, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        rev = model.reverse(x, t, clip=model.clip_denoised, guide=True)
        p = model.process
        ab, ab_prev = p.at("alpha_bar", t, x), p.at("alpha_bar_prev", t, x)
        sigma2 = self.eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        return ab_prev.sqrt() * rev.x0 + (1 - ab_prev - sigma2).clamp_min(0).sqrt() * rev.eps + sigma2.sqrt() * z


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (Ancestral, DDIM)}
