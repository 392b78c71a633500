"""Class-conditional diffusion and flow matching (``+conditional=class``): the label table added to the
time embedding, label dropout, classifier-free guidance (Ho & Salimans 2022) against its closed form on
Gaussian class conditionals, the bound / ODE likelihood of the unguided conditional model, every sampler
and capability given labels, and a tiny real fit on two classes with very different data."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from genlab.builders import build_family
from genlab.conditioning import ClassCondition, ConditionError
from genlab.data.base import DataInfo
from genlab.families.diffusion import DDIM, Ancestral, Diffusion, DPMSolver, GuideNet, Heun
from genlab.families.diffusion.guidance import guide_source
from genlab.families.flow_matching import FlowMatching, ODELikelihood, ODESolver
from genlab.nets.unet import TimeMLP, UNet

F64 = torch.float64
MLP = {"ddpm_mlp": ["model.net.hidden=32", "model.timesteps=50"], "flow_matching_mlp": ["model.net.hidden=32"]}
FAMILIES = list(MLP)


def _family(make_cfg, model: str, condition: ClassCondition | None = None, *extra: str, seed: int = 0,
            perturb: bool = True):
    """A family of ``model`` on digits (small nets), its nets built under ``seed`` and perturbed (untrained
    nets output exactly 0: zero-initialised heads), and a batch of 6 digits with labels."""
    cfg = make_cfg(f"model={model}", "dataset=digits", *MLP.get(model, []), *extra)
    fam = build_family(cfg)
    if condition is not None:
        fam.condition = condition
    dm = instantiate(cfg.dataset)
    torch.manual_seed(seed)
    nets = fam.build(dm.info)
    with torch.no_grad():
        for p in nets.parameters() if perturb else ():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, dm.info.levels, (6, *dm.info.shape), generator=torch.Generator().manual_seed(1))
    return fam, nets.eval(), {"x": x.to(torch.uint8), "y": torch.tensor([0, 1, 2, 3, 4, 5])}


def _ten(dropout: float | None = 0.1) -> ClassCondition:
    return ClassCondition(num_classes=10, prior=[0.1] * 10, dropout=dropout)


def _sample(fam, nets, n: int, seed: int = 2, **kw) -> Tensor:
    sampler = DDIM(steps=5) if isinstance(fam, Diffusion) else ODESolver("euler", 4)
    torch.manual_seed(seed)
    return fam.sample(nets, n, sampler=kw.pop("sampler", sampler), **kw)


def _log_px(fam, nets, batch, seed: int = 3) -> Tensor:
    torch.manual_seed(seed)
    if isinstance(fam, Diffusion):
        return fam.log_likelihood(nets, batch, stage="val").log_px
    return fam.log_likelihood(nets, batch, likelihood=ODELikelihood(ODESolver("euler", 3))).log_px


def _loss(fam, nets, batch, seed: int = 4) -> Tensor:
    torch.manual_seed(seed)
    return fam.loss(nets, batch).loss.detach()


# -- (a) unconditional: unchanged ------------------------------------------------------------------------
@pytest.mark.parametrize("model, extra", [("ddpm_mlp", ()), ("flow_matching_mlp", ()),
                                          ("ddpm", ("model.net.channels=8", "model.net.channel_mults=[1,2]",
                                                    "model.net.num_res_blocks=1", "model.timesteps=50")),
                                          ("flow_matching", ("model.net.channels=8", "model.net.channel_mults=[1,2]",
                                                             "model.net.num_res_blocks=1"))])
def test_without_a_condition_the_nets_and_numbers_are_the_unconditional_ones(make_cfg, model, extra):
    fresh, fresh_nets, batch = _family(make_cfg, model, None, *extra)
    unset, unset_nets, _ = _family(make_cfg, model, None, *extra)
    unset.condition = None
    assert list(unset_nets.state_dict()) == list(fresh_nets.state_dict())
    assert "label" not in fresh_nets and not any("embed" in k or "label" in k for k in fresh_nets.state_dict())
    uncond = {"x": batch["x"]}
    assert torch.equal(_loss(fresh, fresh_nets, uncond), _loss(unset, unset_nets, uncond))
    assert torch.equal(_sample(fresh, fresh_nets, 3), _sample(unset, unset_nets, 3))
    # the conditional build adds the label table only, after the backbone: same backbone weights from one seed
    cond, cond_nets, _ = _family(make_cfg, model, _ten(), *extra, perturb=False)
    _, fresh_nets, _ = _family(make_cfg, model, None, *extra, perturb=False)
    net = "net" if isinstance(cond, Diffusion) else "velocity"
    assert set(cond_nets.state_dict()) == set(fresh_nets.state_dict()) | {"label.table.weight"}
    width = cond_nets[net].condition_dim
    assert cond_nets["label"].table.weight.shape == (11, width)  # 10 classes + the null row, temb width
    for key, value in fresh_nets[net].state_dict().items():
        assert torch.equal(cond_nets[net].state_dict()[key], value), key


def test_nets_take_a_condition_embedding_added_to_the_time_embedding():
    torch.manual_seed(0)
    for net in (UNet((1, 8, 8), channels=8, channel_mults=(1, 2), num_res_blocks=1), TimeMLP((2,), hidden=16)):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        x, t = torch.randn(3, *((1, 8, 8) if isinstance(net, UNet) else (2,))), torch.rand(3)
        zero = torch.zeros(3, net.condition_dim)
        assert torch.equal(net(x, t, zero), net(x, t))  # temb + 0 = temb
        assert not torch.allclose(net(x, t, torch.randn(3, net.condition_dim)), net(x, t))
        with pytest.raises(ValueError, match="condition embedding must be"):
            net(x, t, torch.zeros(3, net.condition_dim + 1))


# -- (b) the condition reaches the output ------------------------------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_the_label_reaches_the_samples_and_the_likelihood(make_cfg, model):
    fam, nets, batch = _family(make_cfg, model, _ten())
    with torch.no_grad():
        nets["label"].table.weight.normal_(0, 1.0)
    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    assert not torch.equal(_sample(fam, nets, 16, y=zeros), _sample(fam, nets, 16, y=ones))
    assert torch.equal(_sample(fam, nets, 16, y=zeros), _sample(fam, nets, 16, y=zeros))  # seeded
    a = _log_px(fam, nets, {**batch, "y": torch.zeros(6, dtype=torch.long)})
    b = _log_px(fam, nets, {**batch, "y": torch.ones(6, dtype=torch.long)})
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    assert torch.equal(a, _log_px(fam, nets, {**batch, "y": torch.zeros(6, dtype=torch.long)}))  # deterministic
    _log_px(fam, nets, {**batch, "y": torch.full((6,), 10)})  # the null label: the unconditional model
    assert _sample(fam, nets, 7).shape[0] == 7  # labels drawn from p(y)


# -- (c) label dropout -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_label_dropout_replaces_labels_by_the_null_label_and_changes_the_loss(make_cfg, model):
    fam, nets, batch = _family(make_cfg, model, _ten(None))
    assert fam.label_dropout() == fam.default_label_dropout == 0.1
    assert type(fam).guidance_key in ("model.sampler.guidance", "model.solver.guidance")  # the sweep key
    with torch.no_grad():
        nets["label"].table.weight.normal_(0, 1.0)
    losses = {}
    for rate in (0.0, 0.99):
        fam.condition = _ten(rate)
        torch.manual_seed(0)
        labels = fam.training_labels({"x": torch.zeros(400, 1), "y": torch.arange(400) % 10})
        share = float((labels == 10).double().mean())
        assert share == 0.0 if rate == 0 else share > 0.95
        losses[rate] = _loss(fam, nets, batch)
    assert not torch.allclose(losses[0.0], losses[0.99])


# -- (d) invalid labels, (e) labels or guidance on an unconditional model -------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_invalid_labels_raise_the_condition_error(make_cfg, model):
    fam, nets, batch = _family(make_cfg, model, _ten())
    bad = {**batch, "y": torch.tensor([0, 1, 2, 3, 4, 10])}  # 10 is the null label: not a training label
    with pytest.raises(ConditionError, match=r"0\.\.9"):
        fam.loss(nets, bad)
    with pytest.raises(ConditionError, match=r"0\.\.10"):
        _log_px(fam, nets, {**batch, "y": torch.tensor([0, 1, 2, 3, 4, 11])})
    with pytest.raises(ConditionError, match=r"0\.\.10"):
        _sample(fam, nets, 2, y=torch.tensor([0, 12]))
    with pytest.raises(ConditionError, match="needs a label"):
        fam.loss(nets, {"x": batch["x"]})


@pytest.mark.parametrize("model", FAMILIES)
def test_an_unconditional_model_refuses_labels_and_guidance_weights_naming_the_fix(make_cfg, model):
    fam, nets, batch = _family(make_cfg, model)
    with pytest.raises(ValueError, match="this model is unconditional"):
        _sample(fam, nets, 2, y=torch.tensor([0, 1]))
    guided = DDIM(steps=5, guidance=2.0) if isinstance(fam, Diffusion) else ODESolver("euler", 4, guidance=2.0)
    with pytest.raises(ValueError, match=r"\+conditional=class"):
        _sample(fam, nets, 2, sampler=guided)


@pytest.mark.parametrize("model", FAMILIES)
def test_guidance_without_a_null_model_is_refused(make_cfg, model):
    fam, nets, _ = _family(make_cfg, model, _ten(0.0))  # never saw the null label
    guided = DDIM(steps=5, guidance=2.0) if isinstance(fam, Diffusion) else ODESolver("euler", 4, guidance=2.0)
    with pytest.raises(ValueError, match=r"conditional.dropout=0"):
        _sample(fam, nets, 2, sampler=guided, y=torch.tensor([0, 1]))
    _sample(fam, nets, 2, y=torch.tensor([0, 1]))  # unguided is fine


# -- (f) classifier-free guidance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [Ancestral(steps=6), DDIM(steps=5), DDIM(steps=5, eta=1.0), DPMSolver(steps=5),
                                     Heun(steps=3), ODESolver("euler", 4), ODESolver("midpoint", 3)],
                         ids=lambda s: repr(s))
def test_guidance_weight_1_is_the_plain_conditional_sampler_sample_for_sample(make_cfg, sampler):
    diffusion = isinstance(sampler, (DDIM, Ancestral, DPMSolver, Heun))
    fam, nets, _ = _family(make_cfg, "ddpm_mlp" if diffusion else "flow_matching_mlp", _ten())
    with torch.no_grad():
        nets["label"].table.weight.normal_(0, 1.0)
    y = torch.arange(10)
    one = sampler.with_guidance(1.0) if diffusion else ODESolver(sampler.method, sampler.steps, guidance=1.0)
    two = sampler.with_guidance(2.5) if diffusion else ODESolver(sampler.method, sampler.steps, guidance=2.5)
    if diffusion:  # the continuous outputs, before rounding to levels
        def draw(s):
            torch.manual_seed(5)
            return s(fam.model(nets, y), 10)
    else:
        def draw(s):
            torch.manual_seed(5)
            return fam.generate(nets, 10, s, y=y).y
    plain = draw(sampler)
    assert torch.equal(draw(one), plain)
    assert not torch.allclose(draw(two), plain)  # a weight other than 1 does guide
    assert torch.equal(_sample(fam, nets, 10, sampler=one, y=y), _sample(fam, nets, 10, sampler=sampler, y=y))


MUS = (-1.0, 1.5)  # class conditionals N(mu_y, 1); the null label's (unconditional) model N(0, S0^2)
S0 = 2.0


def _gaussian(y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of each label's Gaussian (the null label 2: N(0, S0^2))."""
    mean = torch.tensor([*MUS, 0.0], dtype=F64)[y][:, None]
    var = torch.tensor([1.0, 1.0, S0**2], dtype=F64)[y][:, None]
    return mean, var


