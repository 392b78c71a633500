"""The posterior machinery the families' :class:`~genlab.families.base.Restorer` methods share.

**Denoiser corrections** (diffusion, flow matching). A model on a Gaussian path ``x_t = a_t x + s_t eps``
gives ``x0_hat(x_t) = E[x | x_t]``; by Tweedie's formula for the conditional law,
``E[x | x_t, y] = x0_hat + (s_t^2 / a_t) grad_{x_t} log p(y | x_t)`` (``kappa = s_t^2 / a_t``). The
methods differ in how they approximate ``p(y | x_t)`` (:func:`corrected_x0`):

* ``pigdm`` (Song et al. 2023, "Pseudoinverse-Guided Diffusion Models", Eq. 7-8):
  ``p(x | x_t) ~ N(x0_hat, r_t^2 I)``, so ``p(y | x_t) ~ N(A x0_hat, sigma^2 I + r_t^2 A A^T)`` and
  ``grad log p(y | x_t) = J^T A^T (sigma^2 I + r_t^2 A A^T)^{-1} (y - A x0_hat)``, ``J = d x0_hat / d x_t``
  (one vector-Jacobian product), with ``r_t^2 = s_t^2 / (a_t^2 + s_t^2)``: exact for data of unit variance.
* ``dps`` (Chung et al. 2023, "Diffusion Posterior Sampling"): their Algorithm 1 (``dps_scale=zeta``,
  the default 1.0): the sampler's step from the unguided ``x0_hat``, then a step ``zeta`` along
  ``-grad_{x_t} ||y - A x0_hat(x_t)||`` (their ``zeta_t = zeta / ||y - A x0_hat||`` on the squared norm, as
  their code does it; :func:`dps_direction`); or (``dps_scale=null``) their Gaussian likelihood of Eq. 16
  in Tweedie's correction, ``grad log p(y | x_t) ~ -grad ||y - A x0_hat||^2 / (2 sigma^2)``, which is the
  posterior where the noise dominates and stiff where it is small.
* ``projection`` (the range-space correction of DDNM, Wang et al. 2023, with the noise handled as in
  DDRM / ΠGDM): ``x0_hat + A^T (A A^T + (sigma^2 / r_t^2) I)^{-1} (y - A x0_hat)``, the posterior mean of
  ``N(x0_hat, r_t^2 I)`` given ``y``; no network gradient. With ``sigma = 0`` and ``A`` of full rank it
  returns ``A^{-1} y`` at every step.

**Latent posteriors** (flows, VAEs): ``U(z) = ||y - A(G(z))||^2 / (2 sigma^2) - log p(z)``; :func:`latent_map`
minimises it by L-BFGS, :func:`langevin` samples ``exp(-U)`` by unadjusted Langevin steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from genlab.tasks.operators import Measurement

METHODS = ("pigdm", "dps", "projection")  # denoiser corrections: pigdm first, the default
LATENT_METHODS = ("map", "langevin")  # latent posteriors: the MAP first, the default
SAMPLERS = METHODS
NOISE_FLOOR = 1e-3  # the noise std a likelihood weight 1 / sigma^2 assumes at least (sigma = 0: a hard constraint)


def check_method(method: str, methods: tuple[str, ...], family: str) -> None:
    """Refuse a method the family does not have, naming those it has."""
    if method not in methods:
        raise ValueError(f"restore method {method!r} is not available for {family}; choose one of {', '.join(methods)}")


def corrected_x0(method: str, problem: Measurement, x0_of: Callable[[Tensor], Tensor], x: Tensor, kappa: float,
                 r2: float, dps_scale: float | None) -> Tensor:
    """``E[x | x_t, y]`` by ``method`` (module docstring) at the state ``x`` ``(B, ...)``: ``x0_of`` is the
    model's ``x0_hat`` (differentiable), ``kappa = s_t^2 / a_t``, ``r2 = r_t^2``; detached."""
    op, sigma = problem.operator, problem.noise
    if method == "projection":
        with torch.no_grad():
            x0 = x0_of(x)
            return x0 + op.pinv(problem.residual(x0), sigma**2 / max(r2, 1e-12))
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        x0 = x0_of(xg)
        res = problem.residual(x0)
        if method == "pigdm":
            v = op.pinv(res.detach(), sigma**2 / max(r2, 1e-12)) / max(r2, 1e-12)
            (g,) = torch.autograd.grad(x0, xg, grad_outputs=v)
        else:
            sq = res.flatten(1).pow(2).sum(1)
            w = dps_weight(sq.detach(), sigma, dps_scale)
            (g,) = torch.autograd.grad(-(w * sq).sum(), xg)
    return (x0 + kappa * g).detach()


