"""Class-conditional VAE (CVAE, Sohn et al. 2015) and flows (Glow's class-conditional prior and
couplings, Kingma & Dhariwal 2018): unconditional runs unchanged, the label reaches every output,
label dropout, refusals, the exact maths (invertibility and log-determinant given y, the class prior's
closed form, the CVAE's KL), and a tiny two-class fit."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from hydra.utils import instantiate

from genlab.builders import build_family
from genlab.conditioning import ClassCondition, ConditionError
from genlab.data.base import DataInfo
from genlab.families.vae.family import kl_to_standard_normal

MODELS = ["vae", "vae_conv", "glow", "realnvp"]
FLOWS = ["glow", "realnvp"]
# the unconditional families as built before conditioning existed (seeds 0 build, 1 data, 3 sample):
# number of state-dict keys, sha1 of the keys in order, the seeded loss and the sum of 3 seeded samples
PINNED = {
    "vae": (12, "9ce3bc48bf625852", 2.8366403579711914, 1547),
    "vae_conv": (12, "d5de894ec4768cb1", 2.8313381671905518, 1610),
    "glow": (292, "fae56ef208cb1e6b", 2.8512985706329346, 1522),
    "realnvp": (192, "3a26ec140ee90935", 2.8042263984680176, 1501),
}
LOG_2PI = math.log(2 * math.pi)


def _setup(make_cfg, model, *overrides, dropout=None, info=None, conditional=True, seed=0):
    """(family, nets, info): ``model`` on digits (or ``info``) built under ``seed``, with a class condition
    (``conditional=True``), ``condition`` never touched (False) or explicitly set to None (None)."""
    cfg = make_cfg(f"model={model}", "dataset=digits", *overrides, name=f"{model}{len(overrides)}")
    torch.manual_seed(seed)
    fam = build_family(cfg)
    info = info or instantiate(cfg.dataset).info
    if conditional is None:
        fam.condition = None
    elif conditional:
        fam.condition = ClassCondition(num_classes=info.num_classes, prior=[1 / info.num_classes] * info.num_classes,
                                       dropout=dropout)
    return fam, fam.build(info), info


def _batch(info, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, info.levels, (n, *info.shape), generator=g, dtype=torch.uint8)
    return {"x": x, "y": torch.arange(n) % info.num_classes}


@torch.no_grad()
def _perturb(nets, std=0.05):
    """Move every zero-initialised parameter (output layers, priors) off zero and spread the label
    table, so that an untrained conditional model depends on its label."""
    for p in nets.parameters():
        if (p == 0).all():
            p.normal_(0, std)
    nets["label"].table.weight.normal_(0, 1.0)


def _loss(fam, nets, batch, seed=2):
    torch.manual_seed(seed)
    return fam.loss(nets, batch).loss


# -- (a) an unconditional family is exactly the one before conditioning ------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_unconditional_family_is_unchanged(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model, conditional=False)
    keys = list(nets.state_dict())
    n_keys, digest, loss, sample = PINNED[model]
    assert (len(keys), hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]) == (n_keys, digest)
    seeded = []
    for f, n in ((fam, nets), *[_setup(make_cfg, model, conditional=None)[:2]]):  # condition explicitly None
        torch.manual_seed(1)
        x = torch.randint(0, info.levels, (4, *info.shape), dtype=torch.uint8)
        seeded.append(f.loss(n, {"x": x}).loss)
        torch.manual_seed(3)
        seeded.append(f.sample(n, 3))
        assert list(n.state_dict()) == keys
    assert float(seeded[0].detach()) == pytest.approx(loss, rel=1e-5)
    assert float(seeded[1].float().sum()) == pytest.approx(sample, abs=2)
    assert torch.equal(seeded[0], seeded[2]) and torch.equal(seeded[1], seeded[3])
    # a conditional family only adds nets (and the couplings' / backbones' class inputs)
    _, cond_nets, _ = _setup(make_cfg, model)
    assert set(keys) <= set(cond_nets.state_dict()) and "label.table.weight" in cond_nets.state_dict()


# -- (b) the label reaches the samples and the likelihood --------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_the_label_changes_samples_and_likelihood(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model)
    batch = _batch(info)
    fam.loss(nets, batch)  # data-initialise ActNorm
    _perturb(nets)
    nets.eval()
    samples, lls = [], []
    for label in (0, 1):
        torch.manual_seed(4)
        samples.append(fam.sample(nets, 8, y=torch.full((8,), label)))
        torch.manual_seed(5)
        lls.append(fam.log_likelihood(nets, {"x": batch["x"], "y": torch.full((6,), label)}, stage="val").log_px)
    assert samples[0].shape == (8, *info.shape) and samples[0].dtype == torch.uint8
    assert not torch.equal(samples[0], samples[1])
    assert (lls[0] - lls[1]).abs().min() > 1e-4
    torch.manual_seed(5)  # deterministic given the global seed (the marginal calls it once per class)
    again = fam.log_likelihood(nets, {"x": batch["x"], "y": torch.full((6,), 0)}, stage="val").log_px
    torch.testing.assert_close(again, lls[0], rtol=0, atol=0)
    # the null label (a CFG-trained net's unconditional model) is accepted; y=None draws from p(y)
    null = torch.full((6,), fam.condition.null_label)
    assert torch.isfinite(fam.log_likelihood(nets, {"x": batch["x"], "y": null}, stage="val").log_px).all()
    assert fam.sample(nets, 5).shape == (5, *info.shape)


# -- (c) label dropout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_label_dropout_replaces_labels_by_the_null_label(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model, dropout=0.99)
    batch = _batch(info, n=40)
    fam.loss(nets, batch)
    _perturb(nets)
    torch.manual_seed(6)
    dropped = fam.training_labels(batch)
    assert (dropped == fam.condition.null_label).float().mean() > 0.8
    dropped_loss = _loss(fam, nets, batch, seed=7)
    fam.condition.dropout = 0.0
    assert fam.label_dropout() == 0.0 and torch.equal(fam.training_labels(batch), batch["y"])
    torch.manual_seed(7)
    torch.rand(len(batch["y"]))  # the draw the dropout made: the objective's noise is then the same
    kept_loss = fam.loss(nets, batch).loss
    assert abs(float((dropped_loss - kept_loss).detach())) > 1e-5
    fam.condition.dropout = None
    assert fam.label_dropout() == fam.default_label_dropout == 0.0 and fam.guidance_key == ""


# -- (d), (e) refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_invalid_labels_and_labels_for_an_unconditional_model_are_refused(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model)
    batch = _batch(info)
    bad = {"x": batch["x"], "y": torch.full((6,), 10)}  # the null label is no training label
    with pytest.raises(ConditionError, match="0..9"):
        fam.loss(nets, bad)
    with pytest.raises(ConditionError, match="0..10"):
        fam.log_likelihood(nets, {"x": batch["x"], "y": torch.full((6,), 11)}, stage="val")
    with pytest.raises(ConditionError):
        fam.sample(nets, 2, y=torch.tensor([0, 11]))
    with pytest.raises(ConditionError, match="needs a label"):
        fam.loss(nets, {"x": batch["x"]})
    ufam, unets, _ = _setup(make_cfg, model, conditional=False)
    with pytest.raises(ValueError, match="unconditional"):
        ufam.sample(unets, 2, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        ufam.to_latent(unets, batch["x"], None, torch.arange(6))


# -- capabilities take y --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_encoder_capability_takes_the_label(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model)
    batch = _batch(info)
    fam.loss(nets, batch)
    _perturb(nets)
    z0, z1 = fam.to_latent(nets, batch["x"], None, torch.zeros(6, dtype=torch.long)), \
        fam.to_latent(nets, batch["x"], y=torch.ones(6, dtype=torch.long))
    assert not torch.allclose(z0, z1)
    back = fam.from_latent(nets, z0, y=torch.zeros(6, dtype=torch.long))
    assert back.shape == batch["x"].shape
    assert fam.interpolate(nets, batch["x"], batch["x"].flip(0), 3, y=batch["y"]).shape == (6, 3, *info.shape)
    if model in FLOWS:  # the exact bijection given y: its endpoints reproduce the images
        torch.testing.assert_close(back.round(), batch["x"].float())


def test_vae_inpaints_given_a_label(make_cfg):
    fam, nets, info = _setup(make_cfg, "vae")
    _perturb(nets)
    with torch.no_grad():  # spread the untrained decoder's means, which otherwise all round to the middle level
        nets["decoder"].net[-1].weight.mul_(30)
    batch = _batch(info)
    missing = torch.zeros_like(batch["x"], dtype=torch.bool)
    missing[..., 4:, :] = True
    opts = type("Options", (), {"iters": 3})()
    out = [fam.inpaint(nets, batch["x"], missing, opts, y=torch.full((6,), k)) for k in (0, 1)]
    assert torch.equal(out[0][~missing], batch["x"][~missing]) and not torch.equal(out[0], out[1])


# -- (f) flows: exact given y -----------------------------------------------------------------------------
def _dequantized(info, n=5, seed=8):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randint(0, info.levels, (n, *info.shape), generator=g) + torch.rand(n, *info.shape, generator=g))
            / info.levels).double()


@pytest.mark.parametrize("model", FLOWS)
def test_flow_is_exactly_invertible_given_y_with_the_autograd_log_determinant(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model)
    fam.loss(nets, _batch(info, n=16))
    _perturb(nets)
    nets.double()
    y_img = _dequantized(info)
    labels = torch.tensor([0, 3, 3, 9, 10])
    c = fam.label_input(nets, labels)
    zs, logdet = fam.encode(nets, y_img, c)
    torch.testing.assert_close(fam.decode(nets, zs, c), y_img, atol=1e-4, rtol=0)
    assert (fam.decode(nets, zs, fam.label_input(nets, labels.roll(1))) - y_img).abs().max() > 1e-3
    for i in range(2):  # log|det| (bijection and class prior) = log|det J| of y_img -> eps at fixed y
        jac = torch.autograd.functional.jacobian(
            lambda v: torch.cat([z.flatten() for z in fam.encode(nets, v.view(1, *info.shape), c[i:i + 1])[0]]),
            y_img[i].flatten())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-6, rtol=1e-8)


@torch.no_grad()
def _pad_into(cond_nets, uncond_nets):
    """Copy the unconditional flow into the conditional one, the couplings' weights on the class
    channels (their last input channels) zero: the coupling nets' class inputs zeroed."""
    target = cond_nets.state_dict()
    for key, value in uncond_nets.state_dict().items():
        if target[key].shape == value.shape:
            target[key].copy_(value)
        else:
            target[key].zero_()
            target[key][:, : value.shape[1]].copy_(value)