class ExactEps(nn.Module):
    """The exact noise prediction ``E[eps | x_t] = sqrt(1-ab) (x_t - sqrt(ab) m) / (ab v + 1 - ab)`` of each
    label's Gaussian ``N(m, v)``; the label is read from a one-hot condition embedding ``c``."""

    condition_dim = 3

    def __init__(self, ab: Tensor) -> None:
        super().__init__()
        self.ab = ab
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        ab = self.ab[(t.double() * len(self.ab)).round().long()].view(-1, 1)
        m, v = _gaussian(c.argmax(1))
        return (1 - ab).sqrt() * (x - ab.sqrt() * m) / (ab * v + 1 - ab)


class ExactVelocity(nn.Module):
    """The exact marginal velocity of the OT path ``x_t = t x_1 + (1 - t) x_0`` for ``x_1 ~ N(m, v)``:
    ``E[x_1 - x_0 | x_t] = m + (t v - (1 - t)) (x_t - t m) / (t^2 v + (1 - t)^2)``."""

    condition_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        m, v = _gaussian(c.argmax(1))
        t = t.view(-1, 1)
        return m + (t * v - (1 - t)) * (x - t * m) / (t**2 * v + (1 - t) ** 2)


def _one_hot_labels(nets: nn.ModuleDict) -> None:
    nets["label"].double()
    with torch.no_grad():
        nets["label"].table.weight.copy_(torch.eye(3, dtype=F64))


