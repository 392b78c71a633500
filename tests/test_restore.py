"""``genlab-task restore``: every family's method against the closed-form Gaussian posterior (a prior the
family's own seam makes Gaussian: an exact Gaussian denoiser / velocity, an affine flow, a quadratic
energy, a linear decoder), the noise-free full-rank limit, refusals, and the task and comparison on tiny
trained checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.families.autoregressive import Autoregressive
from genlab.families.base import Nets
from genlab.families.diffusion import Diffusion
from genlab.families.ebm import EBM
from genlab.families.ebm.sampler import Langevin
from genlab.families.flow import Flow
from genlab.families.flow_matching import FlowMatching
from genlab.tasks.base import Unsupported
from genlab.tasks.cli import main
from genlab.tasks.operators import Downsample, Mask, Measurement, Projection
from genlab.tasks.posterior import langevin, latent_energy, latent_map
from genlab.tasks.restore import check_family, compare

INFO = DataInfo("gauss", "image", (1, 2, 2), 256)
MU = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64).view(1, 1, 2, 2)  # prior mean, model scale
L = 256
BINS = (L / (2 * (L - 1)), (L / 2 - 0.5) / (L - 1))  # [-1, 1] bins -> [0, 1] levels: x = a m + b


def opts(**kw):
    base = dict(steps=None, eta=1.0, dps_scale=None, iters=100, step_size=0.1)
    return SimpleNamespace(**{**base, **kw})


def posterior(op, y: Tensor, noise: float, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """The closed-form posterior of ``x ~ N(mean, cov)`` given ``y = A x + noise * eps`` (flat, float64)."""
    a = op.matrix()
    precision = torch.linalg.inv(cov) + a.T @ a / noise**2
    post_cov = torch.linalg.inv(precision)
    return post_cov @ (torch.linalg.solve(cov, mean) + a.T @ y.flatten() / noise**2), post_cov


def measure(op, truth: Tensor, noise: float, n: int) -> Measurement:
    """One noisy measurement of ``truth`` ``(1, ...)`` repeated for ``n`` independent chains."""
    y = Measurement.of(op, truth, noise, torch.Generator().manual_seed(0)).y
    return Measurement(op, y.expand(n, *y.shape[1:]).clone(), noise)


def assert_posterior(draws: Tensor, mean: Tensor, cov: Tensor, mean_tol: float = 0.0, cov_tol: float = 0.1):
    """Sample mean within 4.5 standard errors (plus ``mean_tol``), sample covariance within ``cov_tol`` (relative
    Frobenius) of the closed form."""
    d = draws.flatten(1)
    se = (cov.diagonal() / len(d)).sqrt()
    assert ((d.mean(0) - mean).abs() <= 4.5 * se + mean_tol).all(), (d.mean(0), mean, se)
    if cov_tol is not None:
        rel = torch.linalg.matrix_norm(torch.cov(d.T) - cov) / torch.linalg.matrix_norm(cov)
        assert rel < cov_tol, (torch.cov(d.T), cov)


# -- analytic Gaussian priors through each family's seam --------------------------------------------------------
class GaussianX0(nn.Module):
    """The exact ``E[x0 | x_t]`` of ``x0 ~ N(MU, I)`` on a diffusion chain: ``MU + sqrt(ab) (x_t - sqrt(ab) MU)``."""

    def __init__(self, alpha_bar: Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha_bar", alpha_bar)
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        a = self.alpha_bar[(time * len(self.alpha_bar)).round().long()].sqrt().view(-1, 1, 1, 1)
        return MU + a * (x - a * MU) + 0 * self.p


class GaussianVelocity(nn.Module):
    """The exact velocity of ``x_1 ~ N(MU, I)`` on the straight OT path: ``(E[x_1 | x_t] - x_t) / (1 - t)``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.view(-1, 1, 1, 1)
        x1 = MU + t * (x - t * MU) / (t**2 + (1 - t) ** 2)
        return (x1 - x) / (1 - t).clamp_min(1e-9) + 0 * self.p


def gaussian_diffusion() -> tuple[Diffusion, Nets]:
    fam = Diffusion(net=None, prediction="x0", timesteps=200, clip_denoised=False)
    fam.net_factory = lambda shape, out_mult: GaussianX0(fam.process.tables["alpha_bar"])
    return fam, fam.build(INFO).double()