@pytest.mark.parametrize("model", FLOWS)
def test_flow_class_prior_is_the_closed_form_gaussian_difference(make_cfg, model):
    ufam, unets, info = _setup(make_cfg, model, conditional=False)
    ufam.loss(unets, _batch(info, n=16))  # data-initialise ActNorm
    with torch.no_grad():
        for p in unets.parameters():
            if (p == 0).all():
                p.normal_(0, 0.05)
    fam, nets, _ = _setup(make_cfg, model)
    _perturb(nets)  # the label table and the class prior
    _pad_into(nets, unets)
    unets.double()
    nets.double()
    y_img, labels = _dequantized(info), torch.tensor([0, 1, 2, 7, 10])
    c = fam.label_input(nets, labels)
    zs_u, logdet_u = unets["flow"](y_img)
    zs_c, logdet_c = nets["flow"](y_img, c)  # the bijection alone: identical, so is its log-determinant
    torch.testing.assert_close(logdet_c, logdet_u, rtol=0, atol=1e-9)
    for zu, zc in zip(zs_u, zs_c):
        torch.testing.assert_close(zc, zu, rtol=0, atol=1e-9)
    expected = 0.0
    for z, m in zip(zs_u, nets["class_prior"].maps):  # sum_i log N(z_i; mu_i(y), sigma_i(y)^2) - log N(z_i; 0, I)
        mu, log_sigma = (c @ m.weight.T + m.bias)[:, :, None, None].chunk(2, 1)
        log_n = -0.5 * ((z - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI
        expected = expected + (log_n - (-0.5 * z**2 - 0.5 * LOG_2PI)).flatten(1).sum(1)
    diff = fam.log_density(nets, y_img, c) - ufam.log_density(unets, y_img)
    assert expected.abs().min() > 1e-2  # the prior is not the standard normal
    torch.testing.assert_close(diff, expected, rtol=1e-9, atol=1e-8)


# -- (f) CVAE: the KL in closed form ------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vae", "vae_conv"])
def test_cvae_kl_is_the_closed_form(make_cfg, model):
    fam, nets, info = _setup(make_cfg, model, "model.conditional_prior=false")
    assert "prior" not in nets
    _perturb(nets)
    batch = _batch(info)
    torch.manual_seed(9)
    out = fam.loss(nets, batch)
    mu, logvar = fam.encode(nets, batch["x"], fam.label_input(nets, batch["y"]))
    closed = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)  # KL(N(mu, sigma^2) || N(0, I))
    torch.testing.assert_close(out.logs["kl_bpd"], closed.mean().detach() / (info.dims * math.log(2)))
    assert (mu[0] - fam.encode(nets, batch["x"][:1], fam.label_input(nets, batch["y"][1:2]))[0]).abs().max() > 1e-4
    # the learned prior p(z|y): its closed-form KL matches a Monte Carlo estimate of E_q[log q - log p(z|y)]
    fam, nets, _ = _setup(make_cfg, model)
    _perturb(nets, std=0.3)
    c = fam.label_input(nets, batch["y"])
    mu, logvar = fam.encode(nets, batch["x"], c)
    pmu, plogvar = fam.prior_params(nets, c)
    z = mu + torch.randn(50_000, *mu.shape) * (0.5 * logvar).exp()
    log_q = -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / logvar.exp()).sum(-1)
    log_p = -0.5 * (LOG_2PI + plogvar + (z - pmu) ** 2 / plogvar.exp()).sum(-1)
    kl = fam.kl(nets, mu, logvar, c)
    torch.testing.assert_close(kl, (log_q - log_p).mean(0), rtol=0.02, atol=0.05)
    assert (kl - kl_to_standard_normal(mu, logvar)).abs().min() > 0.01