def _tilted_score(x: Tensor, y: Tensor, w: float, a: Tensor, s2: Tensor) -> Tensor:
    """Score of ``p_t(x | y)^w p_t(x | null)^(1 - w)`` with ``p_t(. | k) = N(a m_k, a^2 v_k + s2)``: the Gaussian
    with the combined natural parameters ``lambda = w / V_y + (1 - w) / V_0``, ``eta = w a m_y / V_y``."""
    m, v = _gaussian(y)
    _, v0 = _gaussian(torch.full_like(y, 2))
    var_y, var_0 = a**2 * v + s2, a**2 * v0 + s2
    lam, eta = w / var_y + (1 - w) / var_0, w * a * m / var_y
    return eta - lam * x


@pytest.mark.parametrize("w", [1.0, 1.5, 3.0])
def test_diffusion_cfg_prediction_is_the_score_of_the_tilted_gaussian(w):
    holder = {}
    fam = Diffusion(lambda shape, out_mult: ExactEps(holder["p"].tables["alpha_bar"]), timesteps=1000,
                    schedule="cosine", clip_denoised=False)
    holder["p"] = fam.process
    fam.condition = ClassCondition(2, dropout=0.1)
    nets = fam.build(DataInfo("gauss", "points", (1,), 256))
    _one_hot_labels(nets)
    x_t = torch.linspace(-3, 3, 12, dtype=F64)[:, None]
    y = torch.tensor([0, 1] * 6)
    for step in (50, 400, 900):
        t = torch.full((12,), step, dtype=torch.long)
        ab = fam.process.tables["alpha_bar"][step].to(F64)
        model = fam.model(nets, y).with_guidance(w)
        cond, null = model.output(x_t, t), fam.model(nets, torch.full_like(y, 2)).output(x_t, t)
        guided = model.output(x_t, t, guide=True)
        torch.testing.assert_close(guided, null + w * (cond - null))
        # eps = -sqrt(1 - ab) score (Tweedie), the score of the tilted Gaussian in closed form
        torch.testing.assert_close(guided, -(1 - ab).sqrt() * _tilted_score(x_t, y, w, ab.sqrt(), 1 - ab))
        # the bound's output is the unguided conditional model's, whatever the weight
        torch.testing.assert_close(model.output(x_t, t), cond)


