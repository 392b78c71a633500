"""Latent diffusion / flow matching over a KL first stage, and both stages in one command.

The KL first stage (genlab/families/vae/latents.py) bins posterior draws; its ``log q(k|x)`` must be
the exact mass of the bin (a distribution over the bins, matched by the draws), so that the composed
bound is a bound: checked against scipy's normal CDF, against the exact marginal of an enumerable
latent model, and on toy data of known entropy. The pipeline (genlab/pipeline.py) is checked by a real
two-stage run interrupted in its second stage and relaunched.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import norm

from genlab.data.toy import ToyDataModule
from genlab.families.base import IncompatibleConfigError, LatentAutoencoder
from genlab.families.vae.latents import KLFirstStage, log_bin_mass
from genlab.interrupt import RunInterrupted
from genlab.pipeline import FirstStageError, split_time

from faults import assert_same_state

QUICK = ("threads=1", "num_samples=4", "callbacks.progress_bar.refresh_rate=0", "trainer.limit_val_batches=1")
VAE_STAGE = ("model=vae_conv", "model.latent_dim=4", "model.encoder.channels=8", "model.decoder.channels=8",
             "model.test_k=2")
PRIOR = ("model=ddpm_mlp", "model.net.hidden=32", "model.net.layers=2", "model.val_timesteps=2",
         "model.test_timesteps=4", "model.timesteps=50", "trainer.val_check_interval=4", "trainer.max_epochs=100")


def _stage(levels: int = 8, half_range: float = 2.0) -> KLFirstStage:
    stage = KLFirstStage()
    stage.latent_levels, stage.latent_range = levels, half_range
    return stage


@pytest.mark.parametrize("mu, sd", [(0.0, 1.0), (0.3, 0.05), (1.9, 0.2), (-7.0, 0.5), (9.0, 0.01)])
def test_bin_masses_are_the_normal_cdf_differences_and_sum_to_one(mu, sd):
    stage = _stage()
    k = torch.arange(8).view(8, 1)
    mus = torch.full((8, 1), mu, dtype=torch.float64)
    logvar = torch.full((8, 1), 2 * math.log(sd), dtype=torch.float64)
    mass = log_bin_mass(k, mus, logvar, 8, 2.0).exp()
    edges = [-math.inf, *[-2.0 + 0.5 * i for i in range(1, 8)], math.inf]
    expected = [norm.sf(edges[i], mu, sd) - norm.sf(edges[i + 1], mu, sd) if edges[i] > mu else
                norm.cdf(edges[i + 1], mu, sd) - norm.cdf(edges[i], mu, sd) for i in range(8)]
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(mass, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=1e-9)
    assert stage.bins(stage.centres(k.view(1, 8))).tolist() == [list(range(8))]  # centres fall in their bins


def test_drawn_bins_follow_their_masses_and_coordinates_multiply():
    torch.manual_seed(0)
    stage = _stage()
    enc = torch.tensor([[0.1, -0.4, 0.3, 0.2]]).expand(40_000, 4)  # mu (2 coords), log sigma^2 (2 coords)
    k, log_q = stage.draw_latents(None, enc)
    for d in range(2):
        freq = torch.bincount(k[:, d], minlength=8).double() / len(k)
        mass = log_bin_mass(torch.arange(8).view(8, 1), enc[:8, d:d + 1], enc[:8, 2 + d:3 + d], 8, 2.0).exp()
        assert float((freq - mass).abs().max()) < 0.01
    per = [log_bin_mass(k[:, d:d + 1], enc[:, d:d + 1], enc[:, 2 + d:3 + d], 8, 2.0) for d in range(2)]
    torch.testing.assert_close(log_q, per[0] + per[1])


def test_the_kl_stage_bound_is_below_the_exact_marginal_and_its_weights_are_unbiased():
    """A VAE with one latent coordinate in 16 bins and a uniform prior P(k) = 1/16: p(x) is a sum of 16
    terms. The bound's mean stays below log p(x), and the importance weights P(k) p(x|c(k)) / q(k|x)
    average to p(x) (q's support is every bin)."""
    from functools import partial

    from genlab.families.vae import VAE
    from genlab.nets.conv import ConvDecoder, ConvEncoder

    torch.manual_seed(0)
    info = ToyDataModule(levels=4).info
    vae = VAE(partial(ConvEncoder, channels=8), partial(ConvDecoder, channels=8), latent_dim=1)
    vae.latent_levels, vae.latent_range = 16, 2.0
    assert isinstance(vae, LatentAutoencoder) and vae.latent_info(vae.build(info)).shape == (1,)
    nets = vae.build(info).eval()
    x = torch.randint(0, 4, (1, *info.shape), dtype=torch.uint8)
    grid = torch.arange(16).view(16, 1)
    exact = torch.logsumexp(vae.latent_log_likelihood(nets, x.expand(16, -1, -1, -1), grid).double(), 0) - math.log(16)
    enc = vae.encode_latents(nets, x).expand(20_000, -1)
    k, log_q = vae.draw_latents(nets, enc)
    recon = vae.latent_log_likelihood(nets, x.expand(len(k), -1, -1, -1), k).double()
    elbo = recon - math.log(16) - log_q
    assert float(elbo.mean()) <= float(exact) + 1e-9
    assert float(torch.logsumexp(elbo, 0) - math.log(len(elbo))) == pytest.approx(float(exact), abs=0.05)


def test_latent_diffusion_on_toy_data_is_a_bound_above_the_entropy_with_parts_that_add_up(make_cfg, tmp_path):
    from genlab.train import run

    data = tmp_path / "data"
    stage1 = run(make_cfg(*VAE_STAGE, "dataset=toy", "trainer.max_steps=200", *QUICK, name="vae"))
    prior = run(make_cfg(*PRIOR, "dataset=toy", f"+stage1={tmp_path / 'vae'}", "trainer.max_steps=8", *QUICK,
                         f"paths.data_dir={data}", name="ld"))
    assert prior["family"] == "two_stage" and prior["test"]["nll_kind"] == "bound"
    m, info = prior["metrics"], ToyDataModule().info
    assert prior["test"]["nll_bpd"] >= info.entropy_bpd
    total = m["test/recon_nats"] + m["test/prior_nats"] - m["test/bitsback_nats"]
    assert total == pytest.approx(prior["test"]["nll_nats"], rel=1e-5)
    assert m["test/bitsback_nats"] > 0  # a stochastic encoder gives bits back
    cached = list((data / "genlab_latents").glob("*/toy_train.pt"))
    assert len(cached) == 1 and stage1["status"] == "finished"
    stored = torch.load(cached[0], weights_only=True)  # the posterior parameters (mu, log sigma^2) per image
    assert stored["codes"].dtype == torch.float32 and stored["codes"].shape == (2000, 8)
    assert stored["keys"].shape == (2000,) and bool(stored["codes"].isfinite().all())
    _tasks_through_the_composed_model(prior["checkpoint"], tmp_path)


def _tasks_through_the_composed_model(ckpt: str, tmp_path) -> None:
    """Anomaly scores from the composed bound (uniform noise is far less likely than the toy templates);
    interpolation through the prior's inversion (DDIM over the latents), decoded by the first stage."""
    from genlab.builders import load_run
    from genlab.tasks.cli import run_task

    anomaly = run_task("anomaly", [f"ckpt={ckpt}", "n=64", "ood=[noise]", f"out={tmp_path / 'anomaly'}"])
    assert anomaly["auroc"]["noise"] > 0.9
    module, _ = load_run(ckpt)
    family, nets = module.family, module.nets
    x = ToyDataModule().splits["test"].x[:4]
    code = family.to_latent(nets, x, steps=10)
    manual = family.prior.to_latent(nets["prior"], family.coder().mode_latents(nets["stage1"].nets,
                                                                               family.latents(nets, x)), 10)
    torch.testing.assert_close(code, manual)
    back = family.from_latent(nets, code, steps=10)
    assert back.shape == x.shape and back.is_floating_point() and float(back.min()) >= 0 and float(back.max()) <= 3
    strips = run_task("interpolate", [f"ckpt={ckpt}", "pairs=2", "steps=4", "inversion_steps=10",
                                      f"out={tmp_path / 'interp'}"])
    assert strips["path"] == "linear" and (tmp_path / "interp" / "interpolate.png").is_file()
    from genlab.tasks.base import TaskError

    with pytest.raises(TaskError, match="stochastic encoder.*bits-back coding.*model=vqvae"):
        run_task("compress", [f"ckpt={ckpt}", "n=4", f"out={tmp_path / 'compress'}"])


def test_a_pixel_backbone_cannot_be_the_prior_over_a_latent_vector(make_cfg, tmp_path):
    from genlab.builders import build_family

    from genlab.train import run

    run_dir = tmp_path / "vae"
    run(make_cfg(*VAE_STAGE, "dataset=toy", "trainer.max_steps=2", *QUICK, name="vae"))
    cfg = make_cfg("model=ddpm", "dataset=toy", f"+stage1={run_dir}", *QUICK, name="bad")
    with pytest.raises(IncompatibleConfigError, match=r"model=ddpm cannot be the prior.*ddpm_mlp"):
        build_family(cfg)


def test_split_time_shares_a_budget_and_refuses_what_it_cannot_split():
    assert split_time("00:00:20:00", 0.5) == "00:00:10:00"
    assert split_time("01:00:00:00", 0.25) == "00:06:00:00"
    with pytest.raises(IncompatibleConfigError, match="between 0 and 1"):
        split_time("00:00:20:00", 1.5)
    with pytest.raises(IncompatibleConfigError, match="not a DD:HH:MM:SS budget"):
        split_time(None, 0.5)


def _two_stage(*extra: str) -> tuple[str, ...]:
    stage = ", ".join(f'"{o}"' for o in (*VAE_STAGE, "trainer.max_steps=20"))
    return (*PRIOR, "dataset=toy", f"first_stage={{overrides: [{stage}], share: null}}", *QUICK, *extra)


def test_both_stages_in_one_command_and_a_relaunch_resumes_the_prior_exactly(make_cfg, tmp_path, capfd):
    from genlab.train import run

    args = _two_stage("trainer.max_steps=10", f"paths.data_dir={tmp_path / 'data'}",
                      "+callbacks.stop._target_=faults.StopAt", "+callbacks.stop.step=5")
    with pytest.raises(RunInterrupted):
        run(make_cfg(*args, name="pair"))
    stage_dir = tmp_path / "pair" / "stage1"
    first = json.loads((stage_dir / "results.json").read_text())
    assert first["status"] == "finished" and first["family"] == "vae" and first["global_step"] == 20
    kept = {p: p.stat().st_mtime_ns for p in stage_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    capfd.readouterr()
    resumed = run(make_cfg(*args, name="pair"))  # the same command, the same run dir
    out = capfd.readouterr().out
    assert f"{stage_dir} already holds this finished run" in out and "resuming the unfinished run" in out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the first stage was not trained again
    assert resumed["status"] == "finished" and resumed["global_step"] == 10 and resumed["family"] == "two_stage"
    full = run(make_cfg(*PRIOR, "dataset=toy", f"+stage1={stage_dir}", *QUICK, "trainer.max_steps=10",
                        f"paths.data_dir={tmp_path / 'data'}", name="full"))
    assert_same_state(full["checkpoints"]["last"], resumed["checkpoints"]["last"])


def test_a_first_stage_that_fails_stops_the_run_with_the_fix(make_cfg, tmp_path):
    from genlab.train import run

    args = (*PRIOR, "dataset=toy", 'first_stage={overrides: ["model=no_such_model"], share: null}', *QUICK)
    with pytest.raises(FirstStageError, match=r"the first stage in .*stage1 did not finish \(exit code 1.*first_stage.overrides.*hydra.run.dir="):
        run(make_cfg(*args, name="broken"))
