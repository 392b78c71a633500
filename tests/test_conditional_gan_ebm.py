"""Class-conditional GAN (conditional batch norm / concatenated embedding in G, projection discriminator)
and JEM-style conditional EBM (K logits, per-class SGLD chains, exact per-class grid likelihood, the
generative classifier): the contract (unchanged without a condition, labels reach the output, label
dropout, label checks, refusals), closed forms (Miyato & Koyama 2018, Eq. (3); conditional BN at
initialisation = BN; the per-class normalisation and Bayes' rule on an enumerable grid) and tiny fits
on two-class toy data."""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from genlab.builders import build_family
from genlab.conditioning import ClassCondition, ConditionError
from genlab.data.base import DataInfo
from genlab.families.gan.conditional import ConditionalBatchNorm, ConditionalGenerator, ProjectionDiscriminator

SMALL_DCGAN = ("model=dcgan", "dataset=digits", "model.generator.channels=8", "model.discriminator.channels=8")
SMALL_GAN_MLP = ("model=gan_mlp", "dataset=digits", "model.generator.hidden=[32,32]",
                 "model.discriminator.hidden=[32,32]")


def _ebm(buffer_size: int = 64, train_steps: int = 3, sample_steps: int = 5, *extra: str) -> tuple[str, ...]:
    return ("model=ebm_mlp", "dataset=digits", "model.energy_net.hidden=[32,32]", f"model.buffer_size={buffer_size}",
            f"model.sampler.train_steps={train_steps}", f"model.sampler.sample_steps={sample_steps}", *extra)


SMALL_EBM = _ebm()
POINTS = DataInfo(name="two", kind="points", shape=(2,), levels=8)  # 64 cells: enumerable


def _cond(k: int = 10, dropout: float = 0.0) -> ClassCondition:
    return ClassCondition(num_classes=k, prior=[1.0 / k] * k, dropout=dropout)


def _family(make_cfg, overrides, condition: ClassCondition | None = None, info: DataInfo | None = None):
    cfg = make_cfg(*overrides)
    fam = build_family(cfg)
    fam.condition = condition
    info = info or instantiate(cfg.dataset).info
    torch.manual_seed(0)
    return fam, fam.build(info), info


def _batch(info: DataInfo, n: int = 8, y=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, info.levels, (n, *info.shape), generator=g)
    return {"x": x} if y is None else {"x": x, "y": torch.as_tensor(y).long()}


def _loss(fam, nets, batch, group=None, seed=3) -> torch.Tensor:
    torch.manual_seed(seed)
    out = fam.loss(nets, batch, group=group) if group else fam.loss(nets, batch)
    return out.loss.detach()


def _gan_loss(fam, nets, batch) -> tuple[torch.Tensor, torch.Tensor]:
    return _loss(fam, nets, batch, "discriminator"), _loss(fam, nets, batch, "generator")


# -- (a) no condition: the unconditional family as before --------------------------------------------
@pytest.mark.parametrize("overrides", [SMALL_DCGAN, SMALL_GAN_MLP], ids=["dcgan", "gan_mlp"])
def test_gan_without_condition_builds_the_old_nets_and_numbers(make_cfg, overrides):
    fam, nets, info = _family(make_cfg, overrides)
    torch.manual_seed(0)  # the nets as the family built them before conditioning existed
    old_g = fam.generator_factory(in_dim=fam.latent_dim, out_dim=info.shape)
    old_d = fam.discriminator_factory(in_dim=info.shape, out_dim=1)
    for net, old in ((nets["generator"], old_g), (nets["discriminator"], old_d)):
        assert list(net.state_dict()) == list(old.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), old.state_dict().values()))
    touched, _, _ = _family(make_cfg, overrides, _cond())
    touched.condition = None
    torch.manual_seed(0)
    nets2 = touched.build(info)
    assert list(nets2.state_dict()) == list(nets.state_dict())
    batch = _batch(info)
    for a, b in zip(_gan_loss(fam, nets, batch), _gan_loss(touched, nets2, batch)):
        assert torch.equal(a, b)
    torch.manual_seed(5)
    s1 = fam.sample(nets, 6)
    torch.manual_seed(5)
    assert torch.equal(s1, touched.sample(nets2, 6))


