"""Gated PixelCNN: causality (no blind spot, R -> G -> B), exact chain-rule NLL, sampling, toy entropy."""

import itertools
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from genlab.data.base import DataInfo
from genlab.distributions import Categorical, DiscretizedLogisticMixture
from genlab.families.autoregressive import Autoregressive
from genlab.nets.ar import ARNet
from genlab.nets.pixelcnn import GatedPixelCNN
from genlab.train import run

SMALL = {"channels": 12, "layers": 2, "kernel_size": 3, "out_hidden": 24}


def _net(shape, levels=4, num_params=4, **kw) -> GatedPixelCNN:
    torch.manual_seed(0)
    return GatedPixelCNN(shape, levels, num_params, **{**SMALL, **kw}).double()


def _changes(net: GatedPixelCNN, x: torch.Tensor, pos: int) -> torch.Tensor:
    """Largest change ``(D,)`` of the params at every position when input ``pos`` changes."""
    y = x.clone()
    y.view(len(y), -1)[:, pos] = (y.view(len(y), -1)[:, pos] + 1) % net.levels
    return (net(y) - net(x)).abs().amax(dim=(0, 1))


@pytest.mark.parametrize("shape,kw", [((1, 5, 5), {}), ((1, 5, 6), {"first_kernel_size": 5}), ((3, 5, 5), {})])
def test_params_depend_on_every_earlier_position_and_no_later_one(shape, kw):
    net = _net(shape, **kw)
    x = torch.randint(0, 4, (4, *shape), dtype=torch.uint8)
    order = net.order()
    for i, pos in enumerate(order.tolist()):
        change = _changes(net, x, pos)
        assert change[order[: i + 1]].max() <= 1e-9, f"position {pos} leaks into itself or earlier ones"
        if i < len(order) - 1:
            assert change[order[i + 1 :]].max() > 1e-6, f"position {pos} reaches no later position"


def _flat(shape, c, h, w) -> int:
    return (c * shape[1] + h) * shape[2] + w


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 6, 6)])
def test_no_blind_spot_and_channels_conditioned_on_earlier_channels(shape):
    net = _net(shape)
    x = torch.randint(0, 4, (4, *shape), dtype=torch.uint8)
    r, c = 2, 2
    change = _changes(net, x, _flat(shape, 0, r, c)).view(shape)[0]  # effect on channel 0 (H, W)
    for dr, dc in [(0, 1), (1, 0), (1, -1), (1, 1), (1, 2), (2, 0)]:  # right, below, below-left/right...
        assert change[r + dr, c + dc] > 1e-6, f"({r},{c}) does not reach ({r + dr},{c + dc})"
    # the pixel two to the right in the row above: the blind spot of the original PixelCNN
    assert _changes(net, x, _flat(shape, 0, r - 1, c + 2)).view(shape)[0, r, c] > 1e-6
    if shape[0] == 3:
        same_pixel = _changes(net, x, _flat(shape, 0, r, c)).view(shape)[:, r, c]  # R perturbed
        assert same_pixel[0] == 0 and same_pixel[1] > 1e-6 and same_pixel[2] > 1e-6
        same_pixel = _changes(net, x, _flat(shape, 1, r, c)).view(shape)[:, r, c]  # G perturbed
        assert same_pixel[:2].max() == 0 and same_pixel[2] > 1e-6


def _family(shape, levels, objective=None, **kw):
    family = Autoregressive(partial(GatedPixelCNN, **{**SMALL, **kw}), objective or Categorical())
    info = DataInfo(name="t", kind="image", shape=shape, levels=levels)
    torch.manual_seed(0)
    return family, family.build(info)


