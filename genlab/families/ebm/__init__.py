"""Energy-based model family: :class:`EBM`, its SGLD sampler / replay buffer, objectives and grid."""

from genlab.families.ebm.family import EBM, EBMObjective
from genlab.families.ebm.grid import PartitionCache, grid_cells
from genlab.families.ebm.objectives import ContrastiveDivergence
from genlab.families.ebm.sampler import Langevin, ReplayBuffer

__all__ = ["EBM", "EBMObjective", "ContrastiveDivergence", "Langevin", "ReplayBuffer", "PartitionCache", "grid_cells"]
