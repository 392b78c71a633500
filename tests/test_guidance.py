"""Autoguidance (Karras et al. 2024): the guided prediction against its closed form on Gaussian data
(exact denoisers), sharper samples without moving the mean, the bound untouched; the guide is a
frozen copy of the EMA weights taken once at the configured share of training, saved, resumed and
reloaded with the checkpoint."""

import importlib
import warnings
from pathlib import Path

import pytest
import torch
from test_diffusion import MU, POINTS, S, GaussianDenoiser, _toy_run

from genlab.builders import load_run
from genlab.families.diffusion import DDIM, Diffusion, Guidance, GuideNet
from genlab.nets.unet import UNet

F64 = torch.float64
S_GUIDE = 0.4  # the guide: the exact denoiser of a broader Gaussian (a "worse", blurrier model)


def _family(weight: float, ready: bool = True) -> tuple[Diffusion, torch.nn.ModuleDict]:
    holder = {}
    fam = Diffusion(lambda shape, out_mult: GaussianDenoiser(holder["p"], MU, S), timesteps=1000, schedule="cosine",
                    clip_denoised=False, guidance={"weight": weight, "at": 0.5})
    holder["p"] = fam.process
    nets = fam.build(POINTS)
    nets["guide"] = GuideNet(GaussianDenoiser(fam.process, MU, S_GUIDE))
    if ready:
        nets["guide"].taken_at.fill_(0.0)
    return fam, nets


def test_guided_prediction_is_the_extrapolation_from_the_guide_and_the_bound_ignores_it():
    fam, nets = _family(3.0)
    p = fam.process
    x_t = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    t = torch.full((9,), 400, dtype=torch.long)
    ab = p.tables["alpha_bar"][400]

    def eps(s):  # E[eps | x_t] for x0 ~ N(MU, s^2)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * MU) / (ab * s**2 + 1 - ab)

    torch.testing.assert_close(fam.model(nets).output(x_t, t), eps(S))
    torch.testing.assert_close(fam.model(nets).output(x_t, t, guide=True), eps(S_GUIDE) + 3.0 * (eps(S) - eps(S_GUIDE)))
    # the likelihood is the unguided model's, whatever the weight
    x0 = fam.scale(nets, torch.randint(0, 256, (64, 1)), F64)
    bounds = []
    for w in (1.0, 3.0):
        fam.guidance.weight = w
        torch.manual_seed(0)
        bounds.append(fam.bound(nets, x0, timesteps=10).nll)
    torch.testing.assert_close(bounds[0], bounds[1])


def test_guidance_sharpens_the_gaussian_without_moving_its_mean():
    # the guide is broader, so w > 1 extrapolates towards a narrower distribution: std falls with w
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    stds = {}
    for w in (1.0, 2.0, 3.0):
        fam, nets = _family(w)
        x = DDIM(steps=100, eta=0.0)(fam.model(nets), 4000, x_T=x_T).squeeze(1)
        assert abs(float(x.mean()) - MU) < 0.01
        stds[w] = float(x.std())
    assert abs(stds[1.0] - S) < 0.01
    assert stds[3.0] < stds[2.0] - 0.01 and stds[2.0] < stds[1.0] - 0.01


