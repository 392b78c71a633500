"""Class-conditional autoregressive family: the gated PixelCNN's class bias in both stacks (van den Oord
et al. 2016, Eq. 4) and the Transformer's class token. Unconditional runs are unchanged bit for bit;
the conditional likelihood is exact (normalised over every ``x`` for each ``y``, and equal to the
coder's conditionals); a tiny fit learns two very different classes."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from genlab.builders import build_family
from genlab.conditioning import ClassCondition, ConditionError
from genlab.data.base import DataInfo
from genlab.families.autoregressive import Autoregressive
from genlab.families.base import Nets
from genlab.nets.pixelcnn import GatedPixelCNN
from genlab.nets.transformer import TransformerLM

NETS = {
    "pixelcnn": partial(GatedPixelCNN, channels=8, layers=2, kernel_size=3, out_hidden=8),
    "transformer": partial(TransformerLM, d_model=16, n_layers=2, n_heads=2),
}
INFOS = {"pixelcnn": DataInfo("toy", "image", (1, 4, 4), 4), "transformer": DataInfo("toy", "text", (6,), 5)}


def _family(kind: str, classes: int | None = None, dropout: float | None = None,
            info: DataInfo | None = None) -> tuple[Autoregressive, Nets]:
    """A seeded family and nets; ``classes``: conditional on that many classes (uniform prior)."""
    fam = Autoregressive(net=NETS[kind])
    if classes is not None:
        fam.condition = ClassCondition(num_classes=classes, prior=[1 / classes] * classes, dropout=dropout)
    torch.manual_seed(0)
    return fam, fam.build(info or INFOS[kind])


def _strong_labels(nets: Nets) -> None:
    """Spread the label table (an untrained one starts near the unconditional model, std 0.02) and the
    output layer (the Transformer's tied token table, the PixelCNN's head), whose init gives
    near-uniform outputs, so that the class visibly moves every conditional."""
    with torch.no_grad():
        nets["label"].table.weight.normal_(std=3.0)
        if isinstance(nets["net"], TransformerLM):
            nets["net"].tok_emb.weight.normal_(std=1.0)
        else:
            nets["net"].head[-1].weight.mul_(20.0)


def _data(info: DataInfo, n: int, seed: int = 0) -> torch.Tensor:
    dtype = torch.uint8 if info.kind == "image" else torch.long
    return torch.randint(0, info.levels, (n, *info.shape), dtype=dtype, generator=torch.Generator().manual_seed(seed))


# -- (a) unconditional: the numbers of the family before conditioning existed -------------------------------
# seeded loss and samples of `_family(kind)` computed with the code before this change (same nets, same seeds)
GOLDEN = {
    "pixelcnn": (1.43100106716156, [0, 1, 3, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 1, 0, 0, 1, 0, 3, 0, 2, 0, 1, 2, 3, 0, 3,
                                    3, 2, 0, 0, 2, 3, 1, 0, 3, 0, 1, 2, 3, 3, 1, 1, 0, 1, 0, 2, 1, 2, 2, 1, 2, 1, 0, 1,
                                    2, 0, 0, 0, 1, 1, 1, 2, 0]),
    "transformer": (1.6208776235580444, [0, 4, 0, 2, 0, 1, 0, 0, 0, 4, 4, 1, 4, 1, 1, 0, 2, 3, 0, 0, 4, 2, 1, 3]),
}


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_unconditional_family_has_the_old_keys_loss_and_samples(kind):
    fam, nets = _family(kind)
    assert fam.condition is None and set(nets) == {"net"}
    assert not any("class" in k or "label" in k for k in nets.state_dict())
    x = torch.randint(0, nets.info.levels, (3, *nets.info.shape),  # the global RNG right after the seeded build
                      dtype=torch.uint8 if nets.info.kind == "image" else torch.long)
    loss, samples = GOLDEN[kind]
    assert fam.loss(nets, {"x": x, "y": torch.tensor([0, 1, 2])}).loss.item() == pytest.approx(loss, rel=1e-6)
    torch.manual_seed(1)
    assert fam.sample(nets, 4).flatten().tolist() == samples


def test_conditioning_only_adds_the_label_table_and_the_v_maps(make_cfg):
    cfg = make_cfg("model=pixelcnn", "dataset=digits", "model.net.layers=2", "model.net.channels=8")
    info = instantiate(cfg.dataset).info
    old = set(build_family(cfg).build(info).state_dict())
    fam = build_family(cfg)
    fam.condition = None
    assert set(fam.build(info).state_dict()) == old
    fam.condition = ClassCondition(num_classes=10, prior=[0.1] * 10)
    new = set(fam.build(info).state_dict())
    added = {"label.table.weight"} | {f"net.layers.{i}.{s}_class.weight" for i in range(2) for s in "vh"}
    assert new == old | added


# -- (b) the condition reaches the output -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_labels_change_samples_and_likelihood(kind):
    fam, nets = _family(kind, classes=3)
    _strong_labels(nets)
    outs, lls = [], []
    x = _data(nets.info, 8)
    for label in (0, 2):
        y = torch.full((8,), label)
        torch.manual_seed(5)
        outs.append(fam.sample(nets, 8, y=y))
        torch.manual_seed(5)
        lls.append(fam.log_likelihood(nets, {"x": x, "y": y}).log_px)
    assert not torch.equal(outs[0], outs[1])
    assert (lls[0] - lls[1]).abs().min() > 1e-4
    torch.manual_seed(5)
    assert torch.equal(fam.log_likelihood(nets, {"x": x, "y": torch.full((8,), 2)}).log_px, lls[1])  # deterministic


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_the_class_enters_every_conditional_and_the_kv_cache_keeps_it(kind):
    fam, nets = _family(kind, classes=3)
    _strong_labels(nets)
    net, x = nets["net"], _data(nets.info, 4)
    c = nets["label"](torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        full = net(x, c)  # (B, P, D)
        other = net(x, nets["label"](torch.tensor([1, 2, 0, 3])))
        assert (full - other)[:3].abs().amax(1).min() > 1e-5  # every position of every relabelled example
        state = net.init_state(x, c)
        for step, pos in enumerate(net.order().tolist()):  # the cached sampling path equals the full pass
            torch.testing.assert_close(net.next_params(x, step, state), full[:, :, pos], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs a condition"):
        net(x)
    with pytest.raises(ValueError, match="takes no condition"):
        _family(kind)[1]["net"](x, c)


def test_pixelcnn_class_bias_enters_both_stacks_of_every_layer():
    """Eq. (4): the loss has a gradient through every layer's ``V`` of the vertical and the horizontal stack."""
    fam, nets = _family("pixelcnn", classes=3)
    _strong_labels(nets)
    fam.loss(nets, {"x": _data(nets.info, 8), "y": torch.arange(8) % 3}).loss.backward()
    grads = {k: p.grad.abs().sum().item() for k, p in nets.named_parameters() if "_class" in k}
    assert len(grads) == 2 * len(nets["net"].layers) and min(grads.values()) > 0, grads


