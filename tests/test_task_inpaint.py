"""``genlab-task inpaint``: masks, the exactness of autoregressive conditional sampling (closed
form), RePaint's resampling schedule, and end-to-end runs on tiny digits models: observed pixels
untouched, a real PNG, the model's fill beats a uniform-noise fill; flow and GAN refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.families.autoregressive import Autoregressive
from genlab.nets.ar import ARNet
from genlab.tasks.base import stream_seed
from genlab.tasks.cli import main
from genlab.families.autoregressive.family import order_is_exact
from genlab.families.diffusion.repaint import repaint_schedule
from genlab.tasks.masks import make_mask

DIGITS = ["dataset=digits", "trainer.max_steps=-1", "trainer.check_val_every_n_epoch=${trainer.max_epochs}",
          "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "callbacks.samples.every_n_epochs=1000",
          "trainer.enable_model_summary=false"]  # about 12 steps per epoch; validated (and saved) at the end
# tiny models, shared with tests/test_task_denoise.py through the session fixture (same names, same overrides)
RUNS: dict[str, list[str]] = {
    "task_ddpm": ["model=ddpm_mlp", "model.net.hidden=128", "model.net.layers=2", "model.timesteps=100",
                  "model.val_timesteps=4", "optimizer.lr=2e-3", "trainer.max_epochs=50", "callbacks.ema.decay=0.99",
                  *DIGITS],
    "task_fm": ["model=flow_matching_mlp", "model.net.hidden=128", "model.net.layers=2", "optimizer.lr=2e-3",
                "trainer.max_epochs=50", "callbacks.ema.decay=0.99", "model.solver.steps=10",
                "model.val_likelihood.solver.steps=2", "model.test_likelihood.solver.method=euler",
                "model.test_likelihood.solver.steps=2", *DIGITS],
    "task_pixelcnn": ["model=pixelcnn", "model.net.channels=16", "model.net.layers=3", "model.net.out_hidden=32",
                      "optimizer.lr=3e-3", "trainer.max_epochs=17", *DIGITS],
    "task_vae": ["model=vae", "model.encoder.hidden=[128]", "model.decoder.hidden=[128]", "model.latent_dim=8",
                 "model.test_k=2", "optimizer.lr=2e-3", "trainer.max_epochs=25", *DIGITS],
    "task_ebm": ["model=ebm_mlp", "model.energy_net.hidden=[128]", "model.sampler.train_steps=10",
                 "model.sampler.step_size=1.0", "model.sampler.noise_std=0.01", "model.buffer_size=2000",
                 "optimizer.lr=1e-3", "trainer.max_epochs=40", *DIGITS],
    "task_glow": ["model=glow", "model.num_scales=1", "model.steps_per_scale=1", "model.coupling_net.hidden=8",
                  "trainer.max_epochs=1", *DIGITS],
    "task_gan": ["model=gan_mlp", "model.generator.hidden=[16]", "model.discriminator.hidden=[16]",
                 "trainer.max_epochs=1", *DIGITS],
}


def checkpoint(trained_run, name: str) -> str:
    return trained_run(name, *RUNS[name])["checkpoint"]


# -- masks ------------------------------------------------------------------------------------------
def test_masks_cover_the_stated_pixels_and_all_channels_of_a_pixel():
    box = make_mask("box", 3, (2, 8, 8), box_frac=0.5)
    assert box.shape == (3, 2, 8, 8) and box.dtype == torch.bool
    assert box[0, 0].nonzero().tolist() == [[r, c] for r in range(2, 6) for c in range(2, 6)]
    bottom = make_mask("bottom", 2, (1, 8, 8))
    assert bottom[:, :, 4:].all() and not bottom[:, :, :4].any()
    rnd = make_mask("random", 400, (3, 8, 8), random_p=0.3, seed=1)
    assert (rnd == rnd[:, :1]).all()  # a pixel is missing in every channel or in none
    assert abs(rnd.float().mean().item() - 0.3) < 0.02
    assert not torch.equal(rnd[0], rnd[1])  # a fresh draw per image
    assert torch.equal(rnd, make_mask("random", 400, (3, 8, 8), random_p=0.3, seed=1))  # seeded


def test_stream_seeds_decorrelate_the_mask_from_the_models_noise():
    # the same integer seed gives the same uniforms: a random mask would pick the pixels whose
    # model noise is low (an EBM starts its chains from those very uniforms)
    torch.manual_seed(0)
    same = torch.rand(20000) < 0.5
    torch.manual_seed(0)
    assert torch.equal(same, torch.rand(20000) < 0.5)
    mask = make_mask("random", 20000, (1, 1, 1), random_p=0.5, seed=stream_seed(0, "mask")).flatten()
    torch.manual_seed(0)
    noise = torch.rand(20000)
    assert abs(noise[mask].mean() - noise[~mask].mean()) < 0.02  # ~5 standard errors
    assert len({stream_seed(0, "mask"), stream_seed(0, "noise"), stream_seed(1, "mask")}) == 3


# -- autoregressive: exact conditional in closed form -------------------------------------------------
class TableNet(ARNet):
    """Two binary-ish pixels (a 2x1 image, 3 levels) with a known joint ``P(a, b)``: logits
    ``log P(a)`` for the top pixel and ``log P(b | a)`` for the bottom one (raster order)."""

    def __init__(self, shape, levels, num_params, joint: Tensor) -> None:
        super().__init__(shape, levels, num_params)
        self.register_buffer("joint", joint)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        a = x.reshape(len(x), -1)[:, 0].long()
        top = self.joint.sum(1).log().expand(len(x), -1)  # (B, L)
        bottom = (self.joint[a] / self.joint[a].sum(1, keepdim=True)).log()  # (B, L)
        return torch.stack([top, bottom], dim=-1)  # (B, P=L, D=2)


def test_autoregressive_fill_draws_the_exact_conditional_when_missing_pixels_come_last():
    joint = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.08, 0.20], [0.10, 0.10, 0.10]])
    fam = Autoregressive(net=lambda shape, levels, num_params: TableNet(shape, levels, num_params, joint))
    nets = fam.build(DataInfo("table", "image", (1, 2, 1), 3))
    torch.manual_seed(0)
    n = 30000
    x = torch.full((n, 1, 2, 1), 2, dtype=torch.uint8)
    x[: n // 2, :, 0] = 0  # half the images have a = 0, half a = 2; b is missing
    bottom = torch.zeros_like(x, dtype=torch.bool)
    bottom[:, :, 1] = True
    assert order_is_exact(nets["net"].order(), bottom)
    out = fam.inpaint(nets, x, bottom)
    assert torch.equal(out[:, :, 0], x[:, :, 0])
    for a, rows in ((0, slice(0, n // 2)), (2, slice(n // 2, n))):
        freq = torch.bincount(out[rows, 0, 1, 0].long(), minlength=3).double() / (n // 2)
        exact = (joint[a] / joint[a].sum()).double()
        assert (freq - exact).abs().max() < 0.015, (a, freq, exact)  # 4 standard errors at most
    # top missing, bottom observed: later observed pixels are ignored, so P(a), not P(a | b)
    top = ~bottom
    assert not order_is_exact(nets["net"].order(), top)
    out = fam.inpaint(nets, torch.zeros_like(x), top)  # observed b = 0
    freq = torch.bincount(out[:, 0, 0, 0].long(), minlength=3).double() / n
    marginal, conditional = joint.sum(1).double(), (joint[:, 0] / joint[:, 0].sum()).double()
    assert (freq - marginal).abs().max() < 0.015 and (freq - conditional).abs().max() > 0.2


# -- diffusion: the RePaint schedule -------------------------------------------------------------------
def test_repaint_schedule_goes_from_noise_to_data_with_the_stated_jumps():
    assert repaint_schedule(5, jump=2, resample=1) == [4, 3, 2, 1, 0, -1]  # no resampling: plain descent
    states = repaint_schedule(10, jump=3, resample=2)
    assert states[0] == 9 and states[-1] == -1
    moves = [b - a for a, b in zip(states[:-1], states[1:])]
    assert set(moves) == {-1, 1}  # one step down (reverse) or up (forward) at a time
    ups = sum(m == 1 for m in moves)
    assert ups == 3 * len(range(0, 10 - 3, 3))  # one jump of 3 at each of t = 0, 3, 6
    assert sum(m == -1 for m in moves) == 10 + ups


# -- end to end -------------------------------------------------------------------------------------------
def _noise_fill_mse(real: Tensor, missing: Tensor, levels: int) -> float:
    """Expected masked MSE ([0, 1] scale) of a fill with uniform random levels, in closed form:
    ``E[(u - x)^2] = Var u + (E u - x)^2``."""
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    x = real[missing].double() / (levels - 1)
    return float((grid.var(unbiased=False) + (grid.mean() - x) ** 2).mean())


@pytest.mark.parametrize("name,mask,extra", [  # sampled fills have ~2x the least-squares error: easier masks for them
    ("task_pixelcnn", "bottom", []), ("task_ddpm", "random", ["steps=20"]), ("task_fm", "bottom", ["steps=10"]),
    ("task_vae", "box", ["iters=10"]), ("task_ebm", "random", []),
])
@pytest.mark.slow
def test_inpaint_keeps_the_observed_pixels_and_beats_a_noise_fill(trained_run, tmp_path, capsys, name, mask, extra):
    ckpt = checkpoint(trained_run, name)
    assert main(["inpaint", f"ckpt={ckpt}", f"out={tmp_path}", "n=40", f"mask={mask}", *extra]) == 0
    printed = capsys.readouterr().out
    assert "masked MSE" in printed
    saved = torch.load(tmp_path / "inpaint.pt")
    real, missing, filled = saved["real"], saved["missing"], saved["filled"]
    assert real.shape == (40, 1, 8, 8) and filled.dtype == real.dtype == torch.uint8
    assert torch.equal(missing, make_mask(mask, 40, (1, 8, 8), seed=stream_seed(0, "mask")))
    assert torch.equal(filled[~missing], real[~missing])  # the invariant
    assert int(filled.max()) <= 16 and not torch.equal(filled[missing], real[missing])  # filled, not copied
    report = json.loads((tmp_path / "inpaint.json").read_text())
    levels = 17
    mse = ((filled[missing].double() - real[missing].double()) / (levels - 1)).pow(2).mean().item()
    assert report["metrics"]["model"]["mse"] == pytest.approx(mse)
    assert mse < 0.75 * _noise_fill_mse(real, missing, levels), printed
    assert report["exact"] == (True if name == "task_pixelcnn" else None)
    assert (tmp_path / "inpaint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model |" in (tmp_path / "inpaint.md").read_text()


@pytest.mark.slow
def test_autoregressive_box_mask_is_reported_as_not_exact(trained_run, tmp_path):
    ckpt = checkpoint(trained_run, "task_pixelcnn")
    assert main(["inpaint", f"ckpt={ckpt}", f"out={tmp_path}", "n=4", "mask=box"]) == 0
    report = json.loads((tmp_path / "inpaint.json").read_text())
    assert report["exact"] is False and "not exact" in (tmp_path / "inpaint.md").read_text()


def test_diffusion_resampling_runs_and_keeps_the_observed_pixels(trained_run, tmp_path):
    ckpt = checkpoint(trained_run, "task_ddpm")
    assert main(["inpaint", f"ckpt={ckpt}", f"out={tmp_path}", "n=8", "mask=bottom", "steps=10", "resample=3",
                 "jump=2"]) == 0
    saved = torch.load(tmp_path / "inpaint.pt")
    assert torch.equal(saved["filled"][~saved["missing"]], saved["real"][~saved["missing"]])


@pytest.mark.parametrize("name,family", [("task_glow", "flow"), ("task_gan", "gan")])
def test_flow_and_gan_are_refused_naming_the_families_that_work(trained_run, tmp_path, capsys, name, family):
    assert main(["inpaint", f"ckpt={checkpoint(trained_run, name)}", f"out={tmp_path}", "n=4"]) == 2
    err = capsys.readouterr().err
    assert f"not available for the {family} family" in err
    for works in ("autoregressive", "diffusion", "flow_matching", "vae", "ebm"):
        assert works in err


def test_bad_mask_names_the_choices(trained_run, tmp_path, capsys):
    assert main(["inpaint", f"ckpt={checkpoint(trained_run, 'task_vae')}", f"out={tmp_path}", "mask=circle"]) == 2
    assert "box, random, bottom" in capsys.readouterr().err
