"""Flow maths: every layer inverts and its log-determinant matches autograd; the dequantised
likelihood is a proper (normalised) bound and never beats the known entropy of toy data."""

import copy
import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.builders import load_run
from genlab.data.base import DataInfo
from genlab.families.flow import Flow, VariationalDequantization
from genlab.families.flow.layers import (
    ActNorm, Center, ChannelCoupling, CheckerboardCoupling, InvConv1x1, Logit, SplitPrior, Squeeze, TopPrior,
)
from genlab.families.flow.objectives import ConditionalDequantizer
from genlab.nets.resnet import ResNet
from genlab.train import run

NET = partial(ResNet, hidden=8, blocks=1)
LAYERS = {  # name -> (layer factory, input shape (C, H, W), inputs in (0, 1) only)
    "squeeze": (lambda: Squeeze(), (2, 4, 4), False),
    "checkerboard_even": (lambda: CheckerboardCoupling(2, NET, parity=0), (2, 4, 4), False),
    "checkerboard_odd": (lambda: CheckerboardCoupling(2, NET, parity=1), (2, 3, 5), False),
    "channel": (lambda: ChannelCoupling(4, NET), (4, 3, 3), False),
    "channel_flip_odd_channels": (lambda: ChannelCoupling(5, NET, flip=True), (5, 3, 3), False),
    "actnorm": (lambda: ActNorm(4), (4, 3, 3), False),
    "invconv": (lambda: InvConv1x1(4), (4, 3, 3), False),
    "invconv_lu": (lambda: InvConv1x1(4, lu=True), (4, 3, 3), False),
    "split_prior": (lambda: SplitPrior(4, 2), (4, 3, 3), False),
    "top_prior": (lambda: TopPrior((4, 3, 3)), (4, 3, 3), False),
    "logit": (lambda: Logit(0.05), (2, 3, 3), True),
    "center": (lambda: Center(), (2, 3, 3), True),
}


def _inputs(shape, unit, n, dtype=torch.float32):
    x = torch.rand(n, *shape, dtype=dtype)
    return x if unit else 2 * torch.randn(n, *shape, dtype=dtype) + 0.5


def _gaussian_nll(y, logdet):
    return (0.5 * y.flatten(1).pow(2).sum(1) - logdet).mean()


def _train(layer, shape, unit, steps=8):
    """A few maximum-likelihood steps on random data, so that no layer stays the identity."""
    params = list(layer.parameters())
    if not params:
        return
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        y, logdet = layer(_inputs(shape, unit, 32))
        opt.zero_grad()
        _gaussian_nll(y, logdet).backward()
        opt.step()