def gaussian_flow_matching() -> tuple[FlowMatching, Nets]:
    fam = FlowMatching(net=lambda shape, out_mult: GaussianVelocity())
    return fam, fam.build(INFO).double()


DENOISERS = {"diffusion": (gaussian_diffusion, (0.5, 0.5), {"steps": 200, "eta": 0.0}),
             "flow_matching": (gaussian_flow_matching, BINS, {"steps": 100})}


@pytest.mark.parametrize("method", ["pigdm", "projection"])
@pytest.mark.parametrize("family", list(DENOISERS))
def test_denoiser_methods_sample_the_closed_form_posterior(family, method):
    # a unit-variance Gaussian prior is where the Gaussian approximation of p(x0 | x_t) of both methods is exact
    make, (a, b), kw = DENOISERS[family]
    fam, nets = make()
    op, noise = Projection((1, 2, 2), 0.5, seed=1), 0.05
    prior_mean, prior_cov = (a * MU + b).flatten(), a**2 * torch.eye(4, dtype=torch.float64)
    problem = measure(op, a * MU + b + 0.1, noise, 4000)
    torch.manual_seed(0)
    draws = fam.restore(nets, problem, method, opts(**kw))
    assert_posterior(draws, *posterior(op, problem.y[0], noise, prior_mean, prior_cov))


@pytest.mark.parametrize("family", list(DENOISERS))
def test_dps_recovers_the_posterior_mean_where_the_noise_dominates(family):
    # DPS's p(y | x_t) ~ N(A x0_hat, sigma^2 I) drops Var[x0 | x_t]: close where sigma^2 >> Var[x0 | x_t]
    make, (a, b), kw = DENOISERS[family]
    fam, nets = make()
    op, noise = Projection((1, 2, 2), 0.5, seed=1), 1.0
    problem = measure(op, a * MU + b + 0.1, noise, 3000)
    torch.manual_seed(0)
    draws = fam.restore(nets, problem, "dps", opts(**kw))
    mean, cov = posterior(op, problem.y[0], noise, (a * MU + b).flatten(), a**2 * torch.eye(4, dtype=torch.float64))
    assert_posterior(draws, mean, cov, mean_tol=0.02, cov_tol=None)


class AffineFlow(nn.Module):
    """``y = m + L z`` on a ``(1, 2, 2)`` image: the flow's contract (forward -> latents and log-det, inverse)."""

    def __init__(self, m: Tensor, lower: Tensor) -> None:
        super().__init__()
        self.m, self.lower = nn.Parameter(m), nn.Parameter(lower)
        self.latent_shapes = [(4,)]

    def forward(self, y: Tensor):
        z = torch.linalg.solve_triangular(self.lower, (y.flatten(1) - self.m).T, upper=False).T
        return [z], -self.lower.diagonal().abs().log().sum().expand(len(y))

    def inverse(self, zs):
        return (self.m + zs[0] @ self.lower.T).view(-1, 1, 2, 2)


def affine_flow() -> tuple[Flow, Nets, Tensor, Tensor]:
    m = torch.tensor([0.4, 0.5, 0.6, 0.45], dtype=torch.float64)
    lower = torch.tensor([[0.2, 0, 0, 0], [0.1, 0.15, 0, 0], [0.0, 0.05, 0.2, 0], [0.05, 0.0, 0.1, 0.1]],
                         dtype=torch.float64)
    fam = Flow(coupling_net=None)
    nets = Nets(INFO, {"flow": AffineFlow(m, lower)})
    s, t = L / (L - 1), -0.5 / (L - 1)  # [0, 1] bins -> levels
    return fam, nets, s * m + t, s**2 * lower @ lower.T


def test_flow_latent_map_is_the_posterior_mean_and_langevin_its_law():
    fam, nets, prior_mean, prior_cov = affine_flow()
    op, noise = Projection((1, 2, 2), 0.5, seed=2), 0.05
    problem = measure(op, prior_mean.view(1, 1, 2, 2) + 0.05, noise, 2000)
    mean, cov = posterior(op, problem.y[0], noise, prior_mean, prior_cov)
    est = fam.restore(nets, problem.rows(slice(0, 2)), "map", opts())
    assert torch.allclose(est.flatten(1), mean.expand(2, -1), atol=1e-6)  # Gaussian: the mode is the mean
    torch.manual_seed(0)
    draws = fam.restore(nets, problem, "langevin", opts(steps=4000, step_size=1.0))
    assert_posterior(draws, mean, cov, cov_tol=0.12)


