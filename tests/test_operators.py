"""Measurement operators of ``genlab-task restore``: exact adjoints, shapes, pseudo-inverses against dense
linear algebra, the Fourier support, the rescaling of a measurement, and clear errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from genlab.tasks.base import TaskError
from genlab.tasks.operators import (
    OPERATORS, Blur, Downsample, Fourier, Mask, Measurement, Projection, affine_of, make_operator,
)

SHAPE = (2, 8, 6)


def options(**kw):
    base = dict(factor=2, sigma=1.0, keep=0.3, center=0.5, mask="random", box_frac=0.5, random_p=0.4)
    return SimpleNamespace(**{**base, **kw})


def every_operator(shape=SHAPE, n=3):
    return [make_operator(name, shape, n, options(), seed=1) for name in OPERATORS]


@pytest.mark.parametrize("op", every_operator(), ids=list(OPERATORS))
def test_adjoint_identity_and_shapes(op):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    ax, aty = op(x), op.adjoint(y)
    assert ax.shape == (3, *op.out_shape) and aty.shape == (3, *SHAPE)
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * max(1.0, abs(float(lhs)))
    dense = op.rows(slice(0, 1)).matrix()  # (M, D): A^T is the transpose of A's matrix
    assert torch.allclose(op.rows(slice(0, 1)).adjoint(y[:1]).flatten(), dense.T @ y[0].flatten(), atol=1e-12)


@pytest.mark.parametrize("op", every_operator(), ids=list(OPERATORS))
def test_regularised_pseudo_inverse_matches_dense_linear_algebra(op):
    one = op.rows(slice(0, 1))
    a = one.matrix()
    y = torch.randn(1, *op.out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lam = 0.3
    dense = a.T @ torch.linalg.solve(a @ a.T + lam * torch.eye(len(a), dtype=a.dtype), y.flatten())
    assert torch.allclose(one.pinv(y, lam).flatten(), dense, atol=1e-10)
    assert abs(one.norm() - float(torch.linalg.matrix_norm(a, 2))) < 1e-8


@pytest.mark.parametrize("op", every_operator(), ids=list(OPERATORS))
def test_pseudo_inverse_reproduces_measurements_on_the_range(op):
    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if isinstance(op, Blur):  # sigma=1 on 6 pixels: the smallest singular values are cut (RCOND)
        op = Blur(SHAPE, 0.5)
    assert torch.allclose(op(op.pinv(op(x))), op(x), atol=1e-9)
    one = op.rows(slice(0, 1))
    a = one.matrix()
    assert one.measurements() == int(torch.linalg.matrix_rank(a))


@pytest.mark.parametrize("op", [Downsample(SHAPE, 1), Projection(SHAPE, 1.0, seed=3), Fourier(SHAPE, 1.0),
                                Blur(SHAPE, 0.5), Mask(torch.zeros(3, *SHAPE, dtype=torch.bool))],
                         ids=["downsample1", "projection1", "fourier1", "blur", "mask_none"])
def test_pseudo_inverse_inverts_a_full_rank_operator(op):
    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(op.pinv(op(x)), x, atol=1e-8)


def test_downsample_and_mask_are_what_they_say():
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)
    down = Downsample((1, 4, 4), 2)
    assert down(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.equal(down.pinv(down(x))[0, 0, :2, :2], torch.full((2, 2), 2.5, dtype=torch.float64))
    missing = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    missing[..., 0, 0] = True
    mask = Mask(missing)
    assert mask(x)[0, 0, 0, 0] == 0 and torch.equal(mask(x)[0, 0, 1:], x[0, 0, 1:]) and mask.measurements() == 15
    assert mask.noise(torch.ones_like(x))[0, 0, 0, 0] == 0  # no noise where nothing is measured


def test_fourier_support_is_conjugate_symmetric_with_the_low_frequencies():
    op = Fourier((1, 16, 16), keep=0.25, center=0.5, seed=0)
    s = op.support
    flipped = torch.roll(torch.flip(s, (0, 1)), (1, 1), (0, 1))  # k -> -k mod (H, W)
    assert torch.equal(s, flipped)
    assert abs(float(s.float().mean()) - 0.25) < 0.02
    assert bool(s[0, 0]) and bool(s[0, 1]) and bool(s[1, 0]) and bool(s[-1, -1])  # DC and its neighbours
    assert not torch.equal(s, Fourier((1, 16, 16), keep=0.25, center=0.5, seed=1).support)  # the random part
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    zero_filled = op.pinv(op(x))
    kept = torch.fft.fft2(zero_filled, norm="ortho")[..., s]
    assert torch.allclose(kept, torch.fft.fft2(x, norm="ortho")[..., s], atol=1e-10)


def test_blur_is_a_normalised_gaussian_with_circular_boundary():
    op = Blur((1, 9, 9), 1.0)
    delta = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    delta[..., 0, 0] = 1.0
    out = op(delta)[0, 0]
    assert abs(float(out.sum()) - 1.0) < 1e-12  # mass preserved
    assert out[0, 1] == out[0, -1] == out[1, 0] == out[-1, 0]  # wraps around the edge
    assert abs(float(out[0, 1] / out[0, 0]) - math.exp(-0.5)) < 1e-12


def test_rescaled_measurement_is_the_same_problem_in_another_scale():
    op = Projection((1, 3, 3), 0.5, seed=0)
    m = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    scale, shift = affine_of(lambda v: 0.5 * v + 0.5, m)
    assert (scale, shift) == (0.5, 0.5)
    problem = Measurement.of(op, scale * m + shift, 0.1, torch.Generator().manual_seed(0))
    inner = problem.rescaled(scale, shift)
    assert torch.allclose(inner.residual(m), problem.residual(scale * m + shift) / scale, atol=1e-12)
    assert inner.noise == pytest.approx(0.2)


def test_bad_operators_are_clear_errors():
    with pytest.raises(TaskError, match="operator='sharpen' is unknown; choose one of mask, downsample"):
        make_operator("sharpen", SHAPE, 1, options())
    with pytest.raises(TaskError, match=r"factor=3 must be a positive integer that divides the image size 8x6.*\[1, 2\]"):
        make_operator("downsample", SHAPE, 1, options(factor=3))
    with pytest.raises(TaskError, match="sigma=0.0 must be > 0"):
        make_operator("blur", SHAPE, 1, options(sigma=0.0))
    with pytest.raises(TaskError, match="keep=1.5 must be in"):
        make_operator("fourier", SHAPE, 1, options(keep=1.5))
    with pytest.raises(TaskError, match="mask='disc' is unknown"):
        make_operator("mask", SHAPE, 1, options(mask="disc"))
    with pytest.raises(TaskError, match="operator=fourier for large images"):
        make_operator("projection", (3, 64, 64), 1, options())
