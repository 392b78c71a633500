"""The plumbing, by real short trainings: end-to-end CLI, resume, NaN guard, loggers, toy entropy."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.families.vae import objectives
from genlab.module import NonFiniteLossError
from genlab.train import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(args, tmp_path, timeout=300):
    env = {**os.environ, "GENLAB_LOG_DIR": str(tmp_path / "logs"), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "genlab.train", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


@pytest.mark.slow
def test_default_run_end_to_end(tmp_path):
    proc = _cli([], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("results: ")
    assert any(line.startswith("test NLL: ") and "bits/dim" in line for line in lines)
    results = json.loads(Path(lines[-1].removeprefix("results: ")).read_text())
    for key in ("family", "dataset", "model", "loss", "seed", "params", "global_step", "train_seconds",
                "test", "samples", "checkpoint"):
        assert key in results, key
    assert (results["family"], results["dataset"], results["model"], results["loss"]) == ("vae", "digits", "vae", "elbo")
    t = results["test"]
    assert math.isfinite(t["nll_bpd"]) and t["nll_kind"] == "estimate"
    assert t["nll_nats"] == pytest.approx(t["nll_bpd"] * 64 * math.log(2), rel=1e-5)
    assert t["nll_bpd"] < math.log2(17)  # better than the uniform model
    assert Path(results["samples"]).read_bytes()[:8] == PNG_MAGIC
    assert Path(results["checkpoint"]).exists() and results["checkpoint"].endswith("best.ckpt")
    assert "Epoch" in proc.stderr + proc.stdout  # a progress bar was shown


@pytest.mark.slow
def test_cli_errors_are_one_paragraph_not_a_traceback(tmp_path):
    proc = _cli(["model=vae_conv", "dataset=text"], tmp_path)
    assert proc.returncode != 0
    assert "error: model=vae_conv cannot be trained on dataset=text" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(["dataset=text_file", "dataset.source.path=/nonexistent/file.txt"], tmp_path)
    assert proc.returncode != 0 and "/nonexistent/file.txt" in proc.stderr and "Traceback" not in proc.stderr


def _weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(make_cfg):
    common = ["trainer.max_epochs=4", "model.test_k=2", "num_samples=4", "callbacks.samples.every_n_epochs=1"]
    full = run(make_cfg(*common, name="full"))
    half = run(make_cfg(*common[1:], "trainer.max_epochs=2", name="half"))
    resumed = run(make_cfg(*common, f"ckpt_path={half['checkpoints']['last']}", name="resumed"))
    assert resumed["global_step"] == full["global_step"] == 2 * half["global_step"] > 0
    a, b = _weights(full["checkpoints"]["last"]), _weights(resumed["checkpoints"]["last"])
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6)
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=0, atol=1e-9)
    assert full["test"]["nll_bpd"] == pytest.approx(resumed["test"]["nll_bpd"], abs=1e-6)


def test_nan_loss_stops_with_clear_error_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = objectives.ELBO.__call__

    def poisoned(self, vae, nets, x):
        calls["n"] += 1
        out = original(self, vae, nets, x)
        if calls["n"] > 25:  # after two epochs (11 steps each) and their checkpoints
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objectives.ELBO, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 25") as err:
        run(make_cfg("trainer.max_epochs=5"))
    assert "last.ckpt" in str(err.value) and "optimizer.lr" in str(err.value)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "nan" in results["error"]
    ckpt = _weights(results["checkpoints"]["last"])
    assert ckpt["global_step"] == 22
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_toy_nll_approaches_but_never_beats_the_true_entropy(make_cfg):
    results = run(make_cfg("experiment=vae_toy", "model.test_k=200", "trainer.max_epochs=60"))
    entropy = results["data"]["entropy_bpd"]
    for split in ("val", "test"):
        assert results[split]["nll_bpd"] >= entropy
    assert results["test"]["nll_bpd"] <= 1.1 * entropy  # and it gets close
    early = run(make_cfg("experiment=vae_toy", "model.test_k=200", "trainer.max_epochs=2", name="early"))
    assert entropy <= results["test"]["nll_bpd"] < early["test"]["nll_bpd"]


def test_wandb_offline_and_tensorboard_receive_metrics_and_sample_images(make_cfg, tmp_path):
    common = ["trainer.max_epochs=1", "callbacks.samples.every_n_epochs=1", "model.test_k=2"]
    run(make_cfg("logger=wandb", *common, name="wb"))
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")) and list(runs[0].glob("files/media/images/samples_*.png"))
    assert (tmp_path / "wb" / "csv" / "metrics.csv").exists()  # CSV is always on
    run(make_cfg("logger=tensorboard", *common, name="tb"))
    events = list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1000


def test_a_checkpoint_alone_rebuilds_the_run(make_cfg):
    from genlab.builders import load_run

    results = run(make_cfg("trainer.max_epochs=2", "model.test_k=1"))
    module, dm = load_run(results["checkpoint"])
    assert module.info == dm.info and module.family.name == "vae"
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    ll = module.family.log_likelihood(module.nets, batch, stage="test")  # k=1: the ELBO bound
    assert ll.kind == "bound" and torch.isfinite(ll.log_px).all()
    x = module.sample(8, seed=0)
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.uint8


@pytest.mark.slow
def test_benchmark_runner_returns_the_results_of_a_cli_run(tmp_path, monkeypatch):
    from genlab.bench import bench_parser, budget, run_training, train_experiment

    assert budget(20) == "00:00:20:00" and budget(90) == "00:01:30:00"
    monkeypatch.setenv("GENLAB_LOG_DIR", str(tmp_path))
    r = run_training(["trainer=debug", "model.test_k=2", "num_samples=4"], threads=1)
    assert r is not None and Path(r["path"]).exists() and r["path"].startswith(str(tmp_path))
    assert r["family"] == "vae" and math.isfinite(r["test"]["nll_bpd"])
    assert run_training(["model=no_such_model"]) is None
    # the scripts' shared options: an experiment, a data dir, a budget and extra overrides
    a = bench_parser("doc", minutes=1).parse_args(["--data-dir", str(tmp_path), "trainer=debug", "num_samples=4"])
    r = train_experiment("vae_toy", a)
    assert r["dataset"] == "toy" and r["config"]["trainer"]["max_time"] == "00:00:01:00"
    assert r["config"]["paths"]["data_dir"] == str(tmp_path)


def test_last_checkpoint_is_the_latest_state_even_when_validation_stops_improving(make_cfg):
    results = run(make_cfg("optimizer.lr=0.0", "trainer.max_epochs=3", "model.test_k=2"))  # NLL never improves
    best, last = _weights(results["checkpoints"]["best"]), _weights(results["checkpoints"]["last"])
    assert best["global_step"] == 11 and last["global_step"] == 33
