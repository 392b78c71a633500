"""GAN family: losses and gradient penalty against closed forms, nets sized from the data,
the D/G schedule and resume, divergence handling, and mode coverage on the ring of 8."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlab.builders import load_run
from genlab.families.gan import GAN, WGANGP, Hinge, NonSaturating, gradient_penalty
from genlab.families.gan.family import EMAWarmup
from genlab.families.gan.nets import DCGANDiscriminator, DCGANGenerator, add_spectral_norm
from genlab.module import NonFiniteLossError, TrainingDivergedError
from genlab.train import report, run

SMALL_RING = ["experiment=gan_mixture2d", "dataset.n_train=1024", "dataset.n_val=256", "dataset.n_test=256",
              "num_samples=64", "callbacks.progress_bar=null", "trainer.log_every_n_steps=1"]  # 4 steps per epoch


def _weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)


# -- maths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_gradient_penalty_of_a_linear_critic_is_its_closed_form(shape):
    """D(x) = w.x + b has grad_x D = w everywhere, so GP = lambda (||w|| - 1)^2."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 1))
    real, fake = torch.randn(16, *shape), torch.randn(16, *shape)
    w_norm = critic[1].weight.norm()
    torch.testing.assert_close(gradient_penalty(critic, real, fake), (w_norm - 1) ** 2)
    torch.testing.assert_close(WGANGP(gp_lambda=10.0).penalty(critic, real, fake), 10 * (w_norm - 1) ** 2)
    with torch.no_grad():
        critic[1].weight.div_(w_norm)  # a 1-Lipschitz linear critic is not penalised
    assert WGANGP().penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


R, F_ = [2.0, -1.0], [0.5, -3.0]  # fixed discriminator outputs on real / generated data
EXPECTED = {  # (L_D, L_G), by hand from the formulas in genlab/families/gan/objectives.py
    NonSaturating: ((_sp(-2) + _sp(1)) / 2 + (_sp(0.5) + _sp(-3)) / 2, (_sp(-0.5) + _sp(3)) / 2),
    Hinge: ((0 + 2) / 2 + (1.5 + 0) / 2, 1.25),
    WGANGP: (-1.25 - 0.5, 1.25),
}


@pytest.mark.parametrize("objective", [NonSaturating(), Hinge(), WGANGP()], ids=lambda o: type(o).__name__)
def test_loss_values_and_gradient_signs_on_fixed_discriminator_outputs(objective):
    d_loss = objective.discriminator_loss(torch.tensor(R), torch.tensor(F_))
    g_loss = objective.generator_loss(torch.tensor(F_))
    expected_d, expected_g = EXPECTED[type(objective)]
    assert d_loss.item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss.item() == pytest.approx(expected_g, rel=1e-6)
    # inside the hinge margins: L_D falls as real outputs rise / fake outputs fall; L_G falls as fake rise
    r, f = torch.tensor([0.5, -0.2], requires_grad=True), torch.tensor([0.3, -0.4], requires_grad=True)
    grad_r, grad_f = torch.autograd.grad(objective.discriminator_loss(r, f), (r, f))
    assert (grad_r < 0).all() and (grad_f > 0).all()
    (grad_g,) = torch.autograd.grad(objective.generator_loss(f), f)
    assert (grad_g < 0).all()


def test_nonsaturating_generator_loss_keeps_its_gradient_where_the_minimax_loss_saturates():
    f = torch.tensor([-8.0], requires_grad=True)  # D is sure the fake is fake
    (ns,) = torch.autograd.grad(NonSaturating().generator_loss(f), f)
    (minimax,) = torch.autograd.grad(-F.softplus(f).sum(), f)  # L_G = E[log(1 - sigmoid(f))]
    assert abs(ns.item()) > 0.99 and abs(minimax.item()) < 1e-3


def test_ema_starts_at_the_generator_and_warms_up_its_decay():
    gen = nn.Linear(2, 2)
    ema = torch.optim.swa_utils.AveragedModel(gen, multi_avg_fn=EMAWarmup(0.999), use_buffers=True)
    ema.update_parameters(gen)  # first update copies
    old = gen.weight.detach().clone()
    with torch.no_grad():
        gen.weight.add_(1.0)
    ema.update_parameters(gen)  # n = 1: decay min(0.999, 2/11)
    torch.testing.assert_close(ema.module.weight, old + (1 - 2 / 11))


# -- nets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("sn", [False, True])
def test_dcgan_nets_are_sized_from_the_image_shape(shape, sn):
    gen = DCGANGenerator(in_dim=16, out_dim=shape, channels=4)
    disc = DCGANDiscriminator(in_dim=shape, out_dim=1, channels=4)
    disc = add_spectral_norm(disc) if sn else disc
    x = gen(torch.randn(3, 16))
    assert x.shape == (3, *shape) and disc(x).shape == (3, 1)
    assert sn == any("parametrizations" in k for k in disc.state_dict())


