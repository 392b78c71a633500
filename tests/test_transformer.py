"""Transformer LM backbone: causality, exact chain-rule NLL, KV cache = full recomputation,
top-k / temperature sampling, and a short training on data of known entropy."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from genlab.builders import load_run
from genlab.data.base import DataInfo
from genlab.distributions import Categorical, DiscretizedLogisticMixture
from genlab.families.autoregressive import Autoregressive
from genlab.nets.transformer import Rotary, TransformerLM
from genlab.train import run

SHAPES = {"text": ((24,), 7), "image": ((3, 4, 4), 5)}  # shape, levels
POSITIONS = ["learned", "rotary"]


def _net(kind: str, positions: str, **kw) -> TransformerLM:
    shape, levels = SHAPES[kind]
    torch.manual_seed(0)
    kw = {"d_model": 32, "n_layers": 2, "n_heads": 4, **kw}
    return TransformerLM(shape, levels, levels, positions=positions, **kw).eval()


def _data(kind: str, n: int = 3, seed: int = 1) -> torch.Tensor:
    shape, levels = SHAPES[kind]
    dtype = torch.long if kind == "text" else torch.uint8
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed)).to(dtype)


def _family(kind: str, positions: str = "rotary", **kw) -> tuple[Autoregressive, torch.nn.ModuleDict]:
    shape, levels = SHAPES[kind]
    net = functools.partial(TransformerLM, d_model=32, n_layers=2, n_heads=4, positions=positions)
    family = Autoregressive(net, Categorical(), **kw)
    torch.manual_seed(0)
    nets = family.build(DataInfo("t", kind, shape, levels)).eval()
    return family, nets


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_params_depend_only_on_earlier_positions_in_generation_order(kind, positions):
    net, x = _net(kind, positions), _data(kind)
    order, levels = net.order(), SHAPES[kind][1]
    with torch.no_grad():
        base = net(x)
        assert base.shape == (3, levels, net.dims)
        for i in (0, 1, net.dims // 2, net.dims - 2):
            y = x.clone().reshape(3, -1)
            y[:, order[i]] = (y[:, order[i]] + 1) % levels
            out = net(y.reshape(x.shape))
            before, after = order[: i + 1], order[i + 1 :]
            assert (out[:, :, before] - base[:, :, before]).abs().max() <= 1e-6
            assert (out[:, :, after] - base[:, :, after]).abs().amax(dim=(0, 1)).gt(1e-4).any()


def test_image_generation_order_is_raster_with_channels_innermost():
    net = _net("image", "learned")
    c, h, w = SHAPES["image"][0]
    first = net.order()[:4].tolist()  # pixel (0,0): R, G, B; then pixel (0,1) R
    assert first == [0, h * w, 2 * h * w, 1]


@pytest.mark.parametrize("kind", ["text", "image"])
def test_nll_is_the_sum_of_per_position_cross_entropies(kind):
    family, nets = _family(kind)
    x = _data(kind, n=4)
    ll = family.log_likelihood(nets, {"x": x})
    assert ll.kind == "exact" and ll.log_px.shape == (4,)
    with torch.no_grad():
        params = nets["net"](x)  # (B, L, D)
    flat = x.reshape(4, -1).long()
    ce = sum(F.cross_entropy(params[:, :, d], flat[:, d], reduction="none") for d in range(flat.shape[1]))
    torch.testing.assert_close(-ll.log_px, ce, rtol=1e-5, atol=1e-5)
    loss = family.loss(nets, {"x": x}).loss  # nats per dimension
    torch.testing.assert_close(loss, ce.mean() / flat.shape[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_kv_cache_matches_full_recomputation_at_every_sampling_step(kind, positions):
    net = _net(kind, positions)
    levels = SHAPES[kind][1]
    x = torch.zeros_like(_data(kind, n=5))
    flat, state = x.view(5, -1), net.init_state(x)
    torch.manual_seed(3)
    with torch.no_grad():
        for step, pos in enumerate(net.order().tolist()):
            cached = net.next_params(x, step, state)
            torch.testing.assert_close(cached, net(x)[:, :, pos], rtol=0, atol=1e-5)
            flat[:, pos] = torch.multinomial(cached.softmax(-1), 1)[:, 0].to(x.dtype)
    assert state.length == net.dims and x.max() < levels


def test_sampling_feeds_one_token_per_step_and_never_a_full_pass(monkeypatch):
    family, nets = _family("text")
    net = nets["net"]
    fed = []
    net.tok_emb.register_forward_hook(lambda m, inp, out: fed.append(tuple(inp[0].shape)))
    monkeypatch.setattr(net, "forward", lambda x: pytest.fail("full forward pass while sampling"))
    family.sample(nets, 6)
    assert fed == [(6, 1)] * net.dims
    with pytest.raises(ValueError, match="next step is 0"):
        net.next_params(torch.zeros(6, *net.shape, dtype=torch.long), 1, net.init_state(torch.zeros(6, 1)))


def _greedy(net: TransformerLM, n: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.zeros(n, *net.shape, dtype=dtype)
    with torch.no_grad():
        for pos in net.order().tolist():
            x.view(n, -1)[:, pos] = net(x)[:, :, pos].argmax(1).to(dtype)
    return x


@pytest.mark.parametrize("kind", ["text", "image"])
def test_top_k_1_is_greedy_decoding_whatever_the_seed(kind):
    family, nets = _family(kind, top_k=1)
    samples = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        samples.append(family.sample(nets, 4))
    a, b = samples
    assert a.dtype == (torch.long if kind == "text" else torch.uint8) and a.shape == (4, *SHAPES[kind][0])
    assert torch.equal(a, b)
    assert torch.equal(a, _greedy(nets["net"], 4, a.dtype))


def test_top_k_samples_only_the_k_most_likely_levels_and_low_temperature_is_greedy():
    family, nets = _family("text", top_k=2)
    torch.manual_seed(0)
    x = family.sample(nets, 16)
    assert x.dtype == torch.long and x.min() >= 0 and x.max() < SHAPES["text"][1]
    with torch.no_grad():
        top2 = nets["net"](x).topk(2, dim=1).indices  # (B, 2, D)
    assert (top2 == x.unsqueeze(1)).any(1).all()
    assert len(x.unique()) > 2  # not degenerate
    family.top_k, family.temperature = None, 1e-4
    torch.manual_seed(5)
    torch.testing.assert_close(family.sample(nets, 4), _greedy(nets["net"], 4, torch.long), rtol=0, atol=0)


def test_rotary_scores_depend_only_on_relative_position():
    rope = Rotary(8, 40)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda t, s: (rope(q, t) * rope(k, s)).sum()  # noqa: E731
    torch.testing.assert_close(score(5, 2), score(30, 27))
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_head_is_tied_for_categorical_outputs_and_separate_otherwise():
    tied = TransformerLM((8,), 11, 11, d_model=16, n_layers=1, n_heads=2)
    untied = TransformerLM((8,), 11, 11, d_model=16, n_layers=1, n_heads=2, tie_weights=False)
    mixture = DiscretizedLogisticMixture(3).num_params(11)
    other = TransformerLM((1, 2, 4), 11, mixture, d_model=16, n_layers=1, n_heads=2)
    assert tied.head is None and untied.head is not None and other.head is not None
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == 16 * 11 + 11
    assert other(torch.zeros(2, 1, 2, 4, dtype=torch.uint8)).shape == (2, mixture, 8)


@pytest.mark.slow
def test_toy_nll_is_between_the_true_entropy_and_the_uniform_model(make_cfg):
    results = run(make_cfg(
        "model=transformer", "dataset=toy", "dataset.batch_size=64", "model.net.d_model=32",
        "model.net.n_layers=2", "model.net.n_heads=2", "model.net.positions=learned", "optimizer.lr=3e-3",
        "trainer.max_epochs=4", "num_samples=4", "callbacks.samples.every_n_epochs=1000",
    ))
    entropy, uniform = results["data"]["entropy_bpd"], math.log2(4)
    assert results["test"]["nll_kind"] == "exact"
    for split in ("val", "test"):
        assert entropy <= results[split]["nll_bpd"] < 0.6 * uniform
    module, dm = load_run(results["checkpoint"])  # the checkpoint alone gives the same test NLL
    dm.setup("test")
    x = dm.splits["test"].x
    nats = -module.family.log_likelihood(module.nets, {"x": x}).log_px.mean()
    assert float(nats) / (x[0].numel() * math.log(2)) == pytest.approx(results["test"]["nll_bpd"], abs=1e-4)
