"""The GAN sampler pipeline (genlab/families/gan/sampler.py): propose -> refine -> Jacobian truncation ->
rejection, its config node ``model.sampler``, the rejection calibration in the nets, and checkpoints
from before the sampler node."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from genlab.builders import build_family, build_for_user
from genlab.data.base import DataInfo
from genlab.families.base import IncompatibleConfigError
from genlab.families.gan import GAN, GANSampler, Propose
from genlab.families.gan.jacobian import JacobianTruncation
from genlab.families.gan.refine import LatentRefinement
from genlab.families.gan.rejection import Rejection, RejectionCalibration
from genlab.nets.mlp import MLP

POINTS = DataInfo(name="points", kind="points", shape=(2,), levels=64)


def _gan(codes: int = 0, **kwargs) -> tuple[GAN, torch.nn.ModuleDict]:
    torch.manual_seed(0)
    fam = GAN(partial(MLP, hidden=[8]), partial(MLP, hidden=[8]), latent_dim=2, categorical_codes=codes, **kwargs)
    return fam, fam.build(POINTS).eval()


def _record(net: torch.nn.Module) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    return inputs


@pytest.mark.parametrize("codes", [0, 3])
def test_a_pipeline_without_steps_is_plain_propose(codes):
    """No step after propose: the samples are the bins of tanh(G_ema([z, onehot(c)])), z ~ N(0, I)."""
    fam, nets = _gan(codes)
    assert GANSampler().steps == [Propose()] and GANSampler(None, None, None, None) == GANSampler()
    assert fam.sampler == GANSampler() and GANSampler().proposals(7) == 7
    torch.manual_seed(3)
    x = fam.sample(nets, 50, GANSampler())
    torch.manual_seed(3)
    z = torch.randn(50, 2)
    inp = torch.cat([z, F.one_hot(torch.randint(0, codes, (50,)), codes).float()], 1) if codes else z
    with torch.no_grad():
        y = torch.tanh(nets["generator_ema"](inp))
    assert torch.equal(x, torch.floor((y + 1) * 64 / 2).clamp(0, 63).to(torch.uint8))
    torch.manual_seed(3)  # the raw generator and truncated latents are propose's options
    with torch.no_grad():
        raw = fam.sample(nets, 50, {"propose": {"generator": "raw"}})
    assert torch.equal(raw, torch.floor((torch.tanh(nets["generator"](inp)) + 1) * 32).clamp(0, 63).to(torch.uint8))
    inputs = _record(nets["generator_ema"])
    fam.sample(nets, 200, {"propose": {"truncation": 0.5}})
    assert inputs[0][:, :2].abs().max() <= 0.5 < z.abs().max()


def test_steps_run_in_the_pipeline_order_whatever_the_order_given():
    """propose -> refine -> jacobian_truncation -> rejection: the Jacobian scores are taken at the refined
    latents (not the proposals), the kept samples are rows of them, and rejection's proposals are
    the whole draw of the earlier steps."""
    sampler = GANSampler(rejection={}, jacobian_truncation={"keep": 0.5}, refine={"steps": 2, "penalty": 0},
                         propose={"generator": "ema"})
    assert [type(s) for s in sampler.steps] == [Propose, LatentRefinement, JacobianTruncation, Rejection]
    assert sampler.proposals(4) == 8
    fam, nets = _gan(3)
    inputs = _record(nets["generator_ema"])
    z0 = torch.randn(8, 2)
    x = fam.draw(nets, nets["generator_ema"], 4, z=z0, sampler=sampler)
    assert x.shape == (4, 2) and len(inputs) == 4  # 2 refinement steps, the Jacobian pass, the final draw
    first, second, scored, final = inputs
    assert torch.equal(first[:, :2], z0) and not torch.equal(scored[:, :2], z0)
    refined = LatentRefinement(steps=2, penalty=0.0)(lambda z: fam.discriminate(nets, torch.tanh(
        nets["generator_ema"](torch.cat([z, first[:, 2:]], 1)))), z0)
    inputs.clear()
    torch.testing.assert_close(scored[:, :2], refined)
    assert scored.shape[0] == 8 and all((scored == row).all(1).any() for row in final)  # kept rows of the refined
    with pytest.raises(ValueError, match="GAN.draw: 4 samples take 8 latents"):
        fam.draw(nets, nets["generator_ema"], 4, z=torch.randn(4, 2), sampler=sampler)
    fam, nets = _gan(3, sampler=sampler)
    fam.calibrate_rejection(nets, torch.randint(0, 64, (64, 2)))
    inputs = _record(nets["generator_ema"])
    fam.sample(nets, 8)
    assert len(inputs) % 4 == 0 and inputs[2].shape[0] == 2 * inputs[3].shape[0]  # each proposal batch: all steps


def test_unknown_steps_and_options_get_errors_that_name_the_valid_keys(make_cfg):
    with pytest.raises(ValueError, match=r"unknown steps \['refin'\]: its steps are propose, refine, "
                                         r"jacobian_truncation, rejection"):
        GANSampler(refin={"steps": 3})
    with pytest.raises(IncompatibleConfigError, match=r"unknown steps \['reject'\].*rejection"):
        build_for_user("model", lambda: build_family(make_cfg("model=gan_mlp", "+model.sampler.reject={}")))
    for bad, match in [({"propose": {"trunc": 1.0}}, r"sampler.propose has unknown keys \['trunc'\]"),
                       ({"propose": {"generator": "best"}}, "generator must be ema .* or raw"),
                       ({"rejection": {"quantile": 0}}, "rejection.quantile must be in"),
                       ({"refine": {"steps": 0}}, "sampler.refine.steps must be a whole number >= 1")]:
        with pytest.raises(ValueError, match=match):
            GANSampler(**bad)
    with pytest.raises(ValueError, match="model.sampler must be a GAN sampler or a mapping of its steps"):
        GAN(None, None, sampler=3)
    fam, nets = _gan()
    with pytest.raises(ValueError, match="set model.sampler.jacobian_truncation.ink_power=0"):
        fam.sample(nets, 4, {"jacobian_truncation": {"ink_power": 2}})  # points have no ink
    with pytest.raises(ValueError, match="batch_stats=true: this generator has no batch-norm layers"):
        fam.sample(nets, 4, {"propose": {"batch_stats": True}})


def test_the_bound_at_another_quantile_is_what_a_calibration_at_it_gives():
    """The calibration keeps its generated log-ratios, so the bound M and the acceptance at any
    quantile are exactly those of a calibration at that quantile."""
    torch.manual_seed(0)
    real, fake = torch.randn(500) + 1.0, torch.randn(500)
    cal = RejectionCalibration(0.95)
    fit = cal.calibrate(real, fake)
    assert cal.bound_for(0.95) == (fit["bound"], fit["acceptance"])
    for q in (0.5, 0.8, 1.0):
        other = RejectionCalibration(q).calibrate(real, fake)
        assert cal.bound_for(q) == (other["bound"], other["acceptance"])


def test_rejection_refuses_a_missing_or_foreign_calibration_and_warns_on_a_stale_one():
    fam, nets = _gan()
    with pytest.raises(ValueError, match="needs a calibration in the nets.*model.sampler.rejection=null"):
        fam.sample(nets, 4, {"rejection": {}})
    fam, nets = _gan(sampler={"rejection": {"quantile": 0.9}})
    torch.manual_seed(1)
    assert fam.sample(nets, 16).shape == (16, 2)  # not calibrated yet: plain samples
    fam.calibrate_rejection(nets, torch.randint(0, 64, (64, 2)))
    assert nets["rejection"].ready_for(nets["discriminator"], fam.sampler.proposal_key())
    assert fam.sample(nets, 16, {"rejection": {"quantile": 0.5}}).shape == (16, 2)  # another quantile: fine
    with pytest.raises(ValueError, match="fitted on the proposals of other sampler steps"):
        fam.sample(nets, 16, {"refine": {"steps": 1}, "rejection": {}})
    with torch.no_grad():
        next(nets["discriminator"].parameters()).add_(0.01)
    with pytest.warns(UserWarning, match="calibration was fitted for other discriminator weights"):
        torch.manual_seed(2)
        stale = fam.sample(nets, 16)
    torch.manual_seed(2)
    assert torch.equal(stale, fam.sample(nets, 16, GANSampler()))


def _legacy_model(make_cfg) -> dict:
    """``model=gan_mlp`` as configs stored it before ``model.sampler``: the sampling options at the top."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(make_cfg("model=gan_mlp", "dataset=mixture2d").model)
    del model["sampler"]
    return {**model, "rejection_sampling": True, "rejection_quantile": 0.9, "refine": {"steps": 2, "lr": 0.1,
                                                                                      "penalty": 1.0},
            "jacobian_truncation": None}


