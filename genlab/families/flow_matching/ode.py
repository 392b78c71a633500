"""ODE sampling and likelihoods of a velocity field ``v(x, t)``, with torchdiffeq.

* :class:`ODESolver`: integrates ``dx/dt = f(t, x)`` between two times with a torchdiffeq
  method (fixed-grid ``euler``, ``midpoint``, ``rk4``, ...: ``steps`` equal steps; adaptive
  ``dopri5``, ...: ``rtol`` / ``atol``); :func:`transport` runs a velocity net through it from
  one time to another and returns the end state with the function evaluations (NFE) it took,
  :class:`Solution`: the one code path of sampling, denoising, inpainting and ODE inversion.
* Divergence of ``v`` w.r.t. ``x``: :class:`ExactDivergence` (one vector-Jacobian product per
  dimension: the trace of the Jacobian) or :class:`HutchinsonDivergence`
  (``div v = E_eps[eps^T (dv/dx) eps]`` for ``E[eps eps^T] = I``; Hutchinson 1989; FFJORD,
  Grathwohl et al. 2019, Eq. 7), ``k`` probes fixed for a whole solve.
* :class:`ODELikelihood`: the instantaneous change of variables (Chen et al. 2018, Theorem 1;
  FFJORD, Eq. 4; Lipman et al. 2023, App. C): along ``dx/dt = v(x, t)``,
  ``d/dt log p_t(x_t) = -div v(x_t, t)``, so for data ``x`` at ``t = 1``::

      log p_1(x) = log N(x_0; 0, I) - int_0^1 div v(x_t, t) dt

  computed by integrating the augmented state ``[x_t, l_t]`` with
  ``d/dt [x_t, l_t] = [v(x_t, t), -div v(x_t, t)]`` from ``x_1 = x``, ``l_1 = 0`` at ``t = 1``
  back to ``t = 0``, where ``l_0 = int_0^1 div v dt``: ``log p_1(x) = log N(x_0) - l_0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.solvers import FixedGridODESolver

from genlab import interrupt, progress

LOG_2PI = math.log(2 * math.pi)
State = Tensor | tuple[Tensor, ...]
Dynamics = Callable[[Tensor, State], State]


class CountedVelocity:
    """``v(x, t)`` of a net ``net(x, t (B,))`` as ODE dynamics ``f(t, x)``, counting the calls in :attr:`nfe`."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.net, self.nfe = net, 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        interrupt.check("during the ODE solve")  # a stop request between function evaluations
        self.nfe += 1
        return self.net(x, t.to(x.dtype).expand(x.shape[0]))


class ODESolver:
    """Integrate ``dx/dt = f(t, x)`` from ``t0`` to ``t1`` with torchdiffeq.

    Args:
        method: a torchdiffeq method: fixed-grid (``euler``: 1 NFE per step, ``midpoint``: 2,
            ``rk4``: 4) or adaptive (``dopri5``: about 6 NFE per accepted step).
        steps: number of equal steps of a fixed-grid method (ignored by adaptive ones).
        rtol, atol: error tolerances of an adaptive method (ignored by fixed-grid ones).
        guidance: the classifier-free guidance weight ``w`` of the samples of a class-conditional model,
            ``v(x, t, ∅) + w (v(x, t, y) - v(x, t, ∅))`` (>= 1; None or 1: unguided; Ho & Salimans'
            ``w_HS = w - 1``): :class:`~genlab.families.flow_matching.family.FlowMatching` reads it when
            it samples (and denoises, inpaints, decodes) with this solver. A likelihood's solver leaves it
            None: the likelihood is always the unguided model's.
    """

    def __init__(self, method: str = "midpoint", steps: int = 50, rtol: float = 1e-5, atol: float = 1e-5,
                 guidance: float | None = None) -> None:
        if method not in SOLVERS:
            raise ValueError(f"unknown ODE solver method={method!r}; valid: {', '.join(sorted(SOLVERS))} "
                             "(torchdiffeq); e.g. euler / midpoint with steps=N, or dopri5 with rtol/atol")
        if steps < 1:
            raise ValueError(f"ODE solver steps={steps} must be >= 1")
        if rtol <= 0 or atol <= 0:
            raise ValueError(f"ODE solver tolerances must be positive, got rtol={rtol}, atol={atol}")
        if guidance is not None and not guidance >= 1.0:
            raise ValueError(f"model.solver.guidance={guidance}: the classifier-free guidance weight must be >= 1 "
                             "(1 = unguided; Ho & Salimans' w_HS = w - 1), or null")
        self.method, self.steps, self.rtol, self.atol = method, steps, rtol, atol
        self.guidance = None if guidance is None else float(guidance)

    @property
    def adaptive(self) -> bool:
        """Whether the method chooses its own steps (tolerance-controlled)."""
        return not issubclass(SOLVERS[self.method], FixedGridODESolver)

    def _options(self) -> dict:
        if self.adaptive:
            return {}
        n = self.steps
        return {"grid_constructor": lambda func, y0, t: torch.linspace(t[0], t[-1], n + 1, dtype=t.dtype, device=t.device)}

    def with_steps(self, steps: int) -> ODESolver:
        """The same method, tolerances and guidance with ``steps`` fixed-grid steps (ignored by adaptive methods)."""
        return ODESolver(self.method, steps=steps, rtol=self.rtol, atol=self.atol, guidance=self.guidance)

    @property
    def weight(self) -> float:
        """The guidance weight of its solves (1: unguided)."""
        return 1.0 if self.guidance is None else self.guidance

    def integrate(self, f: Dynamics, y0: State, t0: float, t1: float) -> State:
        """The state at ``t1`` of ``dy/dt = f(t, y)``, ``y(t0) = y0`` (a tensor or a tuple of tensors)."""
        ref = y0[0] if isinstance(y0, tuple) else y0
        t = torch.tensor([t0, t1], dtype=ref.dtype, device=ref.device)
        with progress.bar(f"ODE solve ({self.method}) from t={t0:g} to {t1:g}", total=1.0, unit="of t") as bar:
            out = odeint(_reporting(f, bar, t0, t1), y0, t, method=self.method, rtol=self.rtol, atol=self.atol,
                         options=self._options())
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def __repr__(self) -> str:
        spec = f"rtol={self.rtol}, atol={self.atol}" if self.adaptive else f"steps={self.steps}"
        guided = "" if self.guidance is None else f", guidance={self.guidance:g}"
        return f"ODESolver({self.method}, {spec}{guided})"


