"""Energy-based model family: :class:`EBM`, its SGLD sampler / replay buffer and objectives."""

from genlab.families.ebm.family import EBM, EBMObjective
from genlab.families.ebm.objectives import ContrastiveDivergence
from genlab.families.ebm.sampler import Langevin, ReplayBuffer

__all__ = ["EBM", "EBMObjective", "ContrastiveDivergence", "Langevin", "ReplayBuffer"]
