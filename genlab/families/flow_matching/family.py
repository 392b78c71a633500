"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023; OT-CFM, Tong et al. 2023):
a velocity field ``v_theta(x, t)`` trained by regression (``loss`` group, :mod:`.objectives`),
sampled and scored by its ODE ``dx/dt = v_theta(x, t)`` from noise (``t = 0``) to data (``t = 1``).

Data mapping. Discrete ``x in {0..L-1}^D`` (images, or binned points) is dequantised and
scaled to ``[-1, 1]``: ``y = 2 (x + u) / L - 1``, ``u ~ U[0,1)^D``, bin width ``w = 2/L``
(for ``points`` data these are the coordinates themselves: bin ``v`` covers
``[-1 + 2v/L, -1 + 2(v+1)/L)``). The flow is trained on ``y`` and models its continuous density
``p_1(y)``. The discrete likelihood is the dequantisation bound (Theis et al. 2016, Eq. 5)::

    log P(x) >= E_u[ log p_1(2 (x+u)/L - 1) ] + D log(2/L)

with ``log p_1`` from the instantaneous change of variables (:class:`.ode.ODELikelihood`).
Reported per example from one draw of ``u``, its kind is

* ``bound`` with the exact divergence: one draw of ``u`` is an unbiased estimate of the right-
  hand side, whose expectation lower-bounds ``log P(x)`` (Jensen: ``E_u log p <= log E_u p``);
  the mean over a test set is therefore a bound up to Monte-Carlo and ODE-solver error;
* ``estimate`` with Hutchinson's trace estimator: ``log p_1`` is then itself a stochastic
  estimate (unbiased for the integral of the trace, but noisy per example), so the figure is an
  estimate of the bound, not a bound that holds for every draw.

Samples: ``y_1 = ODESolve(v_theta, y_0 ~ N(0, I), 0 -> 1)``, mapped back by ``floor((y+1) L / 2)``
clipped to ``0..L-1``. The number of function evaluations of the last solve of each kind is
kept in :attr:`FlowMatching.nfe` (``sample``, ``val``, ``test``); :class:`.callbacks.NFEMonitor`
logs it as ``{val,test}/nfe``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo, check_discrete
from genlab.families.base import Family, LossOutput
from genlab.families.flow_matching.objectives import ConditionalFlowMatching
from genlab.families.flow_matching.ode import CountedVelocity, ODELikelihood, ODESolver
from genlab.metrics.likelihood import LogLikelihood, continuous_to_discrete
from genlab.nets import input_kind_error

Stage = Literal["val", "test"]


