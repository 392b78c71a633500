"""Dequantisation: the ``loss`` config group for ``model=realnvp`` / ``model=glow``.

A flow has a continuous density ``p(y)`` on ``y in [0,1)^D``; the data are discrete,
``x in {0..L-1}^D``. A dequantiser ``q(u|x)`` on ``u in [0,1)^D`` gives ``y = (x + u) / L``
(bin width ``w = 1/L``) and the variational bound (Ho et al. 2019, Flow++, Eq. 12; Theis et al.
2016, Eq. 5 for uniform ``q``)::

    log P(x) = log ∫ p((x+u) w) w^D du  >=  E_{u ~ q(u|x)} [ log p((x+u) w) + D log w - log q(u|x) ]

The flow and ``q`` are trained by maximising this bound (the training loss is its negative, in
nats per dimension), and the reported discrete NLL is the same bound: ``nll_kind = "bound"``.

* :class:`UniformDequantization` (``loss=nll_uniform_dequant``): ``q = U[0,1)^D``, ``log q = 0``.
* :class:`VariationalDequantization` (``loss=nll_variational_dequant``): a learned conditional
  flow ``q(u|x)``, which tightens the bound by the divergence ``KL(q(u|x) || p(u|x))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.families.flow.layers import CheckerboardCoupling

LOG_2PI = math.log(2 * math.pi)


class Dequantization:
    """Base class of dequantisers (the flow family's ``objective``).

    ``build(info)`` returns the dequantiser's own networks (stored as ``nets["dequantizer"]``)
    or None; ``__call__(net, x)`` draws ``u ~ q(u|x)`` with ``log q(u|x)``.
    """

    def build(self, info: DataInfo) -> nn.Module | None:
        return None

    def __call__(self, net: nn.Module | None, x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``u ~ q(u|x)``.

        Args:
            net: the module returned by :meth:`build` (or None).
            x: discrete data scaled to ``[-1, 1]``, float ``(B, C, H, W)``.
        Returns:
            ``u`` in ``[0, 1)``, ``(B, C, H, W)``, and ``log q(u|x)`` in nats, ``(B,)``.
        """
        raise NotImplementedError


class UniformDequantization(Dequantization):
    """``u ~ U[0,1)^D``, ``log q(u|x) = 0`` (RealNVP, Glow)."""

    def __call__(self, net: nn.Module | None, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.rand_like(x), x.new_zeros(x.shape[0])


class ConditionalDequantizer(nn.Module):
    """``q(u|x)`` as a conditional flow on noise (Flow++, Sec. 3.1)::

        eps ~ N(0, I),  h_0 = mu(x) + exp(log_sigma(x)) * eps,  h_k = c_k(h_{k-1}; x),  u = sigmoid(h_K)

        log q(u|x) = log N(eps; 0, I) - sum log_sigma - sum_k log|det dc_k/dh| - sum log sigmoid'(h_K)

    with ``log sigmoid'(h) = log sigmoid(h) + log sigmoid(-h)``, ``c_k`` checkerboard affine
    couplings conditioned on ``x``, and ``mu, log_sigma`` from a zero-initialised net of ``x``.
    """

    def __init__(self, channels: int, net: Callable[..., nn.Module], steps: int = 2) -> None:
        super().__init__()
        self.gaussian = net(in_channels=channels, out_channels=2 * channels)
        self.couplings = nn.ModuleList(
            CheckerboardCoupling(channels, net, parity=k % 2, cond_channels=channels) for k in range(steps)
        )

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``u ~ q(u|x)`` and ``log q(u|x)`` ``(B,)`` for ``x`` scaled to [-1, 1]; ``eps`` fixes the noise."""
        eps = torch.randn_like(x) if eps is None else eps
        log_q = -0.5 * (eps * eps + LOG_2PI).flatten(1).sum(1)
        mu, log_sigma = self.gaussian(x).chunk(2, 1)
        h = mu + log_sigma.exp() * eps
        log_q = log_q - log_sigma.flatten(1).sum(1)
        for coupling in self.couplings:
            h, logdet = coupling(h, cond=x)
            log_q = log_q - logdet
        log_q = log_q - (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        return torch.sigmoid(h), log_q


class VariationalDequantization(Dequantization):
    """Learned ``q(u|x)`` (Flow++): :class:`ConditionalDequantizer` built from ``net``.

    Args:
        net: backbone factory ``net(in_channels=..., out_channels=...)`` (``_partial_`` in config).
        steps: number of conditional couplings after the conditional Gaussian.
    """

    def __init__(self, net: Callable[..., nn.Module], steps: int = 2) -> None:
        self.net, self.steps = net, steps

    def build(self, info: DataInfo) -> nn.Module:
        return ConditionalDequantizer(info.shape[0], self.net, self.steps)

    def __call__(self, net: nn.Module | None, x: Tensor) -> tuple[Tensor, Tensor]:
        return net(x)