def test_latent_map_and_langevin_with_a_linear_decoder_give_the_posterior():
    # the VAE's method: G(z) = decoder mean, here linear, z ~ N(0, I)
    w = torch.tensor([[0.5, 0.1], [0.0, 0.4], [0.2, -0.3], [0.1, 0.1]], dtype=torch.float64)
    c = torch.tensor([0.5, 0.4, 0.6, 0.5], dtype=torch.float64)
    op, noise = Downsample((1, 2, 2), 1), 0.1
    problem = measure(op, (c + 0.1).view(1, 1, 2, 2), noise, 3000)
    decode, prior_nll = (lambda z: (c + z @ w.T).view(-1, 1, 2, 2)), (lambda z: 0.5 * z.pow(2).sum(1))
    zc = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / noise**2)  # z's posterior covariance
    zm = zc @ w.T @ (problem.y[0].flatten() - c) / noise**2
    z_map = latent_map(latent_energy(problem.rows(slice(0, 4)), decode, prior_nll), torch.zeros(4, 2, dtype=torch.float64),
                       50)
    assert torch.allclose(z_map, zm.expand(4, -1), atol=1e-7)
    torch.manual_seed(0)
    z = langevin(latent_energy(problem, decode, prior_nll), torch.zeros(3000, 2, dtype=torch.float64), 800, 0.002)
    assert_posterior(z, zm, zc, cov_tol=0.1)


class Quadratic(nn.Module):
    """``E(v) = ||v - MU / 2||^2 / (2 s^2)``, ``s = 1/2``: the energy of ``N(MU / 2, I / 4)`` in the EBM's scale."""

    def __init__(self, in_dim, out_dim) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, v: Tensor) -> Tensor:
        return 2.0 * (v - MU / 2 + self.p).flatten(1).pow(2).sum(1, keepdim=True)


def test_ebm_langevin_samples_the_closed_form_posterior():
    fam = EBM(energy_net=Quadratic, sampler=Langevin(step_size=0.002, noise_std=None, bounds=None), buffer_size=4)
    nets = fam.build(INFO).double()
    a, b = BINS
    op, noise = Projection((1, 2, 2), 0.5, seed=1), 0.1
    prior_mean, prior_cov = (a * MU / 2 + b).flatten(), a**2 / 4 * torch.eye(4, dtype=torch.float64)
    problem = measure(op, prior_mean.view(1, 1, 2, 2) - 0.1, noise, 3000)
    torch.manual_seed(0)
    draws = fam.restore(nets, problem, "langevin", opts(steps=1500))
    assert_posterior(draws, *posterior(op, problem.y[0], noise, prior_mean, prior_cov))


# -- the noise-free, full-rank limit ------------------------------------------------------------------------------
def noise_free_cases():
    fam_d, nets_d = gaussian_diffusion()
    fam_f, nets_f = gaussian_flow_matching()
    fam_fl, nets_fl, _, _ = affine_flow()
    ebm = EBM(energy_net=Quadratic, sampler=Langevin(step_size=0.01, noise_std=None, bounds=None), buffer_size=4)
    yield from [("diffusion", fam_d, nets_d, m, {"steps": 50}) for m in ("pigdm", "projection")]
    yield from [("flow_matching", fam_f, nets_f, m, {"steps": 20}) for m in ("pigdm", "projection")]
    yield from [("flow", fam_fl, nets_fl, m, {"steps": 200, "step_size": 0.01}) for m in ("map", "langevin")]
    yield "ebm", ebm, ebm.build(INFO).double(), "langevin", {"steps": 200}


@pytest.mark.parametrize("case", list(noise_free_cases()), ids=lambda c: f"{c[0]}-{c[3]}")
def test_noise_free_full_rank_measurements_return_the_image(case):
    _, fam, nets, method, kw = case
    op = Projection((1, 2, 2), 1.0, seed=5)  # square Gaussian: invertible
    x = torch.tensor([0.2, 0.7, 0.45, 0.6], dtype=torch.float64).view(1, 1, 2, 2).expand(3, -1, -1, -1)
    torch.manual_seed(0)
    est = fam.restore(nets, Measurement.of(op, x, 0.0), method, opts(**kw))
    assert (est - x).abs().max() < 5e-3, (est - x).abs().max()