def _reporting(f: Dynamics, bar: progress.Bar, t0: float, t1: float) -> Dynamics:
    """``f`` that moves ``bar`` to the share of ``[t0, t1]`` reached at each evaluation (an ETA for adaptive
    solves, whose number of steps is not known in advance)."""
    span, calls = abs(t1 - t0) or 1.0, [0]

    def g(t: Tensor, y: State) -> State:
        calls[0] += 1
        bar.reach(min(1.0, abs(float(t.detach()) - t0) / span))
        if calls[0] % 10 == 0:
            bar.note(f"nfe={calls[0]}")
        return f(t, y)

    return g


@dataclass
class Solution:
    """The state ``y`` at the end of an ODE solve and ``nfe``, the velocity evaluations it took."""

    y: Tensor
    nfe: int


def transport(net: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float,
              solver: ODESolver) -> Solution:
    """``y(t1)`` of ``dy/dt = v(y, t)``, ``y(t0) = y0`` ``(B, ...)``, for the velocity net ``v = net``
    (forwards ``t0 < t1``: noise towards data; backwards: inversion), and its NFE."""
    velocity = CountedVelocity(net)
    return Solution(solver.integrate(velocity, y0, t0, t1), velocity.nfe)


# -- divergence ----------------------------------------------------------------------------------
class ExactDivergence:
    """``div v = tr(dv/dx) = sum_d dv_d/dx_d`` by autograd: ``D`` vector-Jacobian products with the
    basis vectors ``e_d``, batched ``chunk`` at a time (``is_grads_batched``). Cost ``O(D)`` net
    backward passes per evaluation: for low-dimensional data only."""

    kind = "exact"

    def __init__(self, chunk: int = 64) -> None:
        self.chunk = chunk

    def draw(self, x: Tensor) -> None:
        """No probes (the exact trace is deterministic)."""
        return None

    def __call__(self, v: Tensor, x: Tensor, probes: None = None) -> Tensor:
        """``tr(dv/dx)`` per example, ``(B,)``; ``v = f(x)`` computed with grad from ``x`` ``(B, ...)``."""
        d = x[0].numel()
        eye = torch.eye(d, dtype=v.dtype, device=v.device)
        total = v.new_zeros(v.shape[0])
        for start in range(0, d, self.chunk):
            basis = eye[start : start + self.chunk]  # (c, D)
            grads = basis[:, None].expand(-1, v.shape[0], -1).reshape(len(basis), *v.shape)
            (jt,) = torch.autograd.grad(v, x, grads, retain_graph=True, is_grads_batched=True)  # (c, B, ...)
            idx = torch.arange(start, start + len(basis), device=v.device)
            total = total + jt.flatten(2)[torch.arange(len(basis)), :, idx].sum(0)
        return total


