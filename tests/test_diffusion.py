"""Diffusion maths against closed forms (float64, milliseconds), samplers against the exact
denoiser of Gaussian data, and the plumbing: every schedule/prediction/loss composes and runs,
the bound never beats the toy data's entropy, EMA weights are what is validated and saved,
and a resumed run continues like an uninterrupted one."""

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from torch import nn

from genlab.builders import build_family, load_run
from genlab.data.base import DataInfo
from genlab.families.diffusion import DDIM, Ancestral, Diffusion, GaussianDiffusion, HybridLoss, SimpleLoss
from genlab.families.diffusion.predictions import PREDICTIONS
from genlab.families.diffusion.process import discretized_gaussian_log_prob, normal_kl, stratified_timesteps
from genlab.families.diffusion.schedules import SCHEDULES
from genlab.metrics.likelihood import LN2
from genlab.nets.unet import TimeMLP, UNet
from genlab.train import run

F64 = torch.float64
POINTS = DataInfo("gauss", "points", (1,), 256)
TINY_MLP = ["model=ddpm_mlp", "model.net.hidden=32", "model.net.layers=1", "model.timesteps=20"]
TINY_UNET = ["model=ddpm", "model.net.channels=8", "model.net.channel_mults=[1,2]", "model.net.num_res_blocks=1",
             "model.net.heads=1", "model.timesteps=20"]


def _process(schedule: str, steps: int) -> GaussianDiffusion:
    return GaussianDiffusion(SCHEDULES[schedule]().betas(steps))


# -- forward process and posterior ----------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_forward_marginal_matches_iterating_the_forward_process(schedule):
    p = _process(schedule, 50)
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=F64)
    mean, var = x0.clone(), torch.zeros(3, dtype=F64)
    for t in range(p.T):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) e: propagate the moments exactly
        b = p.tables["betas"][t]
        mean, var = (1 - b).sqrt() * mean, (1 - b) * var + b
        m, v = p.q_mean_var(x0, torch.full((3,), t))
        torch.testing.assert_close(m, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v.expand(3), var, rtol=1e-12, atol=1e-12)
    # and by Monte Carlo through q_sample against iterated noising
    g = torch.Generator().manual_seed(0)
    x = x0.repeat(20000, 1)
    for t in range(p.T):
        b = p.tables["betas"][t]
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
    direct = p.q_sample(x0.repeat(20000, 1), torch.full((20000,), p.T - 1), torch.randn(x.shape, generator=g, dtype=F64))
    torch.testing.assert_close(x.mean(0), direct.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(x.var(0), direct.var(0), atol=0.03, rtol=0)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_posterior_is_bayes_on_the_joint_gaussian_and_the_prior_kl_is_closed_form(schedule):
    p = _process(schedule, 30)
    ab = p.tables["alpha_bar"]
    x0, x_t = torch.tensor([0.7], dtype=F64), torch.tensor([-0.4], dtype=F64)
    for t in range(1, p.T):  # (x_{t-1}, x_t) | x0 is jointly Gaussian; condition on x_t
        m1, v1 = ab[t - 1].sqrt() * x0, 1 - ab[t - 1]
        a = 1 - p.tables["betas"][t]
        cov, v2 = a.sqrt() * v1, a * v1 + (1 - a)
        mean, var = p.q_posterior(x0, x_t, torch.tensor([t]))
        torch.testing.assert_close(mean, m1 + cov / v2 * (x_t - a.sqrt() * m1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var.view(1), (v1 - cov**2 / v2).view(1), rtol=1e-12, atol=1e-14)
    mean, var = p.q_posterior(x0, x_t, torch.tensor([0]))  # x_{-1} = x0: a point mass
    torch.testing.assert_close(mean, x0)
    torch.testing.assert_close(var.view(1), torch.zeros(1, dtype=F64))
    kl = p.prior_kl(x0.view(1, 1))
    m, v = ab[-1].sqrt() * 0.7, 1 - ab[-1]
    torch.testing.assert_close(kl, (0.5 * (v + m * m - 1 - v.log())).view(1), rtol=1e-12, atol=1e-14)


def _family(info=POINTS, net=None, **kw) -> tuple[Diffusion, nn.ModuleDict]:
    fam = Diffusion(net or (lambda shape, out_mult: TimeMLP(shape, out_mult, hidden=16, layers=1)), **kw)
    return fam, fam.build(info).double()


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("objective", [SimpleLoss(), HybridLoss()], ids=["fixed", "learned"])
def test_kl_terms_vanish_when_the_model_predicts_the_true_posterior(prediction, objective):
    fam, nets = _family(DataInfo("t", "image", (2, 3, 3), 17), prediction=prediction, timesteps=40, objective=objective)
    p, g = fam.process, torch.Generator().manual_seed(0)
    x0 = fam.scale(nets, torch.randint(0, 17, (40, 2, 3, 3), generator=g), F64)
    t, eps = torch.arange(40), torch.randn(x0.shape, generator=g, dtype=F64)
    x_t = p.q_sample(x0, t, eps)
    out = fam.prediction.target(p, t, x0, eps)  # the exact answer: x0_hat = x0, so the mean is mu~_t
    if fam.learns_variance:  # v = -1: Sigma = beta~_t, the true posterior variance
        out = torch.cat([out, -torch.ones_like(out)], 1)
    terms = fam.model(nets).vb_term(x0, x_t, t, out)
    torch.testing.assert_close(terms[1:], torch.zeros(39, dtype=F64), atol=1e-9, rtol=0)
    assert terms[0] > 0  # t = 0 is the decoder's NLL: a positive number of nats
    assert float(normal_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1))) == pytest.approx(0.5)


