"""Sweeps and scale: Optuna search, the SLURM launcher config, DDP on CPU matching one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from genlab.builders import CONFIG_DIR

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL_PIXELCNN = ["model=pixelcnn", "model.net.channels=8", "model.net.layers=2", "model.net.out_hidden=8"]


def _train(*args, timeout=600):
    out = subprocess.run([sys.executable, "-m", "genlab.train", "callbacks.progress_bar.refresh_rate=0", *args],
                         capture_output=True, text=True, timeout=timeout, env=ENV)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_optuna_search_runs_trials_and_minimises_the_validation_nll(tmp_path):
    _train("hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
           f"paths.log_dir={tmp_path}", "trainer.max_epochs=1", "num_samples=4", *SMALL_PIXELCNN)
    (best,) = tmp_path.rglob("optimization_results.yaml")
    found = yaml.safe_load(best.read_text())
    trials = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert len(trials) == 2 and found["name"] == "optuna"
    assert found["best_value"] == pytest.approx(min(t["val"]["best_nll_bpd"] for t in trials))
    assert set(found["best_params"]) == {"optimizer.lr", "dataset.batch_size"}


def test_slurm_launcher_config_composes_to_submitit():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.tasks_per_node == 1
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


@pytest.mark.slow
@pytest.mark.parametrize("model", [SMALL_PIXELCNN])
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_combined_batch(tmp_path, model):
    common = [*model, "trainer.max_epochs=2", "num_samples=4", "dataset.eval_batch_size=50", "seed=3"]
    one = _train(*common, "dataset.batch_size=64", f"hydra.run.dir={tmp_path / 'one'}")
    two = _train(*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "dataset.batch_size=32",
                 f"hydra.run.dir={tmp_path / 'two'}")
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["global_step"] == r1["global_step"] > 0 and "test NLL" in one.stdout + two.stdout
    # same examples per step, gradients averaged over ranks; test NLL reduced over both ranks' shards
    assert r2["test"]["nll_bpd"] == pytest.approx(r1["test"]["nll_bpd"], abs=2e-4)
    assert r2["val"]["nll_bpd"] == pytest.approx(r1["val"]["nll_bpd"], abs=2e-4)