def test_ebm_without_condition_builds_the_old_nets_and_numbers(make_cfg):
    fam, nets, info = _family(make_cfg, SMALL_EBM, info=POINTS)
    assert set(nets.state_dict()) == {*(f"energy.{k}" for k in nets["energy"].state_dict()), "buffer.samples"}
    torch.manual_seed(0)
    old = fam.energy_factory(in_dim=info.shape, out_dim=1)
    assert all(torch.equal(a, b) for a, b in zip(nets["energy"].state_dict().values(), old.state_dict().values()))
    touched, _, _ = _family(make_cfg, SMALL_EBM, _cond(), info=POINTS)
    touched.condition = None
    torch.manual_seed(0)
    nets2 = touched.build(info)
    batch = _batch(info)
    assert torch.equal(_loss(fam, nets, batch), _loss(touched, nets2, batch))
    torch.manual_seed(5)
    s1 = fam.sample(nets, 6)
    torch.manual_seed(5)
    assert torch.equal(s1, touched.sample(nets2, 6))
    torch.testing.assert_close(fam.log_likelihood(nets, batch).log_px, touched.log_likelihood(nets2, batch).log_px)


# -- (b) the label reaches the output ------------------------------------------------------------------
def _wake_labels(nets: nn.Module) -> None:
    """Random conditional-BN maps and label tables of unit scale (an untrained conditional GAN starts
    unconditional: its maps are zero, its tables small)."""
    torch.manual_seed(11)
    for m in nets.modules():
        if isinstance(m, ConditionalBatchNorm):
            nn.init.normal_(m.gain.weight, std=0.5)
            nn.init.normal_(m.bias.weight, std=0.5)
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight)


@pytest.mark.parametrize("overrides", [SMALL_DCGAN, SMALL_GAN_MLP], ids=["dcgan", "gan_mlp"])
def test_gan_labels_reach_the_samples_and_the_discriminator(make_cfg, overrides):
    fam, nets, info = _family(make_cfg, overrides, _cond())
    _wake_labels(nets)
    nets.eval()
    samples = []
    for label in (0, 7):
        torch.manual_seed(5)
        samples.append(fam.sample(nets, 8, y=torch.full((8,), label)))
    assert not torch.equal(*samples)
    v = torch.rand(8, *info.shape) * 2 - 1
    assert not torch.allclose(fam.discriminate(nets, v, 0), fam.discriminate(nets, v, 7))


def test_ebm_labels_reach_the_samples_and_the_likelihood(make_cfg):
    fam, nets, info = _family(make_cfg, SMALL_EBM, _cond(2), info=POINTS)
    batch = _batch(info, 16, [0] * 16)
    other = {**batch, "y": torch.ones(16, dtype=torch.long)}
    assert not torch.allclose(fam.log_likelihood(nets, batch).log_px, fam.log_likelihood(nets, other).log_px)
    samples = []
    for label in (0, 1):
        torch.manual_seed(5)
        samples.append(fam.sample(nets, 16, y=torch.full((16,), label)))
    assert not torch.equal(*samples)


# -- (c) label dropout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [SMALL_GAN_MLP, SMALL_EBM], ids=["gan", "ebm"])
def test_label_dropout_trains_the_null_label(make_cfg, overrides):
    fam, nets, info = _family(make_cfg, overrides, _cond(dropout=0.0), info=POINTS)
    batch = _batch(info, 32, list(range(10)) * 3 + [0, 1])
    assert fam.label_dropout() == 0.0 and fam.default_label_dropout == 0.0 and fam.guidance_key == ""
    group = "generator" if fam.schedule() else None
    plain = _loss(fam, copy.deepcopy(nets), batch, group)
    assert torch.equal(plain, _loss(fam, copy.deepcopy(nets), batch, group))  # seeded: only the labels differ below
    fam.condition = _cond(dropout=0.99)
    torch.manual_seed(0)
    assert (fam.training_labels(batch) == 10).float().mean() > 0.9
    assert not torch.equal(plain, _loss(fam, copy.deepcopy(nets), batch, group))


# -- (d) invalid labels, (e) an unconditional model refuses labels -------------------------------------
@pytest.mark.parametrize("overrides", [SMALL_GAN_MLP, SMALL_EBM], ids=["gan", "ebm"])
def test_invalid_labels_raise_and_unconditional_models_refuse_labels(make_cfg, overrides):
    fam, nets, info = _family(make_cfg, overrides, _cond(), info=POINTS)
    group = {"group": "discriminator"} if fam.schedule() else {}
    with pytest.raises(ConditionError, match="0..9"):
        fam.loss(nets, _batch(info, 4, [0, 1, 10, 2]), **group)
    with pytest.raises(ConditionError, match="needs a label"):
        fam.loss(nets, _batch(info, 4), **group)
    with pytest.raises(ConditionError, match="0..10"):
        fam.sample(nets, 2, y=torch.tensor([0, 11]))
    plain, nets0, _ = _family(make_cfg, overrides, None, info=POINTS)
    with pytest.raises(ValueError, match="this model is unconditional"):
        plain.sample(nets0, 2, y=torch.tensor([0, 1]))


