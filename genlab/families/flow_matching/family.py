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

The number of function evaluations of each likelihood solve travels with the result
(``LogLikelihood.extras["nfe"]``, per example): the module logs its mean as ``{val,test}/nfe``
(constant for fixed-grid solvers, adaptive for dopri5).

Samples: ``y_1 = ODESolve(v_theta, y_0 ~ N(0, I), 0 -> 1)``, mapped back by ``floor((y+1) L / 2)``
clipped to ``0..L-1`` (:class:`genlab.data.scaling.BinScale`); :meth:`FlowMatching.generate` returns
them with the NFE of the solve. The same ODE (:func:`.ode.transport`) serves the capabilities:
denoising from the matching time of the path (:mod:`.denoise`), inpainting by replacement along the
path (:mod:`.inpaint`) and ODE inversion as an encoder (data at ``t = 1`` back to noise at ``t = 0``).

Class-conditional (``+conditional=class``): a learned label table of the backbone's time-embedding
width is added to its time embedding, ``v(x, t, y)``, trained with label dropout (0.1 by default) so
that the null label gives the unconditional field. Samples are classifier-free guided on the velocity,
``v(x, t, ∅) + w (v(x, t, y) - v(x, t, ∅))`` with ``w = model.solver.guidance`` (1 or null: unguided;
:mod:`.guidance`). The likelihood is ``log p(x | y)`` of the unguided conditional field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo, check_discrete
from genlab.data.scaling import BinScale
from genlab.families.base import Conditional, Denoiser, Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.flow_matching.restore import FlowMatchingRestorer
from genlab.families.flow_matching import denoise as fm_denoise
from genlab.families.flow_matching.guidance import ConditionalVelocity
from genlab.families.flow_matching.inpaint import fill_along_path
from genlab.families.flow_matching.objectives import ConditionalFlowMatching, Velocity
from genlab.families.flow_matching.ode import CountedVelocity, ODELikelihood, ODESolver, Solution, transport
from genlab.metrics.likelihood import LogLikelihood, continuous_to_discrete
from genlab.nets import input_kind_error
from genlab.nets.unet import LabelConditioned, condition_dim

Stage = Literal["val", "test"]