def test_checkpoints_from_before_the_sampler_node_load(make_cfg):
    """The stored config's sampling options become ``model.sampler``; the nets' state-dict keys are
    unchanged, and a calibration without the newer buffers (quantile, proposal key, log-ratios) loads,
    its bound kept for the configured quantile only."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    upgraded = GAN.upgrade_config(_legacy_model(make_cfg))
    assert not set(GAN.LEGACY_SAMPLING) & set(upgraded) and GAN.upgrade_config(upgraded) == upgraded
    fam = instantiate(OmegaConf.create(upgraded))
    assert fam.sampler == GANSampler(refine={"steps": 2, "lr": 0.1, "penalty": 1.0}, rejection={"quantile": 0.9})
    nets = fam.build(POINTS)
    fam.calibrate_rejection(nets, torch.randint(0, 64, (64, 2)))
    new = nets.state_dict()
    before = {f"rejection.{b}" for b in ("scale", "bias", "bound", "acceptance", "calibrated", "fingerprint")}
    old = {k: v for k, v in new.items() if not k.startswith("rejection.") or k in before}  # what older versions saved
    assert {k.split(".")[0] for k in old} == {"generator", "discriminator", "generator_ema", "rejection"}
    assert set(new) - set(old) == {"rejection.quantile", "rejection.proposal", "rejection.log_ratios"}
    for state in (new, old):  # a fresh build (no log-ratios yet) takes either
        fresh = fam.build(POINTS)
        fresh.load_state_dict(fam.adapt_state(fresh, state))
        assert fresh["rejection"].bound_for(0.9) == nets["rejection"].bound_for(0.9)
        assert fresh["rejection"].ready_for(fresh["discriminator"], fam.sampler.proposal_key())
    assert fresh["rejection"].log_ratios.numel() == 0
    with pytest.raises(ValueError, match="holds the bound for quantile 0.9 only"):
        fresh["rejection"].bound_for(0.5)
    plain = GAN(partial(MLP, hidden=[256] * 3), partial(MLP, hidden=[256] * 3), latent_dim=16)
    plain_nets = plain.build(POINTS)
    plain_nets.load_state_dict(plain.adapt_state(plain_nets, new))  # the calibration of an unused step: dropped
    with pytest.raises(ValueError, match="holds no rejection calibration"):
        fam.adapt_state(nets, plain_nets.state_dict())
