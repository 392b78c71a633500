"""Inverse problems with an autoregressive prior (the :class:`~genlab.families.base.Restorer` capability):
masks only.

Where the operator is a mask, the posterior is the model's conditional ``P(x_missing | x_observed)``,
drawn by the family's conditional ancestral sampling (its :class:`~genlab.families.base.Inpainter`; exact
when every missing pixel comes after the observed ones in the generation order). The observed values are
the measurement rounded to the nearest level (with ``noise > 0``: the conditional given the rounded noisy
values; the model has no continuous noise model). Any other operator mixes pixels, and conditioning the
chain rule on a linear combination of pixels has no closed form: refused.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from genlab.data.scaling import data_dtype
from genlab.families.base import Nets, Restorer
from genlab.tasks.operators import Mask, Measurement
from genlab.tasks.posterior import check_method


class AutoregressiveRestorer(Restorer):
    """:class:`Restorer` of the autoregressive family (module docstring)."""

    restore_methods = ("conditional",)
    restore_samplers = ("conditional",)
    restore_operators = ("mask",)
    restore_limit = ("its posterior is the exact conditional P(x_missing | x_observed) of the chain rule, which "
                     "exists for a mask; an operator that mixes pixels (downsampling, blur, Fourier, projections) "
                     "would need the likelihood of linear combinations of pixels, which the chain rule does not give")

    def restore(self, nets: Nets, problem: Measurement, method: str, options: Any, y: Tensor | None = None) -> Tensor:
        check_method(method, self.restore_methods, self.name)  # type: ignore[attr-defined]
        op = problem.operator
        if not isinstance(op, Mask):
            raise ValueError(f"the {self.name} family restores only under operator=mask: {self.restore_limit}")  # type: ignore[attr-defined]
        top = nets.info.levels - 1
        dtype = next(nets.parameters()).dtype
        keep = op.keep.to(problem.y.device)
        observed = (problem.y * top).round().clamp(0, top)
        x = observed.to(data_dtype(top + 1)).where(keep, 0)
        filled = self.inpaint(nets, x, ~keep, options, y)  # type: ignore[attr-defined]
        return filled.to(dtype) / top

