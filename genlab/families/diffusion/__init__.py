"""Gaussian diffusion family (:class:`Diffusion`: DDPM / improved DDPM): the denoiser seam
(:class:`DiffusionModel`), its schedules, predictions, samplers (one reverse-chain loop; the fast
ODE solvers DPM-Solver++(2M) and EDM's Heun), autoguidance, the variational bound, the capabilities
(denoising, RePaint, DDIM inversion) and the training objectives (``loss`` group: ``simple``, ``hybrid``)."""

from genlab.families.diffusion.callbacks import GuideSnapshot
from genlab.families.diffusion.family import Diffusion
from genlab.families.diffusion.guidance import Guidance, GuideNet
from genlab.families.diffusion.model import DiffusionModel, ReverseStep
from genlab.families.diffusion.objectives import DiffusionObjective, HybridLoss, SimpleLoss
from genlab.families.diffusion.predictions import EpsPrediction, Prediction, VPrediction, X0Prediction
from genlab.families.diffusion.process import GaussianDiffusion
from genlab.families.diffusion.samplers import DDIM, Ancestral, DPMSolver, Heun, Sampler, run_chain
from genlab.families.diffusion.schedules import CosineSchedule, LinearSchedule, NoiseSchedule

__all__ = [
    "Diffusion", "DiffusionModel", "ReverseStep", "DiffusionObjective", "SimpleLoss", "HybridLoss",
    "GaussianDiffusion", "NoiseSchedule", "LinearSchedule", "CosineSchedule", "Prediction", "EpsPrediction",
    "X0Prediction", "VPrediction", "Sampler", "Ancestral", "DDIM", "DPMSolver", "Heun", "run_chain", "GuideSnapshot",
    "Guidance", "GuideNet",
]