@pytest.mark.parametrize("w", [1.0, 1.5, 3.0])
def test_flow_matching_cfg_velocity_is_the_flow_of_the_tilted_gaussian(w):
    fam = FlowMatching(lambda shape, out_mult: ExactVelocity())
    fam.condition = ClassCondition(2, dropout=0.1)
    nets = fam.build(DataInfo("gauss", "points", (1,), 256))
    _one_hot_labels(nets)
    x = torch.linspace(-3, 3, 12, dtype=F64)[:, None]
    y = torch.tensor([0, 1] * 6)
    for time in (0.1, 0.5, 0.9):
        t = torch.full((12,), time, dtype=F64)
        guided = fam.velocity(nets, y, w)(x, t)
        cond, null = fam.velocity(nets, y)(x, t), fam.velocity(nets, torch.full_like(y, 2))(x, t)
        torch.testing.assert_close(guided, null + w * (cond - null))
        # on the OT path (a = t, s = 1 - t, a' = 1, s' = -1) v = x / t + ((1 - t)^2 / t + (1 - t)) score
        a, s = torch.tensor(time, dtype=F64), torch.tensor(1 - time, dtype=F64)
        score = _tilted_score(x, y, w, a, s**2)
        torch.testing.assert_close(guided, x / a + (s**2 / a + s) * score)


