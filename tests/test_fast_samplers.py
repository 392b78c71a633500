"""The fast diffusion samplers (DPM-Solver++(2M), EDM's Heun) against closed forms, with the exact
denoiser of data whose posterior mean is known (float64, a few seconds):

* two-point data ``x0 = +-c``: the probability-flow map of 1-D data is monotone, so it sends ``x_T``
  above the ``1 - w`` quantile of the chain's marginal to ``+c`` and the rest to ``-c`` — samples
  are compared with that map on the same ``x_T`` (no sampling error);
* Gaussian data ``N(mu, s^2 I)``: in EDM's ``x = x_VP sqrt(1 + sigma^2)`` the flow is
  ``x(sigma) - mu ∝ sqrt(s^2 + sigma^2)`` and ``D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``, so
  the sampled map ``x_T -> x0`` is affine in closed form, and the solvers' orders are measured on it.
"""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from genlab.builders import build_family
from genlab.data.base import DataInfo
from genlab.data.scaling import GridScale
from genlab.families.diffusion import (
    DDIM, Diffusion, DiffusionModel, DPMSolver, EpsPrediction, GaussianDiffusion, GuideNet, Heun, Sampler,
)
from genlab.families.diffusion.samplers import SAMPLERS, edm_sigmas, karras_levels
from genlab.families.diffusion.schedules import LinearSchedule

F64 = torch.float64
PROCESS = GaussianDiffusion(LinearSchedule().betas(1000))  # the default chain (configs/model/ddpm.yaml)
MU, S = torch.tensor([0.3, -0.2], dtype=F64), 1.0
C, W = 0.8, 0.3  # two-point data: P(x0 = +C) = W


class Counted(nn.Module):
    """Base of the exact nets: a float64 anchor (the samplers' dtype) and a call counter."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor, self.calls = nn.Parameter(torch.zeros((), dtype=F64)), 0

    def alpha_bar(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ab = PROCESS.tables["alpha_bar"].to(x)
        return ab[(t.double() * len(ab)).round().long()].view(-1, *([1] * (x.ndim - 1)))


class GaussianEps(Counted):
    """``E[eps | x_t]`` for ``x0 ~ N(mu, s^2 I)``: ``sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)``."""

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(x, t)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


class TwoPointEps(Counted):
    """``E[eps | x_t]`` for ``x0 = +-c``, ``P(+c) = w``: ``E[x0 | x_t] = c tanh(logit / 2)``."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(x, t)
        logit = 2 * ab.sqrt() * C * x / (1 - ab) + math.log(W / (1 - W))
        return (x - ab.sqrt() * C * torch.tanh(logit / 2)) / (1 - ab).sqrt()


class GuidedEps(Counted):
    """The autoguided prediction ``guide + w (net - guide)`` as one net."""

    def __init__(self, net: nn.Module, guide: nn.Module, weight: float) -> None:
        super().__init__()
        self.net, self.guide, self.weight = net, guide, weight

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.lerp(self.guide(x, t), self.net(x, t), self.weight)


def _model(net: nn.Module, shape: tuple[int, ...] = (2,), guide: nn.Module | None = None,
           clip: bool = False) -> DiffusionModel:
    ready = None
    if guide is not None:
        ready = GuideNet(guide)
        ready.taken_at.fill_(0.0)
    return DiffusionModel(net, PROCESS, EpsPrediction(), shape, GridScale(256), clip_denoised=clip, guide=ready)


def _start(sampler: Sampler) -> int:
    """The step whose state ``x_T`` is: EDM's first level for Heun, ``T - 1`` for the others."""
    return sampler.levels(PROCESS)[0] if isinstance(sampler, Heun) else PROCESS.T - 1


def gaussian_flow(x_T: torch.Tensor, start: int) -> torch.Tensor:
    """The exact map: ``x_T`` at step ``start`` along the flow to step 0, then ``D(.; sigma_0)``."""
    sig = edm_sigmas(PROCESS)
    lo, hi = float(sig[0]), float(sig[start])
    return MU + S**2 / math.sqrt((S**2 + lo**2) * (S**2 + hi**2)) * (x_T * math.sqrt(1 + hi**2) - MU)