class FlowMatching(Family):
    """Continuous normalizing flow trained by flow matching (module docstring).

    Args:
        net: backbone factory ``net(shape=..., out_mult=1)`` -> ``module(x, t)`` (``_partial_`` in
            config): :class:`genlab.nets.unet.UNet` for images, :class:`genlab.nets.unet.TimeMLP`
            for points / small images.
        solver: ODE solver for sampling (default: midpoint, 50 steps).
        val_likelihood, test_likelihood: likelihood settings for validation (cheap: few steps,
            one Hutchinson probe) and test (accurate: dopri5).
        objective: the training loss (``loss`` group), :class:`ConditionalFlowMatching`.
    """

    name = "flow_matching"
    compare_rank = 50
    objective_type = ConditionalFlowMatching
    nll_kind = "bound"

    def __init__(
        self,
        net: Callable[..., nn.Module],
        solver: ODESolver | None = None,
        val_likelihood: ODELikelihood | None = None,
        test_likelihood: ODELikelihood | None = None,
        objective: ConditionalFlowMatching | None = None,
    ) -> None:
        super().__init__(objective or ConditionalFlowMatching())
        self.net = net
        self.solver = solver or ODESolver("midpoint", steps=50)
        self.likelihoods = {"val": val_likelihood or ODELikelihood(ODESolver("euler", 10)),
                            "test": test_likelihood or ODELikelihood(ODESolver("dopri5"))}
        self.nfe: dict[str, int] = {}
        self.info: DataInfo | None = None

    # -- setup -----------------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind == "text":
            return ("flow matching transports a continuous density by an ODE; text is categorical tokens "
                    "with no ordering of their ids to dequantise (use model=transformer for text)")
        if reason := input_kind_error(self.net, info.kind):
            return f"{reason}: use model=flow_matching_mlp (a TimeMLP backbone) for {info.kind} data"
        return None

    def build(self, info: DataInfo) -> nn.ModuleDict:
        self.info = info
        return nn.ModuleDict({"velocity": self.net(shape=info.shape, out_mult=1)})

    # -- data space <-> flow space ----------------------------------------------------------------
    def check_discrete(self, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, self.info, 'pass the uint8 data (flow matching dequantises them itself)')

    def _dtype(self, nets: nn.ModuleDict) -> torch.dtype:
        return next(nets.parameters()).dtype

    def dequantize(self, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        """Discrete ``x`` -> ``y = 2 (x + u) / L - 1 in [-1, 1)``, ``u ~ U[0,1)`` (one draw)."""
        xf = self.check_discrete(x).to(self._dtype(nets))
        return 2.0 * (xf + torch.rand_like(xf)) / self.info.levels - 1.0

    def to_data(self, y: Tensor) -> Tensor:
        """``y in [-1, 1]`` -> discrete data ``floor((y + 1) L / 2)`` clipped to ``0..L-1`` (uint8 if ``L <= 256``)."""
        levels = self.info.levels
        y = torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)
        x = ((y + 1.0) * (levels / 2.0)).floor().clamp(0, levels - 1)
        return x.to(torch.uint8 if levels <= 256 else torch.long)

    # -- training ---------------------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        return self.objective(nets["velocity"], self.dequantize(nets, batch["x"]))

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, nets: nn.ModuleDict, n: int, solver: ODESolver | None = None) -> Tensor:
        """``n`` continuous samples ``y_1 = ODESolve(v, y_0 ~ N(0, I), 0 -> 1)`` ``(n, *shape)``; records ``nfe["sample"]``."""
        p = next(nets.parameters())
        velocity = CountedVelocity(nets["velocity"])
        y0 = torch.randn(n, *self.info.shape, device=p.device, dtype=p.dtype)
        y1 = (solver or self.solver).integrate(velocity, y0, 0.0, 1.0)
        self.nfe["sample"] = velocity.nfe
        return y1

    @torch.no_grad()
    def sample(self, nets: nn.ModuleDict, n: int, solver: ODESolver | None = None) -> Tensor:
        """``n`` samples in data space (default solver: ``model.solver``)."""
        return self.to_data(self.generate(nets, n, solver))

    # -- likelihood -------------------------------------------------------------------------------
    def log_density(self, nets: nn.ModuleDict, y: Tensor, likelihood: ODELikelihood) -> tuple[Tensor, str, int]:
        """Continuous ``log p_1(y)`` ``(B,)`` in nats, the divergence kind and the NFE of the solve."""
        velocity = CountedVelocity(nets["velocity"])
        log_p, kind = likelihood.log_density(velocity, y)
        return log_p, kind, velocity.nfe

    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Stage = "test",
        likelihood: ODELikelihood | None = None,
    ) -> LogLikelihood:
        """Per-example dequantisation bound / estimate of ``log P(x)`` in nats (module docstring).

        Runs with autograd on (the divergence needs it), also under Lightning's inference mode.
        """
        likelihood = likelihood or self.likelihoods[stage]
        with torch.inference_mode(False), torch.enable_grad():
            y = self.dequantize(nets, batch["x"].clone())
            log_p, div_kind, nfe = self.log_density(nets, y, likelihood)
        self.nfe[stage] = nfe
        log_px = continuous_to_discrete(log_p.detach(), self.info.dims, 2.0 / self.info.levels)
        return LogLikelihood(log_px, "bound" if div_kind == "exact" else "estimate")