@pytest.mark.parametrize("gamma", [None, 5.0])
@pytest.mark.parametrize("objective", [SimpleLoss, HybridLoss])
def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error_for_every_prediction(objective, gamma):
    """For an error ``d`` in the implied ``x0``, the eps / x0 / v targets' squared errors are
    ``SNR d^2``, ``d^2`` and ``(SNR + 1) d^2``; Min-SNR-gamma makes all three ``min(SNR, gamma) d^2``
    (Hang et al. 2023, Eq. 7-9); without it the eps loss is ``SNR d^2`` (L_simple)."""
    g = torch.Generator().manual_seed(1)
    for prediction in PREDICTIONS:
        fam, nets = _family(DataInfo("t", "image", (1, 2, 2), 17), prediction=prediction, timesteps=100)
        p = fam.process
        t = torch.tensor([0, 5, 30, 60, 99])
        x0 = torch.rand(5, 1, 2, 2, generator=g, dtype=F64) * 2 - 1
        eps = torch.randn(x0.shape, generator=g, dtype=F64)
        d = 0.1 * torch.randn(x0.shape, generator=g, dtype=F64)
        x_t = p.q_sample(x0, t, eps)
        a, s = p.at("sqrt_ab", t, x0), p.at("sqrt_1m_ab", t, x0)
        x0_hat = x0 + d
        out = {"eps": (x_t - a * x0_hat) / s, "x0": x0_hat, "v": (a * x_t - x0_hat) / s}[prediction]
        torch.testing.assert_close(fam.prediction.to_x0_eps(p, t, x_t, out)[0], x0_hat)  # implied x0
        ab = p.tables["alpha_bar"][t]
        snr = ab / (1 - ab)
        assert snr.min() < 5 < snr.max()  # both sides of gamma
        plain = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[prediction]
        expected = (plain if gamma is None else snr.clamp(max=gamma)) * d.pow(2).flatten(1).mean(1)
        torch.testing.assert_close(objective(min_snr_gamma=gamma).mse(fam.model(nets), t, x0, eps, out), expected)
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        objective(min_snr_gamma=0.0)


# -- the discretised-Gaussian decoder ----------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 4, 17, 256])
def test_decoder_probabilities_over_all_levels_sum_to_one(levels):
    g = torch.Generator().manual_seed(levels)
    mean = (torch.rand(50, 1, generator=g, dtype=F64) * 4 - 2).requires_grad_()
    log_scale = torch.rand(50, 1, generator=g, dtype=F64) * 8 - 7  # sigma from 1e-3 to 3
    x = torch.linspace(-1, 1, levels, dtype=F64).view(1, -1)
    logp = discretized_gaussian_log_prob(x, mean, log_scale, 2 / (levels - 1))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(50, dtype=F64), atol=1e-10, rtol=0)
    logp.sum().backward()
    assert torch.isfinite(mean.grad).all()
    far = discretized_gaussian_log_prob(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([-6.0]), 0.1)
    assert torch.isfinite(far) and far < -7e4  # a 380-sigma miss: log P ~ -380^2/2, not log(0)


