"""Classifier-free guidance of a class-conditional velocity field (Ho & Salimans 2022; the
``--cfg_scale`` of facebookresearch/flow_matching).

A conditional velocity net trained with label dropout is both ``v(x, t, y)`` and, with the null label
``∅``, the unconditional ``v(x, t, ∅)``. Guided sampling integrates the extrapolation::

    v_w(x, t, y) = v(x, t, ∅) + w (v(x, t, y) - v(x, t, ∅))          (w = 1: the conditional field)

(Ho & Salimans' ``(1 + w_HS) v(y) - w_HS v(∅)`` with ``w_HS = w - 1``). On an affine path the
velocity is affine in the score at fixed ``(x, t)``, ``v = a_t x + b_t grad log p_t(x)``, so this is
the flow of the guided score ``grad log [p_t(x | y)^w p_t(x)^(1 - w)]`` (exactly so for Gaussians).
:class:`ConditionalVelocity` is that field as a plain velocity ``(x, t) -> v``, so the ODE solvers,
denoising, inpainting and inversion run it unchanged. The likelihood is always the unguided
conditional field's (``w = 1``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConditionalVelocity:
    """``(x, t) -> v_w(x, t, y)`` for the labels ``y`` ``(B,)`` of the batch it runs on (module docstring).

    Args:
        net: ``net(x, t, y)`` (a :class:`~genlab.nets.unet.LabelConditioned`).
        labels: the class of each example, ``(B,)``.
        weight: ``w`` (1: unguided, one network call per evaluation; else two).
        null_label: the label of the unconditional field; None where the model has none (trained
            without label dropout), and then ``w`` must be 1.
    """

    def __init__(self, net: nn.Module, labels: Tensor, weight: float = 1.0, null_label: int | None = None) -> None:
        if weight != 1.0 and null_label is None:
            raise ValueError(f"classifier-free guidance weight {weight:g} needs the unconditional velocity, which this "
                             "conditional model never learned (it was trained with conditional.dropout=0). Fix: "
                             "retrain with conditional.dropout=0.1, or leave model.solver.guidance null")
        self.net, self.labels, self.weight, self.null_label = net, labels, float(weight), null_label

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        v = self.net(x, t, self.labels)
        if self.weight == 1.0:
            return v
        return torch.lerp(self.net(x, t, torch.full_like(self.labels, self.null_label)), v, self.weight)
