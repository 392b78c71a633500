"""Lossless compression with a two-stage model (:class:`~genlab.families.base.SequentialCoder`): the
message of an image is its first stage's codes ``z(x)``, coded with the prior's exact conditionals
``P(z_d | z_<d)``, then the image given them, coded with the decoder's factorised ``p(x_d | z)``. Its
length is ``-log2 P(z(x)) - log2 p(x | z(x))`` bits: exactly the composed bound of a deterministic first
stage (a VQ-VAE), so the file measures the bound. A stochastic first stage (a VAE) would need bits-back
coding (Townsend et al. 2019), which is not implemented; a prior without exact conditionals (a
diffusion model) cannot drive an entropy coder: both are refused with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import IncompatibleConfigError, Nets, SequentialCoder


class TwoPartCoder(SequentialCoder):
    """The :class:`SequentialCoder` of :class:`~genlab.families.latent.TwoStage` (module docstring)."""

    def check_coding(self) -> None:
        """Refuse a pair that cannot code: a stochastic first stage, or a prior without exact conditionals."""
        stage = self.loaded()  # type: ignore[attr-defined]
        if stage.family.encoding_shape(stage.nets) is not None:
            raise IncompatibleConfigError(
                f"this two-stage model's first stage ({stage.family.name}) has a stochastic encoder: coding its latents "
                "losslessly needs bits-back coding, which is not implemented. Fix: compress with a two-stage model over "
                "a deterministic first stage (model=vqvae)")
        if not isinstance(self.prior, SequentialCoder):  # type: ignore[attr-defined]
            raise IncompatibleConfigError(
                f"this two-stage model's prior ({self.prior.name}) has no exact conditionals P(z_d | z_<d) to drive "  # type: ignore[attr-defined]
                "an entropy coder. Fix: compress with an autoregressive prior (model=pixelcnn or transformer)")

    def latent_dims(self) -> int:
        return math.prod(self.latent_info().shape)  # type: ignore[attr-defined]

    def message_shape(self, nets: Nets) -> tuple[int, ...]:
        return (self.latent_dims() + nets.info.dims,)

    def message_dtype(self, nets: Nets) -> torch.dtype:
        return torch.long

    def to_message(self, nets: Nets, x: Tensor) -> Tensor:
        """``(z(x), x)`` flattened, ``(B, Dz + D)`` int64."""
        self.check_coding()
        z = self.latents(nets, x)  # type: ignore[attr-defined]
        return torch.cat([z.reshape(len(x), -1).long(), x.reshape(len(x), -1).long()], dim=1)

    def from_message(self, nets: Nets, message: Tensor) -> Tensor:
        return message[:, self.latent_dims():].reshape(-1, *nets.info.shape)

    def codes_of(self, message: Tensor) -> Tensor:
        """The codes part of messages, as the prior's data ``(B, *latent shape)`` (a view: filled as decoded)."""
        return message[:, :self.latent_dims()].view(-1, *self.latent_info().shape)  # type: ignore[attr-defined]

    def coding_order(self, nets: Nets) -> Tensor:
        """The prior's order over the codes, then the image's dimensions in order."""
        prior = self.prior.coding_order(nets["prior"]).cpu()  # type: ignore[attr-defined]
        return torch.cat([prior, self.latent_dims() + torch.arange(nets.info.dims)])

    def start_coding(self, nets: Nets, x: Tensor) -> dict[str, Any]:
        self.check_coding()
        return {"prior": self.prior.start_coding(nets["prior"], self.codes_of(x)), "pixels": None}  # type: ignore[attr-defined]

    def next_log_probs(self, nets: Nets, x: Tensor, step: int, state: dict[str, Any]) -> Tensor:
        """The prior's conditional for the first ``Dz`` steps; then ``log p(x_d | z)`` from the decoder, computed
        once from the decoded codes."""
        dz = self.latent_dims()
        if step < dz:
            return self.prior.next_log_probs(nets["prior"], self.codes_of(x), step, state["prior"])  # type: ignore[attr-defined]
        if state["pixels"] is None:
            coder = self.coder()  # type: ignore[attr-defined]
            state["pixels"] = coder.decoder_log_probs(nets["stage1"].nets, self.codes_of(x))
        return state["pixels"][:, step - dz]
