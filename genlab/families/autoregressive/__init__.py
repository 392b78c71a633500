"""Autoregressive family (:class:`Autoregressive`): PixelCNN and Transformer backbones."""

from genlab.families.autoregressive.family import Autoregressive

__all__ = ["Autoregressive"]
