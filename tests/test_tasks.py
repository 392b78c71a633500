"""genlab-task: the CLI, and the anomaly / interpolate / augment tasks on tiny models trained here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genlab.tasks.anomaly import make_ood
from genlab.tasks.cli import main
from genlab.tasks.interpolate import lerp, slerp
from genlab.tasks.registry import TASKS

PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["dataset=digits", "callbacks.samples.every_n_epochs=1000"]


@pytest.fixture(scope="module")
def vae(trained_run):
    return trained_run("vae_digits", "model=vae", *FAST, "trainer.max_steps=400", "optimizer.lr=3e-3")["checkpoint"]


@pytest.fixture(scope="module")
def glow(trained_run):
    return trained_run("glow_digits", "model=glow", *FAST, "trainer.max_steps=60", "model.num_scales=1",
                       "model.steps_per_scale=2", "model.coupling_net.hidden=16")["checkpoint"]


@pytest.fixture(scope="module")
def gan(trained_run):
    return trained_run("gan_digits", "model=gan_mlp", *FAST, "trainer.max_steps=20")["checkpoint"]


@pytest.fixture(scope="module")
def fm(trained_run):
    return trained_run("fm_digits", "model=flow_matching_mlp", *FAST, "trainer.max_steps=300", "optimizer.lr=2e-3",
                       "model.net.hidden=64", "model.net.layers=2", "trainer.limit_test_batches=1",
                       "dataset.eval_batch_size=20", "model.test_likelihood.solver.method=midpoint")["checkpoint"]


@pytest.fixture(scope="module")
def ddpm(trained_run):
    return trained_run("ddpm_digits", "model=ddpm_mlp", *FAST, "model.net.hidden=64", "model.net.layers=2",
                       "model.timesteps=50", "trainer.max_steps=300", "optimizer.lr=2e-3")["checkpoint"]


# -- the CLI ------------------------------------------------------------------------------------
def test_help_lists_every_task_with_its_families(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("anomaly", "inpaint", "denoise", "interpolate", "augment", "compress"):
        assert f"  {name} " in out and name in TASKS
    assert out.count("families:") == len(TASKS)


def test_task_help_shows_options_and_defaults(capsys):
    assert main(["anomaly", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ckpt=???" in out and "ood=['noise', 'inverted', 'rotated', 'flipped']" in out


@pytest.mark.parametrize("argv, message", [
    (["denoize"], "unknown task 'denoize'; choose one of: anomaly"),
    (["anomaly"], "ckpt=... is required"),
    (["anomaly", "ckpt=nowhere.ckpt"], "checkpoint nowhere.ckpt does not exist"),
    (["anomaly", "ckpt=x.ckpt", "oood=[noise]"], "bad option for task 'anomaly'"),
    (["anomaly", "ckpt=x.ckpt", "n=many"], "bad option for task 'anomaly'"),
    (["anomaly", "verbose"], "arguments must be key=value"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- anomaly ------------------------------------------------------------------------------------
def test_ood_transforms():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    assert torch.equal(make_ood("inverted", make_ood("inverted", x, "image", 17, g), "image", 17, g), x)
    r = x
    for _ in range(4):
        r = make_ood("rotated", r, "image", 17, g)
    assert torch.equal(r, x) and not torch.equal(make_ood("rotated", x, "image", 17, g), x)
    noise = make_ood("noise", x, "image", 17, g)
    assert noise.dtype == x.dtype and noise.max() <= 16 and noise.float().std() > 3
    t = torch.randint(0, 50, (4, 30), generator=g)
    s = make_ood("shuffled", t, "text", 50, g)
    assert torch.equal(s.sort(-1).values, t.sort(-1).values) and not torch.equal(s, t)
    with pytest.raises(ValueError, match="not defined for text data"):
        make_ood("rotated", t, "text", 50, g)


@pytest.mark.slow
def test_anomaly_separates_noise_and_matches_the_test_nll(vae, trained_run, tmp_path):
    assert main(["anomaly", f"ckpt={vae}", f"out={tmp_path}", "n=1000", "batch_size=200"]) == 0
    report = json.loads((tmp_path / "anomaly.json").read_text())
    assert report["auroc"]["noise"] > 0.99 and set(report["auroc"]) == {"noise", "inverted", "rotated", "flipped"}
    in_name = "test (in-distribution)"
    from genlab.builders import load_run

    assert len(report["scores"][in_name]) == len(load_run(vae)[1].splits["test"])  # the whole digits test split
    # the same estimator as the run's own test: the mean agrees with results.json up to IW noise
    test_bpd = trained_run("vae_digits")["test"]["nll_bpd"]
    assert report["mean_score"][in_name] == pytest.approx(test_bpd, rel=0.02)
    assert report["nll_kind"] in ("bound", "estimate")
    for name in ("roc.png", "scores.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "| noise |" in (tmp_path / "anomaly.md").read_text()


def test_anomaly_reads_another_dataset_from_a_file(vae, tmp_path):
    blank = np.zeros((50, 8, 8), dtype=np.uint8)
    blank[:, 2:6, 2:6] = 16  # filled squares: not digits
    np.savez(tmp_path / "squares.npz", x=blank)
    assert main(["anomaly", f"ckpt={vae}", f"out={tmp_path / 'a'}", "n=100", "ood=[]",
                 f"ood_file={tmp_path / 'squares.npz'}"]) == 0
    report = json.loads((tmp_path / "a" / "anomaly.json").read_text())
    assert list(report["auroc"]) == ["squares"] and 0 <= report["auroc"]["squares"] <= 1
    np.save(tmp_path / "big.npy", np.zeros((5, 28, 28), dtype=np.uint8))
    assert main(["anomaly", f"ckpt={vae}", f"out={tmp_path / 'b'}", f"ood_file={tmp_path / 'big.npy'}"]) == 2


def test_families_without_likelihood_or_encoder_are_refused_by_name(gan, tmp_path, capsys):
    assert main(["anomaly", f"ckpt={gan}", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "not available for the gan family" in err and "autoregressive" in err and "flow_matching" in err
    assert main(["interpolate", f"ckpt={gan}", f"out={tmp_path}"]) == 2
    assert "no encoder" in capsys.readouterr().err


# -- interpolation ------------------------------------------------------------------------------
def test_slerp_and_lerp_closed_forms():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    t = torch.tensor([0.0, 0.5, 1.0])
    s = slerp(e1, e2, t)
    assert torch.allclose(s[0, 0], e1[0]) and torch.allclose(s[0, -1], e2[0], atol=1e-6)
    assert torch.allclose(s[0, 1], torch.tensor([1.0, 1.0]) / math.sqrt(2) * 2.0, atol=1e-6)  # 45 deg, norm 2
    assert torch.allclose(lerp(e1, e2, t)[0, 1], torch.tensor([0.5, 1.5]))
    a, b = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    norms = slerp(a, b, torch.linspace(0, 1, 5)).flatten(2).norm(dim=-1)
    assert torch.allclose(norms, torch.lerp(a.flatten(1).norm(dim=1)[:, None], b.flatten(1).norm(dim=1)[:, None],
                                            torch.linspace(0, 1, 5)), atol=1e-5)


def _interp(ckpt, tmp_path, *extra):
    assert main(["interpolate", f"ckpt={ckpt}", f"out={tmp_path}", "pairs=3", "steps=6", *extra]) == 0
    report = json.loads((tmp_path / "interpolate.json").read_text())
    out = torch.load(tmp_path / "interpolate.pt")
    assert out.shape == (3, 6, 1, 8, 8) and out.dtype == torch.uint8
    assert (tmp_path / "interpolate.png").read_bytes()[:8] == PNG
    return report, out


def test_flow_interpolation_reproduces_its_endpoints_exactly(glow, tmp_path):
    report, out = _interp(glow, tmp_path)
    assert report["path"] == "linear" and report["endpoint"]["exact_share"] > 0.99
    assert (out[:, 2].float() - out[:, 0].float()).abs().mean() > 0.1  # the path moves


def test_vae_interpolation_moves_from_a_to_b(vae, tmp_path):
    report, out = _interp(vae, tmp_path)
    d_a = (out.float() - out[:, :1].float()).flatten(2).abs().mean(-1)  # distance from the first image
    assert (d_a[:, -1] > d_a[:, 0]).all() and report["endpoint"]["mean_abs_error_levels"] < 8


@pytest.mark.slow
@pytest.mark.parametrize("which", ["fm", "ddpm"])
def test_ode_and_ddim_inversion_round_trip_better_than_chance(which, request, tmp_path):
    ckpt = request.getfixturevalue(which)
    report, out = _interp(ckpt, tmp_path, "inversion_steps=40")
    assert report["path"] == "slerp"
    err = report["endpoint"]["mean_abs_error_levels"]
    from genlab.builders import load_run

    _, dm = load_run(ckpt)
    x = dm.splits["test"].x[:6].float()
    chance = (x - x.roll(1, 0)).abs().mean().item()  # another real digit as the "reconstruction"
    assert err < 0.75 * chance  # tiny models after 300 steps; a 2,824-step MNIST DDPM: 5.4 of 255 levels


# -- augmentation -------------------------------------------------------------------------------
@pytest.mark.slow
def test_augment_writes_a_loadable_dataset_and_scores_three_classifiers(vae, tmp_path):
    assert main(["augment", f"ckpt={vae}", f"out={tmp_path}", "n_synthetic=300", "n_real=300",
                 "classifier_steps=300", "min_confidence=0.5"]) == 0
    report = json.loads((tmp_path / "augment.json").read_text())
    from genlab.data.array import ArrayDataModule

    dm = ArrayDataModule(str(tmp_path / "samples.npz"), levels=17)
    assert dm.info.shape == (1, 8, 8) and len(dm.data()[0]) == 300
    assert dm.data()[1].max() <= 9
    cls = report["classifiers"]
    assert set(cls) == {"real", "real+synthetic", "synthetic"}
    assert cls["real"]["test_accuracy"] > 0.6  # 300 labelled digits are plenty for 8x8 digits
    assert cls["real+synthetic"]["n_train"] == 300 + report["kept"] and 0 < report["kept"] <= 300
    assert all(0 <= c["test_accuracy"] <= 1 for c in cls.values())
    assert report["train_command"].startswith("genlab-train dataset=array")


def test_an_ebm_on_images_scores_by_its_energy(trained_run, tmp_path):
    ckpt = trained_run("ebm_digits", "model=ebm_mlp", *FAST, "trainer.max_steps=100")["checkpoint"]
    assert main(["anomaly", f"ckpt={ckpt}", f"out={tmp_path}", "n=100", "ood=[noise]"]) == 0
    report = json.loads((tmp_path / "anomaly.json").read_text())
    assert report["score"] == "energy" and report["nll_kind"] is None and "log Z" in report["unit"]
    assert report["auroc"]["noise"] > 0.9  # contrastive divergence pushes the energy of noise up first


def test_text_anomaly_by_a_char_transformer_and_image_tasks_refuse_text(trained_run, tmp_path, capsys):
    # the same tiny run as tests/test_task_compress.py (trained once per session)
    ckpt = trained_run("transformer_text_tiny", "model=transformer", "dataset=text", "dataset.block_size=24",
                       "callbacks.samples.every_n_epochs=1000", "trainer.limit_val_batches=2",
                       "trainer.limit_test_batches=2", "trainer.max_steps=30", "model.net.d_model=16",
                       "model.net.n_layers=1", "model.net.n_heads=2")["checkpoint"]
    assert main(["anomaly", f"ckpt={ckpt}", f"out={tmp_path}", "n=40", "ood=[noise,shuffled]"]) == 0
    report = json.loads((tmp_path / "anomaly.json").read_text())
    assert report["nll_kind"] == "exact" and report["unit"] == "bits/char"
    assert report["auroc"]["noise"] > 0.9  # uniform random characters vs text
    assert main(["anomaly", f"ckpt={ckpt}", f"out={tmp_path}", "ood=[rotated]"]) == 2
    assert "not defined for text data" in capsys.readouterr().err
    assert main(["interpolate", f"ckpt={ckpt}", f"out={tmp_path}"]) == 2
    assert "needs image data, not text" in capsys.readouterr().err