def dps_direction(problem: Measurement, x0_of: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0_hat, grad_{x_t} ||y - A x0_hat(x_t)||)`` per example at the state ``x``: DPS's (Algorithm 1)
    unguided estimate and the direction of its step; detached."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        x0 = x0_of(xg)
        norm = problem.residual(x0).flatten(1).norm(dim=1)
        (g,) = torch.autograd.grad(norm.sum(), xg)
    return x0.detach(), g.detach()


def dps_weight(sq: Tensor, sigma: float, dps_scale: float | None) -> Tensor:
    """DPS's weight ``w`` of ``||y - A x0_hat||^2`` per example: ``1 / (2 sigma^2)``, or ``zeta / (2 ||r||)``."""
    if dps_scale is None:
        return torch.full_like(sq, 0.5 / max(sigma, NOISE_FLOOR) ** 2)
    return dps_scale / (2 * sq.sqrt().clamp_min(1e-12))


def latent_energy(problem: Measurement, decode: Callable[[Tensor], Tensor],
                  prior_nll: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``U(z) = ||y - A(G(z))||^2 / (2 sigma^2) - log p(z)`` per example ``(B,)`` (``sigma`` at least
    :data:`NOISE_FLOOR`)."""
    weight = 0.5 / max(problem.noise, NOISE_FLOOR) ** 2

    def energy(z: Tensor) -> Tensor:
        return weight * problem.residual(decode(z)).flatten(1).pow(2).sum(1) + prior_nll(z)

    return energy


def latent_map(energy: Callable[[Tensor], Tensor], z0: Tensor, iters: int) -> Tensor:
    """``argmin_z sum_b U(z_b)`` from ``z0`` by L-BFGS (strong Wolfe line search, at most ``iters``
    iterations); detached. The nets get no ``.grad``."""
    with torch.inference_mode(False), torch.enable_grad():
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure() -> Tensor:
            loss = energy(z).sum()
            (z.grad,) = torch.autograd.grad(loss, z)
            return loss.detach()

        opt.step(closure)
    return z.detach()


def langevin(energy: Callable[[Tensor], Tensor], z0: Tensor, steps: int, step: float) -> Tensor:
    """``steps`` unadjusted Langevin steps ``z - step grad U(z) + sqrt(2 step) xi`` from ``z0`` (samples
    ``exp(-U)`` up to a bias of order ``step``); detached."""
    with torch.inference_mode(False), torch.enable_grad():
        z = z0.detach().clone()
        for _ in range(steps):
            z.requires_grad_(True)
            (g,) = torch.autograd.grad(energy(z).sum(), z)
            z = (z.detach() - step * g + (2 * step) ** 0.5 * torch.randn_like(z)).detach()
    return z


def langevin_step(step_size: float, noise: float, norm: float) -> float:
    """The latent Langevin step: ``step_size * c / (1 + c)``, ``c = (sigma / ||A||)^2`` (``sigma`` at least
    :data:`NOISE_FLOOR`), i.e. ``step_size`` over the curvature ``1 + ||A||^2 / sigma^2`` of ``U`` where
    the decoder's Jacobian has norm about 1."""
    if not step_size > 0:
        raise ValueError(f"step_size={step_size} must be > 0 (the Langevin step, in units of the posterior's curvature)")
    c = (max(noise, NOISE_FLOOR) / max(norm, 1e-12)) ** 2
    return step_size * c / (1 + c)


def latent_solve(method: str, energy: Callable[[Tensor], Tensor], z0: Tensor, options: Any, noise: float,
                 norm: float) -> Tensor:
    """``map`` (:func:`latent_map`, ``options.iters`` L-BFGS iterations) or ``langevin`` (:func:`langevin`,
    ``options.steps`` steps, null: ``options.iters``, of :func:`langevin_step` ``(options.step_size)``)."""
    if options.iters < 1:
        raise ValueError(f"iters={options.iters} must be >= 1 (L-BFGS iterations / Langevin steps)")
    if method == "map":
        return latent_map(energy, z0, options.iters)
    steps = options.iters if options.steps is None else options.steps
    return langevin(energy, z0, steps, langevin_step(options.step_size, noise, norm))
