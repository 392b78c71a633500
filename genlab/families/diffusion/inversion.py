"""DDIM inversion (Song et al. 2021, Sec. 4.3; Dhariwal & Nichol 2021, App. F): the
:class:`~genlab.families.base.Encoder` capability of a diffusion chain.

The deterministic (``eta = 0``) DDIM update is a discretised probability-flow ODE, so it can be run
forwards, from the data ``x_0`` up to a Gaussian code ``x_{T-1}`` on ``steps`` respaced steps::

    x_{k+1} = sqrt(alpha_bar_{k+1}) x0_hat(x_k, k) + sqrt(1 - alpha_bar_{k+1}) eps_hat(x_k, k)

(:func:`ddim_encode`), and decoded by DDIM sampling from the code (:func:`ddim_decode`, autoguided
where the model's sampling is). Codes are noise: ``slerp`` is the natural path between them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.families.diffusion.model import DiffusionModel
from genlab.families.diffusion.samplers import DDIM


@torch.no_grad()
def ddim_encode(model: DiffusionModel, x0: Tensor, steps: int | None) -> Tensor:
    """``x0`` in ``[-1, 1]`` -> the code ``x_{T-1}`` by the DDIM update run forwards (module docstring)
    on ``steps`` respaced steps (None: all ``T``)."""
    model = model.on(model.process.respace(min(steps or model.process.T, model.process.T)))
    p, y = model.process, x0
    for k in range(p.T - 1):
        t = torch.full((y.shape[0],), k, device=y.device, dtype=torch.long)
        rev = model.reverse(y, t, clip=False)
        y = p.at("sqrt_ab", t + 1, y) * rev.x0 + p.at("sqrt_1m_ab", t + 1, y) * rev.eps
    return y


@torch.no_grad()
def ddim_decode(model: DiffusionModel, z: Tensor, steps: int | None) -> Tensor:
    """Codes -> ``x0`` in ``[-1, 1]``: deterministic DDIM from ``z`` on ``steps`` respaced steps."""
    return DDIM(steps=steps, eta=0.0)(model, len(z), x_T=z)
