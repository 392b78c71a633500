"""VQ-VAE family: :class:`VQVAE`, its objective :class:`VQObjective` and the EMA quantiser."""

from genlab.families.vqvae.family import VQObjective, VQVAE
from genlab.families.vqvae.quantizer import VectorQuantizer

__all__ = ["VQVAE", "VQObjective", "VectorQuantizer"]
