"""Flow matching maths against closed forms (paths, change of variables with a linear field,
Hutchinson vs exact traces), recovery of a Gaussian target, the entropy floor on toy data, NFE
counting, minibatch OT pairing and config plumbing."""

import itertools
import math
from functools import partial

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from torch import Tensor, nn

from genlab.builders import build_family, load_run
from genlab.data.base import DataInfo
from genlab.families.flow_matching import (
    ConditionalFlowMatching, CountedVelocity, ExactDivergence, FlowMatching, HutchinsonDivergence,
    MinibatchOTCoupling, ODELikelihood, ODESolver, OTPath, VPPath,
)
from genlab.nets.unet import TimeMLP, UNet
from genlab.train import run

PATHS = {  # name -> (path, alpha(t), sigma(t), alpha'(t), sigma'(t))
    "ot": (OTPath(), lambda t: t, lambda t: 1 - t, lambda t: 1.0, lambda t: -1.0),
    "ot_sigma_min": (OTPath(0.1), lambda t: t, lambda t: 1 - 0.9 * t, lambda t: 1.0, lambda t: -0.9),
    "vp": (VPPath(), lambda t: math.sin(math.pi * t / 2), lambda t: math.cos(math.pi * t / 2),
           lambda t: math.pi / 2 * math.cos(math.pi * t / 2), lambda t: -math.pi / 2 * math.sin(math.pi * t / 2)),
}


