"""Tasks on class-conditional runs: augment draws labelled samples (no pseudo-labels), inpaint /
interpolate / denoise take the examples' labels or a `label=`, classify reads p(y|x); bad labels are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.tasks.base import TaskError
from genlab.tasks.cli import run_task

COND = ["dataset=digits", "+conditional=class", "trainer.max_steps=30", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def cvae(tmp_path_factory):
    from genlab.builders import compose_run
    from genlab.train import run

    res = run(compose_run(["model=vae", *COND, "num_samples=20", "callbacks.progress_bar.refresh_rate=0",
                           "model.val_k=4", "model.test_k=16"],
                          tmp_path_factory.mktemp("cvae") / "run"))
    return Path(res["path"]).parent


def test_augment_writes_requested_labels_and_keeps_every_sample(cvae, tmp_path):
    out = run_task("augment", [f"ckpt={cvae}", "n_synthetic=40", "n_real=100", "classifier_steps=20",
                               f"out={tmp_path}"])
    assert out["labels"] == "requested (conditional model)" and out["kept"] == 40
    assert 0.0 <= out["label_agreement"] <= 1.0
    saved = np.load(tmp_path / "samples.npz")
    assert saved["y"].tolist() == [i % 10 for i in range(40)] and saved["x"].shape == (40, 8, 8)


def test_inpaint_and_interpolate_take_the_labels(cvae, tmp_path):
    out = run_task("inpaint", [f"ckpt={cvae}", "n=8", "mask=bottom", "iters=2", f"out={tmp_path / 'a'}"])
    assert out["metrics"]["model"]["mae"] >= 0
    forced = run_task("inpaint", [f"ckpt={cvae}", "n=8", "mask=bottom", "iters=2", "label=3", f"out={tmp_path / 'b'}"])
    assert forced["metrics"]["model"] != out["metrics"]["model"]  # the label reaches the fill
    paths = run_task("interpolate", [f"ckpt={cvae}", "pairs=2", "steps=4", f"out={tmp_path / 'c'}"])
    assert torch.load(tmp_path / "c" / "interpolate.pt").shape == (2, 4, 1, 8, 8)
    assert paths["endpoint"]["mean_abs_error_levels"] >= 0
    with pytest.raises(TaskError, match=r"labels must lie in 0..9"):
        run_task("inpaint", [f"ckpt={cvae}", "n=4", "label=12", f"out={tmp_path / 'd'}"])


def test_classify_reads_the_cvae_as_a_classifier(cvae, tmp_path):
    out = run_task("classify", [f"ckpt={cvae}", "n=100", f"out={tmp_path}"])
    assert out["source"] == "estimate" and 0 <= out["accuracy"] <= 1 and out["n"] == 100
    assert json.loads((tmp_path / "classify.json").read_text())["bins"]


def test_label_is_refused_on_an_unconditional_run(tmp_path):
    from genlab.builders import compose_run
    from genlab.train import run

    res = run(compose_run(["model=vae", "dataset=digits", "trainer.max_steps=5", "num_samples=0",
                           "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run"))
    with pytest.raises(TaskError, match="unconditional"):
        run_task("inpaint", [f"ckpt={Path(res['path']).parent}", "n=4", "label=3", f"out={tmp_path / 'x'}"])


def test_denoise_takes_the_labels_of_a_conditional_diffusion_model(tmp_path):
    from genlab.builders import compose_run
    from genlab.train import run

    res = run(compose_run(["model=ddpm_mlp", *COND, "num_samples=0", "callbacks.progress_bar.refresh_rate=0",
                           "model.val_timesteps=2", "model.test_timesteps=2"], tmp_path / "run"))
    out = run_task("denoise", [f"ckpt={Path(res['path']).parent}", "n=8", "sigma=0.3", "steps=5",
                               f"out={tmp_path / 'd'}"])
    forced = run_task("denoise", [f"ckpt={Path(res['path']).parent}", "n=8", "sigma=0.3", "steps=5", "label=0",
                                  f"out={tmp_path / 'e'}"])
    assert out["metrics"]["denoised"]["psnr"] != forced["metrics"]["denoised"]["psnr"]
