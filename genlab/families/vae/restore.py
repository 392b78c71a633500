"""Inverse problems with a VAE prior (the :class:`~genlab.families.base.Restorer` capability).

The generator is the decoder's mean ``G(z)`` (level units) under the prior ``p(z)`` (``N(0, I)``, or a
conditional VAE's ``p(z | y)``): the latent posterior ``exp(-||y_obs - A(G(z))||^2 / (2 sigma^2)) p(z)``
(:func:`genlab.tasks.posterior.latent_energy`; the decoder's own observation noise is left out, its mean
is the image):

* ``map``: its mode by L-BFGS (Bora et al. 2017, "Compressed Sensing using Generative Models", with
  their ``||z||^2`` prior term as ``-log p(z)``);
* ``langevin``: samples by Langevin dynamics on ``z``.

Both start from the encoder's posterior mean of the pseudo-inverse ``A^+ y`` (clamped to the levels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Nets, Restorer
from genlab.tasks.operators import Measurement
from genlab.tasks.posterior import LATENT_METHODS, check_method, latent_energy, latent_solve


class VAERestorer(Restorer):
    """:class:`Restorer` of the VAE family (module docstring)."""

    restore_methods = LATENT_METHODS
    restore_samplers = ("langevin",)

    def prior_nll(self, nets: Nets, c: Tensor | None) -> Any:
        """``z -> -log p(z)`` up to a constant, ``(B,)``: ``||z||^2 / 2``, or the conditional prior's."""
        prior = self.prior_params(nets, c)  # type: ignore[attr-defined]
        if prior is None:
            return lambda z: 0.5 * z.pow(2).sum(1)
        mu, logvar = prior
        return lambda z: 0.5 * ((z - mu) ** 2 * torch.exp(-logvar)).sum(1)

    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        top = nets.info.levels - 1
        p = problem.rescaled(1.0 / top, 0.0)  # level units, the decoder mean's scale
        c = self.label_input(nets, self.method_labels(len(p.y), y, p.y.device))  # type: ignore[attr-defined]
        decode = lambda z: self.decoder_mean(nets, z, c)  # type: ignore[attr-defined]  # noqa: E731
        with torch.no_grad():
            z0 = self.encode(nets, p.operator.pinv(p.y).clamp(0, top), c)[0]  # type: ignore[attr-defined]
        z = latent_solve(method, latent_energy(p, decode, self.prior_nll(nets, c)), z0, options, p.noise,
                         p.operator.norm())
        with torch.no_grad():
            return decode(z) / top