@pytest.mark.parametrize("model", FAMILIES)
def test_one_class_with_a_zero_embedding_has_the_unconditional_likelihood(make_cfg, model):
    uncond, nets, batch = _family(make_cfg, model)
    one = ClassCondition(num_classes=1, prior=[1.0], dropout=0.0)
    cond, cond_nets, _ = _family(make_cfg, model, one)
    net = "net" if isinstance(cond, Diffusion) else "velocity"
    cond_nets[net].load_state_dict(nets[net].state_dict())  # the same weights
    with torch.no_grad():
        cond_nets["label"].table.weight.zero_()  # temb + 0: the same network
    labelled = {"x": batch["x"], "y": torch.zeros(6, dtype=torch.long)}
    expected = _log_px(uncond, nets, {"x": batch["x"]})
    assert torch.equal(_log_px(cond, cond_nets, labelled), expected)
    assert torch.equal(_loss(cond, cond_nets, labelled), _loss(uncond, nets, {"x": batch["x"]}))
    with torch.no_grad():
        cond_nets["label"].table.weight[0].normal_(0, 1.0)
    assert not torch.allclose(_log_px(cond, cond_nets, labelled), expected)


def test_a_conditional_autoguidance_guide_keeps_its_own_label_table(make_cfg):
    fam, nets, _ = _family(make_cfg, "ddpm_mlp", _ten(), "model.guidance={weight: 2.0, at: 0.5}")
    assert {"guide.net.net.inp.weight", "guide.net.embed.table.weight"} <= set(nets.state_dict())
    nets["guide"].copy_from(guide_source(nets), 3)
    y, x_t, t = torch.arange(10), torch.randn(10, 1, 8, 8), torch.full((10,), 20)
    model = fam.model(nets, y)
    torch.testing.assert_close(model.output(x_t, t, guide=True), model.output(x_t, t))  # guide == model
    with torch.no_grad():
        nets["label"].table.weight.add_(1.0)  # the live table moves on; the frozen one does not
    model = fam.model(nets, y)
    out, guided = model.output(x_t, t), model.output(x_t, t, guide=True)
    torch.testing.assert_close(guided, model.guide_output(x_t, fam.process.net_time(t)) * -1.0 + 2.0 * out)
    assert not torch.allclose(guided, out)
    assert isinstance(nets["guide"], GuideNet)


