"""Gaussian diffusion family (:class:`Diffusion`: DDPM / improved DDPM), its schedules,
predictions, samplers, autoguidance and training objectives (``loss`` group: ``simple``, ``hybrid``)."""

from genlab.families.diffusion.callbacks import BoundStandardError, GuideSnapshot
from genlab.families.diffusion.family import Diffusion
from genlab.families.diffusion.guidance import Guidance, GuideNet
from genlab.families.diffusion.objectives import DiffusionObjective, HybridLoss, SimpleLoss
from genlab.families.diffusion.predictions import EpsPrediction, Prediction, VPrediction, X0Prediction
from genlab.families.diffusion.process import GaussianDiffusion
from genlab.families.diffusion.samplers import DDIM, Ancestral, Sampler
from genlab.families.diffusion.schedules import CosineSchedule, LinearSchedule, NoiseSchedule

__all__ = [
    "Diffusion", "DiffusionObjective", "SimpleLoss", "HybridLoss", "GaussianDiffusion", "NoiseSchedule",
    "LinearSchedule", "CosineSchedule", "Prediction", "EpsPrediction", "X0Prediction", "VPrediction",
    "Sampler", "Ancestral", "DDIM", "BoundStandardError", "GuideSnapshot", "Guidance", "GuideNet",
]
