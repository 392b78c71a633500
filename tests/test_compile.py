"""``compile``: torch.compile of any family's nets, in place (genlab/compile.py).

The default suite uses the ``aot_eager`` backend (TorchDynamo + AOTAutograd, the graphs a compiler
receives, without generating code: seconds), the slow tests the real ``inductor`` backend (C++ on CPU).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from genlab import compile as gcompile
from genlab.builders import build_family, load_run
from genlab.checkpoints import read_checkpoint
from genlab.families.base import Family, IncompatibleConfigError, Nets
from genlab.train import run

AOT = "compile={backend: aot_eager}"
TINY = {  # small nets on the default digits (8x8, 17 levels), batch 16
    "vae": ["model=vae", "model.encoder.hidden=[32]", "model.decoder.hidden=[32]", "model.test_k=2"],
    "pixelcnn": ["model=pixelcnn", "model.net.channels=8", "model.net.layers=2", "model.net.out_hidden=8"],
    "transformer": ["model=transformer", "dataset=text", "dataset.block_size=16", "model.net.d_model=16",
                    "model.net.n_layers=1", "model.net.n_heads=2"],
    "glow": ["model=glow", "model.num_scales=1", "model.steps_per_scale=1", "model.coupling_net.hidden=8"],
    "realnvp": ["model=realnvp", "model.num_scales=1", "model.checkerboard_steps=1", "model.steps_per_scale=1",
                "model.coupling_net.hidden=8", "model.coupling_net.blocks=1"],
    "ddpm": ["model=ddpm", "model.net.channels=8", "model.net.channel_mults=[1,2]", "model.net.num_res_blocks=1",
             "model.timesteps=20", "model.sampler.steps=3", "model.val_timesteps=4"],
    "ddpm_mlp": ["model=ddpm_mlp", "model.net.hidden=32", "model.net.layers=1", "model.timesteps=20",
                 "model.sampler.steps=3", "model.val_timesteps=4"],
    "flow_matching": ["model=flow_matching_mlp", "model.net.hidden=32", "model.net.layers=1", "model.solver.steps=3",
                      "model.val_likelihood.solver.steps=2"],
    "gan_r1": ["model=gan_mlp", "loss.r1_gamma=1.0", "model.generator.hidden=[16]", "model.discriminator.hidden=[16]"],
    "dcgan_wgan_gp": ["model=dcgan", "loss=wgan_gp", "model.generator.channels=4", "model.discriminator.channels=4"],
    "ebm": ["model=ebm", "model.energy_net.channels=8", "model.sampler.train_steps=3", "model.sampler.sample_steps=3"],
}
FAST = ("vae", "gan_r1", "flow_matching")  # in the default suite: plain, double backward, batched VJPs


def _setup(make_cfg, case: str):
    cfg = make_cfg(*TINY[case], "dataset.batch_size=16", name=case)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    return build_family(cfg), dm.info, next(iter(dm.train_dataloader()))


def _nets(family: Family, info, backend: str | None) -> Nets:
    torch.manual_seed(0)
    nets = family.build(info)
    if backend is not None:
        assert gcompile.compile_nets(family, nets, {"backend": backend})
    return nets


def _step(family: Family, nets: Nets, batch) -> list[tuple[torch.Tensor, list]]:
    """Loss and parameter gradients of every param group's step (seeded alike)."""
    out = []
    for group in dict.fromkeys(family.schedule()) or [None]:
        torch.manual_seed(1)
        loss = (family.loss(nets, batch, group=group) if group else family.loss(nets, batch)).loss
        params = [p for p in nets.parameters() if p.requires_grad]
        out.append((loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)))
    return out


def _check_equal(family: Family, info, batch, backend: str, tol: float) -> Nets:
    """Compiled and eager nets from the same seed: the same losses and gradients on the same batch."""
    eager, compiled = _step(family, _nets(family, info, None), batch), None
    nets = _nets(family, info, backend)
    compiled = _step(family, nets, batch)
    for (le, ge), (lc, gc) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(lc, le, rtol=tol, atol=tol)
        for a, b in zip(ge, gc, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    return nets


def _evaluates(family: Family, nets: Nets, batch) -> None:
    """Likelihood (where the family has one) and sampling with the compiled nets, at other batch sizes."""
    nets.eval()
    with torch.no_grad():
        ll = family.log_likelihood(nets, {k: v[:8] for k, v in batch.items()}, stage="val")
        x = family.sample(nets, 5)
    assert ll is None or bool(torch.isfinite(ll.log_px).all())
    assert x.shape[0] == 5 and not x.is_floating_point()


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in TINY])
def test_compiled_loss_and_gradients_equal_eager_ones(make_cfg, case):
    family, info, batch = _setup(make_cfg, case)
    nets = _check_equal(family, info, batch, "aot_eager", 1e-6)
    _evaluates(family, nets, batch)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in TINY if c != "ddpm"])  # the UNet's inductor builds: 5 min on 2 cores
def test_inductor_loss_and_gradients_equal_eager_ones(make_cfg, case):
    family, info, batch = _setup(make_cfg, case)
    nets = _check_equal(family, info, batch, "inductor", 1e-4)
    _evaluates(family, nets, batch)


