"""The diffusion family's seam and capabilities against closed forms on Gaussian data (exact
denoisers, float64, milliseconds): denoising from a start step of the one sampler loop is the
truncated-chain reference and the probability-flow map, RePaint keeps what is observed, DDIM
inversion round-trips, the bound's standard errors are the formula, a sampler's guidance weight
overrides the configured one, the family keeps no run state, and the package has no import cycle."""

import ast
import math
from pathlib import Path

import pytest
import torch
from test_diffusion import MU, POINTS, S, GaussianDenoiser, _gaussian_family

from genlab.builders import build_family
from genlab.data.base import DataInfo
from genlab.families.base import Denoiser, Encoder, Inpainter, Likelihood
from genlab.families.diffusion import DDIM, Ancestral, Diffusion, GuideNet, run_chain
from genlab.families.diffusion.denoising import truncated_chain
from genlab.families.diffusion.repaint import repaint_schedule
from genlab.metrics.likelihood import LN2
from genlab.nets.unet import TimeMLP

F64 = torch.float64


def _mlp_family(info: DataInfo, **kw) -> tuple[Diffusion, torch.nn.ModuleDict]:
    """A tiny float32 TimeMLP diffusion model (untrained) for ``info``."""
    fam = Diffusion(lambda shape, out_mult: TimeMLP(shape, out_mult, hidden=16, layers=1), **kw)
    return fam, fam.build(info)


def _levels(x0: torch.Tensor) -> torch.Tensor:
    """Points in [-1, 1] -> the nearest of the 256 levels of POINTS."""
    return ((x0 + 1) * 255 / 2).round().clamp(0, 255).to(torch.uint8)


def _posterior_mean(x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``E[x0 | x_t]`` for ``x0 ~ N(MU, S^2)`` (Tweedie / Gaussian conditioning)."""
    return MU + ab.sqrt() * S**2 * (x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)


# -- denoising: the loop from a start step ------------------------------------------------------
def _reference_chain(fam: Diffusion, y: torch.Tensor, plan: dict, ancestral: bool) -> torch.Tensor:
    """The reverse chain over steps 0..t, written out from the closed-form posterior mean (DDIM eta = 0,
    or ancestral with the posterior variance beta~), one randn per step as the samplers draw them."""
    head = truncated_chain(fam.process, plan["t"], plan["steps"])
    ab = head.tables["alpha_bar"]
    x = plan["scale"] * y
    for k in reversed(range(head.T)):
        z = torch.randn_like(x)
        ab_prev = ab[k - 1] if k > 0 else torch.tensor(1.0, dtype=F64)
        x0 = _posterior_mean(x, ab[k])
        eps = (x - ab[k].sqrt() * x0) / (1 - ab[k]).sqrt()
        if not ancestral:
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
            continue
        beta = 1 - ab[k] / ab_prev
        mean = ab_prev.sqrt() * beta / (1 - ab[k]) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab[k]) * x
        x = mean + (beta * (1 - ab_prev) / (1 - ab[k])).sqrt() * z if k > 0 else mean
    return x


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_denoising_from_the_start_step_is_the_truncated_chain_reference(method):
    fam, nets = _gaussian_family()
    plan = fam.denoise_plan(nets, 0.3, 20)
    assert plan["steps"] == 20 and plan["t"] > 20
    g = torch.Generator().manual_seed(0)
    y = MU + S * torch.randn(500, 1, generator=g, dtype=F64) + 0.3 * torch.randn(500, 1, generator=g, dtype=F64)
    torch.manual_seed(1)
    ours = fam.denoise(nets, y, plan, method)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, _reference_chain(fam, y, plan, ancestral=method == "ddpm"), rtol=1e-9, atol=1e-9)


def test_ddim_denoising_approaches_the_probability_flow_map_and_mean_is_tweedie():
    """For Gaussian data the probability-flow ODE from ``x_t`` ends at ``mu + S (x_t - sqrt(ab) mu) /
    sqrt(ab S^2 + 1 - ab)``; the posterior mean is Tweedie's ``E[x0 | x_t]``."""
    fam, nets = _gaussian_family()
    plan = fam.denoise_plan(nets, 0.5, 400)
    y = torch.linspace(-1.5, 1.5, 31, dtype=F64)[:, None]
    x_t, ab = plan["scale"] * y, torch.tensor(plan["alpha_bar"], dtype=F64)
    flow = MU + S * (x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab).sqrt()
    torch.testing.assert_close(fam.denoise(nets, y, plan, "ddim"), flow, atol=5e-3, rtol=0)
    torch.testing.assert_close(fam.denoise(nets, y, plan, "mean"), _posterior_mean(x_t, ab), rtol=1e-9, atol=1e-12)
    assert fam.describe_plan(plan, "mean") == (
        f"step t={plan['t']} of 1000 (alpha_bar {plan['alpha_bar']:.4f}, target {1 / 1.25:.4f}), "
        "one step to the posterior mean")
    assert fam.describe_plan({**plan, "steps": 9}, "ddim").endswith(", 9 ddim steps")


# -- RePaint and the loop's forward moves -----------------------------------------------------------
def test_repaint_returns_a_fully_observed_image_and_walks_its_schedule():
    fam, nets = _gaussian_family(timesteps=50)
    x = _levels(MU + S * torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=F64))

    class Options:
        steps, resample, jump = 10, 3, 2

    torch.manual_seed(0)
    assert torch.equal(fam.inpaint(nets, x, torch.zeros_like(x, dtype=torch.bool), Options), x)  # alpha_bar_{-1} = 1
    model = fam.model(nets)
    seen = []

    def step(m, x_t, t, z):  # a step that only records where it is: the walk is the schedule's
        seen.append(int(t[0]))
        return x_t

    states = repaint_schedule(model.process.T, jump=3, resample=2)
    noise = torch.zeros(2, 1, dtype=F64)
    out = run_chain(model, torch.ones(2, 1, dtype=F64), step, states, hook=lambda v, t: v + noise)
    downs = [a for a, b in zip(states[:-1], states[1:]) if b < a]
    assert seen == downs and out.shape == (2, 1)
    torch.manual_seed(3)
    z = torch.randn(2, 1, dtype=F64)
    torch.manual_seed(3)
    up = run_chain(model, torch.ones(2, 1, dtype=F64), step, [4, 5])  # one forward move q(x_5 | x_4)
    beta = model.process.tables["betas"][5]
    torch.testing.assert_close(up, (1 - beta).sqrt() + beta.sqrt() * z)


