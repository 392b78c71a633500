"""Both stages of a two-stage model in one command: ``first_stage`` in a run config.

    genlab-train experiment=vqvae_pixelcnn dataset=mnist paths.data_dir=...

A config with ``first_stage.overrides`` (e.g. ``[model=vqvae, model.downsample=4]``) and no stage set
(``model.stage1`` / ``+stage1`` unset) trains the first stage before its own model, as a run of its own
in ``<run dir>/stage1`` (a ``genlab-train`` child process with those overrides, the same dataset and
its options, seed, paths, trainer and logger choice), then trains the prior over it: ``model.stage1``
(or ``+stage1`` for a plain prior) is set to that directory. The stage-1 directory is fixed by the run
directory, so relaunching an interrupted run (same ``hydra.run.dir``, or the same sweep) finds the
finished first stage there and skips it (genlab's skip-or-resume of a run directory), and an
interrupted first stage resumes. ``first_stage.share`` of the training budget (``trainer.max_time``
and/or ``callbacks.cpu_budget.seconds``) goes to the first stage and the rest to the prior: the pair
trains within the budget of one single-stage run (null: each stage keeps its own budget).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from genlab import interrupt
from genlab.runs import FIRST_STAGE_DIR
from genlab.families.base import IncompatibleConfigError

PASSED_GROUPS = ("dataset", "trainer", "logger")  # the chosen option of these groups is the first stage's too
PASSED_PREFIXES = ("dataset.", "paths.", "threads", "+dataset.")  # command-line overrides passed on
SET_HERE = ("paths.data_dir=",)  # passed from the resolved config instead (with the seed and the budget)


class FirstStageError(RuntimeError):
    """The first stage of a one-command two-stage run did not finish."""


def stage_key(cfg: DictConfig) -> str:
    """Where the first stage's run dir goes: ``model.stage1`` (a two-stage model config) or ``stage1``."""
    return "model.stage1" if "stage1" in cfg.model else "stage1"


def wanted(cfg: DictConfig) -> bool:
    """Whether this run trains its first stage itself: ``first_stage`` set and no stage given."""
    spec = cfg.get("first_stage")
    if not spec or not spec.get("overrides"):
        return False
    return not (cfg.model.get("stage1") or cfg.get("stage1"))


def plan(cfg: DictConfig) -> Path | None:
    """Fix the first stage's directory in ``cfg`` (before the run's config is checked, so that a relaunch
    has the same config) and split the time budget; the directory, or None when there is no first stage
    to train."""
    if not wanted(cfg):
        return None
    out = Path(cfg.paths.output_dir) / FIRST_STAGE_DIR
    with open_dict(cfg):
        if stage_key(cfg) == "stage1":
            cfg.stage1 = str(out)
        else:
            cfg.model.stage1 = str(out)
        if cfg.first_stage.get("share") is not None:
            split_budgets(cfg, float(cfg.first_stage.share))
    return out


def split_budgets(cfg: DictConfig, share: float) -> None:
    """``share`` of each budget that is set (``trainer.max_time``, ``callbacks.cpu_budget.seconds``) to the
    first stage (``first_stage.max_time`` / ``first_stage.cpu_seconds``), the rest to this run."""
    cpu = OmegaConf.select(cfg, "callbacks.cpu_budget.seconds")
    wall = cfg.trainer.get("max_time")
    if cpu is None and wall is None:
        raise IncompatibleConfigError("first_stage.share splits the training budget between the two stages, and "
                                      "neither trainer.max_time nor callbacks.cpu_budget.seconds is set. Fix: set one "
                                      "(e.g. trainer.max_time=00:00:20:00), or first_stage.share=null")
    if wall is not None:
        cfg.first_stage.max_time = split_time(wall, share)
        cfg.trainer.max_time = split_time(wall, 1.0 - share)
    if cpu is not None:
        check_share(share)
        cfg.first_stage.cpu_seconds = float(cpu) * share
        cfg.callbacks.cpu_budget.seconds = float(cpu) * (1.0 - share)


def check_share(share: float) -> None:
    if not 0.0 < share < 1.0:
        raise IncompatibleConfigError(f"first_stage.share={share}: the first stage's share of the budget must "
                                      "be between 0 and 1. Fix: e.g. first_stage.share=0.5, or null")


def seconds(max_time: str) -> int:
    """``"DD:HH:MM:SS"`` -> seconds."""
    parts = [int(p) for p in str(max_time).split(":")]
    if len(parts) != 4:
        raise ValueError(max_time)
    d, h, m, s = parts
    return ((d * 24 + h) * 60 + m) * 60 + s


def split_time(max_time: str | None, share: float) -> str:
    """``share`` of a ``"DD:HH:MM:SS"`` budget, in the same format."""
    check_share(share)
    try:
        total = round(seconds(str(max_time)) * share)
    except ValueError:
        raise IncompatibleConfigError(
            f"first_stage.share splits trainer.max_time between the two stages, and trainer.max_time={max_time} is "
            "not a DD:HH:MM:SS budget. Fix: set trainer.max_time=00:00:20:00, or first_stage.share=null") from None
    m, s = divmod(total, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def command(cfg: DictConfig, out: Path) -> list[str]:
    """The ``genlab-train`` command of the first stage."""
    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    groups = [f"{g}={chosen[g]}" for g in PASSED_GROUPS if chosen.get(g)]
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    passed = [o for o in task if o.startswith(PASSED_PREFIXES) and not o.startswith(SET_HERE)]
    budget = [f"trainer.max_time={cfg.first_stage.max_time}"] if cfg.first_stage.get("max_time") else []
    if cfg.first_stage.get("cpu_seconds") is not None:
        budget.append(f"callbacks.cpu_budget.seconds={cfg.first_stage.cpu_seconds}")
    return [sys.executable, "-m", "genlab.train", *groups, *cfg.first_stage.overrides, *passed,
            f"seed={cfg.seed}", f"paths.data_dir={cfg.paths.data_dir}", *budget, f"hydra.run.dir={out}"]


def train_first_stage(cfg: DictConfig, out: Path) -> None:
    """Run the first stage in ``out`` (skipped there when finished, resumed when interrupted); a first
    stage that fails or is interrupted stops this run with the command to continue. A SIGTERM to this
    process is passed on to the first stage (a Ctrl-C reaches both from the terminal), which saves its
    state; this run then stops as interrupted."""
    cmd = command(cfg, out)
    again = f"relaunch the same command with hydra.run.dir={Path(cfg.paths.output_dir)}"
    print(f"genlab: training the first stage in {out}:\n  {' '.join(cmd[2:])}", flush=True)
    with interrupt.handling():
        proc = subprocess.Popen(cmd)
        code = wait(proc)
        if (signum := interrupt.requested()) is not None:
            raise interrupt.RunInterrupted(signum, f"while training the first stage in {out} (to resume it: {again})")
    if code != 0:
        raise FirstStageError(
            f"the first stage in {out} did not finish (exit code {code}; its error is printed above, and in "
            f"{out / 'results.json'} where it got that far): the prior was not trained. Fix: correct the first stage's "
            f"options (first_stage.overrides) or what its error names, then {again} (a finished first stage is kept, "
            "an interrupted one resumes)")
    print(f"genlab: first stage ready in {out}; training the prior over its latents", flush=True)


def wait(proc: subprocess.Popen) -> int:
    """The child's exit code; a SIGTERM requested meanwhile is passed on to it once."""
    passed = False
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if interrupt.requested() == signal.SIGTERM and not passed:
                proc.send_signal(signal.SIGTERM)
                passed = True