def _jacobian_logdet(fn, x):
    """``log|det J|`` of ``fn`` at a single example ``x`` ``(1, ...)`` by autograd."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten(), vectorize=True)
    return torch.linalg.slogdet(jac)[1]


def _check_layer(layer, shape, unit):
    x = _inputs(shape, unit, 16)
    y, logdet = layer(x)
    assert logdet.shape == (16,) and torch.isfinite(y).all()
    assert (layer.inverse(y) - x).abs().max() <= 1e-5
    layer64 = copy.deepcopy(layer).double()
    x64 = _inputs(shape, unit, 4, torch.float64)
    y64, logdet64 = layer64(x64)
    assert (layer64.inverse(y64) - x64).abs().max() <= 1e-10
    for i in range(2):
        ref = _jacobian_logdet(lambda v: layer64(v)[0], x64[i : i + 1])
        torch.testing.assert_close(logdet64[i], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_inverts_and_its_logdet_matches_autograd(name):
    torch.manual_seed(0)
    make, shape, unit = LAYERS[name]
    layer = make()
    _check_layer(layer, shape, unit)  # at initialisation (ActNorm initialises on the first batch)
    before = [p.detach().clone() for p in layer.parameters()]
    _train(layer, shape, unit)
    assert all(not torch.equal(a, p) for a, p in zip(before, layer.parameters()))  # non-trivial now
    _check_layer(layer, shape, unit)


def test_actnorm_initialises_from_the_data_to_zero_mean_unit_variance():
    x = 3.0 * torch.randn(256, 3, 4, 4) + torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
    layer = ActNorm(3)
    assert torch.equal(layer.inverse(x), x)  # inverse alone does not initialise: identity
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    y2, _ = layer(x + 10)  # initialised once only
    torch.testing.assert_close(y2, y + 10 * layer.log_scale.exp(), atol=1e-4, rtol=1e-5)


def test_lu_parametrisation_is_a_rotation_at_init_with_the_same_determinant():
    torch.manual_seed(0)
    layer = InvConv1x1(6, lu=True)
    w, logdet = layer.weight_and_logdet()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(w)[1], atol=1e-5, rtol=0)


def _flow(info, **kw):
    flow = Flow(NET, **kw)
    return flow, flow.build(info)


GLOW = dict(mixing=partial(InvConv1x1, lu=True), logit_alpha=None, steps_per_scale=2)
REALNVP = dict(checkerboard_steps=2, steps_per_scale=2, learn_prior=False, logit_alpha=0.05)
PLAIN_1X1 = dict(mixing=InvConv1x1, steps_per_scale=2, num_scales=3)


def _train_flow(flow, nets, steps=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(nets.parameters(), lr=0.02)
    for _ in range(steps):
        x = torch.randint(0, nets.info.levels, (32, *nets.info.shape), generator=g).to(torch.uint8)
        opt.zero_grad()
        flow.loss(nets, {"x": x}).loss.backward()
        opt.step()


@pytest.mark.parametrize("arch", [GLOW, REALNVP, PLAIN_1X1], ids=["glow", "realnvp", "plain_1x1_3_scales"])
def test_multiscale_flow_inverts_and_its_logdet_matches_autograd(arch):
    torch.manual_seed(0)
    flow, nets = _flow(DataInfo("t", "image", (1, 8, 8), 16), **arch)
    for trained in (False, True):
        if trained:
            _train_flow(flow, nets, steps=6)
        y = (torch.randint(0, 16, (8, 1, 8, 8)) + torch.rand(8, 1, 8, 8)) / 16
        zs, logdet = flow.encode(nets, y)
        assert sum(z[0].numel() for z in zs) == 64 and [z.shape[1:] for z in zs] == nets["flow"].latent_shapes
        assert (flow.decode(nets, zs) - y).abs().max() <= 1e-5
        nets64 = copy.deepcopy(nets).double()
        y64 = y[:2].double()
        zs64, logdet64 = flow.encode(nets64, y64)
        assert (flow.decode(nets64, zs64) - y64).abs().max() <= 1e-10
        ref = _jacobian_logdet(lambda v: torch.cat([z.flatten(1) for z in flow.encode(nets64, v)[0]], 1), y64[:1])
        torch.testing.assert_close(logdet64[0], ref, rtol=1e-9, atol=1e-8)


def test_odd_sizes_after_squeezing_work_and_unsqueezable_shapes_are_refused():
    flow, nets = _flow(DataInfo("mnist", "image", (1, 28, 28), 256), num_scales=2, steps_per_scale=1)
    assert flow.check_data(nets.info) is None
    assert nets["flow"].latent_shapes == [(2, 14, 14), (8, 7, 7)]
    y = torch.rand(2, 1, 28, 28)
    assert (flow.decode(nets, flow.encode(nets, y)[0]) - y).abs().max() <= 1e-5
    three = Flow(NET, num_scales=3).check_data(DataInfo("mnist", "image", (1, 28, 28), 256))
    assert "model.num_scales=2" in three and "28x28" in three
    odd = Flow(NET, num_scales=1).check_data(DataInfo("odd", "image", (1, 7, 9), 256))
    assert "even" in odd and "7x9" in odd
    text = Flow(NET).check_data(DataInfo("text", "text", (32,), 50))
    assert "text" in text and "images" in text


@pytest.mark.parametrize("alpha,exact", [(0.0, True), (0.05, False), (None, False)])
def test_discrete_probabilities_of_all_images_sum_to_the_mass_on_the_unit_cube(alpha, exact):
    # 1x2x2 binary images: 16 of them. P(x) = E_u[p((x+u)/2)] 2^-4 by Monte Carlo over u (the
    # test_samples average) sums to the mass of p on [0,1]^4: exactly 1 for a logit map with
    # alpha=0 (it maps [0,1] onto R), less otherwise. Checks every Jacobian and the log w term.
    torch.manual_seed(0)
    info = DataInfo("tiny", "image", (1, 2, 2), 2)
    flow, nets = _flow(info, num_scales=1, checkerboard_steps=1, steps_per_scale=2, learn_prior=True,
                       logit_alpha=alpha, test_samples=2000)
    _train_flow(flow, nets, steps=5)
    nets = nets.double()
    x = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)], dtype=torch.uint8).view(16, 1, 2, 2)
    ll = flow.log_likelihood(nets, {"x": x}, stage="test")
    assert ll.kind == "bound"
    mass = float(ll.log_px.exp().sum())
    if exact:
        assert mass == pytest.approx(1.0, abs=0.01)
    else:
        assert 0.05 < mass <= 1.0


def test_variational_dequantizer_log_q_matches_autograd_and_u_is_in_the_unit_interval():
    torch.manual_seed(0)
    q = ConditionalDequantizer(2, NET, steps=2).double()
    for p in q.parameters():  # leave the zero initialisation: a non-trivial q(u|x)
        nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64) * 2 - 1
    eps = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    u, log_q = q(x, eps)
    assert 0 <= float(u.detach().min()) and float(u.detach().max()) < 1
    log_det = _jacobian_logdet(lambda e: q(x, e)[0], eps)
    log_n = -0.5 * (eps**2 + math.log(2 * math.pi)).sum()
    torch.testing.assert_close(log_q[0], log_n - log_det, rtol=1e-9, atol=1e-9)


def test_variational_dequantization_trains_its_own_net_and_reports_a_finite_bound():
    torch.manual_seed(0)
    info = DataInfo("t", "image", (1, 4, 4), 4)
    flow, nets = _flow(info, objective=VariationalDequantization(NET), num_scales=1, test_samples=1)
    assert "dequantizer" in nets
    before = [p.detach().clone() for p in nets["dequantizer"].parameters()]
    _train_flow(flow, nets, steps=5)
    assert any(not torch.equal(a, p) for a, p in zip(before, nets["dequantizer"].parameters()))
    x = torch.randint(0, 4, (64, 1, 4, 4), dtype=torch.uint8)
    ll = flow.log_likelihood(nets, {"x": x})
    assert ll.kind == "bound" and torch.isfinite(ll.log_px).all()


def test_bad_input_raises_a_clear_error_not_nan():
    flow, nets = _flow(DataInfo("toy", "image", (1, 8, 8), 4))
    good = torch.randint(0, 4, (2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"0\.\.3 .*4 levels.*got values in 0\.\.200"):
        flow.loss(nets, {"x": torch.cat([good, torch.full_like(good[:1], 200)])})
    with pytest.raises(ValueError, match=r"got values in -1\.\."):
        flow.log_likelihood(nets, {"x": good.long() - 1})
    with pytest.raises(ValueError, match="non-integer"):
        flow.loss(nets, {"x": good.float() + 0.5})
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        flow.loss(nets, {"x": good[:, :, :4]})
    y = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="non-finite"):
        flow.encode(nets, y.masked_fill(y > 0.5, float("nan")))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        flow.encode(nets, y * 3)
    assert torch.isfinite(flow.loss(nets, {"x": good}).loss)


def test_samples_are_uint8_images_and_temperature_scales_the_latents():
    torch.manual_seed(0)
    flow, nets = _flow(DataInfo("toy", "image", (3, 8, 8), 17), **GLOW)
    _train_flow(flow, nets, steps=3)
    s = flow.sample(nets, 5)
    assert s.dtype == torch.uint8 and s.shape == (5, 3, 8, 8) and int(s.max()) <= 16
    cold = flow.sample(nets, 3, temperature=0.0)  # every latent 0: one deterministic image
    assert torch.equal(cold[0], cold[1]) and torch.equal(cold[0], cold[2])
    flow.temperature = 0.0
    assert torch.equal(flow.sample(nets, 2)[0], cold[0])


def test_interpolation_endpoints_reproduce_the_images():
    torch.manual_seed(0)
    flow, nets = _flow(DataInfo("toy", "image", (1, 8, 8), 16), **REALNVP)
    _train_flow(flow, nets, steps=3)
    xa, xb = (torch.randint(0, 16, (2, 1, 8, 8), dtype=torch.uint8) for _ in range(2))
    path = flow.interpolate(nets, xa, xb, steps=5)
    assert path.shape == (2, 5, 1, 8, 8) and path.min() >= 0 and path.max() <= 15
    torch.testing.assert_close(path[:, 0], xa.float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(path[:, -1], xb.float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (4, 6)])
def test_resnet_keeps_the_resolution_and_starts_at_zero(shape):
    net = ResNet(3, 5, hidden=8, blocks=2)
    out = net(torch.randn(2, 3, *shape))
    assert out.shape == (2, 5, *shape) and torch.equal(out, torch.zeros_like(out))


TOY_RUNS = {
    "realnvp": ["model=realnvp", "model.checkerboard_steps=2"],
    "glow_variational": ["model=glow", "loss=nll_variational_dequant", "model.logit_alpha=0.05"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TOY_RUNS))
def test_toy_nll_never_beats_the_true_entropy(name, make_cfg):
    results = run(make_cfg(
        *TOY_RUNS[name], "dataset=toy", "trainer.max_epochs=6", "num_samples=4",
        "callbacks.samples.every_n_epochs=100", "model.steps_per_scale=2", "model.coupling_net.hidden=16",
        "model.coupling_net.blocks=1", "model.test_samples=4",
    ))
    entropy, uniform = results["data"]["entropy_bpd"], results["data"]["uniform_bpd"]
    assert results["family"] == "flow" and results["test"]["nll_kind"] == "bound"
    for split in ("val", "test"):
        assert entropy <= results[split]["nll_bpd"] < uniform  # a bound, and it learned something
    # the checkpoint alone rebuilds the flow, buffers included (LU permutations, ActNorm state)
    batch = {"x": load_run(results["checkpoint"])[1].splits["test"].x[:64]}
    scores = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # a different random init before the weights are loaded
        module, _ = load_run(results["checkpoint"])
        torch.manual_seed(0)
        scores.append(module.family.log_likelihood(module.nets, batch).log_px)
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    assert module.sample(4, seed=0).dtype == torch.uint8
