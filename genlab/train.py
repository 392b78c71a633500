"""``genlab-train`` / ``python -m genlab.train``: compose a run with Hydra, fit, test, sample.

Every run writes ``<run dir>/results.json`` and ends its output with ``results: <path>``.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from genlab import interrupt, pipeline, quiet, runs
from genlab.builders import (CONFIG_DIR, build_callbacks_and_loggers, build_family, build_for_user, build_scheduler,
                             check_compatible, choices, sweep_group)
from genlab.callbacks.guard import RunGuard
from genlab.callbacks.samples import draw_grid, write_samples
from genlab.callbacks.summary import ModelSummary
from genlab.checkpoints import (AtomicCheckpointIO, CheckpointError, CheckpointWriteError, check_resume,
                                read_checkpoint)
from genlab.data.base import DataError
from genlab.families.base import IncompatibleConfigError
from genlab.module import GenerativeModule, TrainingDivergedError, checkpoint_paths
from genlab.results import RunOutcome, build_results, write_results
from genlab.runs import OutputDirError

USER_ERRORS = (DataError, IncompatibleConfigError, CheckpointError, OutputDirError)  # exit 2: fix the command
RUN_ERRORS = (TrainingDivergedError, CheckpointWriteError, pipeline.FirstStageError)  # exit 1: the run failed; a record is kept


def _fit_test_sample(cfg: DictConfig, module: GenerativeModule, trainer: L.Trainer, dm: Any, timings: dict,
                     ckpts: dict) -> tuple[dict, str | None]:
    """Fit, test the best checkpoint, write samples; returns (last val + test metrics, samples path).
    ``ckpts`` receives the checkpoint paths as they are after fitting."""
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    timings["train_seconds"] = time.perf_counter() - t0
    ckpts.update(checkpoint_paths(trainer))
    interrupt.check("after training")  # a signal during the final validation
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    t0 = time.perf_counter()
    test = trainer.test(module, datamodule=dm, ckpt_path=ckpts["best"], verbose=False)
    timings["test_seconds"] = time.perf_counter() - t0
    metrics = {**val, **(test[0] if test else {})}
    if not trainer.is_global_zero or cfg.num_samples <= 0:  # DDP: rank 0 samples; num_samples=0: none
        return metrics, None
    interrupt.check("before sampling")
    t0 = time.perf_counter()
    x, nrow = draw_grid(module, cfg.num_samples, cfg.seed)  # conditional: one row per class
    timings["samples_per_second"] = len(x) / (time.perf_counter() - t0)
    path = write_samples(x, module.info, Path(cfg.paths.output_dir) / "samples", nrow)
    torch.save(x.cpu(), path.with_suffix(".pt"))  # the raw samples, for genlab-eval --samples
    sample_metrics = {f"samples/{k}": v for k, v in dm.sample_metrics(x).items()}
    return {**metrics, **sample_metrics}, str(path)


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config; a missing mandatory value (``???``) or a wrongly typed trainer
    option is refused naming the key."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = err.full_key or "a config key"
        raise IncompatibleConfigError(f"{key} must be set (it is ??? in its config file). Fix: pass {key}=... on the "
                                      f"command line, e.g. {key}=<value>") from err
    check_trainer(config.get("trainer") or {})
    return config


TRAINER_INTS = ("max_steps", "max_epochs", "min_steps", "min_epochs", "check_val_every_n_epoch", "log_every_n_steps",
                "num_sanity_val_steps", "accumulate_grad_batches", "devices", "num_nodes")
TRAINER_NUMBERS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval",
                   "gradient_clip_val")


def check_trainer(trainer: dict[str, Any]) -> None:
    """Refuse a trainer option of the wrong type before Lightning fails on it without naming it."""
    for key, value in trainer.items():
        ints = key in TRAINER_INTS and not (key == "devices" and isinstance(value, (str, list)))
        bad = (ints and (isinstance(value, bool) or not isinstance(value, int))) or (
            key in TRAINER_NUMBERS and (isinstance(value, (bool, str)) or not isinstance(value, (int, float))))
        if value is not None and bad:
            kind = "an integer" if ints else "a number"
            raise IncompatibleConfigError(f"trainer.{key}={value!r} is not {kind}. Fix: pass trainer.{key}=<{kind}>, "
                                          f"e.g. trainer.{key}=100, or drop the override")


def prepare(cfg: DictConfig) -> tuple[dict[str, Any], runs.Previous, dict[str, dict]]:
    """Resolve the config, check the output dir, and decide about a run already there (skip a
    finished one, resume an interrupted one); a resume is checked against its checkpoint, which is
    returned (``{path: checkpoint}``) so that the trainer does not read it again."""
    config = resolve(cfg)
    out_dir = Path(cfg.paths.output_dir)
    runs.check_writable(out_dir)
    previous = runs.previous_run(out_dir, config)
    if previous.action == "resume":
        print(f"resuming the unfinished run in {out_dir} from {previous.checkpoint}", flush=True)
        with open_dict(cfg):
            cfg.ckpt_path = previous.checkpoint
        config["ckpt_path"] = previous.checkpoint
    read: dict[str, dict] = {}
    if cfg.get("ckpt_path") and previous.action != "skip":
        read[str(cfg.ckpt_path)] = read_checkpoint(cfg.ckpt_path)
        check_resume(str(cfg.ckpt_path), read[str(cfg.ckpt_path)], config)
    return config, previous, read


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, read: dict[str, dict] | None = None) -> L.Trainer:
    """``lightning.Trainer`` from ``cfg.trainer`` with genlab's atomic, verified checkpoint I/O
    (``read``: checkpoints already read, served without a second read)."""
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO(read)])
    except InstantiationException as err:
        raise IncompatibleConfigError(f"the trainer config was refused by lightning.Trainer ({err.__cause__ or err}). "
                                      "Fix: correct the trainer.* override named there") from err


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: keep torch's default, the physical cores); returns the count.
    genlab's loaders index in-memory tensors in the main process (no DataLoader workers), so this
    is every thread a run computes with."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise IncompatibleConfigError(f"threads={threads!r} is not a thread count. Fix: pass threads=<a positive "
                                          "integer> (e.g. threads=1 per run when runs share a machine), or threads=null")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def oversubscribed(threads: int, cores: int, load: float) -> str | None:
    """A warning when the machine's 1-minute load plus this run's threads exceed its cores."""
    if load + threads < cores + 1:  # another busy process (load >= 1) on top of all cores
        return None
    return (f"warning: the machine's load is {load:.1f} on {cores} cores and this run adds {threads} threads: "
            "it is oversubscribed and every run on the machine slows down. Fix: threads=1 per run when runs share "
            "a machine (or fewer runs at once)")


def header(cfg: DictConfig, chosen: dict[str, str], threads: int) -> str:
    """The line a run starts with: what trains on what, where it writes, with how many threads."""
    what = f"model={chosen.get('model', '?')} loss={chosen.get('loss', '?')} dataset={chosen.get('dataset', '?')}"
    return f"genlab: {what} seed={cfg.seed} | {threads} threads on {os.cpu_count()} cores | run dir {cfg.paths.output_dir}"


def start(cfg: DictConfig) -> dict[str, str]:
    """Threads, seed, the header line and an oversubscription warning; returns the chosen options."""
    threads = set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    chosen = choices(cfg)
    print(header(cfg, chosen, threads), flush=True)
    warning = oversubscribed(threads, os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return chosen


def build_run(cfg: DictConfig, run_config: dict, chosen: dict[str, str],
              read: dict[str, dict]) -> tuple[GenerativeModule, Any, L.Trainer, RunGuard]:
    """Datamodule, module (family, optimizer, schedule), trainer with every callback and logger."""
    datamodule = build_for_user("dataset", lambda: instantiate(cfg.dataset))
    family = build_for_user("model / loss", lambda: build_family(cfg, datamodule))
    check_compatible(family, datamodule.info, chosen)
    optimizer = build_for_user("optimizer", lambda: instantiate(cfg.optimizer))
    scheduler = build_for_user("scheduler", lambda: build_scheduler(cfg))
    module = GenerativeModule(family, datamodule.info, optimizer, scheduler, cfg.seed, run_config)
    callbacks, loggers = build_callbacks_and_loggers(cfg, module)
    guard = RunGuard()
    summary = [ModelSummary()] if cfg.trainer.get("enable_model_summary", True) else []
    trainer = build_trainer(cfg, [*callbacks, *summary, guard], loggers, read)
    for logger in loggers:
        logger.log_hyperparams(run_config)
    return module, datamodule, trainer, guard


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, train, test, sample; return the results dict. A finished run
    already in the output dir is skipped, an unfinished one resumed (:func:`prepare`)."""
    quiet.install()
    first_stage = pipeline.plan(cfg)  # a two-stage run in one command: the stage-1 dir is part of the config
    run_config, previous, read = prepare(cfg)
    if previous.action == "skip":
        print(f"{cfg.paths.output_dir} already holds this finished run (same config): skipped", flush=True)
        return {**previous.results, "path": str(Path(cfg.paths.output_dir) / "results.json")}
    if first_stage is not None:
        pipeline.train_first_stage(cfg, first_stage)
    chosen = start(cfg)
    module, datamodule, trainer, guard = build_run(cfg, run_config, chosen, read)
    timings: dict[str, float] = {}
    ckpts: dict[str, str | None] = {}
    record = partial(_record, cfg, chosen, module, trainer, timings)
    try:
        with interrupt.handling():
            metrics, samples = _fit_test_sample(cfg, module, trainer, datamodule, timings, ckpts)
    except interrupt.RunInterrupted as err:
        paths = _saved(trainer, ckpts)
        paths["last"] = err.checkpoint = guard.interrupt_checkpoint or paths["last"]
        record(paths, "interrupted", str(err))
        raise
    except RUN_ERRORS as err:  # keep a record of the failed run next to its checkpoints
        record(_saved(trainer, ckpts), "failed", str(err))
        raise
    results = build_results(cfg, chosen, module, trainer, RunOutcome(metrics, timings, samples, ckpts))
    if trainer.is_global_zero:
        results["path"] = str(write_results(results, cfg.paths.output_dir))
    return results


