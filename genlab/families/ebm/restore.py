"""Inverse problems with an energy-based prior (the :class:`~genlab.families.base.Restorer` capability).

The EBM's prior is what its sampler draws: ``exp(-E(v) / T)`` with the sampler's temperature
``T = noise_std^2 / (2 step_size)`` (1 for the proper Langevin step, :mod:`.sampler`). The posterior given
``y = A(x) + noise`` is ``exp(-E(v) / T - ||y - A(v)||^2 / (2 sigma^2))`` (``sigma`` at least
:data:`~genlab.tasks.posterior.NOISE_FLOOR`), so the model's own SGLD (same temperature, box, gradient
clip) on the energy ``E(v) + T ||y - A(v)||^2 / (2 sigma^2)`` samples it (``langevin``), in the ``[-1, 1]``
bin scale, for ``steps`` steps (null: ``model.sampler.sample_steps``) from the pseudo-inverse ``A^+ y``.
The step is ``min(step_size, sigma^2 / (2 T ||A||^2))`` (the measurement term's curvature allows no more),
with the noise scaled to keep the temperature.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from genlab.data.scaling import BinScale
from genlab.families.base import Nets, Restorer
from genlab.families.ebm.sampler import Langevin
from genlab.tasks.operators import Measurement, affine_of
from genlab.tasks.posterior import NOISE_FLOOR, check_method


def posterior_sampler(prior: Langevin, noise: float, norm: float) -> tuple[Langevin, float]:
    """The SGLD of the posterior (module docstring) and the measurement term's weight ``T / (2 sigma^2)``."""
    temperature = prior.noise_std**2 / (2 * prior.step_size)
    sigma2 = max(noise, NOISE_FLOOR) ** 2
    step = min(prior.step_size, sigma2 / (2 * max(temperature, 1e-30) * max(norm, 1e-12) ** 2))
    sampler = Langevin(step, prior.noise_std * math.sqrt(step / prior.step_size), prior.train_steps,
                       prior.sample_steps, prior.grad_clip, prior.bounds)
    return sampler, temperature / (2 * sigma2)


class EBMRestorer(Restorer):
    """:class:`Restorer` of the EBM family (module docstring)."""

    restore_methods = ("langevin",)
    restore_samplers = ("langevin",)

    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        bins = BinScale(nets.info.levels)
        p = problem.rescaled(*affine_of(bins.to_unit, problem.y))
        labels = self.condition_labels(len(p.y), y, p.y.device, default=True)  # type: ignore[attr-defined]
        sampler, weight = posterior_sampler(self.sampler, p.noise, p.operator.norm())  # type: ignore[attr-defined]
        steps = sampler.sample_steps if options.steps is None else options.steps
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1 (Langevin steps)")

        def energy(v: Tensor) -> Tensor:
            return self.energy(nets, v, labels) + weight * p.residual(v).flatten(1).pow(2).sum(1)  # type: ignore[attr-defined]

        start = p.operator.pinv(p.y)
        start = start.clamp(*sampler.bounds) if sampler.bounds is not None else start
        return bins.to_unit(sampler(energy, start, steps))
