"""GAN training objectives: the ``loss`` config group for ``model=dcgan`` / ``model=gan_mlp``.

An objective maps discriminator outputs (logits / critic values, shape ``(B,)``) to the two
players' losses, and optionally adds a penalty that needs the critic itself. It also fixes
``n_critic``, the discriminator steps per generator step of its training algorithm. With
``D`` the discriminator, ``r = D(x)`` on real data and ``f = D(G(z))`` on generated data:

* :class:`NonSaturating` (Goodfellow et al. 2014, Sec. 3):
  ``L_D = E[softplus(-r)] + E[softplus(f)]`` (binary cross-entropy with logits),
  ``L_G = E[softplus(-f)] = -E[log sigmoid(f)]`` (the non-saturating generator loss).
* :class:`Hinge` (Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17):
  ``L_D = E[relu(1 - r)] + E[relu(1 + f)]``, ``L_G = -E[f]``.
* :class:`WGANGP` (Gulrajani et al. 2017, Alg. 1):
  ``L_D = E[f] - E[r] + lambda E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random interpolates
  ``x_hat = eps x + (1 - eps) G(z)``, ``eps ~ U[0, 1]``; ``L_G = -E[f]``.

:class:`NonSaturating` and :class:`Hinge` also take ``r1_gamma``: the R1 penalty
``(gamma / 2) E[||grad_x D(x)||^2]`` on real data (Mescheder et al. 2018, Eq. 9), which makes
the non-saturating GAN locally convergent (the unregularised one circles its equilibrium).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``grad_x sum_i D(x_i)`` at ``x`` (detached here), per example ``(B, *shape)``; kept in the graph
    (``create_graph``) so that a penalty on it trains the critic's parameters."""
    x = x.detach().requires_grad_(True)
    with torch.compiler.set_stance("force_eager"):  # compiled graphs have no double backward (run config `compile`)
        d = critic(x)
    (grad,) = torch.autograd.grad(d.sum(), x, create_graph=True)
    return grad


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """``E[(||grad_x D(x_hat)||_2 - 1)^2]`` at ``x_hat = eps real + (1 - eps) fake``
    (Gulrajani et al. 2017, Eq. 3), one ``eps ~ U[0, 1]`` per example.

    Args:
        critic: ``D``, maps ``(B, *shape)`` to ``(B,)`` or ``(B, 1)``.
        real, fake: ``(B, *shape)`` in model space; ``fake`` is detached here.
    Returns:
        scalar penalty (without ``lambda``), differentiable w.r.t. the critic's parameters.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    grad = input_gradient(critic, eps * real + (1 - eps) * fake.detach())
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """``E[||grad_x D(x)||_2^2]`` on real data (Mescheder et al. 2018, Eq. 9, without ``gamma / 2``).

    Args:
        critic: ``D``, maps ``(B, *shape)`` to ``(B,)`` or ``(B, 1)``.
        real: ``(B, *shape)`` in model space.
    Returns:
        scalar penalty, differentiable w.r.t. the critic's parameters.
    """
    return input_gradient(critic, real).float().flatten(1).pow(2).sum(1).mean()


class GANObjective:
    """Base class of the GAN objectives (``loss`` group).

    Args:
        n_critic: discriminator steps per generator step (the family's :meth:`schedule`).
    """

    def __init__(self, n_critic: int = 1) -> None:
        if n_critic < 1:
            raise ValueError(f"loss.n_critic={n_critic} must be >= 1 (discriminator steps per generator step)")
        self.n_critic = n_critic

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        """``L_D`` from outputs on real ``(B,)`` and generated ``(B,)`` data (a scalar)."""
        raise NotImplementedError

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        """``L_G`` from discriminator outputs on generated data ``(B,)`` (a scalar)."""
        raise NotImplementedError

    def penalty(self, critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor | None:
        """A regulariser of the discriminator added to ``L_D`` (None: no penalty)."""
        return None


class R1Regularised(GANObjective):
    """An objective with the optional R1 penalty ``(r1_gamma / 2) E[||grad_x D(x)||^2]`` on real data.

    Args:
        r1_gamma: ``gamma`` (0: no penalty; Mescheder et al. 2018 use 10 on CelebA / LSUN).
        n_critic: discriminator steps per generator step.
    """

    def __init__(self, r1_gamma: float = 0.0, n_critic: int = 1) -> None:
        super().__init__(n_critic)
        if r1_gamma < 0:
            raise ValueError(f"loss.r1_gamma={r1_gamma} must be >= 0 (0: no R1 penalty)")
        self.r1_gamma = r1_gamma

    def penalty(self, critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor | None:
        return 0.5 * self.r1_gamma * r1_penalty(critic, real) if self.r1_gamma > 0 else None


class NonSaturating(R1Regularised):
    """Original GAN with the non-saturating generator loss (Goodfellow et al. 2014)::

        L_D = E[-log sigmoid(r)] + E[-log(1 - sigmoid(f))] = E[softplus(-r)] + E[softplus(f)]
        L_G = E[-log sigmoid(f)] = E[softplus(-f)]

    (+ the R1 penalty with ``r1_gamma > 0``.)
    """

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean()


class Hinge(R1Regularised):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17)::

        L_D = E[max(0, 1 - r)] + E[max(0, 1 + f)],   L_G = -E[f]

    (+ the R1 penalty with ``r1_gamma > 0``.)
    """

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


class WGANGP(GANObjective):
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017, Alg. 1)::

        L_D = E[f] - E[r] + lambda E[(||grad D(x_hat)|| - 1)^2],   L_G = -E[f]

    Args:
        gp_lambda: penalty weight ``lambda`` (10 in the paper).
        n_critic: critic steps per generator step (5 in the paper).
    """

    def __init__(self, gp_lambda: float = 10.0, n_critic: int = 5) -> None:
        super().__init__(n_critic)
        self.gp_lambda = gp_lambda

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()

    def penalty(self, critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
        return self.gp_lambda * gradient_penalty(critic, real, fake)
