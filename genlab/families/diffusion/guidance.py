"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

Unconditional guidance: while sampling, the denoiser ``D`` is extrapolated away from a weaker
version of itself, the *guide* ``D_0``::

    D_w(x_t, t) = D_0(x_t, t) + w (D(x_t, t) - D_0(x_t, t))          (w = 1: no guidance)

Where the guide errs more than the model (blurry, malformed, off-manifold predictions), the
difference points away from those errors, and ``w > 1`` pushes the samples further along it. Here
the guide is the model itself earlier in the same training run: :class:`GuideSnapshot
<genlab.families.diffusion.callbacks.GuideSnapshot>` freezes a copy of the (EMA) weights once
the run has spent the share ``at`` of its budget (steps or ``trainer.max_time``), so guidance
costs no extra training — only a second network call per sampling step.

The guidance is linear in the prediction, and ``eps``, ``x0`` and ``v`` are affine functions of
each other at fixed ``x_t``, so it is the same whichever of them the network predicts. Learned
variances come from the model alone. Guidance changes the *samples* only: the variational bound
(the likelihood) is always the unguided model's.

**Classifier-free guidance** (Ho & Salimans 2022) is the same extrapolation with another guide: a
class-conditional model trained with label dropout is also the unconditional model (the null label
``∅``), and the conditional prediction is extrapolated away from it::

    D_w(x_t, t, y) = D(x_t, t, ∅) + w (D(x_t, t, y) - D(x_t, t, ∅))

In noise units Ho & Salimans write ``(1 + w_HS) eps(x, y) - w_HS eps(x, ∅)``: the same thing with
``w_HS = w - 1`` (``w = 1``, their ``w_HS = 0``, is the unguided conditional model). For Gaussians
(and in the exact-score limit) the guided score is that of ``p(x | y)^w p(x)^(1 - w)``. On a
conditional model *with* autoguidance (``model.guidance``) the guide is the snapshot conditioned on
the same ``y`` (Karras et al. 2024 guide conditional models this way); without it the guide is the
network itself with the null label. One weight for both (``model.guidance.weight``, or the
sampler's ``guidance``): :class:`~genlab.families.diffusion.model.DiffusionModel` picks the guide.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genlab.families.base import parse_node
from genlab.nets.unet import LabelConditioned


@dataclass
class Guidance:
    """``model.guidance``: ``weight`` ``w`` (>= 1; 1 = unguided samples, the snapshot is still
    taken) and ``at``, the share of training (0 < at < 1) after which the guide is frozen."""

    weight: float = 1.0
    at: float = 0.25

    def __post_init__(self) -> None:
        if not self.weight >= 1.0:
            raise ValueError(f"model.guidance.weight={self.weight}: the guidance weight must be >= 1 "
                             "(1 = unguided; Karras et al. 2024 use about 1.5-3 on ImageNet)")
        if not 0.0 < self.at < 1.0:
            raise ValueError(f"model.guidance.at={self.at}: the guide snapshot is taken after a share of training "
                             "strictly between 0 and 1 (e.g. 0.25 = a quarter of the steps or of trainer.max_time)")

    @classmethod
    def parse(cls, value: Any) -> Guidance | None:
        """``None`` (no guide), a :class:`Guidance`, or a mapping with keys ``weight`` / ``at``."""
        return parse_node(cls, value, "guidance", "{weight: 3.0, at: 0.25}", convert=float)


class GuideNet(nn.Module):
    """A frozen copy of the denoiser: every weight is a *buffer* (not trained, not counted as a
    parameter, saved in checkpoints), and ``taken_at`` is the training step at which the weights
    were copied (-1: not yet; a float so that weight averaging, which also averages buffers,
    keeps it exactly: the average of a constant is that constant). ``at``: the share of training
    after which :class:`~genlab.families.diffusion.callbacks.GuideSnapshot` takes it (``model.guidance.at``;
    None: lent from elsewhere, never taken in training); ``warned``: whether sampling before the
    snapshot has been warned about (once per guide)."""

    def __init__(self, net: nn.Module, at: float | None = None) -> None:
        super().__init__()
        self.at, self.warned = at, False
        self.net = copy.deepcopy(net)
        for module in self.net.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    del module._parameters[name]
                    module.register_buffer(name, p.detach().clone())
        self.register_buffer("taken_at", torch.tensor(-1.0))

    @property
    def ready(self) -> bool:
        return bool(self.taken_at >= 0)

    @torch.no_grad()
    def copy_from(self, net: nn.Module, step: int) -> None:
        """Freeze ``net``'s current weights (and buffers) as the guide, taken at ``step``."""
        source = dict(net.named_parameters())
        source.update(net.named_buffers())
        for name, buf in self.net.named_buffers():
            buf.copy_(source[name])
        self.taken_at.fill_(float(step))

    def forward(self, x: Tensor, t: Tensor, *condition: Tensor) -> Tensor:
        """The frozen prediction at ``(x, t)``; a conditional guide also takes the labels ``y``."""
        return self.net(x, t, *condition)


def guide_source(nets: nn.ModuleDict) -> nn.Module:
    """What the guide snapshot copies: the network, with the label table where the model is
    conditional (:class:`~genlab.nets.unet.LabelConditioned`, so that the guide keeps the labels of its
    time); the live modules themselves, not copies."""
    return LabelConditioned(nets["net"], nets["label"]) if "label" in nets else nets["net"]


def guided(out: Tensor, guide_out: Tensor, weight: float, channels: int) -> Tensor:
    """``guide + w (out - guide)`` on the prediction (the first ``channels`` channels); any further
    channels (learned variances) are the model's own."""
    pred = torch.lerp(guide_out[:, :channels], out[:, :channels], weight)
    return torch.cat([pred, out[:, channels:]], dim=1)