def two_point_flow(x_T: torch.Tensor, start: int) -> torch.Tensor:
    """The exact (monotone) map of two-point data: ``+C`` above the ``1 - W`` quantile ``z`` of the
    marginal at step ``start``, ``W N(a C, v) + (1 - W) N(-a C, v)``; ``z`` by bisection."""
    ab = float(PROCESS.tables["alpha_bar"][start])
    a, sd = math.sqrt(ab), math.sqrt(1 - ab)

    def cdf(z: torch.Tensor) -> torch.Tensor:
        return W * torch.special.ndtr((z - a * C) / sd) + (1 - W) * torch.special.ndtr((z + a * C) / sd)

    lo, hi = torch.tensor(-6.0, dtype=F64), torch.tensor(6.0, dtype=F64)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 1 - W else (lo, mid)
    return torch.where(x_T > lo, C, -C)


# -- (a) the sample distribution ------------------------------------------------------------------------
def test_dpm_solver_20_and_heun_10_match_the_exact_flow_of_two_point_data_and_beat_ddim_20():
    x_T = torch.randn(20000, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    model, err = _model(TwoPointEps(), shape=(1,)), {}
    for name, sampler in {"dpm": DPMSolver(steps=20), "heun": Heun(steps=10), "ddim": DDIM(steps=20)}.items():
        y, exact = sampler(model, len(x_T), x_T=x_T), two_point_flow(x_T, _start(sampler))
        err[name] = max(abs(float(y.mean() - exact.mean())), abs(float(y.var() - exact.var())))
        if name != "ddim":
            assert err[name] < 3e-3, (name, err[name])
            assert abs(float(y.mean()) - C * (2 * W - 1)) < 4 * C / math.sqrt(len(y))  # the population, 4 SE
            assert float(((y.abs() - C).abs() < 0.02).double().mean()) > 0.99  # on the two points
    assert err["ddim"] >= max(err["dpm"], err["heun"]), err


# -- (b) the probability-flow map and the order of convergence ----------------------------------------------
def _errors(make, steps: list[int]) -> list[float]:
    x_T = torch.randn(256, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    model, out = _model(GaussianEps(MU, S)), []
    for n in steps:
        sampler = make(n)
        out.append(float((sampler(model, len(x_T), x_T=x_T) - gaussian_flow(x_T, _start(sampler))).abs().max()))
    return out


@pytest.mark.parametrize("make, steps", [
    (lambda n: DPMSolver(steps=n, lower_order_final=False), [20, 40, 80]),  # the plain 2M steps
    (lambda n: DPMSolver(steps=n), [80, 160, 320]),  # the default (first-order step onto step 0)
    (lambda n: Heun(steps=n), [10, 20, 40]),
], ids=["dpmpp_2m", "dpmpp_2m_lower_order_final", "heun"])
def test_the_fast_samplers_converge_to_the_exact_flow_map_at_second_order(make, steps):
    err = _errors(make, steps)
    ratios = [a / b for a, b in zip(err, err[1:])]
    assert all(r > 2.5 for r in ratios), (err, ratios)


def test_ddim_converges_at_first_order_and_is_less_accurate_per_evaluation():
    err = _errors(lambda n: DDIM(steps=n), [20, 40, 80])
    assert all(1.7 < a / b < 2.3 for a, b in zip(err, err[1:])), err
    for n, e in zip([20, 40, 80], err):
        assert _errors(lambda k: DPMSolver(steps=k), [n])[0] < e
    assert _errors(lambda k: Heun(steps=k), [21])[0] < err[1]  # 41 NFE against DDIM's 40


def test_the_first_step_is_ddim_and_the_network_evaluations_are_as_documented():
    x_T = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    net = GaussianEps(MU, S)
    model = _model(net)
    for steps in (1, 2):  # one first-order step (DDIM's), then x0_hat at step 0
        torch.testing.assert_close(DPMSolver(steps=steps)(model, 64, x_T=x_T), DDIM(steps=steps)(model, 64, x_T=x_T))
    for sampler, nfe in ((DPMSolver(steps=7), 7), (DPMSolver(), 20), (Heun(steps=6), 11), (Heun(), 19)):
        net.calls = 0
        sampler(model, 64, x_T=x_T)
        assert net.calls == nfe, (sampler, net.calls)


def test_karras_levels_are_distinct_decreasing_steps_clamped_to_the_chain():
    sig = edm_sigmas(PROCESS)
    levels = Heun(steps=10).levels(PROCESS)
    assert levels[-1] == 0 and abs(float(sig[levels[0]]) - 80) < 1 and levels == sorted(levels, reverse=True)
    for n in (50, 400, 1000):  # rounding alone repeats steps near sigma_min
        dense = karras_levels(sig, n, 7.0, None, None).tolist()
        assert len(set(dense)) == n and dense == sorted(dense, reverse=True) and dense[0] == 999 and dense[-1] == 0
    assert Heun(steps=4, sigma_min=1e-9, sigma_max=1e9).levels(PROCESS)[::3] == [999, 0]
    with pytest.raises(ValueError, match="model.sampler.steps=1001"):
        Heun(steps=1001)(_model(GaussianEps(MU, S)), 2)


def test_churn_adds_noise_only_when_asked():
    x_T = torch.randn(2000, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    model = _model(GaussianEps(MU, S))
    torch.manual_seed(0)
    plain = Heun(steps=10)(model, len(x_T), x_T=x_T)
    torch.testing.assert_close(Heun(steps=10, s_churn=5.0, s_tmin=1e3)(model, len(x_T), x_T=x_T), plain)
    torch.manual_seed(0)
    churned = Heun(steps=18, s_churn=10.0)(model, len(x_T), x_T=x_T)
    assert not torch.allclose(churned, plain)
    assert (churned.mean(0) - MU).abs().max() < 0.1 and (churned.std(0) - S).abs().max() < 0.1


def test_clip_denoised_bounds_the_samples_as_for_ddim():
    x_T = torch.randn(500, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    wide = GaussianEps(torch.tensor([0.9, -0.9], dtype=F64), 0.5)  # much of the mass outside [-1, 1]
    for sampler in (DPMSolver(steps=10), Heun(steps=6)):
        assert sampler(_model(wide), len(x_T), x_T=x_T).abs().max() > 1.2
        assert sampler(_model(wide, clip=True), len(x_T), x_T=x_T).abs().max() <= 1.0


# -- (c) configuration -----------------------------------------------------------------------------------
def test_the_samplers_are_selected_by_name_or_target_in_config(make_cfg):
    assert SAMPLERS["dpmpp_2m"] is DPMSolver and SAMPLERS["heun"] is Heun
    fam = build_family(make_cfg("model=ddpm_mlp", "model.sampler=dpmpp_2m"))
    assert isinstance(fam.sampler, DPMSolver) and fam.sampler.steps == 20
    # a _target_ swap over the default DDIM node keeps its eta: 0.0 (accepted as 0)
    fam = build_family(make_cfg("model=ddpm_mlp", "model.sampler._target_=genlab.families.diffusion.Heun",
                                "model.sampler.steps=6", "+model.sampler.s_churn=1.5"))
    assert isinstance(fam.sampler, Heun) and (fam.sampler.steps, fam.sampler.s_churn) == (6, 1.5)
    # genlab-eval's overrides are merged into the stored config (genlab.builders.load_run)
    cfg = make_cfg("model=ddpm_mlp", name="eval")
    node = "model.sampler={_target_: genlab.families.diffusion.DPMSolver, steps: 10}"
    for text, kind, steps in ((node, DPMSolver, 10), ("model.sampler=heun", Heun, 10)):
        sampler = build_family(OmegaConf.merge(cfg, OmegaConf.from_dotlist([text]))).sampler
        assert type(sampler) is kind and sampler.steps == steps, text
    bad = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["model.sampler._target_=genlab.families.diffusion.DPMSolver",
                                                       "model.sampler.eta=1.0"]))
    with pytest.raises(Exception, match=r"model.sampler.eta=1.0"):
        build_family(bad)


@pytest.mark.parametrize("make, key", [
    (lambda: DPMSolver(steps=0), "model.sampler.steps=0"),
    (lambda: DPMSolver(steps=2.5), "model.sampler.steps=2.5"),
    (lambda: DPMSolver(eta=0.5), "model.sampler.eta=0.5"),
    (lambda: Heun(steps=1), "model.sampler.steps=1"),
    (lambda: Heun(s_churn=-1.0), "model.sampler.s_churn=-1.0"),
    (lambda: Heun(s_noise=-0.1), "model.sampler.s_noise=-0.1"),
    (lambda: Heun(rho=0.0), "model.sampler.rho=0.0"),
    (lambda: Heun(sigma_min=2.0, sigma_max=1.0), "model.sampler.sigma_min=2.0"),
    (lambda: Heun(sigma_max=-1.0), "model.sampler.sigma_max=-1.0"),
    (lambda: Heun(s_tmin=2.0, s_tmax=1.0), "model.sampler.s_tmax=1.0"),
    (lambda: Heun(guidance=0.5), "guidance=0.5"),
])
def test_bad_settings_are_refused_naming_the_key(make, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make()


def test_the_family_samples_data_with_the_fast_samplers():
    fam = Diffusion(lambda shape, out_mult: GaussianEps(MU, S), timesteps=1000)
    nets = fam.build(DataInfo("gauss", "points", (2,), 256))
    for sampler in ("dpmpp_2m", "heun", Heun(steps=3)):
        x = fam.sample(nets, 8, sampler=sampler)
        assert x.shape == (8, 2) and x.dtype == torch.uint8


# -- (d) autoguidance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, nfe", [(DPMSolver(steps=10), 10), (Heun(steps=5), 9)], ids=["dpmpp_2m", "heun"])
def test_the_samplers_use_the_autoguided_prediction(sampler, nfe):
    x_T = torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    net, guide = GaussianEps(MU, S), GaussianEps(MU, 0.6)
    model = _model(net, guide=guide)
    guided = sampler.with_guidance(2.5)
    assert guided is not sampler and sampler.guidance is None and guided.guidance == 2.5
    unguided = sampler(_model(GaussianEps(MU, S)), len(x_T), x_T=x_T)
    torch.testing.assert_close(sampler.with_guidance(1.0)(model, len(x_T), x_T=x_T), unguided)
    torch.testing.assert_close(sampler(model, len(x_T), x_T=x_T), unguided)  # the model's weight: 1
    copy = model.guide.net  # GuideNet keeps a frozen copy of the guide
    net.calls = copy.calls = 0
    out = guided(model, len(x_T), x_T=x_T)
    assert net.calls == copy.calls == nfe  # two network calls per evaluation
    assert (out - unguided).abs().max() > 0.05
    one_net = GuidedEps(GaussianEps(MU, S), GaussianEps(MU, 0.6), 2.5)
    torch.testing.assert_close(out, sampler(_model(one_net), len(x_T), x_T=x_T))
    torch.testing.assert_close(sampler(model.with_guidance(2.5), len(x_T), x_T=x_T), out)


def test_an_override_that_changes_a_target_replaces_the_node():
    from omegaconf import OmegaConf

    from genlab.builders import apply_overrides

    cfg = OmegaConf.create({"model": {"sampler": {"_target_": "genlab.families.diffusion.DDIM", "steps": 50, "eta": 1.0},
                                      "timesteps": 1000}})
    out = apply_overrides(cfg, ["model.sampler._target_=genlab.families.diffusion.Heun", "model.sampler.steps=6"])
    assert OmegaConf.to_container(out.model.sampler) == {"_target_": "genlab.families.diffusion.Heun", "steps": 6}
    assert out.model.timesteps == 1000
    whole = apply_overrides(cfg, ["model.sampler={_target_: genlab.families.diffusion.DPMSolver, steps: 10}"])
    assert "eta" not in whole.model.sampler and whole.model.sampler.steps == 10
    same = apply_overrides(cfg, ["model.sampler.steps=20"])  # the same class: a plain merge keeps its keys
    assert same.model.sampler.eta == 1.0 and same.model.sampler.steps == 20
