"""Flow-matching family (:class:`FlowMatching`), its probability paths, couplings, the CFM loss
(``loss`` group), the ODE solver / likelihood machinery and its capabilities (denoising, inpainting,
ODE inversion)."""

from genlab.families.flow_matching.denoise import match_time, posterior_mean
from genlab.families.flow_matching.family import FlowMatching
from genlab.families.flow_matching.objectives import ConditionalFlowMatching, IndependentCoupling, MinibatchOTCoupling
from genlab.families.flow_matching.ode import (
    CountedVelocity, ExactDivergence, HutchinsonDivergence, ODELikelihood, ODESolver, Solution, transport,
)
from genlab.families.flow_matching.paths import AffinePath, OTPath, PathSample, VPPath

__all__ = [
    "FlowMatching", "ConditionalFlowMatching", "IndependentCoupling", "MinibatchOTCoupling", "ODESolver",
    "ODELikelihood", "ExactDivergence", "HutchinsonDivergence", "CountedVelocity", "Solution", "transport",
    "AffinePath", "OTPath", "VPPath", "PathSample", "match_time", "posterior_mean",
]
