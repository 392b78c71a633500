"""Noise schedules ``beta_1..beta_T`` of Gaussian diffusion (stable names: ``linear``, ``cosine``).

A schedule is a small object (selected in config by ``_target_``, or by its stable name, see
:data:`SCHEDULES`) that returns the per-step variances ``beta_t`` of the forward process
``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`` (Ho et al. 2020, Eq. 2) as a
float64 tensor of shape ``(T,)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class NoiseSchedule:
    """Base class: ``betas(T) -> (T,)`` float64, every value in ``(0, 1)``."""

    name: str = "base"

    def betas(self, timesteps: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearSchedule(NoiseSchedule):
    """``beta_t`` linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4).

    The endpoints are given for ``T = 1000`` and rescaled by ``1000 / T`` (Nichol & Dhariwal
    2021, improved-diffusion), so that a shorter chain reaches the same ``alpha_bar_T``.
    """

    name = "linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.beta_start, self.beta_end = beta_start, beta_end

    def betas(self, timesteps: int) -> Tensor:
        scale = 1000.0 / timesteps
        return torch.linspace(scale * self.beta_start, scale * self.beta_end, timesteps, dtype=torch.float64).clamp(
            max=0.999
        )


class CosineSchedule(NoiseSchedule):
    """``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(pi/2 (t/T + s) / (1 + s))`` (Nichol &
    Dhariwal 2021, Eq. 17); ``beta_t = 1 - alpha_bar(t) / alpha_bar(t-1)`` clipped at ``max_beta``."""

    name = "cosine"

    def __init__(self, s: float = 0.008, max_beta: float = 0.999) -> None:
        self.s, self.max_beta = s, max_beta

    def betas(self, timesteps: int) -> Tensor:
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=self.max_beta)


SCHEDULES: dict[str, type[NoiseSchedule]] = {cls.name: cls for cls in (LinearSchedule, CosineSchedule)}
