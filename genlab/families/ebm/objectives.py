"""EBM training objectives: the ``loss`` config group for ``model=ebm*``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.families.base import LossOutput
from genlab.families.ebm.family import EBM, EBMObjective


class ContrastiveDivergence(EBMObjective):
    """Contrastive divergence with an L2 energy penalty (Du & Mordatch 2019, Eq. 3 and Sec. 3.3)::

        L = E_data[E(y+)] - E_sgld[E(y-)] + alpha (E_data[E(y+)^2] + E_sgld[E(y-)^2])

    Its gradient in θ is the maximum-likelihood gradient ``∇θ E(y+) - E_{p_θ}[∇θ E(y-)]`` when
    ``y- ~ p_θ`` (the SGLD samples stand in for it; they are detached, so no gradient flows
    through the sampler). The penalty keeps energies near zero and training stable.

    Class-conditional (JEM-style, Grathwohl et al. 2020): with ``labels`` ``y`` the same loss on
    ``E(y+, y)`` and ``E(y-, y)``, the negatives drawn by SGLD on ``E(., y)`` for the same labels: the
    maximum-likelihood gradient of ``log p(x | y)`` (the null label: of the marginal ``log p(x)``).

    Logs: ``e_data``, ``e_sample`` (mean energies), ``cd`` (their difference), ``reg`` (the
    penalty before ``alpha``), ``e_abs_max`` (largest ``|E|`` in the batch, for divergence checks).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"loss.alpha={alpha} must be >= 0")
        self.alpha = alpha

    def __call__(self, ebm: EBM, nets: nn.ModuleDict, y_data: Tensor, y_sample: Tensor,
                 labels: Tensor | None = None) -> LossOutput:
        both = None if labels is None else torch.cat([labels, labels])
        energies = ebm.energy(nets, torch.cat([y_data, y_sample.detach()]), both)  # one pass: (B+ + B-,)
        e_pos, e_neg = energies[: len(y_data)], energies[len(y_data):]
        cd = e_pos.mean() - e_neg.mean()
        reg = (e_pos**2).mean() + (e_neg**2).mean()
        logs = {"e_data": e_pos.mean(), "e_sample": e_neg.mean(), "cd": cd, "reg": reg,
                "e_abs_max": energies.abs().max()}
        return LossOutput(cd + self.alpha * reg, {k: v.detach() for k, v in logs.items()})