# -- (f) closed forms ---------------------------------------------------------------------------------
def test_projection_discriminator_is_psi_of_phi_plus_the_label_projection():
    """D(x, y) = psi(phi(x)) + <e_y, phi(x)> (Miyato & Koyama 2018, Eq. (3)); Q's logits unprojected."""
    torch.manual_seed(0)
    phi, psi = nn.Sequential(nn.Linear(4, 3), nn.Tanh()), nn.Linear(3, 1 + 2)
    embedding = _cond(5).embedding(3)
    nn.init.normal_(embedding.table.weight)
    d = ProjectionDiscriminator(nn.Sequential(phi, psi), embedding)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 5])  # 5: the null label's row
    out = d(x, y)
    h = phi(x)
    torch.testing.assert_close(out[:, 0], psi(h)[:, 0] + (embedding.table.weight[y] * h).sum(1))
    torch.testing.assert_close(out[:, 1:], psi(h)[:, 1:])
    by_hand = [psi(h[i])[0] + embedding.table.weight[y[i]] @ h[i] for i in range(6)]
    torch.testing.assert_close(out[:, 0], torch.stack(by_hand))


def test_conditional_batch_norm_with_zero_maps_is_batch_norm(make_cfg):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())
    cbn = ConditionalBatchNorm(bn, dim=6)
    h = torch.randn(5, 4, 3, 3)
    cbn.condition = torch.randn(5, 6)
    for train in (True, False):
        cbn.train(train), plain.train(train)
        assert torch.equal(cbn(h), plain(h))
    # the whole DCGAN generator: with its maps at zero it is the unconditional generator, whatever y
    fam, nets, info = _family(make_cfg, SMALL_DCGAN, _cond())
    gen = nets["generator"]
    assert isinstance(gen, ConditionalGenerator) and not gen.concat
    old = fam.generator_factory(in_dim=fam.latent_dim, out_dim=info.shape)
    state = {k[len("net."):].replace(".norm.", "."): v for k, v in gen.state_dict().items()
             if k.startswith("net.") and not re.search(r"\.(gain|bias)\.weight$", k)}
    old.load_state_dict(state)
    z = torch.randn(7, fam.latent_dim)
    for train in (True, False):
        gen.train(train), old.train(train)
        torch.testing.assert_close(gen(z, torch.arange(7)), old(z), rtol=0, atol=0)
    assert isinstance(_family(make_cfg, SMALL_GAN_MLP, _cond())[1]["generator"], ConditionalGenerator)


def test_ebm_per_class_grid_likelihood_sums_to_one_and_the_classifier_is_bayes(make_cfg):
    fam, nets, info = _family(make_cfg, SMALL_EBM, _cond(3), info=POINTS)
    grid = torch.cartesian_prod(torch.arange(8), torch.arange(8))  # all 64 cells
    log_p = torch.stack([fam.log_likelihood(nets, {"x": grid, "y": torch.full((64,), c)}).log_px
                         for c in range(4)], 1)  # classes 0..2 and the null label (the marginal)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(4, dtype=torch.float64))
    assert fam.likelihood_kind(info) == "exact"
    torch.testing.assert_close(fam.grid_log_probs(nets).exp().sum(0), torch.ones(4, dtype=torch.float64))
    posterior = log_p[:, :3].exp() / log_p[:, :3].exp().sum(1, keepdim=True)  # uniform prior
    torch.testing.assert_close(fam.class_logits(nets, grid).softmax(1), posterior)
    # JEM: E(x, y) = -f(x)[y], E(x) = -logsumexp_y f(x)[y]
    f = nets["energy"](fam.embed(nets, grid))
    torch.testing.assert_close(fam.score_energy(nets, grid, torch.full((64,), 2)), -f[:, 2])
    torch.testing.assert_close(fam.score_energy(nets, grid), -f.logsumexp(1))


