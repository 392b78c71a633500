"""GAN family: :class:`GAN`, its objectives (:class:`NonSaturating`, :class:`Hinge`,
:class:`WGANGP`) and DCGAN nets (:mod:`genlab.families.gan.nets`)."""

from genlab.families.gan.family import GAN
from genlab.families.gan.objectives import WGANGP, GANObjective, Hinge, NonSaturating, gradient_penalty, r1_penalty

__all__ = ["GAN", "GANObjective", "NonSaturating", "Hinge", "WGANGP", "gradient_penalty", "r1_penalty"]