def test_a_compiled_run_matches_the_eager_one_and_their_checkpoints_load_either_way(make_cfg):
    common = [*TINY["ddpm_mlp"], "model.test_timesteps=4", "trainer.max_steps=3", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1", "num_samples=4", "callbacks.progress_bar.refresh_rate=0"]  # with EMA
    eager = run(make_cfg(*common, name="eager"))
    compiled = run(make_cfg(*common, AOT, name="compiled"))  # training, validation, test and samples compiled
    assert compiled["status"] == "finished" and compiled["samples"]
    for stage in ("val", "test"):  # aot_eager runs the same graphs: the same figures
        assert compiled[stage]["nll_bpd"] == pytest.approx(eager[stage]["nll_bpd"], rel=1e-6)
    path = compiled["checkpoints"]["last"]
    state, eager_state = (read_checkpoint(r["checkpoints"]["last"])["state_dict"] for r in (compiled, eager))
    assert list(state) == list(eager_state)
    module, dm = load_run(path)  # eager: the stored config's compile applies only when a trainer runs
    assert not any(gcompile.is_compiled(net) for net in module.nets.values())
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    torch.manual_seed(3)
    loss = module.family.loss(module.nets, batch).loss
    assert gcompile.compile_nets(module.family, module.nets, {"backend": "aot_eager"}) == ["net"]
    module.load_state_dict(eager_state)
    module.load_state_dict(state)  # an eager run's checkpoint and a compiled one's load into compiled nets
    torch.manual_seed(3)
    torch.testing.assert_close(module.family.loss(module.nets, batch).loss, loss)


def test_no_cpp_compiler_is_refused_before_training_naming_the_fix(make_cfg, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", ("no-such-c++-compiler",))
    assert gcompile.cpp_compiler() is None
    cfg = make_cfg(*TINY["vae"], "compile=true", "trainer.max_steps=2", "num_samples=0")
    with pytest.raises(IncompatibleConfigError, match=r"no C\+\+ compiler .*no-such-c\+\+-compiler.*Fix: install"):
        run(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("checkpoints/*.ckpt"))  # refused before any step
    family = build_family(cfg)
    assert gcompile.refusal(family, gcompile.CompileOptions(backend="aot_eager")) is None  # no code generated


def test_a_build_without_dynamo_and_a_refusing_family_are_refused(make_cfg, monkeypatch):
    family, _, _ = _setup(make_cfg, "vae")
    options = gcompile.CompileOptions(backend="aot_eager")
    monkeypatch.setattr(type(family), "compile_refusal", "its nets mutate a buffer under tracing")
    assert gcompile.refusal(family, options) == ("compile: model=vae cannot be compiled: its nets mutate a buffer "
                                                 "under tracing. Fix: compile=null to train eagerly.")
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    message = gcompile.refusal(family, options)
    assert message.startswith("compile='{backend: aot_eager, mode: null, dynamic: null, fullgraph: false}' cannot "
                              "run: TorchDynamo is not supported") and message.endswith("or compile=null to train eagerly.")


def test_bad_compile_values_are_refused_naming_the_valid_ones():
    assert gcompile.parse(None) is None and gcompile.parse(False) is None
    assert gcompile.parse(True) == gcompile.CompileOptions()
    with pytest.raises(IncompatibleConfigError, match=r"unknown keys \['mdoe'\]"):
        gcompile.parse({"mdoe": "max-autotune"})
    with pytest.raises(IncompatibleConfigError, match="max-autotune-no-cudagraphs"):
        gcompile.parse({"mode": "fastest"})
    with pytest.raises(IncompatibleConfigError, match="not a torch.compile backend"):
        gcompile.parse({"backend": "nope"})
    with pytest.raises(IncompatibleConfigError, match="null, true or a mapping"):
        gcompile.parse("yes")


class _Relu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return torch.relu(self.lin(x))


def test_a_compiler_failure_at_the_first_call_names_the_net_and_the_fix():
    nets = Nets(None, {"net": _Relu()})
    gcompile.compile_nets(Family(), nets, {"backend": "relu_compile_error_TESTING_ONLY"})
    with pytest.raises(IncompatibleConfigError, match=r"torch.compile failed on nets\['net'\] .*Fix: compile=null"):
        nets["net"](torch.randn(2, 3))


def test_compiling_is_idempotent_and_a_deep_copy_runs_its_own_weights():
    nets = Nets(None, {"net": _Relu(), "no_params": nn.Identity()})
    assert gcompile.compile_nets(Family(), nets, {"backend": "aot_eager"}) == ["net"]
    call = nets["net"]._compiled_call_impl
    gcompile.compile_nets(Family(), nets, {"backend": "aot_eager"})
    assert nets["net"]._compiled_call_impl is call and not gcompile.is_compiled(nets["no_params"])
    copied = copy.deepcopy(nets["net"])
    with torch.no_grad():
        copied.lin.bias.add_(10.0)
    x = torch.randn(4, 3)
    torch.testing.assert_close(copied(x), torch.relu(copied.lin(x)))
    assert not torch.allclose(copied(x), nets["net"](x))
