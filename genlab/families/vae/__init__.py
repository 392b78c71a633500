"""VAE family: :class:`VAE` and its objectives :class:`ELBO`, :class:`IWAE`."""

from genlab.families.vae.family import VAE, VAEObjective
from genlab.families.vae.objectives import ELBO, IWAE

__all__ = ["VAE", "VAEObjective", "ELBO", "IWAE"]
