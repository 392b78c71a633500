"""Class-conditional GAN nets: wrappers that add a label to any generator and discriminator backbone.

* :class:`ConditionalBatchNorm` (de Vries et al. 2017; Miyato & Koyama 2018, Sec. 4; BigGAN's shared
  embedding, Brock et al. 2019): every batch norm of the generator gets a per-class gain and bias,
  linear maps of the class embedding ``e_y``::

      out = (1 + W_g e_y) * BN(h) + W_b e_y

  ``BN`` the backbone's own layer (its affine parameters shared by all classes). ``W_g``, ``W_b``
  start at zero: gain 1, bias 0 for every class, so the untrained conditional generator is the
  unconditional one.
* :class:`ConditionalGenerator`: ``G(z, y)``, conditional batch norm where the backbone has batch
  norm (DCGAN), else (the MLP generator, or DCGAN with ``batch_norm: false``) the embedding
  concatenated to the latent, ``G([z, e_y])`` (equivalently a class bias of the first layer).
* :class:`ProjectionDiscriminator` (Miyato & Koyama 2018, Eq. (3)): with ``phi(x)`` the backbone's
  penultimate features (the input of its last linear layer ``psi``)::

      D(x, y) = psi(phi(x)) + <e_y, phi(x)>

  only on the discriminator's first output (the InfoGAN ``Q`` logits after it are left unprojected).

The label tables come from the run's condition (:meth:`genlab.conditioning.ClassCondition.embedding`,
with the null label's row for label dropout) and live inside these modules, so they are trained with
their player, checkpointed and averaged into the generator EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genlab.conditioning import LabelEmbedding


def batch_norms(net: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, name, layer)`` of every batch-norm layer of ``net`` (in module order)."""
    return [(parent, name, child) for parent in net.modules() for name, child in parent.named_children()
            if isinstance(child, nn.modules.batchnorm._BatchNorm)]


class ConditionalBatchNorm(nn.Module):
    """``(1 + W_g e_y) * BN(h) + W_b e_y`` per channel (module docstring); ``condition`` (the batch's
    embeddings ``(B, dim)``) is set by :class:`ConditionalGenerator` around each forward pass."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, dim: int) -> None:
        super().__init__()
        self.norm = norm
        self.gain, self.bias = nn.Linear(dim, norm.num_features, bias=False), nn.Linear(dim, norm.num_features,
                                                                                           bias=False)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)
        self.condition: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        if self.condition is None:
            raise RuntimeError("ConditionalBatchNorm needs the class embeddings: call it through ConditionalGenerator")
        view = (h.shape[0], -1, *([1] * (h.dim() - 2)))
        return (1 + self.gain(self.condition).view(view)) * self.norm(h) + self.bias(self.condition).view(view)


class ConditionalGenerator(nn.Module):
    """``G(z, y)`` around a backbone ``G(z)`` (module docstring).

    Args:
        net: the backbone; with ``concat`` it takes ``[z, e_y]`` (built with the wider input).
        embedding: the label table ``y -> e_y`` ``(B, dim)``.
        concat: condition by concatenation (backbones without batch norm) instead of conditional BN.
    """

    def __init__(self, net: nn.Module, embedding: LabelEmbedding, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        if not concat:
            for parent, name, norm in batch_norms(net):
                setattr(parent, name, ConditionalBatchNorm(norm, embedding.dim))
        self.net, self.embedding = net, embedding

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        e = self.embedding(y)
        if self.concat:
            return self.net(torch.cat([z, e.to(z.dtype)], dim=1))
        norms = [m for m in self.net.modules() if isinstance(m, ConditionalBatchNorm)]
        for m in norms:
            m.condition = e
        try:
            return self.net(z)
        finally:
            for m in norms:
                m.condition = None


def conditional_generator(factory: Callable[..., nn.Module], in_dim: int, out_dim: Any,
                          embedding: LabelEmbedding) -> ConditionalGenerator:
    """``factory(in_dim, out_dim)`` made conditional: conditional batch norm where it has batch norm,
    else rebuilt for the input ``[z, e_y]`` (``in_dim + embedding.dim``)."""
    net = factory(in_dim=in_dim, out_dim=out_dim)
    if batch_norms(net):
        return ConditionalGenerator(net, embedding, concat=False)
    return ConditionalGenerator(factory(in_dim=in_dim + embedding.dim, out_dim=out_dim), embedding, concat=True)


def last_linear(net: nn.Module) -> nn.Linear:
    """The last linear layer of ``net`` (``psi`` of the projection discriminator)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"the projection discriminator needs a backbone whose output layer is linear (psi); "
                         f"{type(net).__name__} has no nn.Linear")
    return linears[-1]


class ProjectionDiscriminator(nn.Module):
    """``D(x, y) = psi(phi(x)) + <e_y, phi(x)>`` around a backbone ``psi(phi(x))`` whose last layer is
    the linear ``psi`` (module docstring; Miyato & Koyama 2018, Eq. (3)). ``phi(x)`` is read from the
    input of that layer by a forward pre-hook."""

    def __init__(self, net: nn.Module, embedding: LabelEmbedding) -> None:
        super().__init__()
        head = last_linear(net)
        if head.in_features != embedding.dim:
            raise ValueError(f"the projection discriminator's embedding has width {embedding.dim}, the features "
                             f"phi(x) that psi reads have {head.in_features}")
        self.net, self.embedding = net, embedding
        self.features: Tensor | None = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.features = args[0]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.net(x).view(x.shape[0], -1)  # (B, 1 + codes): D, then Q's logits
        phi, self.features = self.features, None
        if phi is None or phi.shape[0] != x.shape[0]:
            raise RuntimeError("the projection discriminator did not see phi(x) (the backbone's last linear layer "
                               "must be its output layer)")
        proj = (self.embedding(y).to(phi.dtype) * phi.flatten(1)).sum(1, keepdim=True)
        return torch.cat([out[:, :1] + proj.to(out.dtype), out[:, 1:]], dim=1)