class Linear(nn.Module):
    """The velocity field ``v(x, t) = A x`` on vectors ``(B, D)``."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x @ self.a.T


def _linear_family(a: Tensor) -> tuple[FlowMatching, nn.ModuleDict]:
    fam = FlowMatching(lambda shape, out_mult: Linear(a.clone()))
    return fam, fam.build(DataInfo("vec", "points", (a.shape[0],), 256))


def _gaussian_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z * z + math.log(2 * math.pi)).sum(-1)


# -- probability paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)], ids=["vector", "image"])
@pytest.mark.parametrize("name", list(PATHS))
def test_path_x_t_and_u_t_match_their_closed_forms_and_u_t_is_d_dt_x_t(name, shape):
    path, alpha, sigma, d_alpha, d_sigma = PATHS[name]
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(6, *shape, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.rand(6, generator=g, dtype=torch.float64)
    s = path.sample(x0, x1, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(s.x_t[i], alpha(ti) * x1[i] + sigma(ti) * x0[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.u_t[i], d_alpha(ti) * x1[i] + d_sigma(ti) * x0[i], rtol=1e-12, atol=1e-12)
    _, dx_dt = torch.func.jvp(lambda tt: path.x_t(x0, x1, tt), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(dx_dt, s.u_t, rtol=1e-12, atol=1e-12)
    ends = path.x_t(x0, x1, torch.zeros(6, dtype=torch.float64)), path.x_t(x0, x1, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(ends[0], x0)  # pure noise at t = 0
    torch.testing.assert_close(ends[1], x1 + getattr(path, "sigma_min", 0.0) * x0, rtol=1e-12, atol=1e-12)


def test_vp_path_preserves_variance():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(VPPath().alpha(t) ** 2 + VPPath().sigma(t) ** 2, torch.ones_like(t))


# -- change of variables with a linear field ---------------------------------------------------------
def test_log_density_of_a_linear_field_matches_the_matrix_exponential():
    # dx/dt = A x carries x_0 to x_1 = e^A x_0, so log p_1(x) = log N(e^{-A} x) - tr(A).
    torch.manual_seed(0)
    a = 0.5 * torch.randn(3, 3, dtype=torch.float64)
    fam, nets = _linear_family(a)
    y = torch.randn(8, 3, dtype=torch.float64)
    expected = _gaussian_log_prob(y @ torch.linalg.matrix_exp(-a).T) - torch.trace(a)
    exact = ODELikelihood(ODESolver("dopri5", rtol=1e-10, atol=1e-10), exact_max_dims=16)
    log_p, kind, nfe = fam.log_density(nets, y, exact)
    assert kind == "exact" and nfe > 0
    torch.testing.assert_close(log_p, expected, rtol=1e-7, atol=1e-7)
    rk4 = ODELikelihood(ODESolver("rk4", steps=20), exact_max_dims=16)
    torch.testing.assert_close(fam.log_density(nets, y, rk4)[0], expected, rtol=1e-5, atol=1e-5)
    # Hutchinson with a constant Jacobian: the estimate is eps^T A eps for fixed probes; unbiased on average
    hutch = ODELikelihood(ODESolver("rk4", steps=4), exact_max_dims=0, hutchinson=HutchinsonDivergence(probes=2000))
    log_p_h, kind_h, _ = fam.log_density(nets, y, hutch)
    assert kind_h == "estimate"
    assert (log_p_h - expected).abs().max() < 0.15


def _nonlinear_velocity(d: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, d)).double()


def test_exact_divergence_is_the_trace_of_the_autograd_jacobian():
    net = _nonlinear_velocity(5)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    div = ExactDivergence(chunk=2)(net(x), x)  # chunks of 2 over 5 dims: also the ragged last chunk
    jac = torch.stack([torch.autograd.functional.jacobian(net, x[i]) for i in range(4)])
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_mean_matches_the_exact_divergence_within_its_standard_error(noise):
    torch.manual_seed(0)
    net = _nonlinear_velocity(6)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    v = net(x)
    hutch = HutchinsonDivergence(probes=4000, noise=noise)
    per_probe = hutch.per_probe(v, x, hutch.draw(x))  # (k, B)
    exact = ExactDivergence()(v, x)
    stderr = per_probe.std(0) / math.sqrt(per_probe.shape[0])
    assert ((per_probe.mean(0) - exact).abs() <= 4 * stderr + 1e-12).all()
    assert (stderr > 0).all()  # a genuinely stochastic estimate (off-diagonal Jacobian terms)


# -- discrete likelihoods and their kinds -------------------------------------------------------------
def test_discrete_log_likelihood_adds_the_bin_width_and_is_labelled_by_its_divergence():
    torch.manual_seed(0)
    a = 0.3 * torch.randn(2, 2, dtype=torch.float64)
    fam, nets = _linear_family(a)
    x = torch.randint(0, 256, (5, 2), dtype=torch.uint8)
    exact = ODELikelihood(ODESolver("dopri5", rtol=1e-9, atol=1e-9), exact_max_dims=2)
    torch.manual_seed(1)
    ll = fam.log_likelihood(nets, {"x": x}, likelihood=exact)
    torch.manual_seed(1)
    y = fam.dequantize(nets, x)  # the same dequantisation draw
    expected = _gaussian_log_prob(y @ torch.linalg.matrix_exp(-a).T) - torch.trace(a) + 2 * math.log(2 / 256)
    assert ll.kind == "bound" and (ll.extras["nfe"] > 0).all()
    torch.testing.assert_close(ll.log_px, expected, rtol=1e-6, atol=1e-6)
    hutch = ODELikelihood(ODESolver("euler", steps=3), exact_max_dims=1)
    val = fam.log_likelihood(nets, {"x": x}, stage="val", likelihood=hutch)
    assert val.kind == "estimate"
    assert (val.extras["nfe"] == 3).all()


# -- training recovers a Gaussian ---------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2])
def test_flow_matching_carries_noise_to_a_gaussian_target(dim):
    torch.manual_seed(0)
    mean = torch.tensor([0.8, -0.4][:dim])
    chol = torch.tensor([[0.6, 0.0], [0.3, 0.4]])[:dim, :dim]
    fam = FlowMatching(partial(TimeMLP, hidden=64, layers=2, time_dim=16), solver=ODESolver("midpoint", steps=20))
    nets = fam.build(DataInfo("gauss", "points", (dim,), 256))
    opt = torch.optim.Adam(nets.parameters(), lr=3e-3)
    for _ in range(300):
        x1 = mean + torch.randn(256, dim) @ chol.T
        opt.zero_grad()
        fam.objective(nets["velocity"], x1).loss.backward()
        opt.step()
    out = fam.generate(nets, 4000)
    y = out.y
    assert out.nfe == 40
    torch.testing.assert_close(y.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(y.T).reshape(dim, dim), chol @ chol.T, atol=0.06, rtol=0)


# -- toy data: never below the true entropy ------------------------------------------------------------
@pytest.mark.slow
def test_toy_nll_never_beats_the_true_entropy(make_cfg):
    results = run(make_cfg(
        "model=flow_matching_mlp", "dataset=toy", "trainer.max_epochs=12", "trainer.check_val_every_n_epoch=12",
        "trainer.limit_val_batches=1", "num_samples=4", "callbacks.samples.every_n_epochs=100",
        "callbacks.ema.decay=0.9", "model.net.hidden=96", "model.net.layers=2", "optimizer.lr=3e-3",
        "model.test_likelihood.solver.method=midpoint", "model.test_likelihood.solver.steps=8",
    ))
    entropy, uniform = results["data"]["entropy_bpd"], results["data"]["uniform_bpd"]
    assert results["family"] == "flow_matching" and results["test"]["nll_kind"] == "bound"  # exact divergence
    # Monte-Carlo slack of a 500-example mean is ~0.01 bits/dim; the bound is far above it anyway
    for split in ("val", "test"):
        assert entropy - 0.02 <= results[split]["nll_bpd"] < uniform
    # the run's test NLL is that of the checkpoint's state_dict (the EMA weights), as load_run rebuilds it
    module, dm = load_run(results["checkpoint"])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[])
    again = trainer.test(module, datamodule=dm, verbose=False)[0]["test/nll_bpd"]
    assert again == pytest.approx(results["test"]["nll_bpd"], abs=1e-4)
    x = module.sample(4, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (4, 1, 8, 8) and int(x.max()) < 4


# -- NFE, coupling, plumbing ---------------------------------------------------------------------------
@pytest.mark.parametrize("method,steps,per_step", [("euler", 7, 1), ("midpoint", 5, 2), ("rk4", 3, 4)])
def test_fixed_grid_solvers_make_the_stated_number_of_function_evaluations(method, steps, per_step):
    fam, nets = _linear_family(-torch.eye(2, dtype=torch.float64))
    x = fam.sample(nets, 3, sampler=ODESolver(method, steps=steps))
    nfe = fam.generate(nets, 3, ODESolver(method, steps=steps)).nfe  # the solve sample() makes, with its NFE
    assert nfe == steps * per_step and x.shape == (3, 2) and x.dtype == torch.uint8
    counted = CountedVelocity(nets["velocity"])
    y1 = ODESolver(method, steps=steps).integrate(counted, torch.ones(1, 2, dtype=torch.float64), 0.0, 1.0)
    assert counted.nfe == steps * per_step
    torch.testing.assert_close(y1, torch.full((1, 2), math.exp(-1), dtype=torch.float64), atol=0.05, rtol=0)


def test_adaptive_solver_counts_its_evaluations_and_meets_its_tolerance():
    fam, nets = _linear_family(-torch.eye(2, dtype=torch.float64))
    counted = CountedVelocity(nets["velocity"])
    y1 = ODESolver("dopri5", rtol=1e-9, atol=1e-9).integrate(counted, torch.ones(1, 2, dtype=torch.float64), 0.0, 1.0)
    torch.testing.assert_close(y1, torch.full((1, 2), math.exp(-1), dtype=torch.float64), atol=1e-8, rtol=0)
    assert counted.nfe > 6 and ODESolver("dopri5").adaptive and not ODESolver("euler").adaptive


def test_minibatch_ot_coupling_is_a_permutation_that_shortens_the_pairs():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g) + 1.0
    p0, p1 = MinibatchOTCoupling()(x0, x1)
    assert torch.equal(p1, x1)
    assert torch.equal(torch.sort(p0, 0).values, torch.sort(x0, 0).values)  # the same noise, reordered
    before, after = (x0 - x1).pow(2).sum(1).mean(), (p0 - x1).pow(2).sum(1).mean()
    assert after < 0.8 * before
    brute = min((x0[list(p)] - x1[:4]).pow(2).sum() for p in itertools.permutations(range(4)))
    q0, _ = MinibatchOTCoupling()(x0[:4], x1[:4])
    torch.testing.assert_close((q0 - x1[:4]).pow(2).sum(), brute)  # exact assignment, not greedy


def test_cfm_loss_is_zero_for_the_true_velocity_of_a_single_point():
    # x1 a fixed point on the OT path: the marginal velocity at (x_t, t) is (x1 - x_t) / (1 - t) = u_t
    x1 = torch.full((32, 3), 0.5, dtype=torch.float64)
    out = ConditionalFlowMatching(OTPath())(lambda x, t: (x1 - x) / (1 - t)[:, None], x1)
    assert float(out.loss) < 1e-20 and set(out.logs) == {"cfm_mse", "target_sq"}


@pytest.mark.parametrize("loss,path", [("cfm", OTPath), ("cfm_vp", VPPath), ("cfm_minibatch_ot", OTPath)])
def test_losses_compose_with_their_paths(loss, path, make_cfg):
    fam = build_family(make_cfg("model=flow_matching", f"loss={loss}"))
    assert isinstance(fam.objective.path, path)
    assert isinstance(fam.objective.coupling, MinibatchOTCoupling) == (loss == "cfm_minibatch_ot")
    assert make_cfg("model=flow_matching").loss.path._target_.endswith("OTPath")  # the model's default loss


@pytest.mark.parametrize("method", ["euler", "midpoint", "dopri5"])
def test_solvers_are_chosen_in_config(method, make_cfg):
    fam = build_family(make_cfg("model=flow_matching_mlp", f"model.solver.method={method}",
                                f"model.test_likelihood.solver.method={method}"))
    assert fam.solver.method == method and fam.likelihoods["test"].solver.method == method


def test_bad_names_and_settings_give_clear_errors(make_cfg):
    with pytest.raises(InstantiationException, match="unknown ODE solver method='rk45'.*dopri5.*euler"):
        build_family(make_cfg("model=flow_matching", "model.solver.method=rk45"))
    with pytest.raises(ValueError, match="unknown Hutchinson noise='uniform'; valid: rademacher, gaussian"):
        HutchinsonDivergence(noise="uniform")
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        ODESolver("euler", steps=0)
    with pytest.raises(ValueError, match=r"sigma_min=1\.0 must be in \[0, 1\)"):
        OTPath(1.0)
    with pytest.raises(TypeError, match="probability path"):
        ConditionalFlowMatching(path="ot")


def test_data_checks_refuse_text_and_points_for_the_unet_and_bad_values():
    unet = FlowMatching(partial(UNet, channels=8, num_res_blocks=1))
    assert "categorical tokens" in unet.check_data(DataInfo("text", "text", (32,), 50))
    assert "flow_matching_mlp" in unet.check_data(DataInfo("mix", "points", (2,), 256))
    assert unet.check_data(DataInfo("toy", "image", (1, 8, 8), 4)) is None
    assert FlowMatching(partial(TimeMLP, hidden=8)).check_data(DataInfo("mix", "points", (2,), 256)) is None
    nets = unet.build(DataInfo("toy", "image", (1, 8, 8), 4))
    good = torch.randint(0, 4, (2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"0\.\.3 .*4 levels.*got values in 0\.\.200"):
        unet.loss(nets, {"x": torch.cat([good, torch.full_like(good[:1], 200)])})
    with pytest.raises(ValueError, match="non-integer"):
        unet.loss(nets, {"x": good.float() + 0.5})
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        unet.log_likelihood(nets, {"x": good[:, :, :4]})
    assert torch.isfinite(unet.loss(nets, {"x": good}).loss)