# -- (c) label dropout -----------------------------------------------------------------------------------------
def test_label_dropout_gives_null_labels_and_changes_the_loss():
    assert Autoregressive.default_label_dropout == 0.0 and Autoregressive.guidance_key == ""
    losses = {}
    for rate in (0.0, 0.99):
        fam, nets = _family("pixelcnn", classes=3, dropout=rate)
        _strong_labels(nets)
        batch = {"x": _data(nets.info, 64), "y": torch.arange(64) % 3}
        torch.manual_seed(0)
        labels = fam.training_labels(batch)
        assert (labels == 3).float().mean() > 0.9 if rate else torch.equal(labels, batch["y"])
        torch.manual_seed(0)
        losses[rate] = fam.loss(nets, batch).loss.item()
    assert abs(losses[0.0] - losses[0.99]) > 1e-3
    fam, nets = _family("pixelcnn", classes=3)
    assert fam.label_dropout() == 0.0


# -- (d) invalid labels, (e) an unconditional model refuses labels ---------------------------------------------
def test_invalid_labels_raise_the_condition_error():
    fam, nets = _family("transformer", classes=3)
    x = _data(nets.info, 4)
    with pytest.raises(ConditionError, match="0..2"):
        fam.loss(nets, {"x": x, "y": torch.tensor([0, 1, 3, 0])})  # the null label is no training label
    with pytest.raises(ConditionError, match="0..3"):
        fam.log_likelihood(nets, {"x": x, "y": torch.tensor([0, 1, 4, 0])})
    with pytest.raises(ConditionError, match="0..3"):
        fam.sample(nets, 2, y=torch.tensor([5, 0]))
    with pytest.raises(ConditionError, match="needs a label"):
        fam.loss(nets, {"x": x})
    with pytest.raises(ConditionError, match="same y"):
        state = fam.start_coding(nets, x, y=torch.tensor([0, 1, 2, 0]))
        fam.next_log_probs(nets, x, 0, state, y=torch.tensor([1, 1, 2, 0]))


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_unconditional_model_refuses_labels(kind):
    fam, nets = _family(kind)
    x, y = _data(nets.info, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unconditional"):
        fam.sample(nets, 2, y=y)
    with pytest.raises(ValueError, match="unconditional"):
        fam.start_coding(nets, x, y=y)
    with pytest.raises(ValueError, match="unconditional"):
        fam.inpaint(nets, x, torch.ones_like(x, dtype=torch.bool), None, y=y)


# -- (f) exactness ---------------------------------------------------------------------------------------------
TINY = {"pixelcnn": DataInfo("tiny", "image", (1, 2, 2), 2), "transformer": DataInfo("tiny", "text", (4,), 2)}


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_conditional_likelihood_is_normalised_for_every_label(kind):
    """``sum_x P(x | y) = 1`` over all 2^4 binary examples, for each class and the null label."""
    fam, nets = _family(kind, classes=2, info=TINY[kind])
    _strong_labels(nets)
    info = nets.info
    x = torch.tensor(list(itertools.product(range(2), repeat=4))).view(16, *info.shape)
    x = x.to(torch.uint8 if info.kind == "image" else torch.long)
    totals = []
    for label in (0, 1, 2):
        log_px = fam.log_likelihood(nets, {"x": x, "y": torch.full((16,), label)}).log_px.double()
        totals.append(log_px.exp().sum().item())
    assert totals == pytest.approx([1.0] * 3, abs=1e-5)
    lp0 = fam.log_likelihood(nets, {"x": x, "y": torch.zeros(16, dtype=torch.long)}).log_px
    lp1 = fam.log_likelihood(nets, {"x": x, "y": torch.ones(16, dtype=torch.long)}).log_px
    assert (lp0 - lp1).abs().max() > 1e-3  # two different normalised distributions


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_coder_conditionals_sum_to_the_conditional_likelihood(kind):
    fam, nets = _family(kind, classes=3)
    _strong_labels(nets)
    x, y = _data(nets.info, 5), torch.tensor([0, 1, 2, 3, 1])
    state, total = fam.start_coding(nets, torch.zeros_like(x), y=y), torch.zeros(5)
    z = torch.zeros_like(x)
    with torch.no_grad():
        for step, pos in enumerate(fam.coding_order(nets).tolist()):
            logp = fam.next_log_probs(nets, z, step, state, y=y)  # (B, L), decoder side: only earlier symbols
            sym = x.reshape(5, -1)[:, pos]
            total += logp[torch.arange(5), sym.long()]
            z.view(5, -1)[:, pos] = sym
    torch.testing.assert_close(total, fam.log_likelihood(nets, {"x": x, "y": y}).log_px, rtol=1e-5, atol=1e-4)


def test_conditional_inpainting_keeps_observed_pixels_and_follows_the_label():
    fam, nets = _family("pixelcnn", classes=2)
    _strong_labels(nets)
    x = _data(nets.info, 6)
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, :, 2:] = True
    outs = []
    for label in (0, 1):
        torch.manual_seed(3)
        outs.append(fam.inpaint(nets, x, missing, None, y=torch.full((6,), label)))
        assert torch.equal(outs[-1][~missing], x[~missing])
    assert not torch.equal(outs[0], outs[1])