def _rademacher(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _gaussian(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.randn(shape, device=like.device, dtype=like.dtype)


PROBE_NOISE: dict[str, Callable[[tuple[int, ...], Tensor], Tensor]] = {"rademacher": _rademacher, "gaussian": _gaussian}


class HutchinsonDivergence:
    """Hutchinson's trace estimator ``div v ~ (1/k) sum_j eps_j^T (dv/dx) eps_j`` (FFJORD, Eq. 7),
    one vector-Jacobian product per probe. Unbiased for ``E[eps eps^T] = I``: Rademacher noise
    (lowest variance, ``Var = 2 sum_{i != j} J_ij^2``) or Gaussian (``Var = 2 ||J_sym||_F^2``).

    Args:
        probes: ``k``, probes per evaluation (variance falls as ``1/k``).
        noise: ``rademacher`` or ``gaussian``.
    """

    kind = "estimate"

    def __init__(self, probes: int = 1, noise: str = "rademacher") -> None:
        if noise not in PROBE_NOISE:
            raise ValueError(f"unknown Hutchinson noise={noise!r}; valid: {', '.join(PROBE_NOISE)}")
        if probes < 1:
            raise ValueError(f"Hutchinson probes={probes} must be >= 1")
        self.probes, self.noise = probes, noise

    def draw(self, x: Tensor) -> Tensor:
        """``k`` probes shaped like ``x``: ``(k, B, ...)``, kept fixed for one ODE solve (FFJORD)."""
        return PROBE_NOISE[self.noise]((self.probes, *x.shape), x)

    def per_probe(self, v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
        """``eps_j^T (dv/dx) eps_j`` for every probe, ``(k, B)``."""
        (vjp,) = torch.autograd.grad(v, x, probes, retain_graph=True, is_grads_batched=True)
        return (vjp * probes).flatten(2).sum(-1)

    def __call__(self, v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
        return self.per_probe(v, x, probes).mean(0)


# -- likelihood ------------------------------------------------------------------------------------
def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per example, ``(B,)``."""
    return -0.5 * (z * z + LOG_2PI).flatten(1).sum(1)


class ODELikelihood:
    """Continuous ``log p_1(x)`` of the flow by the instantaneous change of variables (module doc).

    Args:
        solver: integrator of the augmented ODE (few euler / midpoint steps for cheap
            validation; dopri5 for test).
        exact_max_dims: use :class:`ExactDivergence` for data of at most this many dimensions,
            else ``hutchinson``.
        hutchinson: the trace estimator for larger data.
    """

    def __init__(
        self,
        solver: ODESolver | None = None,
        exact_max_dims: int = 16,
        hutchinson: HutchinsonDivergence | None = None,
    ) -> None:
        self.solver = solver or ODESolver("dopri5")
        if self.solver.weight != 1.0:
            raise ValueError(f"a likelihood's ODE solver takes no guidance (got guidance={self.solver.guidance}): the "
                             "likelihood is always the unguided model's. Fix: leave its solver's guidance null")
        self.exact_max_dims = exact_max_dims
        self.hutchinson = hutchinson or HutchinsonDivergence()

    def divergence(self, dims: int) -> ExactDivergence | HutchinsonDivergence:
        """The divergence used for ``dims``-dimensional data."""
        return ExactDivergence() if dims <= self.exact_max_dims else self.hutchinson

    def _dynamics(self, velocity: CountedVelocity, div: ExactDivergence | HutchinsonDivergence,
                  probes: Tensor | None) -> Dynamics:
        def f(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                x = state[0].detach().requires_grad_(True)
                v = velocity(t, x)
                d = div(v, x, probes)
            return v.detach(), -d.detach()

        return f

    def log_density(self, velocity: CountedVelocity, x: Tensor) -> tuple[Tensor, str]:
        """``log p_1(x)`` in nats per example ``(B,)`` and the divergence kind (``exact`` / ``estimate``).

        Integrates ``[x_t, l_t]`` from ``t = 1`` to ``t = 0`` and returns ``log N(x_0) - l_0``.
        """
        div = self.divergence(x[0].numel())
        f = self._dynamics(velocity, div, div.draw(x))
        x0, l0 = self.solver.integrate(f, (x, x.new_zeros(x.shape[0])), 1.0, 0.0)
        return standard_normal_log_prob(x0) - l0, div.kind

    def __repr__(self) -> str:
        return f"ODELikelihood({self.solver!r}, exact_max_dims={self.exact_max_dims}, hutchinson_probes={self.hutchinson.probes})"
