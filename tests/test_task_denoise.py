"""``genlab-task denoise``: the matching noise level against the noising processes (closed forms,
Monte Carlo), the truncated chain, and end-to-end runs on tiny digits models: a trained diffusion
or flow-matching model raises the PSNR of noisy images; other families are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genlab.families.diffusion import GaussianDiffusion
from genlab.families.diffusion.schedules import SCHEDULES
from genlab.families.flow_matching.paths import OTPath, VPPath
from genlab.tasks.base import TaskError
from genlab.tasks.cli import main
from genlab.families.diffusion.denoising import match_timestep, truncated_chain
from genlab.families.flow_matching import match_time, posterior_mean
from test_task_inpaint import checkpoint  # the same tiny models (session-cached by name)

F64 = torch.float64


# -- matching noise levels ------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_matching_timestep_makes_the_rescaled_noisy_input_a_draw_of_q_xt_given_x(schedule, sigma):
    process = GaussianDiffusion(SCHEDULES[schedule]().betas(1000))
    ab = process.tables["alpha_bar"]
    t = match_timestep(process, sigma)
    target = 1 / (1 + sigma**2)
    assert (ab[t] - target).abs() == (ab - target).abs().min()  # the closest step
    assert abs(float(ab[t]) - target) < 0.01
    # sqrt(ab_t) (x + sigma eps) against q(x_t | x) = N(sqrt(ab_t) x, (1 - ab_t) I), by Monte Carlo
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([-0.8, 0.1, 1.0], dtype=F64).repeat(40000, 1)
    ours = ab[t].sqrt() * (x + sigma * torch.randn(x.shape, generator=g, dtype=F64))
    forward = process.q_sample(x, torch.full((len(x),), t), torch.randn(x.shape, generator=g, dtype=F64))
    torch.testing.assert_close(ours.mean(0), forward.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(ours.std(0), forward.std(0), atol=0.02, rtol=0.01)


def test_truncated_chain_keeps_the_marginals_and_network_times_of_steps_0_to_t():
    process = GaussianDiffusion(SCHEDULES["linear"]().betas(1000))
    head = truncated_chain(process, 300, 7)
    assert head.T == 7 and head.timesteps.tolist() == [0, 50, 100, 150, 200, 250, 300]
    torch.testing.assert_close(head.tables["alpha_bar"], process.tables["alpha_bar"][head.timesteps])
    assert torch.equal(head.net_time(torch.arange(7)), head.timesteps.float() / 1000)
    assert truncated_chain(process, 3, 50).T == 4  # never more steps than the chain has


@pytest.mark.parametrize("path,closed_form", [
    (OTPath(), lambda s: 1 / (1 + s)),  # (1 - t) / t = sigma
    (OTPath(sigma_min=0.1), lambda s: 1 / (s + 0.9)),  # (1 - 0.9 t) / t = sigma
    (VPPath(), lambda s: 2 / math.pi * math.atan(1 / s)),  # cot(pi t / 2) = sigma
])
@pytest.mark.parametrize("sigma", [0.2, 0.3, 2.0])
def test_matching_time_puts_the_noisy_input_on_the_probability_path(path, closed_form, sigma):
    t = match_time(path, sigma)
    assert t == pytest.approx(closed_form(sigma), abs=1e-9)
    tt = torch.tensor([t], dtype=F64)
    assert float(path.sigma(tt) / path.alpha(tt)) == pytest.approx(sigma, rel=1e-7)
    # x_t = alpha_t (x_1 + sigma eps) is exactly the path's point alpha_t x_1 + sigma_t x_0 with x_0 = eps
    x1, eps = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    torch.testing.assert_close(path.alpha(tt) * (x1 + sigma * eps), path.x_t(eps, x1, tt))


@pytest.mark.parametrize("path", [OTPath(), OTPath(sigma_min=0.1), VPPath()])
def test_flow_posterior_mean_inverts_the_velocity_of_gaussian_data(path):
    # data x_1 ~ N(m, s^2), x_t = a x_1 + b x_0: E[x_1 | x_t] = m + a s^2 / V (x_t - a m), E[x_0 | x_t] =
    # b / V (x_t - a m) with V = a^2 s^2 + b^2, and the marginal velocity is a' E[x_1 | x_t] + b' E[x_0 | x_t]
    m, s, t = 0.4, 0.7, 0.6
    tt = torch.tensor([t], dtype=F64)
    a, b, da, db = (float(f(tt)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    x_t = torch.linspace(-2, 2, 9, dtype=F64)
    var = a * a * s * s + b * b
    e1, e0 = m + a * s * s / var * (x_t - a * m), b / var * (x_t - a * m)
    torch.testing.assert_close(posterior_mean(path, x_t, da * e1 + db * e0, t), e1)


def test_matching_time_refuses_noise_below_the_paths_floor():
    with pytest.raises(TaskError, match="use a larger sigma"):
        match_time(OTPath(sigma_min=0.1), 0.05)


# -- end to end -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,method", [("task_ddpm", "ddim"), ("task_ddpm", "mean"), ("task_fm", "ode"),
                                         ("task_fm", "mean")])
@pytest.mark.slow
def test_denoising_raises_the_psnr_of_noisy_digits(trained_run, tmp_path, capsys, name, method):
    ckpt, sigma = checkpoint(trained_run, name), 0.3
    assert main(["denoise", f"ckpt={ckpt}", f"out={tmp_path}", "n=100", f"sigma={sigma}", f"method={method}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "denoise.json").read_text())
    m = report["metrics"]
    saved = torch.load(tmp_path / "denoise.pt")
    clean, denoised = saved["clean"], saved["denoised"]
    assert clean.shape == denoised.shape == (100, 1, 8, 8) and denoised.dtype == torch.uint8
    mse = ((denoised.double() - clean.double()) / 16).pow(2).mean().item()
    assert m["denoised"]["psnr"] == pytest.approx(10 * math.log10(1 / mse))
    # the raw noise is sigma/2 in [0, 1] (times L/(L-1) = 17/16 for flow matching's bins of width 2/L)
    stretch = 1.0 if name == "task_ddpm" else 17 / 16
    assert m["noisy"]["psnr"] == pytest.approx(10 * math.log10(4 / (sigma * stretch) ** 2), abs=0.3)
    assert m["denoised"]["psnr"] > m["noisy"]["psnr"] + 2, printed
    assert m["denoised"]["psnr"] > m["noisy_quantized"]["psnr"], printed  # more than clipping and rounding
    assert (tmp_path / "denoise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "denoised" in (tmp_path / "denoise.md").read_text()


def test_ancestral_denoising_draws_a_posterior_sample_and_still_beats_the_noisy_input(trained_run, tmp_path):
    ckpt = checkpoint(trained_run, "task_ddpm")
    psnrs = {}
    for method in ("ddpm", "mean"):
        assert main(["denoise", f"ckpt={ckpt}", f"out={tmp_path / method}", "n=100", "sigma=0.3",
                     f"method={method}"]) == 0
        psnrs[method] = json.loads((tmp_path / method / "denoise.json").read_text())["metrics"]
    assert psnrs["ddpm"]["denoised"]["psnr"] > psnrs["ddpm"]["noisy"]["psnr"]
    # a posterior sample has about twice the error of the posterior mean (the least-squares estimate)
    assert psnrs["ddpm"]["denoised"]["mse"] > 1.3 * psnrs["mean"]["denoised"]["mse"]


def test_ddim_denoising_is_reproducible_from_the_seed(trained_run, tmp_path):
    ckpt = checkpoint(trained_run, "task_ddpm")
    outs = []
    for run in ("a", "b"):
        assert main(["denoise", f"ckpt={ckpt}", f"out={tmp_path / run}", "n=10", "steps=5"]) == 0
        outs.append(torch.load(tmp_path / run / "denoise.pt")["denoised"])
        assert json.loads((tmp_path / run / "denoise.json").read_text())["start"]["steps"] == 5
    assert torch.equal(*outs)


def test_other_families_and_methods_are_refused_with_the_fix(trained_run, tmp_path, capsys):
    assert main(["denoise", f"ckpt={checkpoint(trained_run, 'task_glow')}", f"out={tmp_path}", "n=4"]) == 2
    err = capsys.readouterr().err
    assert "not available for the flow family" in err and "diffusion, flow_matching" in err
    assert main(["denoise", f"ckpt={checkpoint(trained_run, 'task_ddpm')}", f"out={tmp_path}", "n=4",
                 "method=ode"]) == 2
    assert "choose one of ddim, ddpm" in capsys.readouterr().err
