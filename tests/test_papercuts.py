"""What a new user hits first: plain trainer overrides everywhere, threads, quiet output, one grid per
epoch, composing a run from a script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from genlab.builders import CONFIG_DIR, compose_run, group_options
from genlab.families.base import IncompatibleConfigError
from genlab.train import oversubscribed, run, set_threads

TRAINER_OPTIONS = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2, "val_check_interval": 5,
                   "num_sanity_val_steps": 0, "enable_progress_bar": False, "accumulate_grad_batches": 2,
                   "min_steps": 1, "gradient_clip_val": 1.0, "max_time": "00:00:01:00"}


@pytest.mark.parametrize("experiment", [None, *group_options("experiment")])
def test_every_common_trainer_option_overrides_without_plus_under_every_experiment(experiment, tmp_path):
    base = [f"experiment={experiment}"] if experiment else []
    overrides = [f"trainer.{k}={v}" for k, v in TRAINER_OPTIONS.items()]
    cfg = compose_run([*base, *overrides], tmp_path)
    for key, value in TRAINER_OPTIONS.items():
        assert cfg.trainer[key] == value, key


def test_the_thread_setting_reaches_torch_and_bad_counts_are_refused(make_cfg, capsys):
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 == torch.get_num_threads()
        run(make_cfg("threads=1", "trainer.max_steps=2", "model.test_k=2", "num_samples=4"))
        assert torch.get_num_threads() == 1
        assert "| 1 threads on" in capsys.readouterr().out  # the run header says it
        with pytest.raises(IncompatibleConfigError, match="threads=0 is not a thread count"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_oversubscription_is_warned_only_when_the_load_says_so():
    assert oversubscribed(threads=2, cores=2, load=0.6) is None  # an idle machine, all cores
    assert oversubscribed(threads=1, cores=2, load=1.0) is None  # two one-thread runs on two cores
    warning = oversubscribed(threads=2, cores=2, load=1.2)  # another run is busy
    assert warning and "threads=1 per run" in warning


@pytest.mark.slow
def test_a_short_run_prints_no_lightning_noise(tmp_path):
    env = {**os.environ, "GENLAB_LOG_DIR": str(tmp_path / "logs"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "genlab.train", "trainer.max_steps=15", "model.test_k=2",
                           "num_samples=4", "threads=1"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for noise in ("LeafSpec", "litlogger", "FLOPs", "Total Flops", "could not find the monitored key",
                  "Skipping setting a default"):
        assert noise not in out, noise
    assert "Total params" in out and "genlab: model=vae" in out  # the summary and genlab's header remain


def test_sample_grids_are_drawn_once_per_epoch_with_step_based_validation(make_cfg, tmp_path):
    run(make_cfg("trainer.max_steps=22", "trainer.val_check_interval=3", "callbacks.samples.every_n_epochs=1",
                 "model.test_k=2", "num_samples=4", "trainer.max_epochs=10"))
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").glob("epoch=*.png"))
    assert grids == ["epoch=0000.png", "epoch=0001.png"]  # 2 epochs of 11 steps, 3 validations in each


def test_compose_run_builds_a_trainable_run_outside_hydra_main(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_LOG_DIR", str(tmp_path / "logs"))
    cfg = compose_run(["trainer.max_steps=3", "model.test_k=2", "num_samples=4"])
    out = cfg.paths.output_dir
    assert out.startswith(str(tmp_path / "logs" / "runs")) and "_" in out.rsplit("/", 1)[-1]  # <time>_<id>
    results = run(cfg)
    assert results["status"] == "finished" and results["path"].startswith(out)
    assert (results["model"], results["dataset"]) == ("vae", "digits")  # the chosen options are known
    assert (CONFIG_DIR / "train.yaml").exists()


def test_num_samples_zero_trains_and_tests_without_sampling(make_cfg):
    from genlab.train import run

    results = run(make_cfg("trainer.max_steps=2", "model.test_k=2", "num_samples=0"))
    assert results["status"] == "finished" and results["samples"] is None
    assert results["test"]["nll_kind"] != "none"
