"""Diffusion training objectives: the ``loss`` config group for ``model=ddpm*``.

* :class:`SimpleLoss` (``loss=simple``): ``L_simple = E_{t, x0, eps} ||target - net(x_t, t)||^2``
  (Ho et al. 2020, Eq. 14; the target is ``eps`` for the ``eps`` prediction), averaged over
  dimensions; fixed reverse variances.
* :class:`HybridLoss` (``loss=hybrid``): ``L_hybrid = L_simple + lambda L_vlb`` with learned
  variances (Nichol & Dhariwal 2021, Eq. 16, ``lambda = 0.001``). The network outputs a second
  channel block ``v`` that sets ``Sigma = exp(u log beta_t + (1 - u) log beta~_t)``, ``u = (v + 1) / 2``
  (Eq. 15). ``L_vlb`` sees the mean through a stop-gradient, so the mean is trained by
  ``L_simple`` alone (Sec. 3.1). ``L_vlb = sum_t L_t`` is estimated from one uniform ``t`` per
  example as ``T L_t`` in bits/dim (as improved-diffusion's ``vb * T / 1000`` with ``lambda = 0.001``).

Both take ``min_snr_gamma``: Min-SNR-gamma weighting of the MSE (Hang et al. 2023), which weighs each
timestep's error in ``x0`` by ``min(SNR_t, gamma)`` instead of ``SNR_t`` (eps) — the low-noise steps,
whose small errors hardly change a sample, stop dominating the gradient; the paper reports ~3x
faster convergence with ``gamma = 5``. It changes which denoiser the finite network settles on,
not the bound's definition (the NLL is evaluated as ever). ``None``: the plain MSE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.families.base import LossOutput
from genlab.families.diffusion.model import DiffusionModel
from genlab.metrics.likelihood import LN2


class DiffusionObjective:
    """Base class of diffusion objectives: ``objective(model, x0) -> LossOutput`` for the denoiser
    ``model`` (:class:`~genlab.families.diffusion.model.DiffusionModel`, on the training chain).

    ``x0`` is the data scaled to ``[-1, 1]``. :attr:`learns_variance` tells the family to give the
    network a second output block for the reverse variances.
    """

    learns_variance: bool = False
    min_snr_gamma: float | None = None

    def __init__(self, min_snr_gamma: float | None = None) -> None:
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 (5 in Hang et al. 2023) or null for the plain MSE, "
                             f"got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma

    def __call__(self, model: DiffusionModel, x0: Tensor) -> LossOutput:
        raise NotImplementedError

    @staticmethod
    def noisy_batch(model: DiffusionModel, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``t ~ U{0..T-1}``, ``eps ~ N(0, I)`` and ``x_t = q_sample(x0, t, eps)``, per example."""
        t = torch.randint(0, model.process.T, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        return t, eps, model.process.q_sample(x0, t, eps)

    def mse(self, model: DiffusionModel, t: Tensor, x0: Tensor, eps: Tensor, mean_out: Tensor) -> Tensor:
        """Per-example mean squared error of the prediction's target, ``(B,)``; Min-SNR weighted
        (``min(SNR, gamma) / k(SNR)``, :meth:`Prediction.x0_mse_factor`) when ``min_snr_gamma`` is set."""
        target = model.prediction.target(model.process, t, x0, eps)
        mse = (mean_out - target).pow(2).flatten(1).mean(1)
        if self.min_snr_gamma is None:
            return mse
        ab = model.process.at("alpha_bar", t, mse)  # (B,), cached on mse's device and dtype
        snr = ab / (1 - ab)
        return mse * snr.clamp(max=self.min_snr_gamma) / model.prediction.x0_mse_factor(snr)


class SimpleLoss(DiffusionObjective):
    """``L_simple`` (Ho et al. 2020, Eq. 14): MSE of the prediction target, fixed variances.

    Args:
        min_snr_gamma: Min-SNR-gamma weighting (module docstring); None: the plain MSE.
    """

    def __call__(self, model: DiffusionModel, x0: Tensor) -> LossOutput:
        t, eps, x_t = self.noisy_batch(model, x0)
        mean_out, _ = model.split(model.output(x_t, t))
        mse = self.mse(model, t, x0, eps, mean_out).mean()
        return LossOutput(mse, {"mse": mse.detach()})


class HybridLoss(DiffusionObjective):
    """``L_simple + vlb_weight * L_vlb`` with learned variances (Nichol & Dhariwal 2021, Eq. 16).

    Args:
        vlb_weight: ``lambda`` (0.001 in the paper).
        min_snr_gamma: Min-SNR-gamma weighting of the MSE term (module docstring); None: plain.
    """

    learns_variance = True

    def __init__(self, vlb_weight: float = 0.001, min_snr_gamma: float | None = None) -> None:
        super().__init__(min_snr_gamma)
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
        self.vlb_weight = vlb_weight

    def __call__(self, model: DiffusionModel, x0: Tensor) -> LossOutput:
        t, eps, x_t = self.noisy_batch(model, x0)
        mean_out, var_out = model.split(model.output(x_t, t))
        mse = self.mse(model, t, x0, eps, mean_out).mean()
        frozen = torch.cat([mean_out.detach(), var_out], dim=1)  # stop-gradient on the mean (Sec. 3.1)
        term = model.vb_term(x0, x_t, t, frozen)  # L_t in nats, (B,)
        vlb_bpd = model.process.T * term.mean() / (x0[0].numel() * LN2)  # one-sample estimate of sum_t L_t
        loss = mse + self.vlb_weight * vlb_bpd
        return LossOutput(loss, {"mse": mse.detach(), "vlb_bpd": vlb_bpd.detach()})
