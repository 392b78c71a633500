"""The flow-matching training objective (the ``loss`` group: ``loss=cfm``, ``cfm_vp``, ``cfm_minibatch_ot``).

Conditional flow matching (Lipman et al. 2023, Eq. 9 and 14; Tong et al. 2023, Eq. 15)::

    L_CFM(theta) = E_{t ~ U[0,1], (x_0, x_1) ~ pi} || v_theta(x_t, t) - u_t ||^2,
    x_t = alpha_t x_1 + sigma_t x_0,  u_t = alpha'_t x_1 + sigma'_t x_0

with ``x_0 ~ N(0, I)``, ``x_1`` the (dequantised) data, and ``pi`` a coupling of the two:
independent (``pi = N(0, I) x q``, Lipman et al.) or the minibatch optimal-transport plan
(OT-CFM, Tong et al. 2023, Sec. 3.2; Pooladian et al. 2023), which straightens the learned
paths. Its gradient equals that of the intractable marginal flow-matching loss (Lipman et al.
2023, Theorem 2), so ``v_theta`` regresses onto the marginal velocity field whose ODE carries
``N(0, I)`` to the data distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from genlab.families.base import LossOutput
from genlab.families.flow_matching.paths import AffinePath, OTPath

Velocity = Callable[[Tensor, Tensor], Tensor]  # v(x (B, ...), t (B,)) -> (B, ...)


class IndependentCoupling:
    """``pi = p_0 x q``: noise and data are paired as drawn (Lipman et al. 2023)."""

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        return x0, x1

    def __repr__(self) -> str:
        return "IndependentCoupling()"


class MinibatchOTCoupling:
    """Exact optimal-transport pairing within a minibatch (Tong et al. 2023, Alg. 1 / Eq. 17).

    Solves the assignment ``min_P sum_ij P_ij ||x0_i - x1_j||^2`` over permutation matrices
    (equal weights: the OT plan between two empirical measures of the same size is a
    permutation) with :func:`scipy.optimize.linear_sum_assignment`, and reorders the noise
    ``x0`` so that ``x0[i]`` is transported to ``x1[i]``. Cost ``O(B^3)``, negligible for
    batches of a few hundred.
    """

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        if x0.shape != x1.shape:
            raise ValueError(f"minibatch OT pairs equal-sized batches, got noise {tuple(x0.shape)} "
                             f"and data {tuple(x1.shape)}")
        cost = torch.cdist(x0.detach().flatten(1).double(), x1.detach().flatten(1).double()).pow(2)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        order = torch.empty(len(cols), dtype=torch.long)
        order[torch.as_tensor(cols)] = torch.as_tensor(rows)  # noise row assigned to data column j
        return x0[order.to(x0.device)], x1

    def __repr__(self) -> str:
        return "MinibatchOTCoupling()"


class ConditionalFlowMatching:
    """The CFM regression loss (module docstring), a small callable of the velocity net.

    Args:
        path: the conditional probability path (``_target_`` in config); the OT path by default.
        coupling: how noise and data are paired (``None``: independent).
    """

    def __init__(self, path: AffinePath | None = None, coupling: Callable | None = None) -> None:
        if path is not None and not isinstance(path, AffinePath):
            raise TypeError(f"loss.path must be a probability path (e.g. genlab.families.flow_matching.OTPath), "
                            f"got {type(path).__name__}")
        self.path = path or OTPath()
        self.coupling = coupling or IndependentCoupling()

    def __call__(self, velocity: Velocity, x1: Tensor) -> LossOutput:
        """Monte-Carlo estimate of ``L_CFM`` on data ``x1`` ``(B, ...)``, mean over dims.

        Logs ``cfm_mse`` (the loss) and ``target_sq`` (``E ||u_t||^2`` per dim, its scale).
        """
        x0, x1 = self.coupling(torch.randn_like(x1), x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        s = self.path.sample(x0, x1, t)
        mse = (velocity(s.x_t, s.t) - s.u_t).pow(2).mean()
        return LossOutput(mse, {"cfm_mse": mse.detach(), "target_sq": s.u_t.pow(2).mean().detach()})

    def __repr__(self) -> str:
        return f"ConditionalFlowMatching(path={self.path!r}, coupling={self.coupling!r})"