# -- (g) a tiny real fit ---------------------------------------------------------------------------------------
def _two_class_data(info: DataInfo, n: int) -> dict[str, torch.Tensor]:
    """Class 0: every value in {0, 1}; class 1: every value in {2, 3} (4 levels)."""
    y = torch.arange(n) % 2
    x = torch.randint(0, 2, (n, *info.shape)) + 2 * y.view(-1, *[1] * len(info.shape))
    return {"x": x.to(torch.uint8 if info.kind == "image" else torch.long), "y": y}


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer"])
def test_a_tiny_fit_learns_two_different_classes(kind):
    info = DataInfo("two", "image", (1, 3, 3), 4) if kind == "pixelcnn" else DataInfo("two", "text", (6,), 4)
    fam, nets = _family(kind, classes=2, info=info)
    opt = torch.optim.Adam(nets.parameters(), lr=1e-2)
    for _ in range(200):
        loss = fam.loss(nets, _two_class_data(info, 32)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    low, high = (fam.sample(nets, 32, y=torch.full((32,), c)).float() for c in (0, 1))
    assert low.mean() < 1.0 and high.mean() > 2.0
    assert (low <= 1).float().mean() > 0.9 and (high >= 2).float().mean() > 0.9
    test = _two_class_data(info, 64)
    right = fam.log_likelihood(nets, test).log_px
    wrong = fam.log_likelihood(nets, {"x": test["x"], "y": 1 - test["y"]}).log_px
    assert (right > wrong).float().mean() > 0.9
