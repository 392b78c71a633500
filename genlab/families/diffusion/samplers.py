"""Samplers of the reverse process (stable names ``ddpm``, ``ddim``, and the fast ODE solvers
``dpmpp_2m``, ``heun``), selected in config, and the one reverse-chain loop (:func:`run_chain`) that
the first two, denoising, RePaint and DDIM decoding share.

Both samplers run on the process respaced to ``steps`` steps (:meth:`GaussianDiffusion.respace`;
all ``T`` by default for ``ddpm``) from ``x_{T-1} ~ N(0, I)`` down to the data, and return ``x0``
in the scaled space ``[-1, 1]`` (the family maps it to discrete data). Every step draws one
``z ~ N(0, I)`` (also where it is multiplied by 0), so that samplers that define the same chain
produce the same samples from the same seed: DDIM with ``eta = 1`` on all ``T`` steps *is*
ancestral DDPM with the posterior variance ``beta~_t``. With a guide snapshot and a weight other
than 1 (``model.guidance.weight``, or the sampler's own ``guidance``, e.g.
``model.sampler.guidance=3``) both use the autoguided prediction
(:mod:`genlab.families.diffusion.guidance`); on a class-conditional model without a snapshot the same
weight is classifier-free guidance (the null label is the guide; Ho & Salimans' ``w_HS = w - 1``). A
conditional model carries its labels, so no sampler needs to know about them.

The fast samplers solve the same probability-flow ODE as DDIM with ``eta = 0`` at second order:
:class:`DPMSolver` (DPM-Solver++(2M), ``steps`` network evaluations on DDIM's steps) and
:class:`Heun` (EDM, ``2 steps - 1`` evaluations on Karras et al.'s noise levels). Every sampler is
``prepare`` (the model on its chain, with its guidance weight) then ``run`` (``x_{T-1} -> x0``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from genlab import progress
from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.process import GaussianDiffusion

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
    with progress.bar(f"reverse chain: {len(states) - 1} moves of {x.shape[0]} samples", total=len(states) - 1,
                      unit="step") as bar:
        for cur, nxt in zip(states[:-1], states[1:]):
            t = torch.full((x.shape[0],), cur, device=x.device, dtype=torch.long)
            if nxt < cur:
                x = step(model, x, t, torch.randn_like(x))
                x = hook(x, t) if hook is not None else x
            else:
                x = model.process.q_step(x, t + 1, torch.randn_like(x))
            bar.advance()
    return x


def check_weight(weight: float | None) -> float | None:
    """A sampler's guidance weight: None (the model's) or a number >= 1 (1: unguided)."""
    if weight is not None and not weight >= 1.0:
        raise ValueError(f"sampler guidance={weight}: the guidance weight must be >= 1 (1 = unguided), or null "
                         "for model.guidance.weight")
    return None if weight is None else float(weight)


class Sampler:
    """Base class: ``sampler(model, n, x_T=None) -> x0`` in ``[-1, 1]``, ``(n, *shape)``.

    Args:
        steps: reverse steps (evenly spaced over the ``T`` training steps); None: all ``T``.
        guidance: guidance weight ``w`` for these samples (>= 1; 1 = unguided): autoguidance with the
            ``model.guidance`` snapshot, else classifier-free on a conditional model (``w = 1 + w_HS`` of
            Ho & Salimans 2022); None: ``model.guidance.weight`` (1 without it).
    """

    name: str = "base"

    def __init__(self, steps: int | None = None, guidance: float | None = None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"sampler steps must be >= 1 (or null for all T), got {steps}")
        self.steps = steps
        self.guidance = check_weight(guidance)

    @torch.no_grad()
    def __call__(self, model: DiffusionModel, n: int, x_T: Tensor | None = None) -> Tensor:
        """``n`` samples from ``x_T`` (default ``N(0, I)``, the state ``x_{T-1}``) on :meth:`prepare`'s model."""
        model = self.prepare(model)
        return self.run(model, model.noise(n) if x_T is None else x_T)

    def prepare(self, model: DiffusionModel) -> DiffusionModel:
        """The model these samples come from: on the chain respaced to :attr:`steps`, with :attr:`guidance`."""
        T = model.process.T
        model = model.on(model.process.respace(min(self.steps or T, T)))
        return model if self.guidance is None else model.with_guidance(self.guidance)

    def run(self, model: DiffusionModel, x: Tensor) -> Tensor:
        """``x0`` in ``[-1, 1]`` from ``x = x_{T-1}`` of ``model.process``: :func:`run_chain` with :meth:`step`."""
        return run_chain(model, x, self.step)

    def step(self, model: DiffusionModel, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """One reverse step ``x_t -> x_{t-1}`` on ``model.process`` with standard-normal noise ``z``."""
        raise NotImplementedError

    def with_guidance(self, weight: float | None) -> Sampler:
        """This sampler with guidance weight ``weight`` (None: the model's)."""
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


def refuse_eta(eta: float | None, sampler: str) -> None:
    """Accept DDIM's ``eta`` only as 0: a sampler node switched by ``_target_`` from the default DDIM one
    (``genlab-eval RUN model.sampler._target_=...``) keeps its ``eta: 0.0``, and that must still build."""
    if eta not in (None, 0, 0.0):
        raise ValueError(f"model.sampler.eta={eta}: {sampler} is deterministic (eta is DDIM's noise option, here "
                         "left over from the DDIM sampler node?); set model.sampler.eta=0")


def check_at_least(key: str, value: int, least: int, why: str) -> None:
    """Raise a ValueError naming ``model.sampler.<key>`` unless ``value`` is an int >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"model.sampler.{key}={value!r}: {why} (an integer >= {least})")


class DPMSolver(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): the multistep second-order solver of the probability-flow ODE
    in the data prediction ``x0_hat`` and the half log-SNR ``lambda = log(alpha / sigma)``,
    ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``. From ``t`` to ``s``, ``h = lambda_s - lambda_t``::

        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,
        D = (1 + 1 / (2 r)) x0_hat_t - 1 / (2 r) x0_hat_prev,  r = h_prev / h

    with ``D = x0_hat_t`` (first order: exactly a DDIM step) on the first step.

    Grid: ``steps`` network evaluations (NFE; twice as many network calls with an autoguidance guide)
    at the time-uniform steps of the discrete training chain from ``T - 1`` down to ``0``: the
    ``skip_type="time_uniform"`` of Lu et al.'s code for discrete-time models (sampling from label
    ``T - 1`` to label ``0``), and DDIM's respacing, so ``dpmpp_2m`` and ``ddim`` with the same
    ``steps`` query the net at the same steps. As DDIM's, the last move, from step 0 into the data
    (``lambda = inf``), returns ``x0_hat`` at step 0 (first order: a second-order step is undefined at
    ``h = inf``). ``lower_order_final`` (default, as in Lu et al.'s current code) also takes the step
    onto step 0 at first order: on a time-uniform grid it spans the largest ``lambda`` interval
    (2.9 of 9.7 at 20 steps of the linear schedule) after a much shorter one (``r ~ 0.2``), where
    the 2M extrapolation of ``x0_hat`` is poor; the solver stays second order overall. ``x0_hat`` is
    the guided, and with ``model.clip_denoised`` clipped, prediction (as DDIM's). ``eta`` is
    accepted only as 0 (:func:`refuse_eta`).
    """

    name = "dpmpp_2m"

    def __init__(self, steps: int | None = 20, lower_order_final: bool = True, guidance: float | None = None,
                 eta: float | None = 0.0) -> None:
        if steps is not None:
            check_at_least("steps", steps, 1, "DPM-Solver++ needs at least one network evaluation (or null for all T)")
        super().__init__(steps, guidance)
        refuse_eta(eta, "DPM-Solver++(2M)")
        self.lower_order_final = bool(lower_order_final)

    def run(self, model: DiffusionModel, x: Tensor) -> Tensor:
        ab = model.process.tables["alpha_bar"]  # the respaced chain's, float64 (S,)
        alpha, sigma = ab.sqrt().tolist(), (1 - ab).sqrt().tolist()
        lam = (0.5 * (ab.log() - torch.log1p(-ab))).tolist()
        prev: tuple[Tensor, float] | None = None  # (x0_hat, h) of the previous step
        for k in range(len(ab) - 1, -1, -1):
            t = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
            x0 = model.reverse(x, t, clip=model.clip_denoised, guide=True).x0
            if k == 0:  # into the data: first order, x_{-1} = x0_hat
                return x0
            h = lam[k - 1] - lam[k]
            first = prev is None or (k == 1 and self.lower_order_final)
            d = x0 if first else x0 + (x0 - prev[0]) * (h / (2 * prev[1]))
            x = (sigma[k - 1] / sigma[k]) * x - (alpha[k - 1] * math.expm1(-h)) * d
            prev = (x0, h)
        return x  # not reached: the loop returns at k = 0


def edm_sigmas(process: GaussianDiffusion) -> Tensor:
    """``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` of each step (float64, increasing): the VP
    chain as EDM's variance-exploding ``x_EDM = x_VP sqrt(1 + sigma^2)`` (Karras et al. 2022, Table 1)."""
    ab = process.tables["alpha_bar"]
    return ((1 - ab) / ab).sqrt()


def nearest_level(sigmas: Tensor, sigma: Tensor) -> Tensor:
    """Index of the step whose ``sigma`` is nearest each of ``sigma`` (EDM's ``round_sigma`` for discrete models)."""
    return (sigmas[None, :] - sigma.to(sigmas)[:, None]).abs().argmin(1)


def distinct_steps(steps: Tensor, T: int) -> Tensor:
    """Non-decreasing step indices made strictly increasing within ``0..T-1`` (``len(steps) <= T``):
    a forward pass ``s_i = max(s_i, s_{i-1} + 1)`` (a cumulative max of ``s_k - k``), clamped to
    ``T - 1``, then a backward pass ``s_i = min(s_i, s_{i+1} - 1)``; distinct steps are kept as they are."""
    i = torch.arange(len(steps))
    up = (torch.cummax(steps - i, 0).values + i).clamp(max=T - 1)
    return torch.cummin((up - i).flip(0), 0).values.flip(0) + i


def karras_levels(sigmas: Tensor, n: int, rho: float, sigma_min: float | None, sigma_max: float | None) -> Tensor:
    """Steps (decreasing) of the ``n`` levels ``(smax^(1/rho) + i / (n - 1) (smin^(1/rho) - smax^(1/rho)))^rho``,
    ``i = 0..n-1`` (Karras et al. 2022, Eq. 5), each rounded to the nearest step of the chain, and
    repeats (large ``n`` near ``smin``) moved to the neighbouring steps (:func:`distinct_steps`);
    ``smin`` / ``smax`` (None: the chain's ends) are clamped to the chain's range."""
    if n > len(sigmas):
        raise ValueError(f"model.sampler.steps={n}: more noise levels than the chain's {len(sigmas)} steps")
    lo, hi = float(sigmas[0]), float(sigmas[-1])
    smin = lo if sigma_min is None else min(max(sigma_min, lo), hi)
    smax = hi if sigma_max is None else min(max(sigma_max, lo), hi)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    levels = nearest_level(sigmas, (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho)
    return distinct_steps(levels.flip(0), len(sigmas)).flip(0)


def edm_denoise(model: DiffusionModel, x: Tensor, t: int, sigma: float) -> Tensor:
    """``D(x; sigma)``: the guided (clipped where ``model.clip_denoised``) ``x0_hat`` at step ``t``,
    from ``x_EDM`` at that step's ``sigma``."""
    steps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return model.reverse(x / math.sqrt(1 + sigma**2), steps, clip=model.clip_denoised, guide=True).x0


def check_heun(steps: int, rho: float, sigma_min: float | None, sigma_max: float | None, s_churn: float,
               s_tmin: float, s_tmax: float | None, s_noise: float) -> None:
    """Refuse EDM settings that define no schedule (each error names its ``model.sampler`` key)."""
    check_at_least("steps", steps, 2, "Heun needs at least 2 noise levels (sigma_max and sigma_min)")
    bad = [("rho", rho, rho > 0, "must be > 0 (7 in EDM)"), ("s_churn", s_churn, s_churn >= 0, "must be >= 0"),
           ("s_noise", s_noise, s_noise >= 0, "must be >= 0"), ("s_tmin", s_tmin, s_tmin >= 0, "must be >= 0")]
    bad += [(k, v, v > 0, "must be > 0 (or null for the chain's end)") for k, v in
            (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None]
    if sigma_min is not None and sigma_max is not None:
        bad.append(("sigma_min", sigma_min, sigma_min < sigma_max, f"must be < sigma_max={sigma_max}"))
    if s_tmax is not None:
        bad.append(("s_tmax", s_tmax, s_tmax >= s_tmin, f"must be >= s_tmin={s_tmin} (or null: no upper bound)"))
    for key, value, ok, why in bad:
        if not ok:
            raise ValueError(f"model.sampler.{key}={value}: {why}")


class Heun(Sampler):
    """EDM's Heun sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
    Generative Models", Algorithm 1; Algorithm 2's churn with ``s_churn > 0``) of the probability-flow
    ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` in ``x_EDM = x_VP sqrt(1 + sigma^2)``, ``sigma =
    sqrt((1 - alpha_bar) / alpha_bar)`` of the VP chain (:func:`edm_sigmas`).

    ``steps`` = ``N`` noise levels, Karras et al.'s Eq. 5 with ``rho`` between ``sigma_max`` (80 as
    in EDM) and ``sigma_min`` (null: the chain's ends; both clamped to the chain's range), then 0.
    The net is a discrete-time one, so each level is rounded to the nearest step of the training
    chain (nearest in sigma: EDM's ``round_sigma`` for its iDDPM model; repeats moved to free
    neighbouring steps, :func:`karras_levels`), and ``D(x; sigma)`` is the guided ``x0_hat`` at that
    step (clipped with ``model.clip_denoised``): the ODE is solved on the rounded levels, exactly
    where the net is evaluated.
    Euler steps with a second-order (trapezoidal) correction, except on the last one to ``sigma = 0``
    (which returns ``D(x; sigma_min)``): ``NFE = 2 N - 1`` (twice as many network calls with a guide).
    ``x_T`` (``N(0, I)``) is the VP state at ``sigma_max``, as for the other samplers.

    Churn (stochastic; 0 by default): at levels in ``[s_tmin, s_tmax]`` the noise is raised to
    ``sigma (1 + gamma)``, ``gamma = min(s_churn / N, sqrt(2) - 1)`` (rounded to a step), with
    ``s_noise`` times the missing standard deviation. ``eta`` is accepted only as 0 (:func:`refuse_eta`).
    """

    name = "heun"

    def __init__(self, steps: int = 10, rho: float = 7.0, sigma_min: float | None = None,
                 sigma_max: float | None = 80.0, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float | None = None, s_noise: float = 1.0, guidance: float | None = None,
                 eta: float | None = 0.0) -> None:
        check_heun(steps, rho, sigma_min, sigma_max, s_churn, s_tmin, s_tmax, s_noise)
        super().__init__(steps, guidance)
        refuse_eta(eta, "Heun (EDM; its noise is s_churn)")
        self.rho, self.sigma_min, self.sigma_max = float(rho), sigma_min, sigma_max
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), s_tmax, float(s_noise)

    def prepare(self, model: DiffusionModel) -> DiffusionModel:
        """The model on its own (training) chain: the levels are rounded to its steps."""
        return model if self.guidance is None else model.with_guidance(self.guidance)

    def levels(self, process: GaussianDiffusion) -> list[int]:
        """The steps of ``process`` at the ``N`` noise levels, decreasing (:func:`karras_levels`)."""
        return karras_levels(edm_sigmas(process), self.steps, self.rho, self.sigma_min, self.sigma_max).tolist()

    def run(self, model: DiffusionModel, x: Tensor) -> Tensor:
        sigmas, levels = edm_sigmas(model.process), self.levels(model.process)
        x = x * math.sqrt(1 + float(sigmas[levels[0]]) ** 2)  # x_{T-1} (VP) at sigma_max -> x_EDM
        for i, t in enumerate(levels):
            t, x = self.churn(sigmas, t, x)
            x = self.heun_step(model, sigmas, x, t, levels[i + 1] if i + 1 < len(levels) else None)
        return x  # at sigma = 0: x_EDM = x_VP = x0

    def churn(self, sigmas: Tensor, t: int, x: Tensor) -> tuple[int, Tensor]:
        """EDM's ``gamma``: the step of ``sigma_hat = sigma (1 + gamma)`` and ``x`` noised up to it."""
        sigma = float(sigmas[t])
        if self.s_churn == 0 or not self.s_tmin <= sigma <= (math.inf if self.s_tmax is None else self.s_tmax):
            return t, x
        gamma = min(self.s_churn / self.steps, math.sqrt(2) - 1)
        up = int(nearest_level(sigmas, torch.tensor([sigma * (1 + gamma)])))
        extra = math.sqrt(max(float(sigmas[up]) ** 2 - sigma**2, 0.0))
        return up, x + (self.s_noise * extra) * torch.randn_like(x)

    @staticmethod
    def heun_step(model: DiffusionModel, sigmas: Tensor, x: Tensor, t: int, nxt: int | None) -> Tensor:
        """From the level of step ``t`` to that of ``nxt`` (None: ``sigma = 0``, an Euler step)."""
        sigma, to = float(sigmas[t]), 0.0 if nxt is None else float(sigmas[nxt])
        d = (x - edm_denoise(model, x, t, sigma)) / sigma
        x_next = x + (to - sigma) * d
        if nxt is None:
            return x_next
        return x + (to - sigma) * 0.5 * (d + (x_next - edm_denoise(model, x_next, nxt, to)) / to)


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (Ancestral, DDIM, DPMSolver, Heun)}
