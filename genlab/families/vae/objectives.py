"""VAE training objectives: the ``loss`` config group for ``model=vae*``.

Both are minimised in nats per dimension (``-bound / D``) so that learning rates transfer
between datasets; logs are in bits per dimension. A conditional VAE passes the label embedding ``c = e(y)``: the same
objectives then bound ``log p(x|y)`` (``q(z|x, y)``, ``p(x|z, y)``, ``p(z|y)``; Sohn et al. 2015, Eq. 4-5).
"""

from __future__ import annotations


import torch
from torch import Tensor, nn

from genlab.families.base import LossOutput
from genlab.families.vae.family import VAE, VAEObjective
from genlab.metrics.likelihood import LN2


class ELBO(VAEObjective):
    """β-ELBO (Higgins et al. 2017): ``E_q[log p(x|z)] - β KL(q(z|x) || p(z))``.

    The KL term is in closed form (:meth:`VAE.kl`: to ``N(0, I)``, or to the learned ``p(z|y)``); the
    reconstruction term uses one reparametrised sample. With ``beta = 1`` the loss is the negative ELBO,
    an upper bound on ``-log p(x)`` (``-log p(x|y)`` given the labels).
    """

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def __call__(self, vae: VAE, nets: nn.ModuleDict, x: Tensor, c: Tensor | None = None) -> LossOutput:
        mu, logvar = vae.encode(nets, x, c)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = vae.log_px_given_z(nets, z, x, c)
        kl = vae.kl(nets, mu, logvar, c)
        d = nets.info.dims
        loss = (self.beta * kl - recon).mean() / d
        to_bpd = 1.0 / (d * LN2)
        return LossOutput(
            loss,
            {"nelbo_bpd": (kl - recon).mean().detach() * to_bpd, "recon_bpd": -recon.mean().detach() * to_bpd,
             "kl_bpd": kl.mean().detach() * to_bpd},
        )


class IWAE(VAEObjective):
    """Importance-weighted bound (Burda et al. 2016, Eq. 8) with ``k`` samples::

        L_k = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)] <= log p(x)

    ``k = 1`` is the ELBO; the bound tightens monotonically with ``k``.
    """

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def __call__(self, vae: VAE, nets: nn.ModuleDict, x: Tensor, c: Tensor | None = None) -> LossOutput:
        bound = vae.iw_bound(nets, x, self.k, c)  # (B,)
        d = nets.info.dims
        return LossOutput(-bound.mean() / d, {"iwae_bpd": -bound.mean().detach() / (d * LN2)})