# -- samplers against the exact denoiser of Gaussian data -------------------------------------
class GaussianDenoiser(nn.Module):
    """The optimal eps-predictor for ``x0 ~ N(mu, s^2)``: ``E[eps | x_t] = sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)``."""

    def __init__(self, process: GaussianDiffusion, mu: float, s: float) -> None:
        super().__init__()
        self.ab, self.mu, self.s = process.tables["alpha_bar"], mu, s
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))  # dtype/device for the samplers

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab[(t.double() * len(self.ab)).round().long()].view(-1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


MU, S = 0.3, 0.2


def _gaussian_family(timesteps=1000, **kw) -> tuple[Diffusion, nn.ModuleDict]:
    holder = {}
    fam = Diffusion(lambda shape, out_mult: GaussianDenoiser(holder["p"], MU, S), timesteps=timesteps,
                    schedule="cosine", clip_denoised=False, **kw)
    holder["p"] = fam.process
    return fam, fam.build(POINTS)


def test_ddim_with_eta_1_on_all_steps_is_ancestral_ddpm_and_both_recover_the_gaussian():
    # with the exact E[x0|x_t] but variance beta~_t (not beta~_t + coef^2 Var[x0|x_t]) the chain's
    # std is low by O(1/T): 0.1918 for T=200, 0.1981 for T=1000 (cosine; by exact moment propagation)
    fam, nets = _gaussian_family()
    draws = {}
    for name, sampler in {"ddpm": Ancestral(), "ddim": DDIM(steps=None, eta=1.0)}.items():
        torch.manual_seed(0)
        draws[name] = sampler(fam.model(nets), 5000).squeeze(1)
    torch.testing.assert_close(draws["ddim"], draws["ddpm"], atol=1e-9, rtol=0)  # same chain, same noise
    x = draws["ddpm"]
    assert abs(float(x.mean()) - MU) < 0.01 and abs(float(x.std()) - S) < 0.01


@pytest.mark.parametrize("steps", [None, 250])
def test_ddim_with_eta_0_is_deterministic_and_recovers_the_gaussian(steps):
    # DDIM's std is low by O(1/S) here: 0.169 / 0.194 / 0.198 for S = 20 / 100 / 250 of T = 1000
    fam, nets = _gaussian_family()
    x_T = torch.randn(5000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    outs = []
    for seed in (1, 2):  # different global RNG states: no effect without noise
        torch.manual_seed(seed)
        outs.append(DDIM(steps=steps, eta=0.0)(fam.model(nets), 5000, x_T=x_T))
    assert torch.equal(outs[0], outs[1])
    x = outs[0].squeeze(1)
    assert abs(float(x.mean()) - MU) < 0.01 and abs(float(x.std()) - S) < 0.01
    # the probability-flow map is monotone: the order of the noise is kept
    assert bool((x[x_T.squeeze(1).argsort()].diff() >= 0).all())


def test_samples_are_discrete_data_and_names_select_samplers():
    fam, nets = _gaussian_family(timesteps=20)
    for sampler in ("ddpm", "ddim", DDIM(steps=5, eta=0.5)):
        s = fam.sample(nets, 7, sampler=sampler)
        assert s.dtype == torch.uint8 and s.shape == (7, 1)
    with pytest.raises(ValueError, match="valid names are ddpm, ddim"):
        fam.sample(nets, 2, sampler="euler")


def test_stratified_timesteps_cover_the_range_with_one_draw_per_stratum():
    t, sizes = stratified_timesteps(1000, 7, 1, 100, torch.Generator().manual_seed(0))
    assert t.shape == (7, 1000) and float(sizes.sum()) == 99 and bool((sizes >= 1).all())
    edges = torch.cat([torch.ones(1), 1 + sizes.cumsum(0)])
    assert bool(((t >= edges[:-1, None]) & (t < edges[1:, None])).all())
    assert set(t.flatten().tolist()) == set(range(1, 100))  # every step can be drawn


# -- validation of inputs and configs -----------------------------------------------------------
def test_bad_inputs_and_data_kinds_are_refused_with_the_reason():
    fam, nets = _family(DataInfo("toy", "image", (1, 4, 4), 4))
    good = torch.randint(0, 4, (2, 1, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"0\.\.3 .*4 levels.*got values in 0\.\.200"):
        fam.loss(nets, {"x": torch.cat([good, torch.full_like(good[:1], 200)])})
    with pytest.raises(ValueError, match="non-integer"):
        fam.loss(nets, {"x": good.double() + 0.5})
    with pytest.raises(ValueError, match=r"shape \(B, 1, 4, 4\)"):
        fam.log_likelihood(nets, {"x": good[:, :, :2]})
    assert "categorical token ids" in fam.check_data(DataInfo("text", "text", (32,), 50))
    unet = Diffusion(partial(UNet, channels=8))
    assert "model=ddpm_mlp" in unet.check_data(DataInfo("m", "points", (2,), 256))
    with pytest.raises(ValueError, match="fixed_variance='tiny' is not valid: choose one of small, large"):
        Diffusion(TimeMLP, fixed_variance="tiny")


def test_bad_names_give_errors_that_list_the_valid_ones(make_cfg):
    for key, bad, valid in [("schedule", "quadratic", "linear, cosine"), ("prediction", "score", "eps, x0, v"),
                            ("sampler", "euler", "ddpm, ddim")]:
        with pytest.raises(Exception, match=f"model.{key}='{bad}' is not a valid {key}: valid names are {valid}"):
            build_family(make_cfg("model=ddpm", f"model.{key}={bad}"))
    with pytest.raises(HydraException, match="Available options in 'loss'"):
        make_cfg("model=ddpm", "loss=hybird")


@pytest.mark.parametrize("loss", ["simple", "hybrid"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_loss_schedule_and_prediction_composes_and_runs_a_step(loss, schedule, prediction, make_cfg):
    cfg = make_cfg(*TINY_UNET, "dataset=toy", f"loss={loss}", f"model.schedule={schedule}",
                   f"model.prediction={prediction}", "model.val_timesteps=3")
    fam, info = build_family(cfg), instantiate(cfg.dataset).info
    nets = fam.build(info)
    assert type(fam.noise_schedule).name == schedule and type(fam.prediction).name == prediction
    x = torch.randint(0, info.levels, (4, *info.shape), dtype=torch.uint8)
    out = fam.loss(nets, {"x": x})
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.logs) == ({"mse", "vlb_bpd"} if loss == "hybrid" else {"mse"})
    assert all(p.grad is not None for p in nets.parameters())
    ll = fam.log_likelihood(nets, {"x": x}, stage="val")
    assert ll.kind == "bound" and torch.isfinite(ll.log_px).all()


def test_the_vlb_term_trains_the_variance_and_not_the_mean():
    torch.manual_seed(0)
    info = DataInfo("t", "image", (1, 2, 2), 4)

    class Free(nn.Module):  # output = a free parameter per output channel: gradients readable directly
        def __init__(self, shape, out_mult):
            super().__init__()
            self.w = nn.Parameter(0.1 * torch.randn(out_mult * shape[0], *shape[1:], dtype=F64))

        def forward(self, x, t):
            return self.w.expand(x.shape[0], *self.w.shape) + 0 * x.repeat(1, self.w.shape[0] // x.shape[1], 1, 1)

    fam, nets = _family(info, net=Free, objective=HybridLoss(vlb_weight=1.0), timesteps=10)
    x = torch.randint(0, 4, (16, 1, 2, 2))
    grads = {}
    for name, objective in {"hybrid": fam.objective, "simple": SimpleLoss()}.items():
        nets.zero_grad()
        torch.manual_seed(1)  # same t and noise
        objective(fam.model(nets), fam.scale(nets, x, F64)).loss.backward()
        grads[name] = nets["net"].w.grad.clone()
    torch.testing.assert_close(grads["hybrid"][:1], grads["simple"][:1], rtol=1e-12, atol=1e-14)  # mean: L_simple only
    assert grads["hybrid"][1:].abs().sum() > 0 and grads["simple"][1:].abs().sum() == 0  # variance: L_vlb only


# -- end to end: the bound, EMA, resume ------------------------------------------------------------
def _toy_run(make_cfg, *extra, name="run"):
    return run(make_cfg(*TINY_MLP, "dataset=toy", "num_samples=4", "callbacks.samples.every_n_epochs=100",
                        "model.val_timesteps=4", "callbacks.ema.decay=0.9", *extra, name=name))


def test_toy_bound_never_beats_the_entropy_and_the_subsample_agrees_with_all_steps(make_cfg):
    results = _toy_run(make_cfg, "trainer.max_epochs=4", "model.test_timesteps=null", "optimizer.lr=3e-3")
    entropy = results["data"]["entropy_bpd"]
    assert results["family"] == "diffusion" and results["test"]["nll_kind"] == "bound"
    assert entropy <= results["test"]["nll_bpd"] and entropy <= results["val"]["nll_bpd"]
    module, dm = load_run(results["checkpoint"])
    fam, x = module.family, dm.splits["test"].x
    x0 = fam.scale(module.nets, x)
    torch.manual_seed(0)
    with torch.no_grad():
        full, sub = fam.bound(module.nets, x0, None), fam.bound(module.nets, x0, 5)
    assert bool((full.kl_var == 0).all()) and bool((sub.kl_var > 0).all())
    diff = sub.nll - full.nll  # independent draws on the same examples: mean 0 if the subsample is unbiased
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean())) < 4 * se
    assert float(sub.kl_var.mean().sqrt()) == pytest.approx(float(diff.std()), rel=1.0)  # variance of the right size
    assert float(full.nll.mean()) / (module.nets.info.dims * LN2) >= entropy


def test_ema_weights_are_validated_and_saved_and_a_resumed_run_continues_exactly(make_cfg, tmp_path):
    ema = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
           "model.test_timesteps=2", "trainer.limit_test_batches=1"]
    full = _toy_run(make_cfg, *ema, "trainer.max_epochs=2", name="full")
    last = {name: tmp_path / name / "checkpoints" / "last.ckpt" for name in ("full", "first", "resumed")}
    ckpt = torch.load(last["full"], weights_only=False)
    assert "current_model_state" in ckpt  # Lightning's EMA callback saved its average as the state_dict
    ema_w, raw_w = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(ema_w[k], raw_w[k]) for k in ema_w if k.startswith("nets."))
    # the val NLL of the last epoch was computed with the EMA weights
    module, dm = load_run(str(last["full"]))
    for i, batch in enumerate(dm.val_dataloader()):
        module._eval_step("val", batch, i)
        break
    assert float(module.nll["val"].compute()) / (dm.info.dims * LN2) == pytest.approx(full["val"]["nll_bpd"], rel=1e-5)
    module.load_state_dict(raw_w)
    module.nll["val"].reset()
    module._eval_step("val", batch, 0)
    assert float(module.nll["val"].compute()) / (dm.info.dims * LN2) != pytest.approx(full["val"]["nll_bpd"], rel=1e-3)
    # 1 epoch, then resume for the second: the same weights (raw and EMA) as the uninterrupted run
    first = _toy_run(make_cfg, *ema, "trainer.max_epochs=1", name="first")
    resumed = _toy_run(make_cfg, *ema, "trainer.max_epochs=2", f"ckpt_path={last['first']}", name="resumed")
    assert resumed["global_step"] == full["global_step"] == 8
    assert first["global_step"] == 4
    again = torch.load(last["resumed"], weights_only=False)
    for key in ("state_dict", "current_model_state"):
        for k, v in ckpt[key].items():
            torch.testing.assert_close(again[key][k], v, rtol=1e-6, atol=1e-7)
    assert Path(resumed["samples"]).exists()


def test_sampling_checks_script_parses_ddim_and_ancestral_settings(monkeypatch):
    import argparse
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    checks = importlib.import_module("diffusion_sampling_checks")
    ddim, anc = checks.parse_setting("50:1"), checks.parse_setting("ancestral:25")
    assert isinstance(ddim, DDIM) and (ddim.steps, ddim.eta) == (50, 1.0)
    assert isinstance(anc, Ancestral) and anc.steps == 25
    assert checks.describe(ddim) == "DDIM 50 steps, eta 1" and "ancestral 25" in checks.describe(anc)
    for bad in ("fifty", "50:x", "50:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="STEPS:ETA"):
            checks.parse_setting(bad)