# -- autoregressive: the exact conditional, masks only -----------------------------------------------------------
class TableNet(nn.Module):
    """A 2x1 image of 3 levels with the joint ``P(a, b)``: logits of ``P(a)`` and ``P(b | a)`` in raster order."""

    def __init__(self, shape, levels, num_params, joint: Tensor) -> None:
        from genlab.nets.ar import ARNet

        super().__init__()
        self.inner = ARNet(shape, levels, num_params)
        self.inner.forward = self.forward
        self.register_buffer("joint", joint)
        self.dummy = nn.Parameter(torch.zeros(()))


def table_autoregressive(joint: Tensor):
    from genlab.nets.ar import ARNet

    class Net(ARNet):
        def __init__(self, shape, levels, num_params) -> None:
            super().__init__(shape, levels, num_params)
            self.register_buffer("joint", joint)
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x: Tensor) -> Tensor:
            a = x.reshape(len(x), -1)[:, 0].long()
            top = self.joint.sum(1).log().expand(len(x), -1)
            bottom = (self.joint[a] / self.joint[a].sum(1, keepdim=True)).log()
            return torch.stack([top, bottom], dim=-1)

    fam = Autoregressive(net=Net)
    return fam, fam.build(DataInfo("table", "image", (1, 2, 1), 3))


def test_autoregressive_restores_masks_by_the_exact_conditional_and_refuses_other_operators():
    joint = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.08, 0.20], [0.10, 0.10, 0.10]])
    fam, nets = table_autoregressive(joint)
    n = 20000
    x = torch.full((n, 1, 2, 1), 1.0)  # a = 2 (unit 1.0); b missing
    missing = torch.zeros(n, 1, 2, 1, dtype=torch.bool)
    missing[:, :, 1] = True
    torch.manual_seed(0)
    est = fam.restore(nets, Measurement.of(Mask(missing), x, 0.0), "conditional", None)
    assert torch.equal(est[:, :, 0], x[:, :, 0])
    freq = torch.bincount((est[:, 0, 1, 0] * 2).round().long(), minlength=3).double() / n
    assert (freq - (joint[2] / joint[2].sum()).double()).abs().max() < 0.015
    full = Mask(torch.zeros(2, 1, 2, 1, dtype=torch.bool))
    x2 = torch.tensor([0.0, 0.5, 1.0, 0.0]).view(2, 1, 2, 1)
    assert torch.equal(fam.restore(nets, Measurement.of(full, x2, 0.0), "conditional", None), x2)
    ctx = SimpleNamespace(family=fam, info=nets.info)
    with pytest.raises(Unsupported, match=r"autoregressive family: it restores only under operator=mask.*"
                                          r"operator=blur: vae, flow, diffusion, flow_matching, ebm"):
        check_family(ctx, SimpleNamespace(operator="blur", method=None))


