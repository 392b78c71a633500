"""GAN family: :class:`GAN`, its objectives (:class:`NonSaturating`, :class:`Hinge`,
:class:`WGANGP`), its sampler pipeline (:class:`GANSampler`: propose -> refine -> Jacobian
truncation -> rejection) and DCGAN nets (:mod:`genlab.families.gan.nets`)."""

from genlab.families.gan.family import GAN
from genlab.families.gan.objectives import WGANGP, GANObjective, Hinge, NonSaturating, gradient_penalty, r1_penalty
from genlab.families.gan.sampler import GANSampler, Propose

__all__ = ["GAN", "GANObjective", "GANSampler", "Propose", "NonSaturating", "Hinge", "WGANGP", "gradient_penalty",
           "r1_penalty"]