class FlowMatching(Family, Likelihood, Denoiser, Inpainter, Encoder, Conditional, FlowMatchingRestorer):
    """Continuous normalizing flow trained by flow matching (module docstring).

    Conditional (``self.condition`` set): ``nets["label"]``, a table ``y -> (B, temb_dim)`` added to the
    velocity net's time embedding; the loss regresses ``v(x_t, t, y)`` with a share
    :meth:`label_dropout` of the labels dropped to the null label; every ODE solve runs the velocity
    of :meth:`velocity` (the labels given, classifier-free guided with the solver's ``guidance``
    weight ``w``, Ho & Salimans' ``w_HS = w - 1``; the likelihood unguided). A guidance weight on an
    unconditional model is refused with the fix.

    Args:
        net: backbone factory ``net(shape=..., out_mult=1)`` -> ``module(x, t)`` (``_partial_`` in
            config): :class:`genlab.nets.unet.UNet` for images, :class:`genlab.nets.unet.TimeMLP`
            for points / small images.
        solver: ODE solver for sampling (default: midpoint, 50 steps); ``sample(..., sampler=)``
            overrides it per call. Denoising, inpainting and ODE inversion use its method.
        val_likelihood, test_likelihood: likelihood settings for validation (cheap: few steps,
            one Hutchinson probe) and test (accurate: dopri5).
        objective: the training loss (``loss`` group), :class:`ConditionalFlowMatching`.
    """

    name = "flow_matching"
    compare_rank = 50
    objective_type = ConditionalFlowMatching
    nll_kind = "bound"
    denoise_methods = fm_denoise.METHODS
    inpaint_method = "replacement along the probability path"
    latent_paths = ("slerp", "linear")
    encoder_kind = "ODE inversion"
    default_label_dropout = 0.1
    guidance_key = "model.solver.guidance"  # classifier-free guidance weight (1 = unguided)

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

    # -- setup -----------------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind == "text":
            return ("flow matching transports a continuous density by an ODE; text is categorical tokens "
                    "with no ordering of their ids to dequantise (use model=transformer for text)")
        if reason := input_kind_error(self.net, info.kind):
            return f"{reason}: use model=flow_matching_mlp (a TimeMLP backbone) for {info.kind} data"
        return None

    def build(self, info: DataInfo) -> Nets:
        nets = Nets(info, {"velocity": self.net(shape=info.shape, out_mult=1)})
        if self.condition is not None:  # the label table, added to the time embedding
            nets["label"] = self.condition.embedding(condition_dim(nets["velocity"]))
        return nets

    # -- conditions ---------------------------------------------------------------------------------
    def velocity(self, nets: Nets, labels: Tensor | None = None, weight: float = 1.0) -> Velocity:
        """The velocity field ``(x, t) -> v`` every solve integrates: the net itself where unconditional,
        else ``v(x, t, labels)`` classifier-free guided with ``weight`` (:mod:`.guidance`; 1: unguided)."""
        if labels is None:
            if weight != 1.0:
                raise ValueError(f"classifier-free guidance weight {weight:g} needs a class-conditional model, and "
                                 "this flow-matching model is unconditional. Fix: train with +conditional=class, or "
                                 "leave model.solver.guidance null (1 = unguided)")
            return nets["velocity"]
        null = self.condition.null_label if self.label_dropout() > 0 else None
        return ConditionalVelocity(LabelConditioned(nets["velocity"], nets["label"]), labels, weight, null)

    # -- data space <-> flow space (bins of width 2/L in [-1, 1]) ------------------------------------
    @staticmethod
    def check_discrete(nets: Nets, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, nets.info, 'pass the uint8 data (flow matching dequantises them itself)')

    @staticmethod
    def _dtype(nets: nn.ModuleDict) -> torch.dtype:
        return next(nets.parameters()).dtype

    def dequantize(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` -> ``y = 2 (x + u) / L - 1 in [-1, 1)``, ``u ~ U[0,1)`` (one draw)."""
        return BinScale(nets.info.levels).uniform(self.check_discrete(nets, x), self._dtype(nets))

    @staticmethod
    def to_data(nets: Nets, y: Tensor) -> Tensor:
        """``y in [-1, 1]`` -> discrete data ``floor((y + 1) L / 2)`` clipped to ``0..L-1`` (uint8 if ``L <= 256``)."""
        return BinScale(nets.info.levels).to_data(y)

    # -- training ---------------------------------------------------------------------------------
    def loss(self, nets: Nets, batch: dict[str, Tensor]) -> LossOutput:
        """The CFM loss on the batch (given its labels, with label dropout, where conditional)."""
        labels = self.training_labels(batch) if self.condition is not None else None
        return self.objective(self.velocity(nets, labels), self.dequantize(nets, batch["x"]))

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, nets: Nets, n: int, solver: ODESolver | None = None, y: Tensor | None = None) -> Solution:
        """``n`` continuous samples ``y_1 = ODESolve(v, y_0 ~ N(0, I), 0 -> 1)`` ``(n, *shape)`` and the
        NFE of the solve (``solver``, with its guidance weight; None: ``model.solver``); of the classes
        ``y`` where conditional (None: drawn from ``p(y)``)."""
        solver = solver or self.solver
        p = next(nets.parameters())
        labels = self.method_labels(n, y, p.device, sampling=True)
        y0 = torch.randn(n, *nets.info.shape, device=p.device, dtype=p.dtype)
        return transport(self.velocity(nets, labels, solver.weight), y0, 0.0, 1.0, solver)

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: ODESolver | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples in data space; ``sampler``: the ODE solver (None: ``model.solver``); ``y``: the
        classes of a conditional model's samples (None: drawn from ``p(y)``)."""
        return self.to_data(nets, self.generate(nets, n, sampler, y).y)

    # -- likelihood -------------------------------------------------------------------------------
    def log_density(self, nets: Nets, y: Tensor, likelihood: ODELikelihood,
                    labels: Tensor | None = None) -> tuple[Tensor, str, int]:
        """Continuous ``log p_1(y)`` ``(B,)`` in nats (``log p_1(y | labels)`` of the unguided conditional
        field where conditional), the divergence kind and the NFE of the solve."""
        velocity = CountedVelocity(self.velocity(nets, labels))
        with torch.compiler.set_stance("force_eager"):  # batched VJPs of compiled graphs fail (run config `compile`)
            log_p, kind = likelihood.log_density(velocity, y)
        return log_p, kind, velocity.nfe

    def log_likelihood(
        self, nets: Nets, batch: dict[str, Tensor], stage: Stage = "test",
        likelihood: ODELikelihood | None = None,
    ) -> LogLikelihood:
        """Per-example dequantisation bound / estimate of ``log P(x)`` in nats (module docstring; ``log p(x | y)``
        with the batch's ``y`` where conditional, unguided), with ``extras["nfe"]``: the velocity
        evaluations of the solve, per example ``(B,)``.

        Runs with autograd on (the divergence needs it), also under Lightning's inference mode.
        """
        likelihood = likelihood or self.likelihoods[stage]
        with torch.inference_mode(False), torch.enable_grad():
            y = self.dequantize(nets, batch["x"].clone())
            labels = self.labels(batch).clone() if self.condition is not None else None  # not an inference tensor
            log_p, div_kind, nfe = self.log_density(nets, y, likelihood, labels)
        info = nets.info
        log_px = continuous_to_discrete(log_p.detach(), info.dims, BinScale(info.levels).width)
        nfes = torch.full(log_px.shape, float(nfe), dtype=torch.float64, device=log_px.device)
        return LogLikelihood(log_px, "bound" if div_kind == "exact" else "estimate", {"nfe": nfes})

    def summarize_likelihood(self, nets: Nets, n: int, sums: dict[str, float]) -> dict[str, float]:
        """``nfe``: the mean number of velocity evaluations of a likelihood solve over the epoch."""
        return {"nfe": sums["nfe"] / n} if n else {}

    # -- Denoiser: start the ODE at the path's matching time (:mod:`.denoise`) --------------------------
    def noise_space(self, nets: Nets, x: Tensor) -> Tensor:
        """Discrete ``x`` -> the dequantised model scale ``2 (x + u) / L - 1``."""
        return self.dequantize(nets, x)

    def to_unit(self, nets: Nets, y: Tensor) -> Tensor:
        """Model scale -> ``[0, 1]`` (level ``v`` at its bin centre ``2 (v + 1/2) / L - 1``)."""
        return BinScale(nets.info.levels).to_unit(y)

    def denoise_plan(self, nets: Nets, sigma: float, steps: int | None) -> dict[str, Any]:
        return fm_denoise.denoise_plan(self.objective.path, self.solver, sigma, steps)

    def describe_plan(self, plan: dict[str, Any], method: str) -> str:
        return fm_denoise.describe_plan(plan, method)

    def denoise(self, nets: Nets, y: Tensor, plan: dict[str, Any], method: str,
                labels: Tensor | None = None) -> Tensor:
        """Noisy ``y`` -> denoised (:mod:`.denoise`); a conditional model given ``labels`` (``y`` is the noisy
        input here; None: the null label), guided with ``model.solver.guidance``."""
        velocity = self.velocity(nets, self.method_labels(len(y), labels, y.device), self.solver.weight)
        return fm_denoise.denoise(velocity, self.objective.path, self.solver, y, plan, method).y

    # -- Inpainter: replacement along the probability path (:mod:`.inpaint`) -----------------------------
    @torch.no_grad()
    def inpaint(self, nets: Nets, x: Tensor, missing: Tensor, options: Any, y: Tensor | None = None) -> Tensor:
        """ODE on ``options.steps`` intervals (None: ``model.solver.steps``), the known region on the path;
        a conditional model given the classes ``y`` (None: the null label), guided with ``model.solver.guidance``."""
        steps = self.solver.steps if options.steps is None else options.steps
        velocity = self.velocity(nets, self.method_labels(len(x), y, x.device), self.solver.weight)
        x1 = self.dequantize(nets, x)
        filled = fill_along_path(velocity, self.objective.path, self.solver, x1, missing, steps)
        return self.to_data(nets, filled.y).to(x.dtype)

    # -- Encoder: ODE inversion -------------------------------------------------------------------------
    def _inversion_solver(self, steps: int | None) -> ODESolver:
        return self.solver if steps is None or self.solver.adaptive else self.solver.with_steps(steps)

    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Data -> noise code: the (unguided) velocity ODE from ``t = 1`` back to ``t = 0``, from the bin
        centres; given the classes ``y`` where conditional (None: the null label)."""
        y1 = BinScale(nets.info.levels).centres(self.check_discrete(nets, x), self._dtype(nets))
        velocity = self.velocity(nets, self.method_labels(len(x), y, x.device))
        return transport(velocity, y1, 1.0, 0.0, self._inversion_solver(steps)).y

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Noise codes -> discrete levels: the ODE from ``t = 0`` to ``t = 1``, binned; given the classes ``y``
        where conditional (None: the null label), guided with ``model.solver.guidance``."""
        solver = self._inversion_solver(steps)
        velocity = self.velocity(nets, self.method_labels(len(z), y, z.device), solver.weight)
        return self.to_data(nets, transport(velocity, z, 0.0, 1.0, solver).y)
