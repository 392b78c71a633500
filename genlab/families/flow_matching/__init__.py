"""Flow-matching family (:class:`FlowMatching`), its probability paths, couplings, the CFM loss
(``loss`` group) and the ODE solver / likelihood machinery."""

from genlab.families.flow_matching.callbacks import NFEMonitor
from genlab.families.flow_matching.family import FlowMatching
from genlab.families.flow_matching.objectives import ConditionalFlowMatching, IndependentCoupling, MinibatchOTCoupling
from genlab.families.flow_matching.ode import (
    CountedVelocity, ExactDivergence, HutchinsonDivergence, ODELikelihood, ODESolver,
)
from genlab.families.flow_matching.paths import AffinePath, OTPath, PathSample, VPPath

__all__ = [
    "FlowMatching", "ConditionalFlowMatching", "IndependentCoupling", "MinibatchOTCoupling", "ODESolver",
    "ODELikelihood", "ExactDivergence", "HutchinsonDivergence", "CountedVelocity", "AffinePath", "OTPath",
    "VPPath", "PathSample", "NFEMonitor",
]