def _saved(trainer: L.Trainer, after_fit: dict[str, str | None]) -> dict[str, str | None]:
    """The run's checkpoint paths: as they were after fitting where known (testing restores the
    callbacks' state from best.ckpt, which predates last.ckpt), else the callbacks' current ones."""
    return {**checkpoint_paths(trainer), **{k: v for k, v in after_fit.items() if v}}


def _record(cfg: DictConfig, chosen: dict, module: GenerativeModule, trainer: L.Trainer, timings: dict,
            ckpts: dict, status: str, error: str) -> None:
    """results.json of a run that did not finish (its checkpoints are named in it). On a full disk
    this may fail too: the error is then printed, and the run's checkpoints are still intact."""
    if not trainer.is_global_zero:
        return
    results = build_results(cfg, chosen, module, trainer,
                            RunOutcome(timings=timings, checkpoints=ckpts, status=status, error=error))
    try:
        write_results(results, cfg.paths.output_dir)
    except OSError as err:
        print(f"warning: could not write results.json ({type(err).__name__}: {err})", file=sys.stderr, flush=True)


def report(results: dict[str, Any]) -> str:
    """The closing lines a user reads: test NLL and where everything is."""
    t = results["test"]
    nll = (
        f"test NLL: {t['nll_bpd']:.4f}{_pm(t)} {t['unit']} ({t['nll_kind']}) = {t['nll_nats']:.2f} nats/example"
        if t["nll_kind"] != "none" else f"test NLL: — ({results['family']} has no likelihood)"
    )
    if "cond_nll_bpd" in t:  # a conditional run: nll_bpd is the marginal over classes
        se = f" ± {t['cond_nll_bpd_se']:.4f}" if "cond_nll_bpd_se" in t else ""
        nll = (f"{nll} (marginal over classes)\ntest NLL given the label: {t['cond_nll_bpd']:.4f}{se} {t['unit']}; "
               f"generative classifier accuracy {t.get('classifier_accuracy', float('nan')):.4f}")
    return f"{nll}\nsamples: {results['samples']}\ncheckpoint: {results['checkpoint']}\nresults: {results['path']}"