# -- the sampler pipeline and the options keep working with labels --------------------------------------
def test_conditional_gan_pipeline_infogan_topk_and_penalties_use_the_labels(make_cfg):
    fam, nets, info = _family(make_cfg, (*SMALL_DCGAN, "model.categorical_codes=3", "model.spectral_norm=true",
                                         "model.top_k={min_fraction: 0.5, gamma: 0.5, every: 1}", "loss=wgan_gp",
                                         "model.sampler.rejection={}"), _cond())
    batch = _batch(info, 8, [0, 1, 2, 3, 4, 5, 6, 7])
    for group in ("discriminator", "generator"):
        assert torch.isfinite(fam.loss(nets, batch, group=group).loss)
    assert isinstance(nets["discriminator"], ProjectionDiscriminator)
    seen: list[torch.Tensor] = []
    nets["discriminator"].register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    nets.eval()
    fam.calibrate_rejection(nets, batch["x"], y=batch["y"])
    with pytest.raises(ConditionError, match="needs a label"):
        fam.calibrate_rejection(nets, batch["x"])
    seen.clear()
    sampler = {"propose": {"batch_stats": True}, "refine": {"steps": 2}, "jacobian_truncation": {"keep": 0.5},
               "rejection": {"quantile": 1.0}}
    fam.sampler = type(fam.sampler).of(sampler)
    nets["rejection"].calibrate(torch.zeros(4), torch.zeros(4), nets["discriminator"], 1.0,
                                fam.sampler.proposal_key())
    y = torch.tensor([4, 4, 9, 4])
    out = fam.sample(nets, 4, y=y)
    assert out.shape == (4, *info.shape)
    assert seen and all(len(s.unique()) == 1 for s in seen)  # every score of one class at a time
    assert {int(s[0]) for s in seen} == {4, 9}
    torch.manual_seed(2)
    z = torch.randn(fam.sampler.proposals(3), fam.latent_dim)
    assert fam.draw(nets, nets["generator"], 3, z, y=torch.tensor([1, 1, 1])).shape == (3, *info.shape)
    with pytest.raises(ValueError, match="one class"):
        fam.draw(nets, nets["generator"], 3, z, y=torch.tensor([1, 2, 1]))


# -- (g) tiny fits on two-class toy data ----------------------------------------------------------------
def _two_classes(n: int, info: DataInfo, gen: torch.Generator) -> dict:
    """Class 0 in the lowest eighth of the levels, class 1 in the highest, every coordinate / pixel."""
    y = torch.randint(0, 2, (n,), generator=gen)
    low = torch.randint(0, info.levels // 8, (n, info.dims), generator=gen)
    x = torch.where(y[:, None] == 1, info.levels - 1 - low, low)
    return {"x": x.view(n, *info.shape), "y": y}


def _fit(fam, nets, data_info: DataInfo, steps: int, lr: float, batch: int = 64) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    groups = fam.param_groups(nets)
    opts = {g: torch.optim.Adam([p for d in ps for p in (d["params"] if isinstance(d, dict) else [d])], lr=lr,
                                betas=(0.5, 0.999)) for g, ps in groups.items()}
    schedule = fam.schedule() or ["main"]
    nets.train()
    for group in itertools.islice(itertools.cycle(schedule), steps):
        data = _two_classes(batch, data_info, gen)
        out = fam.loss(nets, data, group=group) if fam.schedule() else fam.loss(nets, data)
        opts[group].zero_grad()
        out.loss.backward()
        opts[group].step()
    nets.eval()


@pytest.mark.parametrize("overrides, info, steps", [
    ((*SMALL_GAN_MLP, "model.generator.hidden=[64,64]", "model.discriminator.hidden=[64,64]"),
     DataInfo(name="two", kind="points", shape=(2,), levels=64), 800),  # concatenated embedding
    (SMALL_DCGAN, DataInfo(name="two", kind="image", shape=(1, 4, 4), levels=16), 400),  # conditional batch norm
], ids=["gan_mlp_points", "dcgan_images"])
def test_gan_fits_two_classes_apart(make_cfg, overrides, info, steps):
    fam, nets, _ = _family(make_cfg, overrides, _cond(2), info=info)
    _fit(fam, nets, info, steps, 2e-3)
    torch.manual_seed(1)
    low, high = (fam.sample(nets, 200, y=torch.full((200,), c)).double().flatten(1).mean(1) for c in (0, 1))
    mid = (info.levels - 1) / 2
    assert high.mean() - low.mean() > 0.6 * info.levels, (low.mean(), high.mean())
    assert (low < mid).double().mean() > 0.9 and (high > mid).double().mean() > 0.9


def test_ebm_fits_two_classes_apart_and_its_likelihood_prefers_the_true_label(make_cfg):
    info = DataInfo(name="two", kind="points", shape=(2,), levels=16)
    fam, nets, _ = _family(make_cfg, _ebm(512, 20, 100, "model.sampler.step_size=0.01"), _cond(2), info=info)
    _fit(fam, nets, info, 300, 1e-3)
    data = _two_classes(400, info, torch.Generator().manual_seed(9))
    true = fam.log_likelihood(nets, data).log_px
    wrong = fam.log_likelihood(nets, {**data, "y": 1 - data["y"]}).log_px
    assert (true > wrong).double().mean() > 0.9
    assert (fam.class_logits(nets, data["x"]).argmax(1) == data["y"]).double().mean() > 0.9
    torch.manual_seed(1)
    low, high = (fam.sample(nets, 200, y=torch.full((200,), c)).double() for c in (0, 1))
    assert high.mean() - low.mean() > 8, (low.mean(), high.mean())
