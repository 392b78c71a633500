"""Measurement operators of linear inverse problems ``y = A(x) + noise * eps``, and the measurement.

**Convention.** Every operator acts on images in the ``[0, 1]`` *unit* scale (level ``v`` of ``L`` at
``v / (L - 1)``, the scale where the tasks measure PSNR), batched ``(B, C, H, W)``; ``noise`` is the
standard deviation of i.i.d. Gaussian noise on the measurements, in that scale. A family that models
another scale ``m`` (``[-1, 1]`` grid points, bins, level units) sees the same problem through
:meth:`Measurement.rescaled`: for ``x = a m + b``, ``A(x) = a A(m) + b A(1)``, so ``y`` becomes
``(y - b A(1)) / a`` and the noise ``noise / a`` (every operator here is linear).

Each operator is a small object with its forward map :meth:`Operator.forward` (``A x``), its adjoint
:meth:`Operator.adjoint` (``A^T y``, exact: ``<A x, y> = <x, A^T y>`` in the real inner product),
the regularised pseudo-inverse :meth:`Operator.pinv` ``A^T (A A^T + lam I)^+ y`` from its singular
structure (``lam = 0``: the Moore-Penrose pseudo-inverse, singular values below ``rcond`` of the
largest treated as zero; ``lam > 0``: Tikhonov / the Gaussian posterior mean for a unit prior), its
spectral norm and the noise model (:meth:`Operator.noise`). Stable names:

* ``mask``: keep the observed pixels (:mod:`genlab.tasks.masks`, ``True`` = missing), ``A = diag(keep)``;
  ``A = A^T = A^+``; the measurement is the full image with zeros where missing, noise only where kept.
* ``downsample``: average pooling by ``factor`` (must divide ``H`` and ``W``); ``A^T`` spreads each
  value over its block divided by ``factor^2``, ``A A^T = I / factor^2``, so ``A^+`` is nearest upsampling.
* ``blur``: separable Gaussian blur of std ``sigma`` pixels with a *circular* boundary (the kernel,
  truncated at ``ceil(3 sigma)`` and normalised, is wrapped onto the image), ``A x = B_H x B_W^T`` with
  symmetric circulant ``B``: self-adjoint, diagonalised by ``eigh`` of ``B_H`` and ``B_W``.
* ``fourier``: the orthonormal 2-D DFT ``c = F x`` per channel at a set ``K`` of frequencies closed
  under ``k -> -k`` (the lowest ``center`` share of them, the rest drawn at random): MRI-like
  undersampled k-space. ``y`` holds ``(Re c_k, Im c_k)``, ``A^T y = Re(F^H zero-filled y)``,
  ``A A^T`` is a projection, ``A^+ = A^T``: the zero-filled reconstruction.
* ``projection``: ``y = G x``, ``G`` an ``m x D`` matrix of i.i.d. ``N(0, 1 / m)`` entries,
  ``m = round(keep D)`` (compressed sensing of small images); ``A^+`` from its SVD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.tasks.base import TaskError
from genlab.tasks.masks import MASKS, make_mask

RCOND = 1e-3  # singular values below this share of the largest count as zero in A^+ (lam = 0)


class Operator:
    """A linear measurement operator on ``(B, *in_shape)`` images in the unit scale (module docstring)."""

    name: ClassVar[str] = "base"

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one measurement."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``A x``: ``(B, *in_shape)`` -> ``(B, *out_shape)``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``: ``(B, *out_shape)`` -> ``(B, *in_shape)``."""
        raise NotImplementedError

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        """``A^T (A A^T + lam I)^+ y`` (``lam = 0``: the pseudo-inverse ``A^+ y``)."""
        raise NotImplementedError

    def norm(self) -> float:
        """The spectral norm ``||A||`` (largest singular value)."""
        return 1.0

    def noise(self, eps: Tensor) -> Tensor:
        """The measurement noise of a standard-normal draw ``eps`` ``(B, *out_shape)``: i.i.d. by default."""
        return eps

    def rows(self, index: slice) -> Operator:
        """The operator of the examples ``index`` of the batch (itself where it is the same for all)."""
        return self

    def describe(self) -> str:
        """The operator and its parameters, for reports."""
        return self.name

    def show(self, y: Tensor) -> Tensor:
        """The measurement as an image ``(B, *in_shape)`` for people: ``A^+ y`` (nearest upsampling,
        zero-filling) by default."""
        return self.pinv(y)

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def measurements(self) -> int:
        """The number of independent measurements of one image (the rank of ``A``)."""
        return math.prod(self.out_shape)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``A`` as a dense ``(M, D)`` matrix (small images only: tests and closed forms)."""
        d = math.prod(self.in_shape)
        basis = torch.eye(d, dtype=dtype).view(d, *self.in_shape)
        return self.forward(basis).reshape(d, -1).T


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.device, x.dtype)


class Mask(Operator):
    """``A = diag(keep)`` with ``keep = ~missing`` ``(N, C, H, W)``, one mask per example."""

    name = "mask"

    def __init__(self, missing: Tensor, kind: str = "") -> None:
        super().__init__(tuple(missing.shape[1:]))
        self.keep, self.kind = ~missing.bool(), kind

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def forward(self, x: Tensor) -> Tensor:
        return x * _bcast(self.keep, x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * _bcast(self.keep, y)

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        return y * _bcast(self.keep, y) / (1.0 + lam)

    def noise(self, eps: Tensor) -> Tensor:
        return self.forward(eps)

    def rows(self, index: slice) -> Operator:
        return Mask(~self.keep[index], self.kind)

    def measurements(self) -> int:
        return int(self.keep[0].sum())

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.diag(self.keep[0].flatten().to(dtype))

    def describe(self) -> str:
        return f"mask ({self.kind}, {100 * float((~self.keep).float().mean()):.0f}% missing)"


class Downsample(Operator):
    """Average pooling over ``factor x factor`` blocks."""

    name = "downsample"

    def __init__(self, in_shape: tuple[int, ...], factor: int) -> None:
        super().__init__(in_shape)
        _, h, w = self.in_shape
        if factor < 1 or h % factor or w % factor:
            raise TaskError(f"factor={factor} must be a positive integer that divides the image size {h}x{w} "
                            f"(average pooling over factor x factor blocks); choose one of "
                            f"{[f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]}")
        self.factor = factor

    @property
    def out_shape(self) -> tuple[int, ...]:
        c, h, w = self.in_shape
        return (c, h // self.factor, w // self.factor)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        return self.adjoint(y) * self.factor**2 / (1.0 + lam * self.factor**2)  # A A^T = I / f^2

    def norm(self) -> float:
        return 1.0 / self.factor

    def describe(self) -> str:
        return f"downsample x{self.factor} (average pooling)"


def circulant_gaussian(n: int, sigma: float) -> Tensor:
    """The ``n x n`` symmetric circulant matrix of a Gaussian kernel of std ``sigma`` truncated at
    ``ceil(3 sigma)``, normalised to sum 1 and wrapped onto ``n`` positions (float64)."""
    r = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-r, r + 1)
    k = torch.exp(-0.5 * (offsets.double() / sigma) ** 2)
    row = torch.zeros(n, dtype=torch.float64).index_add_(0, offsets % n, k / k.sum())
    idx = (torch.arange(n)[None, :] - torch.arange(n)[:, None]) % n
    return row[idx]


class Blur(Operator):
    """Separable Gaussian blur with a circular boundary: ``A x = B_H x B_W^T`` (module docstring)."""

    name = "blur"

    def __init__(self, in_shape: tuple[int, ...], sigma: float) -> None:
        super().__init__(in_shape)
        if not sigma > 0:
            raise TaskError(f"sigma={sigma} must be > 0: the blur's standard deviation in pixels (e.g. sigma=1.5)")
        _, h, w = self.in_shape
        self.sigma = sigma
        self.bh, self.bw = circulant_gaussian(h, sigma), circulant_gaussian(w, sigma)
        (self.eh, self.uh), (self.ew, self.uw) = torch.linalg.eigh(self.bh), torch.linalg.eigh(self.bw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def forward(self, x: Tensor) -> Tensor:
        return _bcast(self.bh, x) @ x @ _bcast(self.bw, x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return _bcast(self.bh, y).T @ y @ _bcast(self.bw, y)

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        s = self.eh[:, None] * self.ew[None, :]  # the singular values (up to sign) of A, (H, W)
        gain = s / (s**2 + lam) if lam > 0 else torch.where(s.abs() > RCOND * s.abs().max(), 1 / s, 0.0)
        uh, uw = _bcast(self.uh, y), _bcast(self.uw, y)
        return uh @ ((uh.T @ y @ uw) * _bcast(gain, y)) @ uw.T

    def norm(self) -> float:
        return float((self.eh[:, None] * self.ew[None, :]).abs().max())

    def show(self, y: Tensor) -> Tensor:
        return y  # the blurred image itself

    def describe(self) -> str:
        return f"Gaussian blur sigma={self.sigma:g} px (circular boundary)"


def frequency_orbits(h: int, w: int) -> list[list[tuple[int, int]]]:
    """The DFT frequencies of an ``h x w`` image grouped in the pairs ``{k, -k}`` (single for self-
    conjugate ``k``), from the lowest (Chebyshev radius of the signed frequency) up."""
    seen, orbits = set(), []
    for i in range(h):
        for j in range(w):
            if (i, j) not in seen:
                pair = sorted({(i, j), ((-i) % h, (-j) % w)})
                seen.update(pair)
                orbits.append(pair)

    def radius(orbit: list[tuple[int, int]]) -> tuple[float, tuple[int, int]]:
        i, j = orbit[0]
        return max(min(i, h - i) / h, min(j, w - j) / w), orbit[0]

    return sorted(orbits, key=radius)


def fourier_support(h: int, w: int, keep: float, center: float, seed: int) -> Tensor:
    """A bool ``(h, w)`` set of kept frequencies closed under ``k -> -k``: about ``keep h w`` of them,
    the lowest ``center`` share first, the others drawn at random (seeded)."""
    orbits = frequency_orbits(h, w)
    target, n_low = max(1, round(keep * h * w)), max(1, round(center * keep * h * w))
    chosen, count = [], 0
    while orbits and count < min(n_low, target):
        chosen.append(orbits.pop(0))
        count += len(chosen[-1])
    for i in torch.randperm(len(orbits), generator=torch.Generator().manual_seed(seed)).tolist():
        if count >= target:
            break
        chosen.append(orbits[i])
        count += len(orbits[i])
    support = torch.zeros(h, w, dtype=torch.bool)
    for orbit in chosen:
        for i, j in orbit:
            support[i, j] = True
    return support


class Fourier(Operator):
    """Undersampled orthonormal 2-D DFT per channel at the frequencies ``support`` (module docstring):
    ``y`` ``(B, C, 2, K)`` holds the real and imaginary parts of the ``K`` kept coefficients."""

    name = "fourier"

    def __init__(self, in_shape: tuple[int, ...], keep: float, center: float = 0.5, seed: int = 0) -> None:
        super().__init__(in_shape)
        if not 0 < keep <= 1 or not 0 <= center <= 1:
            raise TaskError(f"keep={keep} must be in (0, 1] (the share of Fourier coefficients measured) and "
                            f"center={center} in [0, 1] (the share of them that are the lowest frequencies)")
        _, h, w = self.in_shape
        self.keep, self.center = keep, center
        self.support = fourier_support(h, w, keep, center, seed)
        self.index = self.support.flatten().nonzero().squeeze(1)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.in_shape[0], 2, len(self.index))

    def forward(self, x: Tensor) -> Tensor:
        c = torch.fft.fft2(x, norm="ortho").flatten(-2)[..., self.index.to(x.device)]
        return torch.stack([c.real, c.imag], dim=-2)

    def adjoint(self, y: Tensor) -> Tensor:
        b, ch, h, w = (y.shape[0], *self.in_shape)
        full = torch.zeros(b, ch, h * w, dtype=torch.complex128 if y.dtype == torch.float64 else torch.complex64,
                           device=y.device)
        full[..., self.index.to(y.device)] = torch.complex(y[..., 0, :], y[..., 1, :])
        return torch.fft.ifft2(full.view(b, ch, h, w), norm="ortho").real.to(y.dtype)

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        return self.adjoint(y) / (1.0 + lam)  # A A^T is a projection on a support closed under k -> -k

    def measurements(self) -> int:
        return self.in_shape[0] * int(self.support.sum())

    def describe(self) -> str:
        share = float(self.support.float().mean())
        return f"Fourier {100 * share:.0f}% of coefficients ({100 * self.center:.0f}% of them the lowest frequencies)"


class Projection(Operator):
    """``y = G x`` with ``G`` ``(m, D)`` of i.i.d. ``N(0, 1/m)`` entries, ``m = round(keep D)`` (seeded)."""

    name = "projection"
    most: ClassVar[int] = 4096  # largest image (C H W) a dense projection is made for

    def __init__(self, in_shape: tuple[int, ...], keep: float, seed: int = 0) -> None:
        super().__init__(in_shape)
        d = math.prod(self.in_shape)
        if not 0 < keep <= 1 or d > self.most:
            raise TaskError(f"operator=projection needs keep in (0, 1] (got {keep}: measurements per pixel) and "
                            f"images of at most {self.most} values (got {d}); use operator=fourier for large images")
        m = max(1, round(keep * d))
        g = torch.Generator().manual_seed(seed)
        self.keep, self.matrix_ = keep, torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(m)
        self.u, self.s, self.vh = torch.linalg.svd(self.matrix_, full_matrices=False)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.matrix_.shape[0],)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ _bcast(self.matrix_, x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return (y @ _bcast(self.matrix_, y)).view(len(y), *self.in_shape)

    def pinv(self, y: Tensor, lam: float = 0.0) -> Tensor:
        s = self.s
        gain = s / (s**2 + lam) if lam > 0 else torch.where(s > RCOND * s.max(), 1 / s, 0.0)
        out = ((y @ _bcast(self.u, y)) * _bcast(gain, y)) @ _bcast(self.vh, y)
        return out.view(len(y), *self.in_shape)

    def norm(self) -> float:
        return float(self.s.max())

    def measurements(self) -> int:
        return int((self.s > RCOND * self.s.max()).sum())

    def describe(self) -> str:
        return f"random Gaussian projection, {self.matrix_.shape[0]} measurements of {self.matrix_.shape[1]}"


# -- the measurement ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """``y = A(x) + noise * A.noise(eps)`` ``(B, *out_shape)`` of images ``x`` in the unit scale."""

    operator: Operator
    y: Tensor
    noise: float

    @classmethod
    def of(cls, operator: Operator, x: Tensor, noise: float, generator: torch.Generator | None = None) -> Measurement:
        """Measure ``x`` ``(B, *in_shape)``: ``A x`` plus noise of std ``noise`` (seeded by ``generator``)."""
        clean = operator(x)
        eps = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        return cls(operator, clean + noise * operator.noise(eps), float(noise))

    def rescaled(self, scale: float, shift: float) -> Measurement:
        """The same problem for ``m`` with ``x = scale * m + shift`` (module docstring)."""
        ones = torch.ones(1, *self.operator.in_shape, dtype=self.y.dtype, device=self.y.device)
        offset = shift * self.operator.rows(slice(0, 1))(ones)
        return Measurement(self.operator, (self.y - offset) / scale, self.noise / scale)

    def rows(self, index: slice) -> Measurement:
        """The measurement of the examples ``index``."""
        return replace(self, operator=self.operator.rows(index), y=self.y[index])

    def residual(self, x: Tensor) -> Tensor:
        """``y - A x`` ``(B, *out_shape)``."""
        return self.y - self.operator(x)

    def consistency(self, x: Tensor) -> Tensor:
        """``||y - A x||_2`` per example ``(B,)``."""
        return self.residual(x).flatten(1).norm(dim=1)


def affine_of(to_unit: Any, like: Tensor) -> tuple[float, float]:
    """``(scale, shift)`` of an affine map ``to_unit`` (``x = scale * m + shift``), read off at 0 and 1."""
    zero, one = (to_unit(torch.full((1,), v, dtype=like.dtype, device=like.device)) for v in (0.0, 1.0))
    return float(one - zero), float(zero)


# -- names -> operators ----------------------------------------------------------------------------------------------
OPERATORS: dict[str, str] = {
    "mask": "keep the observed pixels (mask=box|random|bottom, box_frac, random_p)",
    "downsample": "average pooling by factor (factor must divide the image size)",
    "blur": "separable Gaussian blur of std sigma pixels, circular boundary",
    "fourier": "keep a share of 2-D Fourier coefficients, low frequencies first (keep, center)",
    "projection": "random Gaussian projection to keep * D measurements (small images)",
}


def make_operator(name: str, shape: tuple[int, ...], n: int, options: Any, seed: int = 0) -> Operator:
    """The operator ``name`` for ``n`` images of ``shape`` ``(C, H, W)`` with the task's ``options``
    (``factor``, ``sigma``, ``keep``, ``center``, ``mask``, ``box_frac``, ``random_p``)."""
    if name not in OPERATORS:
        raise TaskError(f"operator={name!r} is unknown; choose one of {', '.join(OPERATORS)} "
                        "(e.g. operator=downsample factor=2, operator=blur sigma=1.5, operator=fourier keep=0.25)")
    if len(shape) != 3:
        raise TaskError(f"operators act on images (C, H, W), not data of shape {tuple(shape)}")
    if name == "mask":
        if options.mask not in MASKS:
            raise TaskError(f"mask={options.mask!r} is unknown; choose one of {', '.join(MASKS)}")
        return Mask(make_mask(options.mask, n, tuple(shape), options.box_frac, options.random_p, seed), options.mask)
    builders = {"downsample": lambda: Downsample(shape, int(options.factor)),
                "blur": lambda: Blur(shape, float(options.sigma)),
                "fourier": lambda: Fourier(shape, float(options.keep), float(options.center), seed),
                "projection": lambda: Projection(shape, float(options.keep), seed)}
    return builders[name]()