def test_dcgan_with_spectral_norm_and_gradient_penalty_runs_end_to_end_on_digits(make_cfg):
    results = run(make_cfg("model=dcgan", "loss=wgan_gp", "loss.n_critic=1", "model.spectral_norm=true",
                           "model.generator.channels=4", "model.discriminator.channels=4", "trainer=debug",
                           "num_samples=4"))
    assert results["family"] == "gan" and results["global_step"] == 2 and results["test"] == {"nll_kind": "none"}


def test_text_data_is_refused_before_training(make_cfg):
    from genlab.families.base import IncompatibleConfigError

    with pytest.raises(IncompatibleConfigError, match="model=gan_mlp cannot be trained on dataset=text"):
        run(make_cfg("model=gan_mlp", "dataset=text", "dataset.block_size=16"))


# -- training --------------------------------------------------------------------------------
def test_ring_of_8_modes_covered_and_results_carry_no_likelihood(make_cfg, tmp_path):
    results = run(make_cfg("experiment=gan_mixture2d", "callbacks.progress_bar=null"))
    assert results["global_step"] == 1600
    assert results["sample_metrics"]["modes_covered"] >= 7, results["sample_metrics"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["family"] == "gan" and saved["status"] == "finished"
    assert saved["test"] == {"nll_kind": "none"} and saved["val"]["nll_kind"] == "none"
    assert saved["val"]["best_nll_bpd"] is None and "nll_bpd" not in json.dumps(saved["test"])
    assert "test NLL: — (gan has no likelihood)" in report(results)
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:  # modes covered during validation
        rows = [r for r in csv.DictReader(f) if r.get("val/modes_covered")]
    assert len(rows) >= 10 and all(0 <= float(r["val/modes_covered"]) <= 8 for r in rows)
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"} <= set(rows[0])


def test_n_critic_schedule_per_player_lrs_and_exact_resume(make_cfg):
    k, common = 2, [*SMALL_RING, "loss.n_critic=2", "trainer.max_steps=-1"]
    full = run(make_cfg(*common, "trainer.max_epochs=4", name="full"))
    steps = full["global_step"]
    assert steps == 16
    ckpt = _weights(full["checkpoints"]["last"])
    gen_opt, disc_opt = ckpt["optimizer_states"]  # param_groups order: generator, discriminator
    d_steps = sum(s % (k + 1) < k for s in range(steps))  # 11 of 16: k/(k+1) of every full cycle
    assert gen_opt["state"][0]["step"] == steps - d_steps and disc_opt["state"][0]["step"] == d_steps
    assert gen_opt["param_groups"][0]["lr"] == 5e-4 and disc_opt["param_groups"][0]["lr"] == 1e-3
    assert tuple(disc_opt["param_groups"][0]["betas"]) == (0.5, 0.999)

    half = run(make_cfg(*common, "trainer.max_epochs=2", name="half"))
    assert half["global_step"] == 8  # stops mid-cycle (8 % 3 = 2)
    resumed = run(make_cfg(*common, "trainer.max_epochs=4", f"ckpt_path={half['checkpoints']['last']}", name="resumed"))
    b = _weights(resumed["checkpoints"]["last"])
    assert b["global_step"] == ckpt["global_step"]
    for name, value in ckpt["state_dict"].items():  # generator, discriminator and the generator EMA
        torch.testing.assert_close(value, b["state_dict"][name], rtol=0, atol=1e-6)
    for opt_a, opt_b in zip(ckpt["optimizer_states"], b["optimizer_states"]):
        for i, state in opt_a["state"].items():
            torch.testing.assert_close(state["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("poison,error,match", [
    (1e6, TrainingDivergedError, "Discriminator collapse .*model.spectral_norm=true.* at step 12"),
    (float("nan"), NonFiniteLossError, "training loss is nan at step 12"),
], ids=["exploding", "nan"])
def test_discriminator_collapse_stops_the_run_and_keeps_the_last_good_checkpoint(
        poison, error, match, make_cfg, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = GAN.discriminate

    def poisoned(self, nets, y):
        calls["n"] += 1  # one call per training step
        out = original(self, nets, y)
        return out * poison if calls["n"] > 12 else out  # after 3 epochs of 4 steps and their checkpoints

    monkeypatch.setattr(GAN, "discriminate", poisoned)
    with pytest.raises(error, match=match) as err:
        run(make_cfg(*SMALL_RING, "trainer.max_epochs=5", "trainer.max_steps=-1"))
    assert "last.ckpt" in str(err.value)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == str(err.value)
    ckpt = results["checkpoints"]["last"]
    assert _weights(ckpt)["global_step"] == 12
    module, _ = load_run(ckpt)
    x = module.sample(16, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (16, 2)
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())
