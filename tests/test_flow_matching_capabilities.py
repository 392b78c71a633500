"""Flow matching's capabilities against closed forms: with the exact marginal velocity of Gaussian data
the Denoiser's posterior mean is the Gaussian posterior mean (Wiener filter), its ODE and the Encoder's
ODE inversion are the affine transport maps between Gaussians, the Inpainter's replacement along the
path transports each missing pixel's own noise; the NFE travels in the likelihood's extras."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.families.base import Denoiser, Encoder, EnergyScorer, Inpainter, Likelihood, SequentialCoder
from genlab.families.flow_matching import FlowMatching, ODELikelihood, ODESolver, OTPath, VPPath
from genlab.families.flow_matching.objectives import ConditionalFlowMatching
from genlab.families.flow_matching.paths import AffinePath

F64 = torch.float64
M, S = 0.3, 0.4  # the data: every coordinate ~ N(M, S^2), independently


class GaussianVelocity(nn.Module):
    """The marginal velocity of ``x_t = a x_1 + b x_0`` for data ``x_1 ~ N(M, S^2 I)``:
    ``v = a' E[x_1 | x_t] + b' E[x_0 | x_t]`` with ``E[x_1 | x_t] = M + a S^2 / V (x_t - a M)``,
    ``E[x_0 | x_t] = b / V (x_t - a M)`` and ``V = a^2 S^2 + b^2``."""

    def __init__(self, path: AffinePath) -> None:
        super().__init__()
        self.path = path
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))  # sets the family's dtype

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(F64).view(-1, *([1] * (x.dim() - 1)))
        p = self.path
        a, b, da, db = p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t)
        var = a * a * S * S + b * b
        r = x - a * M
        return da * (M + a * S * S / var * r) + db * (b / var * r) + 0 * self.anchor


def _family(path: AffinePath, solver: ODESolver | None = None, shape: tuple[int, ...] = (3,)) -> tuple:
    fam = FlowMatching(lambda shape, out_mult: GaussianVelocity(path), solver=solver or ODESolver("rk4", steps=40),
                       objective=ConditionalFlowMatching(path))
    return fam, fam.build(DataInfo("gauss", "points", shape, 256))


def test_flow_matching_has_the_capabilities_of_a_probability_path():
    for capability in (Likelihood, Denoiser, Inpainter, Encoder):
        assert issubclass(FlowMatching, capability)
    assert not issubclass(FlowMatching, (SequentialCoder, EnergyScorer))
    assert FlowMatching.denoise_methods == ("ode", "mean") and FlowMatching.latent_paths == ("slerp", "linear")
    assert FlowMatching.inpaint_method == "replacement along the probability path"
    assert FlowMatching.encoder_kind == "ODE inversion"


# -- Denoiser ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [OTPath(), VPPath()], ids=["ot", "vp"])
@pytest.mark.parametrize("sigma", [0.2, 1.0])
def test_denoised_mean_is_the_gaussian_posterior_mean_and_the_ode_the_transport_map(path, sigma):
    fam, nets = _family(path)
    y = torch.linspace(-1.5, 1.5, 12, dtype=F64).view(4, 3)
    plan = fam.denoise_plan(nets, sigma, steps=None)
    # y = x + sigma eps, x ~ N(M, S^2): E[x | y] = M + S^2 / (S^2 + sigma^2) (y - M) (Wiener filter)
    wiener = M + S * S / (S * S + sigma * sigma) * (y - M)
    torch.testing.assert_close(fam.denoise(nets, y, plan, "mean"), wiener, rtol=1e-10, atol=1e-10)
    # the ODE from t to 1 carries N(M, S^2 + sigma^2) (y's law) onto N(M, S^2) monotonically: affinely
    transport = M + S / math.sqrt(S * S + sigma * sigma) * (y - M)
    torch.testing.assert_close(fam.denoise(nets, y, plan, "ode"), transport, rtol=0, atol=1e-6)


def test_denoise_plan_and_its_description():
    fam, nets = _family(OTPath(), ODESolver("midpoint", steps=50))
    plan = fam.denoise_plan(nets, 0.25, steps=None)
    assert set(plan) == {"t", "path", "alpha_t", "sigma_t", "ratio", "scale", "steps", "solver"}
    assert plan["t"] == pytest.approx(1 / 1.25) and plan["ratio"] == pytest.approx(0.25)
    assert plan["scale"] == plan["alpha_t"] and plan["steps"] == 50 and plan["solver"] == "midpoint"
    assert fam.describe_plan(plan, "ode") == "time t=0.8000 (sigma_t/alpha_t 0.2500), 50 midpoint steps"
    assert fam.describe_plan(plan, "mean") == "time t=0.8000 (sigma_t/alpha_t 0.2500), one step to the posterior mean"
    assert fam.denoise_plan(nets, 0.25, steps=7)["steps"] == 7


def test_model_scale_maps_to_bin_centres_and_back():
    fam, nets = _family(OTPath())
    levels = torch.arange(256).view(-1, 1).expand(-1, 3)
    centres = 2 * (levels.double() + 0.5) / 256 - 1
    torch.testing.assert_close(fam.to_unit(nets, centres), levels.double() / 255)
    assert torch.equal(fam.to_data(nets, centres), levels.to(torch.uint8))
    noisy = fam.noise_space(nets, levels.to(torch.uint8))  # dequantised: inside each level's bin
    assert torch.equal(fam.to_data(nets, noisy), levels.to(torch.uint8))


# -- Encoder ----------------------------------------------------------------------------------------------
def test_ode_inversion_is_the_affine_map_to_noise_and_decodes_back():
    fam, nets = _family(OTPath(), ODESolver("dopri5", rtol=1e-9, atol=1e-9))
    x = torch.randint(0, 256, (6, 3), dtype=torch.uint8)
    centres = 2 * (x.double() + 0.5) / 256 - 1
    z = fam.to_latent(nets, x, steps=None)
    torch.testing.assert_close(z, (centres - M) / S, rtol=0, atol=1e-6)  # x_1 = M + S x_0 on the OT path
    assert torch.equal(fam.from_latent(nets, z), x)
    fixed, fixed_nets = _family(OTPath(), ODESolver("rk4", steps=2))  # steps= overrides the solver's
    assert torch.equal(fixed.from_latent(fixed_nets, fixed.to_latent(fixed_nets, x, steps=30), steps=30), x)


# -- Inpainter --------------------------------------------------------------------------------------------
class _Options:
    steps: int | None = 20


def test_replacement_along_the_path_transports_each_missing_pixels_noise_and_keeps_the_observed():
    fam, nets = _family(OTPath(), ODESolver("rk4", steps=20))
    x = torch.randint(0, 256, (64, 3), dtype=torch.uint8)
    missing = torch.zeros(64, 3, dtype=torch.bool)
    missing[:, 1] = True
    torch.manual_seed(0)
    filled = fam.inpaint(nets, x, missing, _Options())
    torch.manual_seed(0)
    fam.dequantize(nets, x)  # the same draws: dequantisation, then the starting noise
    noise = torch.randn(64, 3, dtype=F64)
    assert torch.equal(filled[~missing], x[~missing])
    # independent coordinates: a missing one follows the unconditional flow, x_1 = M + S x_0
    expected = fam.to_data(nets, M + S * noise)
    assert (filled[missing].long() - expected[missing].long()).abs().max() <= 1
    assert (filled[missing] == expected[missing]).float().mean() > 0.95


# -- Likelihood: the NFE in the extras ---------------------------------------------------------------------
def test_nfe_of_each_likelihood_solve_travels_per_example_and_is_summarised_as_its_mean():
    fam, nets = _family(OTPath())
    x = torch.randint(0, 256, (5, 3), dtype=torch.uint8)
    three = fam.log_likelihood(nets, {"x": x}, likelihood=ODELikelihood(ODESolver("euler", steps=3)))
    eight = fam.log_likelihood(nets, {"x": x[:2]}, likelihood=ODELikelihood(ODESolver("rk4", steps=2)))
    assert three.extras["nfe"].shape == (5,) and three.extras["nfe"].dtype == F64
    assert three.extras["nfe"].tolist() == [3.0] * 5 and eight.extras["nfe"].tolist() == [8.0] * 2
    nll = torch.cat([-three.log_px, -eight.log_px])
    sums = {"nll": float(nll.sum()), "nll_sq": float((nll * nll).sum()),
            "nfe": float(three.extras["nfe"].sum() + eight.extras["nfe"].sum())}
    assert fam.summarize_likelihood(nets, 7, sums) == {"nfe": pytest.approx((5 * 3 + 2 * 8) / 7)}
    assert fam.summarize_likelihood(nets, 0, {}) == {}


def test_sampling_takes_an_ode_solver_per_call():
    fam, nets = _family(OTPath(), ODESolver("euler", steps=1))
    torch.manual_seed(0)
    x = fam.sample(nets, 2000, sampler=ODESolver("rk4", steps=10))
    torch.manual_seed(0)
    assert fam.generate(nets, 2000).nfe == 1  # the configured solver when none is given
    y = 2 * (x.double() + 0.5) / 256 - 1
    torch.testing.assert_close(y.mean(0), torch.full((3,), M, dtype=F64), atol=0.03, rtol=0)
    torch.testing.assert_close(y.std(0), torch.full((3,), S, dtype=F64), atol=0.03, rtol=0)
