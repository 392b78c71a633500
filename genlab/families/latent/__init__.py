"""Two-stage models: :class:`TwoStage`, any family as a prior over a trained first stage's latents."""

from genlab.families.latent.family import TwoStage
from genlab.families.latent.stage1 import Stage1, load_stage1

__all__ = ["TwoStage", "Stage1", "load_stage1"]