# -- the task, on tiny trained checkpoints ----------------------------------------------------------------------------
FAST = ["dataset=digits", "callbacks.samples.every_n_epochs=1000", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def tiny_vae(trained_run):
    return trained_run("restore_vae", "model=vae", "model.encoder.hidden=[64]", "model.decoder.hidden=[64]",
                       "model.latent_dim=8", "model.test_k=2", "trainer.max_steps=60", "optimizer.lr=3e-3", *FAST)


def test_restore_task_writes_metrics_baselines_and_png(tiny_vae, tmp_path, capsys):
    out = tmp_path / "restore"
    args = ["restore", f"ckpt={tiny_vae['checkpoint']}", f"out={out}", "n=24", "operator=downsample", "factor=2",
            "noise=0.05", "iters=30", "show=6"]
    assert main(args) == 0
    report = json.loads((out / "restore.json").read_text())
    assert report["family"] == "vae" and report["method"] == "map" and report["draws"] == 1
    m, base = report["metrics"], report["baselines"]
    for scores in (m, base["pseudo_inverse"], base["tikhonov"]):
        assert 5 < scores["psnr"] < 60 and 0 < scores["ssim"] <= 1 and scores["consistency"] >= 0
    assert base["tikhonov"]["psnr"] >= base["pseudo_inverse"]["psnr"] - 0.5  # the oracle grid starts near A^+
    assert m["noise_norm"] == pytest.approx(0.05 * 4)  # sqrt of the 16 measurements of an 8x8 digit
    assert (out / "restore.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| tikhonov (lam" in (out / "restore.md").read_text()
    assert "restore: vae by map" in capsys.readouterr().out
    assert main([*args, "operator=downsample", "factor=3"]) == 2
    assert "factor=3 must be a positive integer that divides the image size 8x8" in capsys.readouterr().err


def test_help_lists_operators_methods_and_families(capsys):
    assert main(["restore", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("mask, downsample, blur, fourier or projection", "diffusion (pigdm/dps/projection)",
                 "autoregressive (conditional; mask only)", "flow (map/langevin)", "ebm (langevin)"):
        assert word in out


def test_compare_writes_one_table_and_montage_and_refuses_by_name(tiny_vae, trained_run, tmp_path):
    gan = trained_run("restore_gan", "model=gan_mlp", "model.generator.hidden=[16]",
                      "model.discriminator.hidden=[16]", "trainer.max_steps=2", *FAST)
    run_dir = str(Path(tiny_vae["checkpoint"]).parent.parent)  # a run dir (results.json) and a .ckpt
    summary = compare([run_dir, gan["checkpoint"]], [["operator=blur", "sigma=1.0"], ["operator=mask"]],
                      ["n=8", "iters=10", "show=4"], tmp_path)
    rows = summary["rows"]
    assert [r.get("family") for r in rows] == ["vae", "vae", None, None]
    assert "task 'restore' is not available for the gan family" in rows[2]["refused"]
    assert "It works with: autoregressive (conditional; mask only), vae" in rows[2]["refused"]
    table = (tmp_path / "restore_compare.md").read_text()
    assert "| blur_1.0 | vae | map |" in table and "| mask | *tikhonov* |" in table
    assert (tmp_path / "restore_compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_genlab_task_restore_over_several_runs_writes_the_table(tiny_vae, trained_run, tmp_path, capsys):
    from genlab.tasks.cli import main

    gan = trained_run("restore_gan", "model=gan_mlp", "model.generator.hidden=[16]",
                      "model.discriminator.hidden=[16]", "trainer.max_steps=2", *FAST)
    run_dir = str(Path(tiny_vae["checkpoint"]).parent.parent)
    out = tmp_path / "many"
    assert main(["restore", f"ckpt={run_dir},{gan['checkpoint']}", "operator=blur", "sigma=1.0", "n=8", "iters=10",
                 "show=4", f"out={out}"]) == 0
    assert "1 runs restored (1 refused) under operator=blur" in capsys.readouterr().out
    assert "| blur | vae | map |" in (out / "restore_compare.md").read_text()
    assert main(["restore", f"ckpt={run_dir},{gan['checkpoint']}", "operator=nope"]) == 2  # options checked first


def test_a_sweeps_runs_leave_out_the_first_stages_inside_two_stage_runs(tmp_path):
    from genlab.runs import sweep_results

    for d in ("0_vae", "1_two_stage", "1_two_stage/stage1", "2_pending/stage1"):  # 2_pending: no results of its own
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / "results.json").write_text("{}")
    found = [p.parent.relative_to(tmp_path).as_posix() for p in sweep_results(tmp_path)]
    assert found == ["0_vae", "1_two_stage", "2_pending/stage1"]


@pytest.mark.parametrize("family", list(DENOISERS))
def test_dps_algorithm_1_steps_pull_the_samples_to_the_measurements(family):
    """Chung et al.'s Algorithm 1 (dps_scale = zeta): no closed form to meet (it is not an exact posterior
    sampler, and with no noise it does not return x exactly), but its steps must make the draws consistent
    with y: the residual falls far below that of the unguided draws (zeta = 0) from the same noise."""
    make, (a, b), kw = DENOISERS[family]
    fam, nets = make()
    op = Projection((1, 2, 2), 0.5, seed=1)
    problem = measure(op, a * MU + b + 0.1, 0.01, 500)
    residual = {}
    for zeta in (0.0, 0.3):
        torch.manual_seed(0)
        draws = fam.restore(nets, problem, "dps", opts(**kw, dps_scale=zeta))
        residual[zeta] = float(problem.residual(draws).flatten(1).norm(dim=1).mean())
    assert residual[0.3] < 0.25 * residual[0.0], residual
