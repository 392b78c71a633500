"""Normalizing flows on images: multi-scale RealNVP (Dinh et al. 2017) and Glow (Kingma &
Dhariwal 2018), one implementation configured two ways (``model=realnvp``, ``model=glow``).

Data mapping, with every Jacobian term accounted for. Discrete ``x in {0..L-1}^D`` is
dequantised to ``y = (x + u) / L in [0,1)^D`` with ``u ~ q(u|x)`` (the ``loss`` group,
:mod:`genlab.families.flow.objectives`), then mapped to flow space by ``z_0 = g(y)``
(:class:`~genlab.families.flow.layers.Logit` ``g(y) = logit(a + (1-2a) y)`` if ``logit_alpha``
is set, else :class:`~genlab.families.flow.layers.Center` ``g(y) = y - 1/2``), then by the
multi-scale flow ``f`` to standard-normal latents ``z = f(z_0)``. The density of ``y`` is exact::

    log p(y) = log N(f(g(y)); 0, I) + log|det df/dz_0| + log|det dg/dy|

and the discrete likelihood is the dequantisation bound (``continuous_to_discrete``, bin
width ``w = 1/L``)::

    log P(x) >= E_q[ log p((x+u)/L) - D log L - log q(u|x) ]

reported per example from one draw of ``u`` (``val_samples`` / ``test_samples`` draws are
combined as ``log mean_k exp(.)``, a bound that tightens with ``k``): ``nll_kind = "bound"``.

Class-conditional (``+conditional=class``), as Glow's class-conditional model (Kingma & Dhariwal
2018, Sec. 5): a learned label embedding ``e(y)`` (``model.label_dim`` features) is broadcast as extra
input channels of every coupling network (``s, t = NN(x_a, e(y))``), and each scale's latent gets a
class-conditional Gaussian prior ``N(mu_i(y), diag sigma_i(y)^2)`` per channel, ``[mu_i, log sigma_i]``
a zero-initialised linear map of ``e(y)`` (:class:`~genlab.families.flow.layers.ClassPrior`), on top of
the unconditional learned priors. For every ``y`` the map is an exact bijection, so::

    log p(y_img | y) = log N(f_y(g(y_img)); mu(y), sigma(y)^2) + log|det df_y/dz_0| + log|det dg/dy_img|

and the discrete bound of ``log P(x|y)`` is the same dequantisation bound (same kind). The
dequantiser ``q(u|x)`` does not see the label (any ``q`` gives a bound). Without a condition the nets
and every number are the unconditional flow's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo, check_discrete
from genlab.data.scaling import BinScale, GridScale
from genlab.families.base import Conditional, Encoder, Family, Inpainter, Likelihood, LossOutput, Nets
from genlab.families.flow.restore import FlowRestorer
from genlab.families.flow.layers import (
    Center, ClassPrior, FlowLayer, Logit, MultiScaleFlow, build_multiscale_flow,
)
from genlab.families.flow.objectives import Dequantization, UniformDequantization
from genlab.metrics.likelihood import LN2, LogLikelihood, continuous_to_discrete

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(zs: Sequence[Tensor]) -> Tensor:
    """``sum_i log N(z_i; 0, I)`` over a list of latents ``(B, ...)``, shape ``(B,)``."""
    return sum(-0.5 * (z * z + LOG_2PI).flatten(1).sum(1) for z in zs)


def max_squeezes(height: int, width: int) -> int:
    """How many times an ``height x width`` image can be squeezed (both sides halved, even)."""
    n = 0
    while height % 2 == 0 and width % 2 == 0 and height > 1 and width > 1:
        height, width, n = height // 2, width // 2, n + 1
    return n


class Flow(Family, Likelihood, Encoder, Conditional, FlowRestorer):
    """Multi-scale affine-coupling flow (RealNVP / Glow), images only. Conditional (module docstring):
    the label embedding is extra input channels of every coupling net and sets a class-conditional
    Gaussian prior per scale (Glow's ``ycond``); no label dropout by default, no guidance.

    Args:
        coupling_net: backbone factory ``net(in_channels=..., out_channels=...)`` of the coupling
            layers (``_partial_`` in config), e.g. :class:`genlab.nets.resnet.ResNet`.
        num_scales: number of squeezes; ``H`` and ``W`` must be divisible by ``2 ** num_scales``.
        steps_per_scale: channel-coupling steps (ActNorm, mixing, coupling) after each squeeze.
        checkerboard_steps: checkerboard couplings before each squeeze (RealNVP: 3, Glow: 0).
        actnorm: data-initialised ActNorm before every coupling.
        mixing: factory ``mixing(channels=C)`` of an invertible channel mixing before every
            channel coupling (:class:`~genlab.families.flow.layers.InvConv1x1`, ``lu`` option);
            None: only alternate the coupling halves (RealNVP).
        learn_prior: learned Gaussian prior (Glow's split prior and learned top); else N(0, I).
        logit_alpha: map ``y`` by ``logit(a + (1-2a) y)`` (RealNVP); None: ``y - 1/2`` (Glow).
        temperature: standard deviation of the latents when sampling (Glow, Sec. 5).
        val_samples, test_samples: dequantisation draws per example for the val / test NLL.
        objective: the dequantiser (``loss`` group); uniform by default.
        label_dim: width of the label embedding (conditional runs only).
    """

    name = "flow"
    compare_rank = 30
    objective_type = Dequantization
    nll_kind = "bound"
    eval_chunk = 4096  # most examples x draws evaluated in one batch by log_likelihood

    def __init__(
        self,
        coupling_net: Callable[..., nn.Module],
        num_scales: int = 2,
        steps_per_scale: int = 4,
        checkerboard_steps: int = 0,
        actnorm: bool = True,
        mixing: Callable[..., FlowLayer] | None = None,
        learn_prior: bool = True,
        logit_alpha: float | None = 0.05,
        temperature: float = 1.0,
        val_samples: int = 1,
        test_samples: int = 1,
        objective: Dequantization | None = None,
        label_dim: int = 8,
    ) -> None:
        super().__init__(objective or UniformDequantization())
        self.coupling_net, self.mixing = coupling_net, mixing
        self.num_scales, self.steps_per_scale, self.checkerboard_steps = num_scales, steps_per_scale, checkerboard_steps
        self.actnorm, self.learn_prior, self.logit_alpha = actnorm, learn_prior, logit_alpha
        self.temperature, self.val_samples, self.test_samples = temperature, val_samples, test_samples
        self.label_dim = label_dim

    # -- setup -----------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind != "image":
            return (f"this flow's squeeze/coupling layers need images (C, H, W); {info.kind} data of shape "
                    f"{tuple(info.shape)} have no such form")
        if self.num_scales < 1:
            return f"model.num_scales={self.num_scales}: a multi-scale flow needs at least 1 scale"
        _, h, w = info.shape
        most = max_squeezes(h, w)
        if most == 0:
            return (f"{h}x{w} images cannot be squeezed (2x2 blocks need an even height and width): "
                    "crop or pad the images to an even size")
        if self.num_scales > most:
            return (f"{h}x{w} images can be squeezed at most {most} time(s) (each squeeze halves an even "
                    f"height and width), not model.num_scales={self.num_scales}: set model.num_scales={most}")
        return None

    def build(self, info: DataInfo) -> Nets:
        preprocess = Center() if self.logit_alpha is None else Logit(self.logit_alpha)
        cond = {} if self.condition is None else {"cond_channels": self.label_dim}
        flow = build_multiscale_flow(
            info.shape, self.coupling_net, self.num_scales, self.steps_per_scale, self.checkerboard_steps,
            self.actnorm, self.mixing, self.learn_prior, preprocess, **cond,
        )
        nets = Nets(info, {"flow": flow})
        dequantizer = self.objective.build(info)
        if dequantizer is not None:
            nets["dequantizer"] = dequantizer
        if self.condition is not None:
            nets["label"] = self.condition.embedding(self.label_dim)
            nets["class_prior"] = ClassPrior(flow.latent_shapes, self.label_dim)
        return nets

    # -- labels ----------------------------------------------------------------------------
    def label_input(self, nets: nn.ModuleDict, y: Tensor | None) -> Tensor | None:
        """The label embedding ``e(y)`` ``(B, E)`` the flow takes, or None (no labels: unconditional)."""
        return None if y is None else nets["label"](y)

    # -- input checks ----------------------------------------------------------------------
    @staticmethod
    def check_discrete(info: DataInfo, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, info, 'pass the uint8 images, or use encode() for dequantised values in [0, 1]')

    @staticmethod
    def check_dequantized(y: Tensor) -> Tensor:
        """Validate dequantised images ``y`` (finite, in ``[0, 1]``); returns ``y``."""
        y_ = y.detach()
        bad = ~torch.isfinite(y_)
        if bad.any():
            raise ValueError(f"encode() got {int(bad.sum())} non-finite value(s) (NaN/inf); "
                             "expected dequantised images y = (x + u) / L in [0, 1]")
        lo, hi = (float(v) for v in torch.aminmax(y_))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"encode() expects dequantised images y = (x + u) / L in [0, 1], got values in "
                             f"[{lo:.4g}, {hi:.4g}]; map uint8 images with (x + u) / levels first")
        return y

    # -- the bijection ---------------------------------------------------------------------
    def encode(self, nets: nn.ModuleDict, y: Tensor, c: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """``y in [0,1]^(B, C, H, W)`` -> standard-normal latents ``zs`` and ``log|det dz/dy|`` ``(B,)``.

        The log-determinant includes the logit / centring map; raises ValueError on bad input. Given
        the label embedding ``c`` ``(B, E)``: the class's bijection, then the class prior's change of
        variables (:class:`~genlab.families.flow.layers.ClassPrior`), so the latents are still ``N(0, I)``.
        """
        if c is None:
            return nets["flow"](self.check_dequantized(y))
        zs, logdet = nets["flow"](self.check_dequantized(y), c)
        eps, prior_logdet = nets["class_prior"](zs, c)
        return eps, logdet + prior_logdet

    def decode(self, nets: nn.ModuleDict, zs: Sequence[Tensor], c: Tensor | None = None) -> Tensor:
        """Latents ``zs`` (shapes ``nets["flow"].latent_shapes``) -> ``y`` (in ``[0,1]`` for ``zs`` from encode);
        given the label embedding ``c``, the inverse of :meth:`encode` for that class."""
        if c is None:
            return nets["flow"].inverse(zs)
        return nets["flow"].inverse(nets["class_prior"].inverse(zs, c), c)

    def log_density(self, nets: nn.ModuleDict, y: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact continuous ``log p(y)`` (``log p(y | label)`` given its embedding ``c``) in nats, ``(B,)``:
        ``log N(z; 0, I) + log|det dz/dy|``."""
        zs, logdet = self.encode(nets, y, c)
        return standard_normal_log_prob(zs) + logdet

    # -- likelihood --------------------------------------------------------------------------
    def _dtype(self, nets: nn.ModuleDict) -> torch.dtype:
        return next(nets["flow"].parameters()).dtype

    def log_px_bound(self, nets: nn.ModuleDict, x: Tensor, c: Tensor | None = None) -> Tensor:
        """One-draw dequantisation bound on ``log P(x)`` (``log P(x|y)`` given the label embedding ``c``)
        in nats, ``(B,)`` (module docstring)::

            log p((x+u)/L) - D log L - log q(u|x),   u ~ q(u|x)
        """
        info, xf = nets.info, x.to(self._dtype(nets))
        bins = BinScale(info.levels, 0.0, 1.0)
        dequantizer = nets["dequantizer"] if "dequantizer" in nets else None
        u, log_q = self.objective(dequantizer, GridScale(info.levels).to_model(xf, xf.dtype))  # grid points of [-1, 1]
        log_py = self.log_density(nets, bins.dequantize(xf, u), c)
        return continuous_to_discrete(log_py, info.dims, bins.width) - log_q

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        c = None if self.condition is None else self.label_input(nets, self.training_labels(batch))
        bound = self.log_px_bound(nets, self.check_discrete(nets.info, batch["x"]), c)
        d = nets.info.dims
        return LossOutput(-bound.mean() / d, {"nll_bpd": -bound.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        """The dequantisation bound of ``log P(x)`` (conditional: ``log P(x|y)``, ``y = batch["y"]``) from
        ``k`` draws of ``u``."""
        k = self.val_samples if stage == "val" else self.test_samples
        x = self.check_discrete(nets.info, batch["x"])
        c = None if self.condition is None else self.label_input(nets, self.labels(batch))
        per_chunk = max(1, min(k, self.eval_chunk // x.shape[0]))  # draws evaluated as one batch
        draws = []
        for i in range(0, k, per_chunk):
            kc = min(per_chunk, k - i)
            cs = None if c is None else c.repeat(kc, 1)
            draws.append(self.log_px_bound(nets, x.repeat(kc, 1, 1, 1), cs).view(-1, x.shape[0]))
        return LogLikelihood(torch.logsumexp(torch.cat(draws), 0) - math.log(k), "bound")  # draws: (k, B)

    # -- sampling ----------------------------------------------------------------------------
    @staticmethod
    def to_data(info: DataInfo, y: Tensor) -> Tensor:
        """``y in [0,1]`` -> uint8 images ``floor(y L)`` clipped to ``0..L-1`` (NaN to the middle)."""
        return BinScale(info.levels, 0.0, 1.0).to_data(y)

    @torch.no_grad()
    def sample(self, nets: Nets, n: int, sampler: None = None, temperature: float | None = None,
               y: Tensor | None = None) -> Tensor:
        """``n`` uint8 images: ``z ~ N(0, T^2 I)`` (``T = temperature``, default ``model.temperature``), decoded;
        conditional: decoded given the labels ``y`` ``(n,)`` (None: drawn from ``p(y)``), so that each scale's
        latent is ``mu_i(y) + T sigma_i(y) eps``."""
        t = self.temperature if temperature is None else temperature
        flow: MultiScaleFlow = nets["flow"]
        p = next(flow.parameters())
        c = self.label_input(nets, self.method_labels(n, y, p.device, sampling=True))
        zs = [t * torch.randn(n, *shape, device=p.device, dtype=p.dtype) for shape in flow.latent_shapes]
        return self.to_data(nets.info, self.decode(nets, zs, c))

    # -- Encoder: the exact bijection at the bin centres ----------------------------------------------
    encoder_kind = "exact bijection"

    @torch.no_grad()
    def to_latent(self, nets: Nets, x: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Discrete images -> their latents at the bin centres ``y = (x + 1/2) / L``, every scale's
        latent flattened and concatenated: ``(B, D)``; conditional: the bijection of the labels ``y``
        (None: :meth:`method_labels`)."""
        info = nets.info
        c = self.label_input(nets, self.method_labels(len(x), y, x.device))
        centres = BinScale(info.levels, 0.0, 1.0).centres(self.check_discrete(info, x), self._dtype(nets))
        return torch.cat([z.flatten(1) for z in self.encode(nets, centres, c)[0]], 1)

    @torch.no_grad()
    def from_latent(self, nets: Nets, z: Tensor, steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """Flat latents ``(B, D)`` -> images in level units ``y L - 1/2`` clipped to ``[0, L-1]`` (the
        endpoints of :meth:`to_latent` reproduce the images up to float error, given the same labels)."""
        shapes = nets["flow"].latent_shapes
        sizes = [math.prod(shape) for shape in shapes]
        zs = [part.reshape(len(z), *shape) for part, shape in zip(z.split(sizes, 1), shapes)]
        c = self.label_input(nets, self.method_labels(len(z), y, z.device))
        return BinScale(nets.info.levels, 0.0, 1.0).to_levels(self.decode(nets, zs, c)).clamp(0, nets.info.levels - 1)

    @torch.no_grad()
    def interpolate(self, nets: Nets, x_a: Tensor, x_b: Tensor, steps: int = 8, y: Tensor | None = None) -> Tensor:
        """Decoded images along the straight line between the latents of ``x_a`` and ``x_b``
        ``(B, C, H, W)``: ``(B, steps, C, H, W)`` float in level units (:meth:`from_latent`); conditional:
        one label per pair (``y`` ``(B,)``, else :meth:`method_labels`) for both ends and the path."""
        y = self.method_labels(len(x_a), y, x_a.device)
        za, zb = self.to_latent(nets, x_a, y=y), self.to_latent(nets, x_b, y=y)
        t = torch.linspace(0, 1, steps, device=za.device, dtype=za.dtype).view(1, steps, 1)
        z = ((1 - t) * za.unsqueeze(1) + t * zb.unsqueeze(1)).flatten(0, 1)
        ys = None if y is None else y.repeat_interleave(steps, 0)
        return self.from_latent(nets, z, y=ys).view(x_a.shape[0], steps, *nets.info.shape)

    why_not = {Inpainter: (
        "a normalizing flow has an exact density but no tractable conditional: its latent mixes every "
        "pixel, so drawing the missing pixels given the observed ones would need MCMC on the flow's "
        "density (not implemented)")}
