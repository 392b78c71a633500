"""Vector quantisation with an EMA codebook (van den Oord et al. 2017, Sec. 3.1 and App. A.1).

A codebook ``e`` ``(K, Dz)``; an encoder output ``z_e`` is replaced by its nearest code::

    k(z) = argmin_j ||z - e_j||^2,      z_q = e_{k(z)}

Gradients pass *straight through* the quantiser (Sec. 3.2): the decoder's input is
``z_e + sg(z_q - z_e)``, whose value is ``z_q`` and whose gradient is the decoder's gradient at
``z_q``, copied to ``z_e``. The encoder is pulled to its codes by the commitment loss
``||z_e - sg(z_q)||^2`` (Eq. 3, third term); the codebook itself is learned by exponential moving
averages instead of the second term (App. A.1, Eq. 6-8): with ``n_j`` the vectors of the batch
assigned to code ``j`` and ``s_j`` their sum,

    N_j <- γ N_j + (1 - γ) n_j,    m_j <- γ m_j + (1 - γ) s_j,    e_j <- m_j / N_j

(``γ = 0``: every used code moves to the mean of its vectors in one step; an unused code keeps
its vector, as ``m_j / N_j`` does under pure decay). *Dead-code restarts* (Dhariwal et al. 2020,
Jukebox Sec. 3.2; vector-quantize-pytorch's ``threshold_ema_dead_code``): a code unused for
``restart_after`` consecutive updates is re-initialised to a random encoder output of the current
batch, with its statistics reset. The codebook starts from random encoder outputs of the first
batch it sees (a data-dependent initialisation).

The lookup (:meth:`VectorQuantizer.forward`) has no side effects, so a trained quantiser can be
used (by a two-stage model) in any mode; only :meth:`VectorQuantizer.update` changes the codebook,
and the VQ-VAE's objective calls it on training batches. Single process: under DDP the
statistics are those of each rank (not all-reduced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Quantized:
    """What the quantiser gives for encoder outputs ``z_e`` ``(B, Dz, h, w)``.

    Attributes:
        z_st: the straight-through quantised vectors ``z_e + sg(z_q - z_e)`` ``(B, Dz, h, w)``.
        codes: the code index of every position ``(B, h, w)`` int64.
        commitment: ``||z_e - sg(z_q)||^2`` per example, mean over positions and dims ``(B,)``.
    """

    z_st: Tensor
    codes: Tensor
    commitment: Tensor


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """``argmin_j ||z_i - e_j||^2`` for vectors ``z`` ``(N, Dz)`` and a codebook ``(K, Dz)``: ``(N,)``,
    from ``||z||^2 - 2 z.e + ||e||^2`` (the ``||z||^2`` term is the same for every code)."""
    dist = codebook.pow(2).sum(1)[None, :] - 2.0 * z @ codebook.T
    return dist.argmin(1)


def usage(codes: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Codebook usage of a batch of code indices: ``perplexity`` ``exp(H(p))`` of the codes'
    empirical distribution ``p`` (``K`` when all are used equally, 1 when one is) and
    ``codes_used``, the share of the ``K`` codes that occur."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return {"perplexity": entropy.exp().float(), "codes_used": (counts > 0).float().mean()}


class VectorQuantizer(nn.Module):
    """EMA vector quantiser (module docstring).

    Args:
        codebook_size: ``K``, the number of codes.
        code_dim: ``Dz``, the size of a code vector.
        decay: ``γ`` of the EMA updates (0: one-step k-means).
        restart_after: updates a code may go unused before it is restarted (0: never).
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, restart_after: int = 20) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.decay={decay} must be in [0, 1)")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.restart_after = decay, restart_after
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim) / math.sqrt(code_dim))
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(False))

    @staticmethod
    def flat(z: Tensor) -> Tensor:
        """``(B, Dz, h, w) -> (B h w, Dz)``."""
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def embed(self, codes: Tensor) -> Tensor:
        """Code indices ``(B, h, w)`` -> their vectors ``(B, Dz, h, w)``."""
        return self.codebook[codes.long()].permute(0, 3, 1, 2)

    def lookup(self, z: Tensor) -> Tensor:
        """The nearest code of every position of ``z`` ``(B, Dz, h, w)``: ``(B, h, w)`` int64."""
        with torch.no_grad():
            idx = nearest_codes(self.flat(z.float()), self.codebook)
        return idx.view(z.shape[0], *z.shape[2:])

    def forward(self, z: Tensor) -> Quantized:
        """Quantise ``z_e`` ``(B, Dz, h, w)`` (no side effects)."""
        codes = self.lookup(z)
        z_q = self.embed(codes).to(z.dtype)
        commitment = (z - z_q.detach()).pow(2).flatten(1).mean(1)
        return Quantized(z + (z_q - z).detach(), codes, commitment)

    @torch.no_grad()
    def set_codebook(self, vectors: Tensor) -> None:
        """Start the codebook at ``vectors`` ``(K, Dz)``, each with the statistics of one vector."""
        self.codebook.copy_(vectors)
        self.ema_sum.copy_(vectors)
        self.ema_count.fill_(1.0)
        self.unused.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, z: Tensor, codes: Tensor) -> None:
        """One EMA step of the codebook (App. A.1) from encoder outputs ``z`` ``(B, Dz, h, w)`` and their
        codes ``(B, h, w)``; initialises the codebook on the first call and restarts dead codes."""
        flat, idx = self.flat(z.detach().float()), codes.flatten()
        if not bool(self.initialised):
            self.set_codebook(self._random_rows(flat, self.codebook_size))
            idx = nearest_codes(flat, self.codebook)
        onehot = torch.zeros(len(idx), self.codebook_size, device=flat.device)
        onehot[torch.arange(len(idx), device=flat.device), idx] = 1.0
        count, total = onehot.sum(0), onehot.T @ flat  # n_j (K,), s_j (K, Dz)
        self.ema_count.mul_(self.decay).add_(count, alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1.0 - self.decay)
        alive = self.ema_count > 1e-8
        self.codebook[alive] = self.ema_sum[alive] / self.ema_count[alive, None]
        self.unused.add_(1).masked_fill_(count > 0, 0)
        self._restart(flat)

    def _restart(self, flat: Tensor) -> None:
        """Codes unused for ``restart_after`` updates get random rows of ``flat`` ``(N, Dz)``."""
        if self.restart_after <= 0:
            return
        dead = (self.unused >= self.restart_after).nonzero().flatten()
        if len(dead) == 0:
            return
        fresh = self._random_rows(flat, len(dead))
        self.codebook[dead], self.ema_sum[dead] = fresh, fresh
        self.ema_count[dead] = 1.0
        self.unused[dead] = 0

    @staticmethod
    def _random_rows(flat: Tensor, n: int) -> Tensor:
        """``n`` rows of ``flat`` drawn at random (with replacement when it has fewer than ``n``)."""
        if len(flat) >= n:
            return flat[torch.randperm(len(flat), device=flat.device)[:n]].clone()
        return flat[torch.randint(len(flat), (n,), device=flat.device)].clone()