def test_before_the_snapshot_samples_are_unguided_with_a_warning():
    x_T = torch.randn(100, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    fam, nets = _family(3.0, ready=False)
    plain, _ = _family(1.0)
    with pytest.warns(UserWarning, match="sampling without guidance"):
        x = DDIM(steps=20, eta=0.0)(fam.model(nets), 100, x_T=x_T)
    torch.testing.assert_close(x, DDIM(steps=20, eta=0.0)(plain.model(nets), 100, x_T=x_T))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per family
        DDIM(steps=5, eta=0.0)(fam.model(nets), 10)


def test_guide_net_is_a_frozen_copy_of_buffers():
    net = UNet((1, 8, 8), channels=8, channel_mults=(1, 2), num_res_blocks=1, heads=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    guide = GuideNet(net)
    assert list(guide.parameters()) == [] and not guide.ready
    assert {f"net.{k}" for k in net.state_dict()} | {"taken_at"} == set(guide.state_dict())
    guide.copy_from(net, step=7)
    assert guide.ready and float(guide.taken_at) == 7
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    torch.testing.assert_close(guide(x, t), net(x, t))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05)
    assert not torch.allclose(guide(x, t), net(x, t))  # a copy, not a view


@pytest.mark.parametrize("value, match", [({"weight": 0.5}, "must be >= 1"), ({"at": 1.0}, "strictly between"),
                                          ({"weight": 2, "when": 0.3}, "unknown key"), (3.0, "give null")])
def test_bad_guidance_settings_name_the_fix(value, match):
    with pytest.raises(ValueError, match=match):
        Guidance.parse(value)


def test_the_snapshot_is_the_ema_at_the_share_of_training_saved_resumed_and_reloaded(make_cfg, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    short = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "model.test_timesteps=2",
             "trainer.limit_test_batches=1", "model.guidance={weight: 2.0, at: 0.5}"]
    full = _toy_run(make_cfg, *short, "trainer.max_epochs=2", name="full")  # 8 steps: the guide at step 4
    ckpt = torch.load(full["checkpoint"], weights_only=False)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert float(ema["nets.guide.taken_at"]) == 4.0
    guide = {k.removeprefix("nets.guide.net."): v for k, v in ema.items() if k.startswith("nets.guide.net.")}
    assert guide and all(torch.equal(raw[f"nets.guide.net.{k}"], v) for k, v in guide.items())  # frozen in both
    assert full["params"] == sum(v.numel() for k, v in raw.items() if k.startswith("nets.net."))  # not parameters
    # the guide is the EMA after 4 steps: what a 4-step run (max_steps, so its own guide is at step 2) ends with
    four = _toy_run(make_cfg, *short, "trainer.max_epochs=2", "trainer.max_steps=4", name="four")
    four_ema = torch.load(four["checkpoint"], weights_only=False)["state_dict"]
    assert float(four_ema["nets.guide.taken_at"]) == 2.0
    for k, v in guide.items():
        torch.testing.assert_close(v, four_ema[f"nets.net.{k}"], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(v, ema[f"nets.net.{k}"]) for k, v in guide.items())  # not the final weights
    # resumed from the 4-step checkpoint, the run keeps that snapshot (taken at step 2) and does not take another
    resumed = _toy_run(make_cfg, *short, "trainer.max_epochs=2", f"ckpt_path={four['checkpoint']}", name="resumed")
    assert resumed["global_step"] == 8
    assert float(torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]["nets.guide.taken_at"]) == 2.0
    # reloaded: guided samples differ from unguided ones drawn from the same noise
    module, _ = load_run(full["checkpoint"])
    plain, _ = load_run(full["checkpoint"], overrides=["model.guidance.weight=1.0"])
    assert module.family.guidance.weight == 2.0
    x_T = torch.randn(256, *module.info.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    guided = DDIM(steps=10, eta=0.0)(module.family.model(module.nets), 256, x_T=x_T)
    torch.manual_seed(0)
    unguided = DDIM(steps=10, eta=0.0)(plain.family.model(plain.nets), 256, x_T=x_T)
    assert not torch.allclose(guided, unguided)
    dropped, _ = load_run(full["checkpoint"], overrides=["model.guidance=null"])  # the snapshot unused
    assert "guide" not in dropped.nets
    torch.manual_seed(0)
    torch.testing.assert_close(DDIM(steps=10, eta=0.0)(dropped.family.model(dropped.nets), 256, x_T=x_T), unguided)
    # a checkpoint without a guide cannot be sampled with guidance: the error says so
    unguided_run = _toy_run(make_cfg, *short[:-1], "trainer.max_epochs=1", name="plain")
    with pytest.raises(ValueError, match="trained without model.guidance"):
        load_run(unguided_run["checkpoint"], overrides=["model.guidance={weight: 2.0, at: 0.5}"])
    # ... but scripts/diffusion_sampling_checks.py --guide-ckpt can lend it another checkpoint's weights as the guide
    checks = importlib.import_module("diffusion_sampling_checks")
    lent, _ = load_run(unguided_run["checkpoint"])
    checks.use_guide(lent, full["checkpoint"])
    assert lent.family.guidance is not None and float(lent.nets["guide"].taken_at) == 8.0
    for k, v in lent.nets["guide"].net.state_dict().items():
        assert torch.equal(v, ema[f"nets.net.{k}"])
