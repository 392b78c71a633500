"""Inverse problems with a normalizing-flow prior (the :class:`~genlab.families.base.Restorer` capability).

The flow is an exact bijection ``y = G(z)`` from standard-normal latents (every scale's, flattened) to
the dequantised ``[0, 1]`` image scale, so the posterior over ``z``,
``p(z | y_obs) ∝ exp(-||y_obs - A(G(z))||^2 / (2 sigma^2)) N(z; 0, I)``, pushed through ``G`` *is* the
posterior over images (:func:`genlab.tasks.posterior.latent_energy`):

* ``map``: its mode in latent space by L-BFGS (Bora et al. 2017's latent optimisation, with the prior
  term ``||z||^2 / 2``; Asim et al. 2020, "Invertible generative models for inverse problems");
* ``langevin``: posterior samples by Langevin dynamics on ``z``.

Both start from the latent of the pseudo-inverse ``A^+ y`` (clamped to ``[0, 1]``); conditional: the
bijection and prior of the given class.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlab.data.scaling import BinScale
from genlab.families.base import Nets, Restorer
from genlab.tasks.operators import Measurement, affine_of
from genlab.tasks.posterior import LATENT_METHODS, check_method, latent_energy, latent_solve


class FlowRestorer(Restorer):
    """:class:`Restorer` of the flow family (module docstring)."""

    restore_methods = LATENT_METHODS
    restore_samplers = ("langevin",)

    def split_latent(self, nets: Nets, z: Tensor) -> list[Tensor]:
        """Flat latents ``(B, D)`` -> the per-scale latents of ``nets["flow"].latent_shapes``."""
        shapes = nets["flow"].latent_shapes
        parts = z.split([math.prod(s) for s in shapes], 1)
        return [part.reshape(len(z), *shape) for part, shape in zip(parts, shapes)]

    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        dtype = self._dtype(nets)  # type: ignore[attr-defined]
        bins = BinScale(nets.info.levels, 0.0, 1.0)
        problem = Measurement(problem.operator, problem.y.to(dtype), problem.noise)
        p = problem.rescaled(*affine_of(bins.to_unit, problem.y))
        c = self.label_input(nets, self.method_labels(len(p.y), y, p.y.device))  # type: ignore[attr-defined]
        decode = lambda z: self.decode(nets, self.split_latent(nets, z), c)  # type: ignore[attr-defined]  # noqa: E731
        with torch.no_grad():
            start = p.operator.pinv(p.y).clamp(0.0, 1.0)
            z0 = torch.cat([z.flatten(1) for z in self.encode(nets, start, c)[0]], 1)  # type: ignore[attr-defined]
        energy = latent_energy(p, decode, lambda z: 0.5 * z.pow(2).sum(1))
        z = latent_solve(method, energy, z0, options, p.noise, p.operator.norm())
        with torch.no_grad():
            return bins.to_unit(decode(z))