# -- DDIM inversion -----------------------------------------------------------------------------------
def test_ddim_inversion_round_trips_and_maps_gaussian_data_to_standard_normal_codes():
    fam, nets = _gaussian_family()
    x = _levels(MU + S * torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=F64))
    z = fam.to_latent(nets, x, None)  # all 1000 steps: the discretised ODE is close to the exact map
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.04  # the probability-flow map's image
    back = fam.from_latent(nets, z, None)
    assert back.dtype == torch.uint8 and (back.float() - x.float()).abs().mean() < 0.05  # in levels
    coarse = fam.from_latent(nets, fam.to_latent(nets, x, 100), 100)
    assert (coarse.float() - x.float()).abs().mean() > 0.2  # a first-order scheme: fewer steps, larger error
    assert fam.latent_paths == ("slerp", "linear") and fam.encoder_kind == "DDIM inversion"


# -- the bound's standard errors ------------------------------------------------------------------------
def test_summarize_likelihood_is_the_standard_error_formula():
    info = DataInfo("t", "image", (1, 2, 2), 5)
    fam, nets = _mlp_family(info, timesteps=30, val_timesteps=4, test_timesteps=None)
    x = torch.randint(0, 5, (50, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    torch.manual_seed(0)
    ll = fam.log_likelihood(nets, {"x": x}, stage="val")
    nll, v = -ll.log_px, ll.extras["kl_var"].double()
    assert ll.kind == "bound" and set(ll.extras) == {"kl_var"} and bool((v > 0).all())
    sums = {"nll": float(nll.sum()), "nll_sq": float((nll * nll).sum()), "kl_var": float(v.sum())}
    got = fam.summarize_likelihood(nets, 50, sums)
    to_bpd = 1 / (4 * LN2)
    assert got["nll_bpd_se"] == pytest.approx(float(nll.std()) / math.sqrt(50) * to_bpd, rel=1e-9)
    assert got["nll_bpd_se_timesteps"] == pytest.approx(math.sqrt(float(v.sum())) / 50 * to_bpd, rel=1e-12)
    assert fam.summarize_likelihood(nets, 0, {}) == {}
    exact = fam.log_likelihood(nets, {"x": x}, stage="test")  # every KL term: no Monte Carlo error
    assert bool((exact.extras["kl_var"] == 0).all())


# -- autoguidance per sampling call ---------------------------------------------------------------------
def _guided(weight: float) -> tuple[Diffusion, torch.nn.ModuleDict]:
    holder = {}
    fam = Diffusion(lambda shape, out_mult: GaussianDenoiser(holder["p"], MU, S), timesteps=200, schedule="cosine",
                    clip_denoised=False, guidance={"weight": weight, "at": 0.5})
    holder["p"] = fam.process
    nets = fam.build(POINTS)
    nets["guide"] = GuideNet(GaussianDenoiser(fam.process, MU, 0.4))
    nets["guide"].taken_at.fill_(0.0)
    return fam, nets


def test_a_sampler_guidance_weight_overrides_the_configured_one_without_changing_the_family(make_cfg):
    x_T = torch.randn(300, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    one, nets = _guided(1.0)
    three, _ = _guided(3.0)
    by_sampler = DDIM(steps=20, guidance=3.0)(one.model(nets), 300, x_T=x_T)
    torch.testing.assert_close(by_sampler, DDIM(steps=20)(three.model(nets), 300, x_T=x_T))
    torch.testing.assert_close(DDIM(steps=20, guidance=1.0)(three.model(nets), 300, x_T=x_T),
                               DDIM(steps=20)(one.model(nets), 300, x_T=x_T))
    assert one.guidance.weight == 1.0 and three.guidance.weight == 3.0
    assert DDIM(steps=20).with_guidance(2.0).guidance == 2.0 and repr(DDIM(steps=5)) == "DDIM(steps=5, eta=0.0)"
    plain, plain_nets = _gaussian_family(timesteps=20)
    with pytest.raises(ValueError, match="needs a guide snapshot"):
        Ancestral(guidance=2.0)(plain.model(plain_nets), 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        DDIM(guidance=0.5)
    fam = build_family(make_cfg("model=ddpm_mlp", "model.sampler.guidance=2"))
    assert fam.sampler.guidance == 2.0 and fam.guidance is None


# -- the contract: capabilities, no run state, no import cycle -------------------------------------------
def test_the_family_has_its_capabilities_and_keeps_no_run_state():
    fam, nets = _mlp_family(DataInfo("t", "image", (1, 2, 2), 5), timesteps=10, val_timesteps=2)
    assert all(isinstance(fam, c) for c in (Likelihood, Denoiser, Inpainter, Encoder))
    assert fam.denoise_methods == ("ddim", "ddpm", "mean") and fam.inpaint_method == "RePaint (Lugmayr et al. 2022)"
    before = dict(vars(fam))
    x = torch.randint(0, 5, (3, 1, 2, 2), dtype=torch.uint8)
    fam.loss(nets, {"x": x})
    fam.log_likelihood(nets, {"x": x}, stage="val")
    fam.sample(nets, 2)
    assert dict(vars(fam)).keys() == before.keys() and all(vars(fam)[k] is v for k, v in before.items())


def _imports(path: Path) -> set[str]:
    """``genlab.families.diffusion.*`` modules that ``path`` imports (anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.rsplit(".", 1)[-1] for n in names if n.startswith("genlab.families.diffusion.")}
    return out


def test_the_diffusion_package_has_no_import_cycle_and_only_the_family_assembles():
    root = Path(__file__).parents[1] / "genlab" / "families" / "diffusion"
    graph = {p.stem: _imports(p) for p in root.glob("*.py") if p.stem != "__init__"}
    assert not any("family" in deps for name, deps in graph.items() if name != "family")
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())