# -- (g) a tiny real fit on two very different classes --------------------------------------------------------
TOY = DataInfo(name="two_classes", kind="image", shape=(1, 4, 4), levels=4, num_classes=2)


def _toy_batch(n, g):
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(0, 2, (n, *TOY.shape), generator=g) + 2 * y.view(n, 1, 1, 1)  # class 0: {0,1}, 1: {2,3}
    return {"x": x.to(torch.uint8), "y": y}


@pytest.mark.parametrize("model,overrides,lr", [
    ("vae", ("model.latent_dim=4", "model.encoder.hidden=[64]", "model.decoder.hidden=[64]"), 3e-3),
    ("glow", ("model.steps_per_scale=2", "model.coupling_net.hidden=16", "model.logit_alpha=0.05"), 3e-3),
])
def test_tiny_two_class_fit_separates_the_classes(make_cfg, model, overrides, lr):
    fam, nets, _ = _setup(make_cfg, model, *overrides, info=TOY)
    g = torch.Generator().manual_seed(10)
    opt = None
    for _ in range(300):
        out = fam.loss(nets, _toy_batch(64, g))
        opt = opt or torch.optim.Adam(nets.parameters(), lr=lr)  # after ActNorm's data initialisation
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    nets.eval()
    torch.manual_seed(11)
    means = [fam.sample(nets, 64, y=torch.full((64,), k)).float().mean() for k in (0, 1)]
    assert means[0] < 1.2 and means[1] > 1.8, means
    test = _toy_batch(64, g)
    torch.manual_seed(12)
    right = fam.log_likelihood(nets, test, stage="val").log_px
    torch.manual_seed(12)
    wrong = fam.log_likelihood(nets, {"x": test["x"], "y": 1 - test["y"]}, stage="val").log_px
    assert (right > wrong).float().mean() > 0.9, (right - wrong)
