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

:class:`RejectionCalibration` holds ``(a, b, M)``, the expected acceptance rate and the calibration
samples' log-ratios as buffers (they travel with the checkpoint, in the nets); :class:`Rejection` is
the sampler step (``model.sampler.rejection``: its ``quantile``); :func:`rejection_sample` is the
generic sampler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genlab.families.base import parse_node


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
    theta = torch.zeros(2, dtype=torch.float64, device=s.device)  # the scores' device (a GPU run calibrates there)
    reg = torch.tensor([ridge, 0.0], dtype=torch.float64, device=s.device)
    eye = 1e-12 * torch.eye(2, dtype=torch.float64, device=s.device)
    for _ in range(iters):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) + 2 * reg * theta
        hess = (X.T * (w * p * (1 - p))) @ X + torch.diag(2 * reg) + eye
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
                "(model.sampler.rejection.quantile) or sample without rejection (model.sampler.rejection=null)")
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
    discriminator rejection sampling, as buffers (saved in checkpoints, ``nets["rejection"]``).
    ``calibrated`` is 0 until :meth:`calibrate` has run; an uncalibrated sampler falls back to plain
    sampling. Besides ``M`` and the acceptance at the calibration's ``quantile``, the buffers keep
    the calibration samples' log-ratios (``log_ratios``, so :meth:`bound_for` gives ``M`` at any
    quantile, exactly as a calibration at it would), the discriminator's ``fingerprint`` and the
    ``proposal`` key of the sampler steps that drew the calibration samples (a Platt fit holds only
    for the proposals it was fitted on)."""

    def __init__(self, quantile: float = 0.95) -> None:
        super().__init__()
        for name in ("scale", "bias", "bound", "acceptance", "calibrated", "fingerprint", "proposal"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self.register_buffer("quantile", torch.tensor(self.check_quantile(quantile), dtype=torch.float64))
        self.register_buffer("log_ratios", torch.zeros(0, dtype=torch.float64))

    @staticmethod
    def check_quantile(quantile: float) -> float:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"model.sampler.rejection.quantile must be in (0, 1] (1 = the maximum), got {quantile}")
        return quantile

    @staticmethod
    @torch.no_grad()
    def fingerprint_of(discriminator: nn.Module) -> float:
        """A scalar summary of the discriminator's weights: a calibration fitted for other
        weights (the discriminator trained on after it) is stale."""
        return float(sum(p.detach().double().sum() for p in discriminator.parameters()))

    def ready_for(self, discriminator: nn.Module, proposal: float | None = None) -> bool:
        """Calibrated, for these discriminator weights and (when given) these proposals."""
        fresh = bool(self.calibrated.item()) and self.fingerprint.item() == self.fingerprint_of(discriminator)
        return fresh and (proposal is None or self.proposal.item() == proposal)

    @property
    def ready(self) -> bool:
        return bool(self.calibrated.item())

    @staticmethod
    def bound_at(log_ratio: Tensor, quantile: float) -> tuple[float, float]:
        """``(M, acceptance)``: the ``quantile`` of generated log-ratios and the mean of
        ``min(1, exp(log r - M))`` over them (the expected share of proposals kept)."""
        bound = torch.quantile(log_ratio, quantile).item()
        return bound, (log_ratio - bound).clamp(max=0.0).exp().mean().item()

    def bound_for(self, quantile: float) -> tuple[float, float]:
        """``(M, acceptance)`` at ``quantile``: the stored ones at the calibration's quantile, else from
        the calibration samples' log-ratios (a checkpoint from before they were kept has only the former)."""
        if quantile == self.quantile.item():
            return self.bound.item(), self.acceptance.item()
        if not self.log_ratios.numel():
            raise ValueError(f"this rejection calibration holds the bound for quantile {self.quantile.item():g} only "
                             "(a checkpoint from before the calibration kept its log-ratios): use "
                             f"model.sampler.rejection.quantile={self.quantile.item():g}, or train anew to try others")
        return self.bound_at(self.log_ratios, quantile)

    @torch.no_grad()
    def calibrate(self, real_scores: Tensor, fake_scores: Tensor, discriminator: nn.Module | None = None,
                  quantile: float | None = None, proposal: float = 0.0) -> dict[str, float]:
        """Fit ``(scale, bias)`` on discriminator outputs of held-out real and generated data,
        set ``M`` to the ``quantile`` (default: this module's) of the generated log-ratios; returns
        the fitted values and the expected acceptance rate. ``discriminator``: the net that gave the
        scores (its fingerprint is stored, see :meth:`ready_for`); ``proposal``: the key of the
        sampler steps that drew the generated data."""
        quantile = self.check_quantile(self.quantile.item() if quantile is None else quantile)
        a, b = fit_platt(real_scores, fake_scores)
        log_ratio = a * fake_scores.detach().double().flatten() + b
        bound, acceptance = self.bound_at(log_ratio, quantile)
        fingerprint = self.fingerprint_of(discriminator) if discriminator is not None else 0.0
        for name, value in (("scale", a), ("bias", b), ("bound", bound), ("acceptance", acceptance),
                            ("calibrated", 1.0), ("fingerprint", fingerprint), ("proposal", proposal),
                            ("quantile", quantile)):
            getattr(self, name).fill_(value)
        self.log_ratios = log_ratio.to(self.log_ratios.device)
        return {"scale": a, "bias": b, "bound": bound, "acceptance": acceptance}

    def complete(self, state: dict[str, Tensor], prefix: str, proposal: float) -> dict[str, Tensor]:
        """A checkpoint's ``state`` with this module's buffers that older checkpoints lack: the
        configured ``quantile`` (the one their bound was set at), the ``proposal`` key of the
        configured sampler and no stored log-ratios."""
        defaults = {"quantile": self.quantile.clone(), "proposal": torch.tensor(proposal, dtype=torch.float64),
                    "log_ratios": torch.zeros(0, dtype=torch.float64)}
        return {**{prefix + k: v for k, v in defaults.items()}, **state}

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "log_ratios")
        if saved is not None and saved.shape != self.log_ratios.shape:  # as many as the calibration had samples
            self.log_ratios = torch.zeros(saved.shape, dtype=self.log_ratios.dtype, device=self.log_ratios.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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


@dataclass(frozen=True)
class Rejection:
    """``model.sampler.rejection``: the last sampler step, discriminator rejection sampling of the
    earlier steps' samples with the bound ``M`` at ``quantile`` of the calibration's generated
    log-ratios (module docstring). Its calibration lives in the nets (``nets["rejection"]``, fitted
    during training by :class:`genlab.families.gan.callbacks.RejectionCalibrator`)."""

    quantile: float = 0.95

    def __post_init__(self) -> None:
        RejectionCalibration.check_quantile(self.quantile)

    @classmethod
    def parse(cls, config: Mapping[str, Any] | None) -> Rejection | None:
        """``model.sampler.rejection`` (a mapping, ``{}`` for the defaults, or None); clear errors."""
        return parse_node(cls, config, "sampler.rejection", "{quantile: 0.95}", convert=float)

    def apply(self, draw: Callable[[int], Tensor], score: Callable[[Tensor], Tensor], n: int,
              calibration: RejectionCalibration | None, discriminator: nn.Module, proposal: float) -> Tensor:
        """``n`` of the samples ``draw(m)`` (model space), each kept with probability
        ``min(1, exp(log r(y) - M))``, ``log r`` the calibrated ``score``; plain ``draw(n)`` while
        ``calibration`` is unfitted or (with a warning) fitted for other discriminator weights."""
        if calibration is None:
            raise ValueError("model.sampler.rejection needs a calibration in the nets, which a GAN trained without "
                             "model.sampler.rejection does not have: train with it (the GAN model configs' "
                             "callbacks.gan_rejection fits it), or sample with model.sampler.rejection=null")
        if not calibration.ready:
            return draw(n)
        if not calibration.ready_for(discriminator):  # (shown once per call site)
            warnings.warn("GAN rejection sampling: the calibration was fitted for other discriminator weights "
                          "(it is refitted at every validation); sampling without rejection until then",
                          stacklevel=3)
            return draw(n)
        if calibration.proposal.item() != proposal:
            raise ValueError("model.sampler.rejection: the calibration in the nets was fitted on the proposals of "
                             "other sampler steps (model.sampler.propose / refine / jacobian_truncation) than these; "
                             "sample with the run's own steps, or with model.sampler.rejection=null")
        bound, acceptance = calibration.bound_for(self.quantile)

        def propose(m: int) -> tuple[Tensor, Tensor]:
            y = draw(m)
            return y, calibration.log_ratio(score(y).double())

        return rejection_sample(propose, n, bound, acceptance)[0]