def test_nll_is_the_sum_of_per_position_cross_entropies():
    family, nets = _family((3, 4, 5), 4)
    x = torch.randint(0, 4, (6, 3, 4, 5), dtype=torch.uint8)
    params, flat = nets["net"](x), x.view(6, -1).long()  # (B, L, D), (B, D)
    expected = torch.zeros(6)
    for d in range(flat.shape[1]):
        expected -= F.cross_entropy(params[:, :, d], flat[:, d], reduction="none")
    ll = family.log_likelihood(nets, {"x": x})
    assert ll.kind == "exact" and family.nll_kind == "exact"
    torch.testing.assert_close(ll.log_px, expected, rtol=1e-5, atol=1e-4)
    out = family.loss(nets, {"x": x})
    torch.testing.assert_close(out.loss, -expected.mean() / 60, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,levels", [((1, 2, 3), 2), ((3, 1, 2), 2), ((2, 1, 1), 5)])
def test_probabilities_of_all_images_sum_to_one(shape, levels):
    family, nets = _family(shape, levels)
    d = math.prod(shape)
    every = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.uint8).view(-1, *shape)
    log_px = family.log_likelihood(nets, {"x": every}).log_px.double()
    assert float(torch.logsumexp(log_px, 0).exp()) == pytest.approx(1.0, abs=1e-5)


def test_samples_follow_the_model_distribution():
    shape, levels = (3, 1, 1), 3  # 27 images: compare frequencies with exact probabilities
    family, nets = _family(shape, levels)
    torch.manual_seed(1)
    for p in nets.parameters():  # make the distribution far from uniform
        p.data.mul_(3.0)
    every = torch.tensor(list(itertools.product(range(levels), repeat=3)), dtype=torch.uint8).view(-1, *shape)
    probs = family.log_likelihood(nets, {"x": every}).log_px.exp()
    x = family.sample(nets, 20_000)
    assert x.dtype == torch.uint8 and x.shape == (20_000, *shape) and int(x.max()) < levels
    index = (x.view(-1, 3).long() * torch.tensor([9, 3, 1])).sum(-1)
    freq = torch.bincount(index, minlength=27).float() / len(x)
    assert (freq - probs).abs().max() < 0.015


@pytest.mark.parametrize("shape,levels,objective", [
    ((1, 7, 5), 2, Categorical()),
    ((3, 6, 4), 256, DiscretizedLogisticMixture(2)),
])
def test_sampling_steps_equal_the_full_forward_pass(shape, levels, objective):
    family, nets = _family(shape, levels, objective)
    net: GatedPixelCNN = nets["net"]
    assert net.vertical_reach < shape[1] - 2  # the cached rows are cropped, not the whole image
    x = torch.zeros(3, *shape, dtype=torch.uint8)
    state = net.init_state(x)
    with torch.no_grad():
        for step, pos in enumerate(net.order().tolist()):  # x filled in the order, as when sampling
            torch.testing.assert_close(net.next_params(x, step, state), ARNet.next_params(net, x, step, None))
            x.view(3, -1)[:, pos] = torch.randint(0, levels, (3,), dtype=torch.uint8)
    samples = family.sample(nets, 5)
    assert samples.dtype == torch.uint8 and samples.shape == (5, *shape)
    assert family.log_likelihood(nets, {"x": samples}).log_px.isfinite().all()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 8, 8)])
def test_any_image_size_and_colour_count(shape):
    net = GatedPixelCNN(shape, 256, 5, channels=8, layers=2, out_hidden=8)
    assert net(torch.randint(0, 256, (2, *shape), dtype=torch.uint8)).shape == (2, 5, math.prod(shape))


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError, match="odd kernel"):
        GatedPixelCNN((1, 8, 8), 2, 2, kernel_size=4)
    with pytest.raises(ValueError, match="colour channels"):
        GatedPixelCNN((3, 8, 8), 2, 2, channels=2)


@pytest.mark.slow
def test_toy_nll_approaches_but_never_beats_the_true_entropy(make_cfg):
    results = run(make_cfg("model=pixelcnn", "dataset=toy", "trainer.max_epochs=30", "optimizer.lr=3e-3",
                           "model.net.channels=16", "model.net.layers=3", "model.net.out_hidden=32",
                           "num_samples=4", "callbacks.samples.every_n_epochs=1000"))
    entropy = results["data"]["entropy_bpd"]
    assert results["test"]["nll_kind"] == "exact"
    for split in ("val", "test"):
        assert results[split]["nll_bpd"] >= entropy
    assert results["test"]["nll_bpd"] <= 1.2 * entropy < 0.5 * math.log2(4)  # uniform: 2 bits/dim