def _pm(stage: dict[str, Any]) -> str:
    """`` ± SE`` of an NLL where its standard error over the test examples was measured (it includes the
    Monte Carlo variation of an estimated NLL: the diffusion bound's timestep subsample, the IWAE draws)."""
    return f" ± {stage['nll_bpd_se']:.4f}" if "nll_bpd_se" in stage else ""


def _record_refusal(cfg: DictConfig, err: Exception) -> None:
    """results.json for a run refused before training (a diverged run has already written its own)."""
    out = Path(cfg.paths.output_dir) / "results.json"
    if out.exists():
        return
    chosen = choices(cfg)
    try:
        family = instantiate(cfg.model, objective=instantiate(cfg.loss)).name
    except Exception:  # the model config itself is broken: name the option
        family = chosen.get("model")
    try:
        write_results({"status": "refused", "error": str(err), "family": family, "model": chosen.get("model"),
                       "loss": chosen.get("loss"), "dataset": chosen.get("dataset"), "seed": cfg.get("seed"),
                       "sweep_group": sweep_group(), "test": {"nll_kind": "none"}, "val": {}},
                      cfg.paths.output_dir)
    except OSError:  # an unwritable run directory: the error printed above is the record
        pass


def main() -> float | None:
    """``genlab-train``: refuse an output location that Hydra could not create (it would fail with a
    traceback before genlab runs), then run :func:`train_main`."""
    problem = runs.precheck_output_root(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    return train_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Entry point; returns the best validation NLL (bits/dim) for Hydra sweepers (tuning on
    the test set would leak it into the choice of hyperparameters).

    Exit codes: 2 for a command to fix (bad config, data or checkpoint), 1 for a run that failed
    (diverged, disk full), 128 + signal for an interrupted run (143 SIGTERM, 130 SIGINT)."""
    try:
        results = run(cfg)
    except interrupt.RunInterrupted as err:  # also in a sweep: the process was asked to stop
        ckpt = err.checkpoint
        print(f"\n{err}; the run's state is saved in {ckpt or 'no checkpoint (none written yet)'}"
              f"{'. Resume with ckpt_path=' + ckpt if ckpt else ''}; results: "
              f"{Path(cfg.paths.output_dir) / 'results.json'} (status: interrupted)", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    except (*USER_ERRORS, *RUN_ERRORS) as err:
        code = 2 if isinstance(err, USER_ERRORS) else 1
        if sweep_group() is None:
            print(f"\nerror: {err}", file=sys.stderr, flush=True)
            sys.exit(code)
        # in a sweep, one refused or diverged run must not stop the others
        print(f"\nerror: {err}", file=sys.stderr, flush=True)
        _record_refusal(cfg, err)
        return None
    if "path" not in results:  # DDP ranks other than 0 write nothing
        return None
    print(report(results), flush=True)
    return results["val"].get("best_nll_bpd") or results["val"].get("nll_bpd")


if __name__ == "__main__":
    main()
