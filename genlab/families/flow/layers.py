"""Invertible layers of multi-scale flows (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018).

Every layer is a bijection ``f`` between tensors of shape ``(B, C, H, W)`` (the shape may change,
e.g. :class:`Squeeze`) with

* ``forward(x) -> (y, logdet)``: ``y = f(x)`` and ``log|det df/dx|`` per example, ``(B,)``;
* ``inverse(y) -> x``: ``x = f^{-1}(y)``, exact up to floating point.

The change of variables (RealNVP, Eq. 3) then gives ``log p_X(x) = log p_Z(f(x)) + log|det df/dx|``.
All layers map each example independently of the rest of its batch (no batch statistics):
ActNorm uses the batch only once, to initialise its parameters.

Class conditioning (Glow, Kingma & Dhariwal 2018, Sec. 5 / its code's ``ycond``): the couplings
(:attr:`FlowLayer.takes_cond`) take a condition ``cond`` as extra input channels of their nets —
:class:`MultiScaleFlow` broadcasts a class embedding ``e(y)`` ``(B, E)`` over every position — so
``y`` only changes the coupling parameters ``s, t``: every map stays exactly invertible given
``y`` with the same log-determinant formula. :class:`ClassPrior` makes each scale's Gaussian
prior class-conditional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

NetFactory = Callable[..., nn.Module]  # net(in_channels=..., out_channels=...) -> (B, out, H, W)


def _sum_per_example(t: Tensor) -> Tensor:
    """Sum over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return t.flatten(1).sum(1)


class FlowLayer(nn.Module):
    """Base class: an invertible map with a tractable log-determinant (see module docstring).
    ``takes_cond``: ``forward`` and ``inverse`` also take a keyword ``cond`` ``(B, E, H, W)`` (couplings)."""

    takes_cond: ClassVar[bool] = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError


# -- data space -> flow space ---------------------------------------------------------------
class Logit(FlowLayer):
    """``y in [0,1] -> z = logit(a + (1 - 2a) y)`` (RealNVP, Sec. 4.1), ``a = alpha``.

    ``log|dz/dy| = sum_d [log(1 - 2a) - log s_d - log(1 - s_d)]`` with ``s = a + (1 - 2a) y``.
    ``alpha > 0`` keeps ``z`` finite at ``y = 0`` and ``y = 1``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        log_s = torch.log(a + (1 - 2 * a) * y)
        log_1ms = torch.log(a + (1 - 2 * a) * (1 - y))  # 1 - s, without cancellation near y = 1
        logdet = _sum_per_example(math.log(1 - 2 * self.alpha) - log_s - log_1ms)
        return log_s - log_1ms, logdet

    def inverse(self, z: Tensor) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class Center(FlowLayer):
    """``y in [0,1] -> z = y - 1/2 in [-1/2, 1/2]`` (Glow's input scaling); ``log|dz/dy| = 0``."""

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y - 0.5, y.new_zeros(y.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z + 0.5


# -- shape ---------------------------------------------------------------------------------
class Squeeze(FlowLayer):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``, each 2x2 block into channels
    (RealNVP, Sec. 3.6). A permutation: ``log|det| = 0``. ``H`` and ``W`` must be even."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h}x{w}")
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c, h, w = y.shape
        return y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


# -- normalisation and channel mixing ---------------------------------------------------------
class ActNorm(FlowLayer):
    """Per-channel affine map ``y = (x + b) * exp(log_s)`` (Glow, Sec. 3.1), ``log|det| = H W sum_c log_s_c``.

    Data-dependent initialisation: the first ``forward`` sets ``b = -mean``, ``log_s = -log std``
    of that batch per channel (all-reduced across DDP ranks), so that the output has zero mean
    and unit variance; afterwards ``b``, ``log_s`` are ordinary parameters. An uninitialised
    layer is the identity (``inverse`` never initialises).
    """

    def __init__(self, channels: int, min_std: float = 1e-3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.min_std = min_std

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b, log_s`` from the per-channel mean and std of ``x`` ``(B, C, H, W)``."""
        moments = torch.stack([x.mean((0, 2, 3)), (x * x).mean((0, 2, 3))])  # (2, C)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, sq = moments
        std = (sq - mean * mean).clamp_min(0).sqrt().clamp_min(self.min_std)
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-std.log().view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self.initialize(x)
        y = (x + self.bias) * self.log_scale.exp()
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(FlowLayer):
    """Invertible 1x1 convolution ``y_{:,i,j} = W x_{:,i,j}`` (Glow, Sec. 3.2), ``log|det| = H W log|det W|``.

    ``W`` starts as a random rotation. With ``lu=True`` it is parametrised as
    ``W = P L (U + diag(sign(s) exp(log|s|)))`` (Glow, Eq. 10): ``P`` a fixed permutation, ``L``
    unit lower-triangular, ``U`` strictly upper-triangular, so ``log|det W| = sum log|s|`` costs
    ``O(C)`` instead of ``O(C^3)``.
    """

    def __init__(self, channels: int, lu: bool = False) -> None:
        super().__init__()
        self.lu = lu
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(s.abs().log())

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        """``W (C, C)`` and ``log|det W|`` (a scalar)."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper, self.log_s.sum()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, logdet = self.weight_and_logdet()
        y = F.conv2d(x, w.view(*w.shape, 1, 1))
        return y, (logdet * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        w, _ = self.weight_and_logdet()
        w_inv = torch.linalg.inv(w)
        return F.conv2d(y, w_inv.view(*w_inv.shape, 1, 1))


# -- affine couplings -----------------------------------------------------------------------
class CheckerboardCoupling(FlowLayer):
    """Affine coupling with a spatial checkerboard mask ``m`` (RealNVP, Eq. 9 and Fig. 3)::

        y = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)),   log|det| = sum (1 - m) * s

    ``m_{ij} = 1`` where ``(i + j) % 2 == parity``. ``s = scale * tanh(s_raw)`` keeps the
    log-scales bounded. The net sees ``m * x``, the mask itself, and an optional conditioning
    input ``cond`` (``cond_channels`` channels, e.g. the data in a dequantiser ``q(u|x)``).
    With the net's zero-initialised output layer the coupling starts as the identity.
    """

    takes_cond = True

    def __init__(self, channels: int, net: NetFactory, parity: int = 0, cond_channels: int = 0) -> None:
        super().__init__()
        self.parity = parity
        self.net = net(in_channels=channels + 1 + cond_channels, out_channels=2 * channels)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def mask(self, x: Tensor) -> Tensor:
        """``(1, 1, H, W)`` checkerboard of 0/1 in ``x``'s dtype."""
        h, w = x.shape[-2:]
        i = torch.arange(h, device=x.device).view(h, 1)
        j = torch.arange(w, device=x.device).view(1, w)
        return ((i + j) % 2 == self.parity).to(x.dtype).view(1, 1, h, w)

    def _shift_scale(self, x_masked: Tensor, m: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        inputs = [x_masked, m.expand(x_masked.shape[0], 1, *x_masked.shape[2:])]
        if cond is not None:
            inputs.append(cond)
        s_raw, t = self.net(torch.cat(inputs, 1)).chunk(2, 1)
        return self.scale * torch.tanh(s_raw) * (1 - m), t * (1 - m)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m = self.mask(x)
        s, t = self._shift_scale(x * m, m, cond)
        return x * s.exp() + t, _sum_per_example(s)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        m = self.mask(y)
        s, t = self._shift_scale(y * m, m, cond)  # y * m == x * m: the masked half is unchanged
        return (y - t) * torch.exp(-s)


class ChannelCoupling(FlowLayer):
    """Affine coupling that splits channels (RealNVP, Eq. 7-8; Glow, Table 1)::

        x = [x_a, x_b],  y_a = x_a,  y_b = x_b * exp(s(x_a)) + t(x_a),  log|det| = sum s

    ``x_a`` is the first ``C // 2`` channels, or the last ``C // 2`` with ``flip=True`` (alternate
    ``flip`` between layers so that every channel gets transformed). ``s = scale * tanh(s_raw)``.
    With ``cond_channels`` the net also sees a condition ``cond`` ``(B, cond_channels, H, W)``:
    ``s(x_a, c), t(x_a, c)`` (the class-conditional coupling of Glow's ``ycond``).
    """

    takes_cond = True

    def __init__(self, channels: int, net: NetFactory, flip: bool = False, cond_channels: int = 0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
        self.flip = flip
        self.c_a = channels // 2
        self.c_b = channels - self.c_a
        self.net = net(in_channels=self.c_a + cond_channels, out_channels=2 * self.c_b)
        self.scale = nn.Parameter(torch.ones(1, self.c_b, 1, 1))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.flip:
            x_b, x_a = x.split([self.c_b, self.c_a], 1)
        else:
            x_a, x_b = x.split([self.c_a, self.c_b], 1)
        return x_a, x_b

    def _merge(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return torch.cat([x_b, x_a] if self.flip else [x_a, x_b], 1)

    def _shift_scale(self, x_a: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        s_raw, t = self.net(x_a if cond is None else torch.cat([x_a, cond], 1)).chunk(2, 1)
        return self.scale * torch.tanh(s_raw), t

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        s, t = self._shift_scale(x_a, cond)
        return self._merge(x_a, x_b * s.exp() + t), _sum_per_example(s)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y_a, y_b = self._split(y)
        s, t = self._shift_scale(y_a, cond)
        return self._merge(y_a, (y_b - t) * torch.exp(-s))


# -- learned Gaussian priors, written as changes of variables ------------------------------------
class SplitPrior(FlowLayer):
    """Learned prior of a factored-out half (Glow's split prior, Sec. 3.4 / its code ``split2d``).

    ``x = [h, z]`` with ``h`` the first ``keep`` channels; the prior ``z ~ N(mu(h), exp(log_sigma(h))^2)``
    is applied as the equivalent change of variables ``eps = (z - mu(h)) * exp(-log_sigma(h))``,
    ``log|det| = -sum log_sigma``, after which ``eps ~ N(0, I)``. ``mu, log_sigma`` come from a
    zero-initialised 3x3 convolution of ``h`` (the standard normal at initialisation).
    """

    def __init__(self, channels: int, keep: int) -> None:
        super().__init__()
        self.keep, self.out = keep, channels - keep
        self.net = nn.Conv2d(keep, 2 * self.out, 3, padding=1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, z = x.split([self.keep, self.out], 1)
        mu, log_sigma = self.net(h).chunk(2, 1)
        return torch.cat([h, (z - mu) * torch.exp(-log_sigma)], 1), -_sum_per_example(log_sigma)

    def inverse(self, y: Tensor) -> Tensor:
        h, eps = y.split([self.keep, self.out], 1)
        mu, log_sigma = self.net(h).chunk(2, 1)
        return torch.cat([h, eps * log_sigma.exp() + mu], 1)


class TopPrior(FlowLayer):
    """Learned prior ``z ~ N(mu, exp(log_sigma)^2)`` of the last latent, per position (Glow's
    ``learntop``), as the change of variables ``eps = (z - mu) exp(-log_sigma)``; zero-initialised."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1, *shape))
        self.log_sigma = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        eps = (z - self.mu) * torch.exp(-self.log_sigma)
        return eps, _sum_per_example(-self.log_sigma).expand(z.shape[0])

    def inverse(self, eps: Tensor) -> Tensor:
        return eps * self.log_sigma.exp() + self.mu


class ClassPrior(nn.Module):
    """Class-conditional Gaussian prior of every scale's latent (Glow, Kingma & Dhariwal 2018, Sec. 5:
    "class-conditional prior"; its code adds a zero-initialised linear map of ``y`` to the prior's
    ``h``): ``z_i ~ N(mu_i(y), diag exp(log_sigma_i(y))^2)`` per channel, with
    ``[mu_i, log_sigma_i] = W_i e(y) + b_i`` for the class embedding ``e(y)`` ``(B, E)``.

    Written as a change of variables on the list of latents, ``eps_i = (z_i - mu_i) exp(-log_sigma_i)``,
    ``log|det| = -H_i W_i sum_c log_sigma_ic``, after which ``eps_i ~ N(0, I)``; so
    ``log N(eps; 0, I) + log|det| = sum_i log N(z_i; mu_i, sigma_i^2)``. Zero-initialised: the
    standard normal (the unconditional prior) at initialisation.
    """

    def __init__(self, latent_shapes: Sequence[Sequence[int]], dim: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(dim, 2 * shape[0]) for shape in latent_shapes)
        for m in self.maps:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def params(self, e: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every scale's ``(mu_i, log_sigma_i)``, each ``(B, C_i, 1, 1)``, for embeddings ``e`` ``(B, E)``."""
        return [tuple(m(e)[:, :, None, None].chunk(2, 1)) for m in self.maps]  # type: ignore[misc]

    def forward(self, zs: Sequence[Tensor], e: Tensor) -> tuple[list[Tensor], Tensor]:
        eps, logdet = [], e.new_zeros(e.shape[0])
        for z, (mu, log_sigma) in zip(zs, self.params(e)):
            eps.append((z - mu) * torch.exp(-log_sigma))
            logdet = logdet - log_sigma.flatten(1).sum(1) * (z.shape[2] * z.shape[3])
        return eps, logdet

    def inverse(self, eps: Sequence[Tensor], e: Tensor) -> list[Tensor]:
        return [u * log_sigma.exp() + mu for u, (mu, log_sigma) in zip(eps, self.params(e))]


# -- the multi-scale architecture --------------------------------------------------------------
class MultiScaleFlow(nn.Module):
    """A stack of scales; after every scale but the last, part of the channels is factored out
    as a latent (RealNVP, Sec. 3.6, Eq. 13-14)::

        h_0 = x,  [h_{i+1}, z_{i+1}] = f_i(h_i)  (i < S-1),  z_S = f_{S-1}(h_{S-1})

    ``forward(x) -> (zs, logdet)`` returns the latents ``zs`` (shapes :attr:`latent_shapes`),
    which are standard normal under the model, and the total log-determinant ``(B,)``;
    ``inverse(zs) -> x``. So ``log p(x) = sum_i log N(z_i; 0, I) + logdet``. Both take an optional
    condition ``cond`` ``(B, E)`` (a class embedding), broadcast over the positions and given to every
    coupling (:attr:`FlowLayer.takes_cond`), which must then have been built with ``cond_channels=E``.
    """

    def __init__(self, scales: Sequence[Sequence[FlowLayer]], latent_shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        self.scales = nn.ModuleList(nn.ModuleList(layers) for layers in scales)
        self.latent_shapes = [tuple(s) for s in latent_shapes]

    @staticmethod
    def _cond_kw(layer: FlowLayer, cond: Tensor | None, h: Tensor) -> dict[str, Tensor]:
        """``{"cond": (B, E, H, W)}`` for a coupling of a conditioned flow, else nothing."""
        if cond is None or not layer.takes_cond:
            return {}
        return {"cond": cond.to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])}

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        h, logdet, zs = x, x.new_zeros(x.shape[0]), []
        for i, layers in enumerate(self.scales):
            for layer in layers:
                h, ld = layer(h, **self._cond_kw(layer, cond, h))
                logdet = logdet + ld
            if i < len(self.scales) - 1:
                z_channels = self.latent_shapes[i][0]
                h, z = h.split([h.shape[1] - z_channels, z_channels], 1)
                zs.append(z)
        zs.append(h)
        return zs, logdet

    def inverse(self, zs: Sequence[Tensor], cond: Tensor | None = None) -> Tensor:
        h = zs[-1]
        for i in reversed(range(len(self.scales))):
            if i < len(self.scales) - 1:
                h = torch.cat([h, zs[i]], 1)
            for layer in reversed(self.scales[i]):
                h = layer.inverse(h, **self._cond_kw(layer, cond, h))
        return h


def _checkerboard_steps(
    channels: int, coupling_net: NetFactory, steps: int, actnorm: bool, cond_channels: int = 0,
) -> list[FlowLayer]:
    """RealNVP's steps before a squeeze: ``steps`` x [ActNorm, checkerboard coupling], the
    checkerboard's parity alternating ``0, 1, 0, ...``."""
    layers: list[FlowLayer] = []
    for k in range(steps):
        layers += [ActNorm(channels)] if actnorm else []
        layers.append(CheckerboardCoupling(channels, coupling_net, parity=k % 2, cond_channels=cond_channels))
    return layers


def _glow_steps(
    channels: int, coupling_net: NetFactory, steps: int, actnorm: bool, mixing: Callable[..., FlowLayer] | None,
    cond_channels: int = 0,
) -> list[FlowLayer]:
    """Glow's steps of flow after a squeeze: ``steps`` x [ActNorm, ``mixing(channels=C)``, channel
    coupling], the coupled half flipping every other step."""
    layers: list[FlowLayer] = []
    for k in range(steps):
        layers += [ActNorm(channels)] if actnorm else []
        layers += [mixing(channels=channels)] if mixing is not None else []
        layers.append(ChannelCoupling(channels, coupling_net, flip=k % 2 == 1, cond_channels=cond_channels))
    return layers


def _factor_out(
    shape: tuple[int, int, int], last: bool, learn_prior: bool,
) -> tuple[list[FlowLayer], tuple[int, int, int], int]:
    """The end of a scale on ``shape = (C, H, W)``: ``(prior layers, latent shape, channels kept)``.

    Every scale but the last factors out ``C - floor(C/2)`` channels as a latent (behind a
    :class:`SplitPrior` if ``learn_prior``) and keeps ``floor(C/2)``; the last one's whole output
    is the latent (behind a :class:`TopPrior` if ``learn_prior``) and keeps nothing.
    """
    c, h, w = shape
    if last:
        return ([TopPrior(shape)] if learn_prior else []), shape, 0
    keep = c // 2
    return ([SplitPrior(c, keep)] if learn_prior else []), (c - keep, h, w), keep


def build_multiscale_flow(
    shape: Sequence[int],
    coupling_net: NetFactory,
    num_scales: int = 2,
    steps_per_scale: int = 4,
    checkerboard_steps: int = 0,
    actnorm: bool = True,
    mixing: Callable[..., FlowLayer] | None = None,
    learn_prior: bool = True,
    preprocess: FlowLayer | None = None,
    cond_channels: int = 0,
) -> MultiScaleFlow:
    """Assemble a RealNVP / Glow multi-scale flow for images of ``shape = (C, H, W)``.

    Each scale: ``checkerboard_steps`` x [ActNorm, checkerboard coupling] (RealNVP), a squeeze
    (``(C, H, W) -> (4C, H/2, W/2)``), ``steps_per_scale`` x [ActNorm, ``mixing(channels=C)`` (e.g.
    :class:`InvConv1x1`), channel coupling] (Glow's step of flow), then a :class:`SplitPrior` (if
    ``learn_prior``) and the factor-out of half the channels. The last scale ends with a
    :class:`TopPrior` instead. ``preprocess`` (e.g. :class:`Logit`) is prepended. ``H`` and ``W``
    must be divisible by ``2 ** num_scales``. ``cond_channels > 0``: every coupling also takes a
    condition of that many channels (a class embedding, :class:`MultiScaleFlow`).
    """
    c, h, w = shape
    scales: list[list[FlowLayer]] = []
    latent_shapes: list[tuple[int, int, int]] = []
    for i in range(num_scales):
        layers: list[FlowLayer] = [preprocess] if (i == 0 and preprocess is not None) else []
        layers += _checkerboard_steps(c, coupling_net, checkerboard_steps, actnorm, cond_channels)
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        layers += _glow_steps(c, coupling_net, steps_per_scale, actnorm, mixing, cond_channels)
        priors, latent, c = _factor_out((c, h, w), i == num_scales - 1, learn_prior)
        scales.append(layers + priors)
        latent_shapes.append(latent)
    return MultiScaleFlow(scales, latent_shapes)
