"""Runs that never lose data: unique run dirs, signals, atomic and verified checkpoints, exact resume
from any step, resume overrides, the validated end of training, relaunched sweeps, clear errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from faults import assert_same_state, flip_bytes
from genlab import checkpoints
from genlab.checkpoints import CheckpointError, CheckpointWriteError, read_checkpoint, write_checkpoint
from genlab.data.base import DataError
from genlab.families.base import IncompatibleConfigError
from genlab.interrupt import RunInterrupted
from genlab.runs import OutputDirError
from genlab.train import run

FAST = ["model.test_k=2", "num_samples=4", "callbacks.progress_bar.refresh_rate=0"]  # the default VAE, quick


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GENLAB_LOG_DIR": str(tmp_path / "logs"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _popen(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genlab.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(tmp_path), cwd=tmp_path)


def _wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 180) -> None:
    """Wait until ``path`` exists (the process's output goes to a pipe that is read at its end)."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.2)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the process's output until a line containing ``text``; returns what was read."""
    seen, t0 = [], time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
        assert time.monotonic() - t0 < timeout, "".join(seen)[-3000:]
    raise AssertionError(f"{text!r} never printed:\n" + "".join(seen)[-3000:])


# -- run directories ------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_started_in_the_same_second_get_different_directories(tmp_path):
    code = ("from hydra import compose, initialize_config_dir; from genlab.builders import CONFIG_DIR\n"
            "with initialize_config_dir(str(CONFIG_DIR), version_base='1.3'):\n"
            "    c = compose('train', return_hydra_config=True)\n"
            "print(c.hydra.run.dir); print(c.hydra.run.dir)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(len(o) == 2 and o[0] == o[1] for o in outs), outs  # stable within a process
    assert outs[0][0] != outs[1][0]


def test_under_slurm_the_run_id_is_the_job_and_array_task(monkeypatch):
    from genlab import runs

    monkeypatch.setattr(runs, "_RUN_ID", {})
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert runs.run_id() == "j4242_3" == runs.run_id()


# -- signals --------------------------------------------------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_the_current_step_records_interrupted_and_exits_nonzero(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = _popen(["trainer.max_steps=100000", "trainer.max_epochs=100000", f"hydra.run.dir={out}", *FAST,
                   "dataset.batch_size=64"], tmp_path)
    _wait_for_file(proc, out / "checkpoints" / "last.ckpt")  # training is under way (an epoch checkpointed)
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(signum)
    rest = proc.communicate(timeout=60)[0]
    seconds = time.monotonic() - t0
    assert proc.returncode == code, rest[-3000:]
    assert seconds < 15, f"{seconds:.1f} s from signal to exit"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and signal.Signals(signum).name in results["error"]
    ckpt = read_checkpoint(results["checkpoints"]["last"])
    assert ckpt["global_step"] == results["global_step"]
    assert ckpt["global_step"] > results["history"][-1]["step"]  # the current step, not the last validated one
    assert "Traceback" not in rest and "ckpt_path=" in rest


@pytest.mark.slow
def test_sigterm_during_a_long_evaluation_exits_within_seconds(tmp_path):
    """The DDPM's full bound over 999 timesteps takes minutes: the test phase checks between chunks."""
    out = tmp_path / "run"
    args = ["model=ddpm_mlp", "trainer.max_steps=2", "model.eval_chunk=64", "num_samples=4",
            "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={out}"]
    proc = _popen(args, tmp_path)
    _wait_for(proc, "Restoring states from the checkpoint path")  # trainer.test has started
    time.sleep(2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, rest[-3000:]
    assert time.monotonic() - t0 < 15
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["test"] == {"nll_kind": "none"}  # no partial test NLL
    assert results["global_step"] == 2 and read_checkpoint(results["checkpoints"]["last"])["global_step"] == 2


# -- exact resume from any step ---------------------------------------------------------------
RESUME_CASES = {
    "vae": ["model.test_k=2"],
    "ema_flow_matching": ["model=flow_matching_mlp", "model.val_likelihood.solver.steps=2",
                          "model.test_likelihood.solver.method=midpoint", "model.test_likelihood.solver.steps=2"],
    "gan": ["model=gan_mlp", "dataset=mixture2d", "dataset.n_train=1536", "dataset.n_val=512", "dataset.n_test=512"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_a_mid_epoch_step_matches_an_uninterrupted_run_bit_for_bit(make_cfg, case):
    common = [*RESUME_CASES[case], *FAST[1:], "trainer.max_epochs=1000", "trainer.limit_test_batches=1"]
    full = run(make_cfg(*common, "trainer.max_steps=30", name="full"))
    part = run(make_cfg(*common, "trainer.max_steps=16", name="part"))  # stops mid-epoch
    assert part["history"][-1]["step"] == part["global_step"] == 16  # the last step was validated
    assert read_checkpoint(part["checkpoints"]["last"])["global_step"] == 16
    resumed = run(make_cfg(*common, "trainer.max_steps=30", f"ckpt_path={part['checkpoints']['last']}", name="res"))
    assert resumed["global_step"] == full["global_step"] == 30
    assert_same_state(full["checkpoints"]["last"], resumed["checkpoints"]["last"])


def test_a_step_based_run_resumed_from_an_epoch_end_checkpoint_matches_an_uninterrupted_run(make_cfg):
    """The checkpoint a SIGKILL leaves behind is the last epoch end; Lightning alone would skip an epoch."""
    common = [*FAST, "trainer.max_steps=40"]
    full = run(make_cfg(*common, "trainer.max_epochs=1000", name="full"))
    part = run(make_cfg(*common, "trainer.max_epochs=2", name="part"))  # ends at an epoch end, step 22
    assert part["global_step"] == 22
    resumed = run(make_cfg(*common, "trainer.max_epochs=1000", f"ckpt_path={part['checkpoints']['last']}", name="res"))
    assert_same_state(full["checkpoints"]["last"], resumed["checkpoints"]["last"])


def test_resume_from_a_signal_checkpoint_matches_an_uninterrupted_run(make_cfg, tmp_path):
    common = [*FAST, "trainer.max_steps=30"]
    full = run(make_cfg(*common, name="full"))
    with pytest.raises(RunInterrupted, match="SIGTERM after step 13"):
        run(make_cfg(*common, "+callbacks.stop._target_=faults.StopAt", "+callbacks.stop.step=13", name="stopped"))
    stopped = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["global_step"] == 13
    resumed = run(make_cfg(*common, f"ckpt_path={stopped['checkpoints']['last']}", name="res"))
    assert resumed["status"] == "finished"
    assert_same_state(full["checkpoints"]["last"], resumed["checkpoints"]["last"])


def test_resume_refuses_overrides_it_would_not_apply(make_cfg):
    part = run(make_cfg(*FAST, "trainer.max_steps=5", name="part"))
    ckpt = part["checkpoints"]["last"]
    with pytest.raises(CheckpointError, match=r"cannot change on resume.*optimizer\.lr \(0\.001 -> 1000000\.0\)"):
        run(make_cfg(*FAST, f"ckpt_path={ckpt}", "optimizer.lr=1e6", name="lr"))
    with pytest.raises(CheckpointError, match=r"model\._target_"):  # another family's checkpoint
        run(make_cfg(*FAST[1:], "model=realnvp", f"ckpt_path={ckpt}", name="other"))


def test_max_steps_and_max_time_runs_validate_and_checkpoint_their_final_state(make_cfg):
    r = run(make_cfg(*FAST, "trainer.max_steps=7", name="steps"))
    assert r["history"][-1]["step"] == 7 and r["val"]["nll_bpd"] is not None
    assert r["val"]["best_nll_bpd"] is not None  # what an Optuna trial returns (it was None mid-epoch)
    assert read_checkpoint(r["checkpoints"]["best"])["global_step"] == 7  # the best of all validated states
    r = run(make_cfg(*FAST, "trainer.max_time=00:00:00:02", "trainer.max_epochs=100000", name="time"))
    assert r["history"][-1]["step"] == r["global_step"] > 0


# -- checkpoints: atomic and verified -----------------------------------------------------
def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def full_disk(obj, f):  # writes part of the file, then the disk is full
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full.*previous last.ckpt there is intact"):
        write_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_a_disk_full_during_training_keeps_the_last_good_checkpoint_and_a_record(make_cfg, tmp_path, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def fills_up(obj, f):
        calls["n"] += 1
        if calls["n"] > 2:  # best + last of the first epoch fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoints.torch, "save", fills_up)
    with pytest.raises(CheckpointWriteError, match="disk is full"):
        run(make_cfg(*FAST, "trainer.max_epochs=3"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "disk is full" in results["error"]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 11


def test_corrupted_truncated_and_foreign_checkpoints_are_refused_naming_the_file(make_cfg, tmp_path):
    good = Path(run(make_cfg(*FAST, "trainer.max_steps=3", name="good"))["checkpoints"]["last"])
    flipped, truncated, text = tmp_path / "flipped.ckpt", tmp_path / "truncated.ckpt", tmp_path / "text.ckpt"
    flipped.write_bytes(good.read_bytes())
    flip_bytes(flipped)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("not a checkpoint\n")
    tensors = tmp_path / "tensors.ckpt"
    torch.save({"w": torch.ones(2)}, tensors)
    for path, why in ((flipped, "CRC-32"), (truncated, "not a checkpoint"), (text, "not a checkpoint"),
                      (tensors, "not a Lightning checkpoint"), (tmp_path / "missing.ckpt", "does not exist")):
        with pytest.raises(CheckpointError, match=why) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="CRC-32"):
        run(make_cfg(*FAST, "trainer.max_steps=6", f"ckpt_path={flipped}", name="resume"))


@pytest.mark.slow
def test_eval_and_task_clis_refuse_bad_checkpoints_with_one_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("hello")
    for cmd in (["genlab.evaluate", str(bad)], ["genlab.tasks.cli", "anomaly", f"ckpt={bad}"]):
        proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, env=_env(tmp_path),
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "error:" in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr


# -- relaunched sweeps ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_sweep_relaunched_skips_finished_runs_and_resumes_the_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "trainer.max_steps=60", f"hydra.sweep.dir={sweep}", *FAST]
    proc = _popen(args, tmp_path)
    _wait_for_file(proc, sweep / "0" / "results.json")  # the first run finished
    _wait_for_file(proc, sweep / "1" / "checkpoints" / "last.ckpt")  # the second is training
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out[-3000:]
    first, second = sweep / "0", sweep / "1"
    done = json.loads((first / "results.json").read_text())
    assert done["status"] == "finished"
    stopped = json.loads((second / "results.json").read_text())["global_step"]
    kept = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    relaunch = subprocess.run([sys.executable, "-m", "genlab.train", *args], capture_output=True, text=True,
                              env=_env(tmp_path), cwd=tmp_path, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"{first} already holds this finished run" in relaunch.stdout
    assert f"resuming the unfinished run in {second}" in relaunch.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished run's files are untouched
    resumed = json.loads((second / "results.json").read_text())
    assert resumed["status"] == "finished" and resumed["global_step"] == 60 > stopped
    assert resumed["history"][0]["step"] == 11  # the history continues from the interrupted run


def test_a_finished_run_of_another_config_is_never_overwritten(make_cfg, tmp_path):
    run(make_cfg(*FAST, "trainer.max_steps=3", name="same"))
    again = run(make_cfg(*FAST, "trainer.max_steps=3", name="same"))  # same config: skipped
    assert again["status"] == "finished" and again["global_step"] == 3
    with pytest.raises(OutputDirError, match="finished run of a different config"):
        run(make_cfg(*FAST, "trainer.max_steps=4", name="same"))


# -- bad input: one clear error ---------------------------------------------------------------
@pytest.mark.parametrize("overrides, error, words", [
    (["dataset.batch_size=0"], DataError, "dataset.batch_size=0 is not a batch size"),
    (["dataset.batch_size=-4"], DataError, "dataset.batch_size=-4"),
    (["dataset.eval_batch_size=0"], DataError, "dataset.eval_batch_size=0"),
    (["dataset=array"], IncompatibleConfigError, r"dataset.path must be set"),
    (["trainer.max_steps=abc"], IncompatibleConfigError, r"trainer.max_steps='abc' is not an integer"),
    (["trainer.limit_val_batches=lots"], IncompatibleConfigError, r"trainer.limit_val_batches='lots'"),
    (["model._target_=genlab.families.vae.Nope"], IncompatibleConfigError, r"model / loss config.*cannot be built"),
])
def test_bad_config_values_are_refused_naming_the_key(make_cfg, overrides, error, words):
    with pytest.raises(error, match=words):
        run(make_cfg(*overrides))


def test_unwritable_output_paths_are_refused_before_training(make_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="not a writable directory.*GENLAB_LOG_DIR"):
        run(make_cfg(*FAST, name="a_file/run"))


def test_usage_errors_exit_2_with_one_paragraph(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genlab.train", "dataset.batch_size=0"], capture_output=True,
                          text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "error: dataset.batch_size=0" in proc.stderr and "Traceback" not in proc.stderr


def test_data_errors_name_the_file_and_real_keys(tmp_path):
    import numpy as np

    from genlab.data.array import ArrayDataModule
    from genlab.data.text import PydocSource, TextDataModule

    path = tmp_path / "three.npy"
    np.save(path, np.zeros((3, 4, 4), dtype=np.uint8))
    dm = ArrayDataModule(str(path), batch_size=2)
    with pytest.raises(DataError, match=f"split is empty \\(from {path}\\)"):
        dm.val_dataloader()
    with pytest.raises(DataError) as err:
        TextDataModule(PydocSource(), block_size=10**7).info
    assert "train_fraction" not in str(err.value) and "val_fraction" in str(err.value)


@pytest.mark.slow
def test_a_log_dir_that_is_a_file_is_refused_before_hydra_creates_the_run_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    env = {**_env(tmp_path), "GENLAB_LOG_DIR": str(blocker)}
    for args in ([], ["-m", "seed=0,1"]):
        proc = subprocess.run([sys.executable, "-m", "genlab.train", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and f"{blocker} is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_nan_before_any_checkpoint_says_so(make_cfg, monkeypatch):
    from genlab.families.vae import objectives
    from genlab.module import NonFiniteLossError

    original = objectives.ELBO.__call__

    def poisoned(self, vae, nets, x):
        out = original(self, vae, nets, x)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objectives.ELBO, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved before it.*train again") as err:
        run(make_cfg(*FAST))
    assert "none saved yet" not in str(err.value)


def test_ode_likelihoods_stop_between_function_evaluations_on_a_stop_request():
    from genlab import interrupt
    from genlab.families.flow_matching.ode import CountedVelocity

    velocity = CountedVelocity(lambda x, t: -x)
    x = torch.zeros(2, 3)
    with interrupt.handling():
        velocity(torch.tensor(0.5), x)
        interrupt.handler(signal.SIGTERM, None)
        with pytest.raises(RunInterrupted, match="SIGTERM during the ODE solve"):
            velocity(torch.tensor(0.5), x)
    assert velocity.nfe == 1 and interrupt.requested() is None  # the request ends with the run


def test_a_resumed_checkpoint_is_read_once(make_cfg, monkeypatch):
    import genlab.train

    part = run(make_cfg(*FAST, "trainer.max_steps=5", name="part"))
    reads: list[str] = []
    real = checkpoints.read_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "read_checkpoint", counted)
    monkeypatch.setattr(genlab.train, "read_checkpoint", counted)
    run(make_cfg(*FAST, "trainer.max_steps=8", f"ckpt_path={part['checkpoints']['last']}", name="res"))
    assert reads.count(part["checkpoints"]["last"]) == 1  # checked against the config, then served to Lightning


def test_a_deferred_finite_check_stops_the_run_a_step_later_and_says_so(make_cfg, monkeypatch):
    """On an accelerator the check reads the loss without waiting for the device (genlab.finite); forced
    here on the CPU, a NaN at one step stops the run at the next one, naming both steps."""
    from genlab import finite, module
    from genlab.families.vae import objectives
    from genlab.module import NonFiniteLossError

    original, calls = objectives.ELBO.__call__, []

    def poisoned(self, vae, nets, x):
        out = original(self, vae, nets, x)
        calls.append(1)
        if len(calls) == 3:  # the third training step
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objectives.ELBO, "__call__", poisoned)
    monkeypatch.setattr(module, "FiniteWatch", lambda: finite.FiniteWatch(deferred=True))
    with pytest.raises(NonFiniteLossError, match=r"nan at step 2 \(found at step 3: on an accelerator") as err:
        run(make_cfg(*FAST))
    assert "were updated with it" in str(err.value) and len(calls) == 4


def test_the_finite_watch_waits_for_flags_that_have_not_arrived():
    import torch

    from genlab.finite import FiniteWatch, Pending

    class Event:
        done = False

        def query(self):
            return self.done

    watch, ev = FiniteWatch(deferred=True), Event()
    watch.pending.append(Pending(7, torch.tensor(False), torch.tensor(float("inf")), ev))
    assert watch.first_nonfinite() is None and len(watch.pending) == 1  # not on the host yet: no wait, no verdict
    ev.done = True
    bad = watch.first_nonfinite()
    assert bad is not None and bad.step == 7 and not watch.pending
    assert watch.check(8, torch.tensor(1.0)) is None and len(watch.pending) == 1  # read at the next step
    assert watch.check(9, torch.tensor(float("nan"))) is None  # step 8 was fine; 9 is read at step 10
    assert watch.check(10, torch.tensor(1.0)).step == 9