# -- capabilities given labels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_every_capability_takes_labels(make_cfg, model):
    fam, nets, batch = _family(make_cfg, model, _ten())
    with torch.no_grad():
        nets["label"].table.weight.normal_(0, 1.0)
    x, zeros, ones = batch["x"], torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    noisy = fam.noise_space(nets, x) + 0.3 * torch.randn(x.shape)
    plan = fam.denoise_plan(nets, 0.3, 4)
    for method in fam.denoise_methods:
        torch.manual_seed(0)
        a = fam.denoise(nets, noisy, plan, method, labels=zeros)
        torch.manual_seed(0)
        assert not torch.allclose(a, fam.denoise(nets, noisy, plan, method, labels=ones)), method
        fam.denoise(nets, noisy, plan, method)  # the null label by default
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[..., :4] = True
    options = SimpleNamespace(steps=4, jump=1, resample=1)
    torch.manual_seed(0)
    a = fam.inpaint(nets, x, missing, options, y=zeros)
    torch.manual_seed(0)
    assert not torch.equal(a, fam.inpaint(nets, x, missing, options, y=ones)) and a.shape == x.shape
    z0, z1 = fam.to_latent(nets, x, 4, y=zeros), fam.to_latent(nets, x, 4, y=ones)
    assert not torch.allclose(z0, z1) and fam.to_latent(nets, x, 4).shape == z0.shape
    assert fam.from_latent(nets, z0, 4, y=zeros).shape == x.shape
    with pytest.raises(ConditionError):
        fam.to_latent(nets, x, 4, y=torch.full((6,), 11))


# -- (g) a tiny real fit ---------------------------------------------------------------------------------------------
BLOBS = DataInfo("two_blobs", "points", (2,), 16, num_classes=2)


def _blobs(n: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Class 0 near level 2 in both coordinates, class 1 near level 13."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 2 + 11 * y[:, None] + torch.randint(-1, 2, (n, 2), generator=gen)
    return {"x": x, "y": y}


def _fit(fam, steps: int = 400) -> nn.ModuleDict:
    torch.manual_seed(0)
    nets = fam.build(BLOBS)
    opt = torch.optim.Adam(nets.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = fam.loss(nets, _blobs(128, gen)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return nets.eval()


@pytest.mark.parametrize("model", FAMILIES)
def test_a_tiny_fit_separates_the_two_classes(model):
    net = partial(TimeMLP, hidden=64, layers=2, time_dim=32)
    if model == "ddpm_mlp":
        fam = Diffusion(net, timesteps=100, val_timesteps=None)
        sampler, guided = DDIM(steps=20), DDIM(steps=20, guidance=3.0)
    else:
        fam = FlowMatching(net, val_likelihood=ODELikelihood(ODESolver("midpoint", 10)))
        sampler, guided = ODESolver("midpoint", 10), ODESolver("midpoint", 10, guidance=3.0)
    fam.condition = ClassCondition(2, prior=[0.5, 0.5])
    nets = _fit(fam)
    means = {}
    for label in (0, 1):
        torch.manual_seed(3)
        means[label] = fam.sample(nets, 200, sampler=sampler, y=torch.full((200,), label)).double().mean()
    assert means[0] < 5 and means[1] > 10, means
    torch.manual_seed(3)
    sharp = fam.sample(nets, 200, sampler=guided, y=torch.ones(200, dtype=torch.long)).double()
    assert sharp.mean() > 10
    test = _blobs(200, torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.manual_seed(4)
        true = fam.log_likelihood(nets, test, stage="val").log_px
        torch.manual_seed(4)
        wrong = fam.log_likelihood(nets, {**test, "y": 1 - test["y"]}, stage="val").log_px
    assert float((true > wrong).double().mean()) > 0.95
    assert float(true.mean()) > -2 * math.log(16)  # better than uniform over the 16 x 16 grid
