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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo, check_discrete
from genlab.families.base import Family, LossOutput
from genlab.families.flow.layers import Center, FlowLayer, Logit, MultiScaleFlow, build_multiscale_flow
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


class Flow(Family):
    """Multi-scale affine-coupling flow (RealNVP / Glow), images only.

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
    ) -> None:
        super().__init__(objective or UniformDequantization())
        self.coupling_net, self.mixing = coupling_net, mixing
        self.num_scales, self.steps_per_scale, self.checkerboard_steps = num_scales, steps_per_scale, checkerboard_steps
        self.actnorm, self.learn_prior, self.logit_alpha = actnorm, learn_prior, logit_alpha
        self.temperature, self.val_samples, self.test_samples = temperature, val_samples, test_samples
        self.info: DataInfo | None = None

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

    def build(self, info: DataInfo) -> nn.ModuleDict:
        self.info = info
        preprocess = Center() if self.logit_alpha is None else Logit(self.logit_alpha)
        flow = build_multiscale_flow(
            info.shape, self.coupling_net, self.num_scales, self.steps_per_scale, self.checkerboard_steps,
            self.actnorm, self.mixing, self.learn_prior, preprocess,
        )
        nets = nn.ModuleDict({"flow": flow})
        dequantizer = self.objective.build(info)
        if dequantizer is not None:
            nets["dequantizer"] = dequantizer
        return nets

    # -- input checks ----------------------------------------------------------------------
    def check_discrete(self, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, self.info, 'pass the uint8 images, or use encode() for dequantised values in [0, 1]')

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
    def encode(self, nets: nn.ModuleDict, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """``y in [0,1]^(B, C, H, W)`` -> standard-normal latents ``zs`` and ``log|det dz/dy|`` ``(B,)``.

        The log-determinant includes the logit / centring map; raises ValueError on bad input.
        """
        return nets["flow"](self.check_dequantized(y))

    def decode(self, nets: nn.ModuleDict, zs: Sequence[Tensor]) -> Tensor:
        """Latents ``zs`` (shapes ``nets["flow"].latent_shapes``) -> ``y`` (in ``[0,1]`` for ``zs`` from encode)."""
        return nets["flow"].inverse(zs)

    def log_density(self, nets: nn.ModuleDict, y: Tensor) -> Tensor:
        """Exact continuous ``log p(y)`` in nats, ``(B,)``: ``log N(z; 0, I) + log|det dz/dy|``."""
        zs, logdet = self.encode(nets, y)
        return standard_normal_log_prob(zs) + logdet

    # -- likelihood --------------------------------------------------------------------------
    def _dtype(self, nets: nn.ModuleDict) -> torch.dtype:
        return next(nets["flow"].parameters()).dtype

    def log_px_bound(self, nets: nn.ModuleDict, x: Tensor) -> Tensor:
        """One-draw dequantisation bound on ``log P(x)`` in nats, ``(B,)`` (module docstring)::

            log p((x+u)/L) - D log L - log q(u|x),   u ~ q(u|x)
        """
        levels, xf = self.info.levels, x.to(self._dtype(nets))
        u, log_q = self.objective(nets["dequantizer"] if "dequantizer" in nets else None, xf * (2 / (levels - 1)) - 1)
        log_py = self.log_density(nets, (xf + u) / levels)
        return continuous_to_discrete(log_py, self.info.dims, 1.0 / levels) - log_q

    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        bound = self.log_px_bound(nets, self.check_discrete(batch["x"]))
        d = self.info.dims
        return LossOutput(-bound.mean() / d, {"nll_bpd": -bound.mean().detach() / (d * LN2)})

    @torch.no_grad()
    def log_likelihood(
        self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: Literal["val", "test"] = "test"
    ) -> LogLikelihood:
        k = self.val_samples if stage == "val" else self.test_samples
        x = self.check_discrete(batch["x"])
        per_chunk = max(1, min(k, self.eval_chunk // x.shape[0]))  # draws evaluated as one batch
        draws = [
            self.log_px_bound(nets, x.repeat(min(per_chunk, k - i), 1, 1, 1)).view(-1, x.shape[0])
            for i in range(0, k, per_chunk)
        ]
        return LogLikelihood(torch.logsumexp(torch.cat(draws), 0) - math.log(k), "bound")  # draws: (k, B)

    # -- sampling ----------------------------------------------------------------------------
    def to_data(self, y: Tensor) -> Tensor:
        """``y in [0,1]`` -> uint8 images ``floor(y L)`` clipped to ``0..L-1``."""
        y = torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
        return (y * self.info.levels).floor().clamp(0, self.info.levels - 1).to(torch.uint8)

    @torch.no_grad()
    def sample(self, nets: nn.ModuleDict, n: int, temperature: float | None = None) -> Tensor:
        """``n`` uint8 images: ``z ~ N(0, T^2 I)`` (``T = temperature``, default ``model.temperature``), decoded."""
        t = self.temperature if temperature is None else temperature
        flow: MultiScaleFlow = nets["flow"]
        p = next(flow.parameters())
        zs = [t * torch.randn(n, *shape, device=p.device, dtype=p.dtype) for shape in flow.latent_shapes]
        return self.to_data(self.decode(nets, zs))

    @torch.no_grad()
    def interpolate(self, nets: nn.ModuleDict, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """Decoded images along the straight line between the latents of ``x_a`` and ``x_b``.

        Each image is encoded at its bin centres ``y = (x + 1/2) / L``.

        Args:
            x_a, x_b: discrete images ``(B, C, H, W)``.
        Returns:
            ``(B, steps, C, H, W)`` float tensor in level units ``y L - 1/2`` clipped to
            ``[0, L-1]``; the endpoints reproduce ``x_a`` and ``x_b`` (up to float error).
        """
        levels, dtype = self.info.levels, self._dtype(nets)
        za, _ = self.encode(nets, (self.check_discrete(x_a).to(dtype) + 0.5) / levels)
        zb, _ = self.encode(nets, (self.check_discrete(x_b).to(dtype) + 0.5) / levels)
        t = torch.linspace(0, 1, steps, device=x_a.device, dtype=dtype).view(1, steps, 1, 1, 1)
        zs = [((1 - t) * a.unsqueeze(1) + t * b.unsqueeze(1)).flatten(0, 1) for a, b in zip(za, zb)]
        y = self.decode(nets, zs)
        return (y * levels - 0.5).clamp(0, levels - 1).view(x_a.shape[0], steps, *self.info.shape)
