"""Discriminator rejection sampling (Azadi et al. 2019): sample a GAN with its trained discriminator.

A discriminator that separates real from generated data estimates the density ratio
``r(y) = p_data(y) / p_G(y)``: for the optimal non-saturating discriminator,
``logit D*(y) = log r(y)`` (Goodfellow et al. 2014, Prop. 1). Accepting a generated ``y`` with
probability ``min(1, r(y) / M)`` is rejection sampling from ``p_G(y) min(r(y), M)``, which is
``p_data`` when ``M >= max r`` (Azadi et al. 2019, Sec. 3).

Two practical steps, both as in the paper:

* **Calibration.** The raw discriminator output is neither trained to convergence nor, for
  the hinge / Wasserstein losses, a log-ratio at all, and sampling uses the generator's EMA,
  which the discriminator never saw. A logistic regression of "real vs generated" on the
  discriminator output, fitted on held-out real images and samples of the sampling generator
  (Platt scaling: ``log r(y) = a D(y) + b``), turns it into a log-ratio estimate.
  :func:`fit_platt` fits it by Newton's method (balanced classes, a small ridge so that
  perfectly separable scores still give a finite answer).
* **The bound.** ``M`` is a high quantile (``quantile``) of the calibrated log-ratios of
  generated samples rather than their maximum: the maximum rejects nearly everything, and
  samples above the quantile are always accepted (their density is capped, not discarded).
  ``quantile=1`` is the maximum over the calibration samples.

:class:`RejectionCalibration` holds ``(a, b, M)`` and the expected acceptance rate as buffers
(they travel with the checkpoint); :func:`rejection_sample` is the generic sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def fit_platt(real: Tensor, fake: Tensor, ridge: float = 1e-4, iters: int = 100) -> tuple[float, float]:
    """Logistic regression ``P(real | s) = sigmoid(a s + b)`` on scores ``s`` of real (label 1)
    and generated (label 0) examples, each class weighted by half (so that ``a s + b`` estimates
    ``log p_real(s) / p_fake(s)`` whatever the two counts). Newton's method on standardised
    scores, with ``ridge * a^2`` added to the loss. Returns ``(a, b)`` on the raw scale."""
    real, fake = real.detach().double().flatten(), fake.detach().double().flatten()
    if real.numel() == 0 or fake.numel() == 0:
        raise ValueError("fit_platt needs at least one real and one generated score")
    s = torch.cat([real, fake])
    y = torch.cat([torch.ones_like(real), torch.zeros_like(fake)])
    w = torch.cat([torch.full_like(real, 0.5 / real.numel()), torch.full_like(fake, 0.5 / fake.numel())])
    mu, sd = s.mean(), s.std().clamp_min(1e-12)
    u = (s - mu) / sd
    X = torch.stack([u, torch.ones_like(u)], dim=1)  # (N, 2)
    theta = torch.zeros(2, dtype=torch.float64)
    reg = torch.tensor([ridge, 0.0], dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) + 2 * reg * theta
        hess = (X.T * (w * p * (1 - p))) @ X + torch.diag(2 * reg) + 1e-12 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if step.abs().max() < 1e-10:
            break
    a_std, b_std = theta.tolist()
    a = a_std / sd.item()
    return a, b_std - a * mu.item()


def rejection_sample(propose: Callable[[int], tuple[Tensor, Tensor]], n: int, bound: float,
                     acceptance: float = 0.5, max_proposals: int | None = None) -> tuple[Tensor, int]:
    """Rejection sampling: ``propose(m)`` returns ``m`` proposals ``y`` and their log-ratios
    ``log r(y)`` (target over proposal density, up to a constant); each ``y`` is kept with
    probability ``min(1, exp(log r(y) - bound))``. Returns the first ``n`` kept (in proposal
    order) and the number of proposals it took to keep them (``n / drawn`` estimates the
    acceptance rate).

    ``acceptance`` (the expected rate) sizes the proposal batches; ``max_proposals`` (default
    ``max(1000 n, 10^5)``) stops a sampler that accepts (almost) nothing with a clear error."""
    limit = max_proposals if max_proposals is not None else max(1000 * n, 100_000)
    kept: list[Tensor] = []
    have, drawn = 0, 0
    while have < n:
        if drawn >= limit:
            raise RuntimeError(
                f"Rejection sampling kept {have} of {n} samples after {drawn} proposals (acceptance "
                f"{have / max(drawn, 1):.2g}): the bound is far above the log-ratios; lower the quantile "
                "(model.rejection_quantile) or sample without rejection (model.rejection_sampling=false)")
        m = min(max(64, math.ceil(1.2 * (n - have) / max(acceptance, 1e-3))), limit - drawn)
        y, log_ratio = propose(m)
        keep = torch.rand(m, device=log_ratio.device).log() < (log_ratio.double() - bound).clamp(max=0.0)
        idx = keep.nonzero().flatten()[: n - have]
        # proposals used: all of this batch, or up to the last one needed
        drawn += m if have + len(idx) < n else int(idx[-1]) + 1
        kept.append(y[idx])
        have += len(idx)
    return torch.cat(kept), drawn


class RejectionCalibration(nn.Module):
    """The calibrated log-ratio ``log r = scale * D(y) + bias`` and the bound ``M`` of
    discriminator rejection sampling, as buffers (saved in checkpoints). ``calibrated`` is 0
    until :meth:`calibrate` has run; an uncalibrated sampler falls back to plain sampling."""

    def __init__(self, quantile: float = 0.95) -> None:
        super().__init__()
        self.quantile = self.check_quantile(quantile)
        for name in ("scale", "bias", "bound", "acceptance", "calibrated", "fingerprint"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))

    @staticmethod
    def check_quantile(quantile: float) -> float:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"model.rejection_quantile must be in (0, 1] (1 = the maximum), got {quantile}")
        return quantile

    @staticmethod
    @torch.no_grad()
    def fingerprint_of(discriminator: nn.Module) -> float:
        """A scalar summary of the discriminator's weights: a calibration fitted for other
        weights (the discriminator trained on after it) is stale."""
        return float(sum(p.detach().double().sum() for p in discriminator.parameters()))

    def ready_for(self, discriminator: nn.Module) -> bool:
        """Calibrated, and for these discriminator weights."""
        return bool(self.calibrated.item()) and self.fingerprint.item() == self.fingerprint_of(discriminator)

    @property
    def ready(self) -> bool:
        return bool(self.calibrated.item())

    @torch.no_grad()
    def calibrate(self, real_scores: Tensor, fake_scores: Tensor, discriminator: nn.Module | None = None
                  ) -> dict[str, float]:
        """Fit ``(scale, bias)`` on discriminator outputs of held-out real and generated data,
        set ``M`` to the ``quantile`` of the generated log-ratios; returns the fitted values and
        the expected acceptance rate. ``discriminator``: the net that gave the scores (its
        fingerprint is stored, see :meth:`ready_for`)."""
        a, b = fit_platt(real_scores, fake_scores)
        log_ratio = a * fake_scores.detach().double().flatten() + b
        bound = torch.quantile(log_ratio, self.quantile).item()
        acceptance = (log_ratio - bound).clamp(max=0.0).exp().mean().item()
        fingerprint = self.fingerprint_of(discriminator) if discriminator is not None else 0.0
        for name, value in (("scale", a), ("bias", b), ("bound", bound), ("acceptance", acceptance),
                            ("calibrated", 1.0), ("fingerprint", fingerprint)):
            getattr(self, name).fill_(value)
        return {"scale": a, "bias": b, "bound": bound, "acceptance": acceptance}

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Plain sampling inside the block (for side-by-side comparisons); restored after."""
        saved = self.calibrated.clone()
        self.calibrated.zero_()
        try:
            yield
        finally:
            self.calibrated.copy_(saved)

    def log_ratio(self, scores: Tensor) -> Tensor:
        return self.scale.to(scores.dtype) * scores + self.bias.to(scores.dtype)
