"""Normalizing-flow family (:class:`Flow`: RealNVP / Glow) and its dequantisers (``loss`` group)."""

from genlab.families.flow.family import Flow
from genlab.families.flow.objectives import Dequantization, UniformDequantization, VariationalDequantization

__all__ = ["Flow", "Dequantization", "UniformDequantization", "VariationalDequantization"]
