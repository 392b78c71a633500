"""Fault benchmark: short trainings under random SIGTERM / SIGINT / SIGKILL, relaunched until done.

    python scripts/bench_faults.py --trials 6 --steps 300 [--faults 2] [--seed 0] [--out DIR] [-- overrides...]

Each trial launches ``genlab-train trainer.max_steps=<steps>`` into its own run directory, sends a
random signal at a random time, then relaunches the *same command* into the same directory (which
resumes from ``checkpoints/last.ckpt``: :func:`genlab.runs.previous_run`) until the run finishes.
A callback defined here writes the global step after every training step, so the step at the moment
of each fault is known. Reported per fault: the signal, the exit code, the steps done, the step of
the checkpoint left behind and the steps lost (done - checkpointed; 0 is the goal for SIGTERM and
SIGINT, at most the checkpoint interval — one epoch — for SIGKILL). At the end every trial's final
weights and optimizer state are compared bit for bit with an uninterrupted run of the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from genlab.checkpoints import differences

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


class StepFile(Callback):
    """Writes ``trainer.global_step`` to ``path`` after every training step (atomically)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        tmp.replace(self.path)


def launch(run_dir: Path, steps: int, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "genlab.train", f"hydra.run.dir={run_dir}", f"trainer.max_steps={steps}",
            "trainer.max_epochs=100000", "callbacks.progress_bar.refresh_rate=0", "num_samples=4",
            "+callbacks.steps._target_=bench_faults.StepFile", f"+callbacks.steps.path={run_dir / 'steps.txt'}",
            *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "steps.txt").unlink(missing_ok=True)  # the steps of this launch (absolute: a resume continues)
    return subprocess.Popen(args, env=env, stdout=open(run_dir / "console.log", "a"), stderr=subprocess.STDOUT)


def steps_done(run_dir: Path) -> int:
    try:
        return int((run_dir / "steps.txt").read_text())
    except (OSError, ValueError):
        return 0


def checkpoint_step(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def fault(run_dir: Path, steps: int, overrides: list[str], rng: random.Random, window: tuple[float, float]) -> dict:
    """Launch, wait for training to start plus a random delay, send a random signal; the record."""
    proc = launch(run_dir, steps, overrides)
    t0 = time.monotonic()
    while steps_done(run_dir) == 0 and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    time.sleep(rng.uniform(*window))
    name = rng.choice(sorted(SIGNALS))
    done = steps_done(run_dir)
    if proc.poll() is not None:  # finished before the fault
        return {"signal": None, "rc": proc.returncode, "done": done, "checkpointed": checkpoint_step(run_dir), "lost": 0}
    sent = time.monotonic()
    proc.send_signal(SIGNALS[name])
    rc = proc.wait(timeout=300)
    exit_seconds = time.monotonic() - sent
    done_at_exit = steps_done(run_dir)
    ckpt = checkpoint_step(run_dir)
    return {"signal": name, "rc": rc, "done": done, "checkpointed": ckpt, "lost": max(0, done - ckpt),
            "trained_after_signal": done_at_exit - done, "exit_seconds": round(exit_seconds, 2)}


def finish(run_dir: Path, steps: int, overrides: list[str]) -> int:
    return launch(run_dir, steps, overrides).wait(timeout=3600)


def render(faults: list[dict], trials: list[dict]) -> str:
    lines = ["| trial | signal | exit code | steps done | checkpointed at | steps lost | exit s |", "|---|---|---|---|---|---|---|"]
    for f in faults:
        lines.append(f"| {f['trial']} | {f['signal']} | {f['rc']} | {f['done']} | {f['checkpointed']} | {f['lost']} | "
                     f"{f.get('exit_seconds', '')} |")
    by = {}
    for f in faults:
        if f["signal"]:
            by.setdefault(f["signal"], []).append(f["lost"])
    lines.append("")
    for name, lost in sorted(by.items()):
        lines.append(f"{name}: {len(lost)} faults, steps lost max {max(lost)}, mean {sum(lost) / len(lost):.1f}")
    ok = sum(t["finished"] for t in trials)
    same = sum(t["same_as_uninterrupted"] for t in trials)
    lines.append(f"runs completed: {ok}/{len(trials)}; final weights and optimizer state bit-identical to the "
                 f"uninterrupted run: {same}/{len(trials)}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=300, help="trainer.max_steps of every run")
    p.add_argument("--faults", type=int, default=2, help="faults per trial before it may finish")
    p.add_argument("--window", type=float, nargs=2, default=(0.0, 6.0), help="random delay (s) after training starts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="logs/bench_faults")
    p.add_argument("overrides", nargs="*", help="genlab-train overrides (after --)")
    a = p.parse_args()
    rng, out = random.Random(a.seed), Path(a.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    ref = out / "uninterrupted"
    assert finish(ref, a.steps, a.overrides) == 0, f"the uninterrupted run failed: see {ref / 'console.log'}"
    faults, trials = [], []
    for i in range(a.trials):
        run_dir = out / f"trial{i}"
        for _ in range(a.faults):
            faults.append({"trial": i, **fault(run_dir, a.steps, a.overrides, rng, tuple(a.window))})
            print(faults[-1], flush=True)
        rc = finish(run_dir, a.steps, a.overrides)
        results = json.loads((run_dir / "results.json").read_text())
        trials.append({"trial": i, "finished": rc == 0 and results["status"] == "finished",
                       "same_as_uninterrupted": not differences(ref / "checkpoints" / "last.ckpt",
                                                                    run_dir / "checkpoints" / "last.ckpt")})
    report = render(faults, trials)
    (out / "report.md").write_text(report + "\n")
    (out / "faults.json").write_text(json.dumps({"faults": faults, "trials": trials}, indent=2))
    print(report)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
