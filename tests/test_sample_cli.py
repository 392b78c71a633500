"""``genlab-sample``: loadable outputs (PNG grid, ``array``-format .npz, raw .pt, samples.json) from a tiny
checkpoint of every registered family; sampler overrides; labels of conditional runs; clear refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab import progress
from genlab.data.array import ArrayDataModule
from genlab.families.base import family_names
from genlab.sample import main

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = ["dataset=digits", "trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "num_samples=0", "dataset.batch_size=16", "trainer.enable_model_summary=false", "threads=1"]
VQVAE = ["model=vqvae", "model.downsample=2", "model.codebook_size=8", "model.encoder.channels=8",
         "model.decoder.channels=8", "model.encoder.res_blocks=1", "model.decoder.res_blocks=1"]
TINY = {  # one small model of each registered family on the default digits (8x8, 17 levels)
    "vae": ["model=vae", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]", "model.test_k=2"],
    "autoregressive": ["model=pixelcnn", "model.net.channels=8", "model.net.layers=2", "model.net.out_hidden=8"],
    "flow": ["model=realnvp", "model.num_scales=1", "model.checkerboard_steps=1", "model.steps_per_scale=1",
             "model.coupling_net.hidden=8", "model.coupling_net.blocks=1"],
    "diffusion": ["model=ddpm_mlp", "model.net.hidden=16", "model.net.layers=1", "model.timesteps=20",
                  "model.sampler.steps=3", "model.val_timesteps=2", "model.test_timesteps=2"],
    "flow_matching": ["model=flow_matching_mlp", "model.net.hidden=16", "model.net.layers=1", "model.solver.steps=3",
                      "model.val_likelihood.solver.steps=2", "model.test_likelihood.solver.method=euler",
                      "model.test_likelihood.solver.steps=2"],
    "gan": ["model=gan_mlp", "model.generator.hidden=[8]", "model.discriminator.hidden=[8]"],
    "ebm": ["model=ebm_mlp", "model.energy_net.hidden=[16,16]", "model.buffer_size=64",
            "model.sampler.train_steps=2", "model.sampler.sample_steps=2"],
    "vqvae": VQVAE,
    "two_stage": ["model=latent_pixelcnn", "model.prior.net.channels=8", "model.prior.net.layers=2",
                  "model.prior.net.out_hidden=8"],  # + model.stage1=<the vqvae run>
}


def run_dir(results: dict) -> Path:
    return Path(results["path"]).parent


@pytest.fixture(scope="module")
def tiny(trained_run, tmp_path_factory):
    """``tiny(family) -> run dir`` of a 2-step run of that family (trained once per session)."""
    data = tmp_path_factory.mktemp("latents")

    def _run(family: str) -> Path:
        extra = []
        if family == "two_stage":
            extra = [f"model.stage1={_run('vqvae')}", f"paths.data_dir={data}"]
        return run_dir(trained_run(f"sample_{family}", *TINY[family], *QUICK, *extra))

    return _run


def test_every_registered_family_has_a_case():
    from genlab.families.base import registered

    shipped = {c.name for c in registered() if c.__module__.startswith("genlab.")}  # not the tests' own families
    assert set(TINY) == shipped and shipped <= set(family_names())


def load_outputs(out: Path) -> tuple[torch.Tensor, np.ndarray, dict]:
    """The raw tensor, the npz images (as loaded by dataset=array) and samples.json; checks the PNG."""
    assert (out / "samples.png").read_bytes()[:8] == PNG
    record = json.loads((out / "samples.json").read_text())
    x = torch.load(out / "samples.pt")
    dm = ArrayDataModule(str(out / "samples.npz"), levels=record["levels"], val_fraction=0.25, test_fraction=0.25)
    assert dm.info.shape == tuple(x.shape[1:]) and dm.info.levels == record["levels"]
    loaded, _, _ = dm.data()
    return x, loaded.numpy(), record


def record_bars(monkeypatch) -> dict[str, list[float]]:
    """``{description: [advances]}`` of every progress bar opened from now on."""
    bars: dict[str, list[float]] = {}
    real = progress.bar

    @contextmanager
    def recording(desc, total, unit="it"):
        with real(desc, total, unit) as bar:
            steps = bars.setdefault(desc, [])
            advance = bar.advance
            bar.advance = lambda n=1: (steps.append(n), advance(n))
            yield bar

    monkeypatch.setattr(progress, "bar", recording)
    return bars


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_family_writes_loadable_outputs(family, tiny, tmp_path, monkeypatch):
    bars = record_bars(monkeypatch)
    out = tmp_path / "out"
    assert main([str(tiny(family)), "n=6", f"out={out}", "seed=3", "batch=4"]) == 0
    x, npz_x, record = load_outputs(out)
    assert x.shape == (6, 1, 8, 8) and not x.is_floating_point() and 0 <= int(x.min()) <= int(x.max()) <= 16
    assert np.array_equal(npz_x, x.numpy().astype(np.uint8)), "the npz holds the very samples"
    assert (record["family"], record["n"], record["seed"], record["labels"]) == (family, 6, 3, None)
    assert record["files"]["npz"] == str(out / "samples.npz") and "dataset.levels=17" in record["train_command"]
    assert bars["drawing 6 samples"] == [4, 2], "the bar moves once a batch"


def test_the_same_seed_gives_the_same_samples_and_overrides_change_the_sampler(tiny, tmp_path, capsys):
    run = str(tiny("diffusion"))
    draws = {}
    for name, extra in (("a", []), ("b", []), ("eta1", ["model.sampler.eta=1.0"]), ("seed", ["seed=4"])):
        assert main([run, "n=5", f"out={tmp_path / name}", "seed=1", *extra]) == 0
        draws[name] = torch.load(tmp_path / name / "samples.pt")
    assert torch.equal(draws["a"], draws["b"])
    assert not torch.equal(draws["a"], draws["eta1"]) and not torch.equal(draws["a"], draws["seed"])
    assert json.loads((tmp_path / "eta1" / "samples.json").read_text())["overrides"] == ["model.sampler.eta=1.0"]
    assert main([run, "n=5", f"out={tmp_path / 'bad'}", "model.sampler.stepz=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot be rebuilt with the overrides model.sampler.stepz=2" in err and "stepz" in err
    assert not (tmp_path / "bad").exists()


def test_the_default_output_folder_is_in_the_run(tiny):
    src = tiny("gan")
    assert main([str(src), "n=3"]) == 0
    assert torch.load(src / "generated" / "samples.pt").shape == (3, 1, 8, 8)


@pytest.fixture(scope="module")
def conditional(trained_run):
    return run_dir(trained_run("sample_cond_gan", *TINY["gan"], *QUICK, "+conditional=class"))


def test_a_conditional_run_draws_a_label_or_every_class(conditional, tmp_path, capsys):
    assert main([str(conditional), "n=7", f"out={tmp_path / 'three'}", "label=3"]) == 0
    with np.load(tmp_path / "three" / "samples.npz") as npz:
        assert npz["x"].shape == (7, 8, 8) and npz["y"].tolist() == [3] * 7
    record = json.loads((tmp_path / "three" / "samples.json").read_text())
    assert record["labels"] == "all 3" and record["label_counts"][3] == 7
    assert main([str(conditional), "n=12", f"out={tmp_path / 'all'}"]) == 0
    dm = ArrayDataModule(str(tmp_path / "all" / "samples.npz"), levels=17)
    assert dm.data()[1].tolist() == [i % 10 for i in range(12)] and dm.info.num_classes == 10
    assert main([str(conditional), "n=2", f"out={tmp_path / 'x'}", "label=10"]) == 2
    assert "label=10 is not a class of this run: pass an id in 0..9" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["{gan}", "label=1"], "label=1 was given, but this gan run is unconditional"),
    (["{gan}", "n=0"], "n=0: pass a positive integer"),
    (["{gan}", "steps=3"], "unknown option 'steps'"),
    (["{gan}", "verbose"], "arguments must be key=value"),
    (["n=3"], "the first argument is the run"),
    (["{tmp}/nowhere.ckpt"], "nowhere.ckpt does not exist"),
    (["{tmp}"], "has no results.json"),
    (["{gan}", "device=gpu0"], "device='gpu0' is not a torch device"),
])
def test_bad_requests_are_one_line_errors(argv, message, tiny, tmp_path, capsys):
    argv = [a.format(gan=tiny("gan"), tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not list(tmp_path.glob("**/samples.*"))


def test_text_runs_write_text_and_the_tensor(trained_run, tmp_path):
    results = trained_run("sample_text", "model=transformer", "dataset=text", "dataset.block_size=16",
                          "model.net.d_model=16", "model.net.n_layers=1", "model.net.n_heads=2", *QUICK[1:])
    assert main([str(run_dir(results)), "n=3", f"out={tmp_path}"]) == 0
    assert (tmp_path / "samples.txt").read_text(encoding="utf-8").count("-" * 40) == 2
    assert torch.load(tmp_path / "samples.pt").shape == (3, 16) and not (tmp_path / "samples.npz").exists()


def test_help_and_the_installed_command(capsys):
    assert main(["--help"]) == 0
    assert "genlab-sample <run dir | checkpoint.ckpt>" in capsys.readouterr().out
    exe = shutil.which("genlab-sample")
    assert exe is not None, "pip install -e . registers the genlab-sample command"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "samples.npz" in proc.stdout
