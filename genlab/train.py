"""``genlab-train`` / ``python -m genlab.train``: compose a run with Hydra, fit, test, sample.

Every run writes ``<run dir>/results.json`` and ends its output with ``results: <path>``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.builders import (CONFIG_DIR, build_callbacks_and_loggers, build_family, build_scheduler,
                             check_compatible, choices, sweep_group)
from genlab.callbacks.samples import write_samples
from genlab.data.base import DataError
from genlab.families.base import IncompatibleConfigError
from genlab.module import GenerativeModule, TrainingDivergedError, checkpoint_paths
from genlab.results import build_results, write_results

USER_ERRORS = (DataError, IncompatibleConfigError, TrainingDivergedError)


def _fit_test_sample(cfg: DictConfig, module: GenerativeModule, trainer: L.Trainer, dm: Any, timings: dict,
                     ckpts: dict) -> tuple[dict, str | None]:
    """Fit, test the best checkpoint, write samples; returns (last val + test metrics, samples path).
    ``ckpts`` receives the checkpoint paths as they are after fitting."""
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    timings["train_seconds"] = time.perf_counter() - t0
    ckpts.update(checkpoint_paths(trainer))
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    t0 = time.perf_counter()
    test = trainer.test(module, datamodule=dm, ckpt_path=ckpts["best"], verbose=False)
    timings["test_seconds"] = time.perf_counter() - t0
    metrics = {**val, **(test[0] if test else {})}
    if not trainer.is_global_zero:  # DDP: rank 0 samples and writes the results
        return metrics, None
    t0 = time.perf_counter()
    x = module.sample(cfg.num_samples, seed=cfg.seed)
    timings["samples_per_second"] = cfg.num_samples / (time.perf_counter() - t0)
    path = write_samples(x, module.info, Path(cfg.paths.output_dir) / "samples")
    torch.save(x.cpu(), path.with_suffix(".pt"))  # the raw samples, for genlab-eval --samples
    sample_metrics = {f"samples/{k}": v for k, v in dm.sample_metrics(x).items()}
    return {**metrics, **sample_metrics}, str(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, train, test, sample; return the results dict."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    chosen = choices(cfg)
    datamodule = instantiate(cfg.dataset)
    family = build_family(cfg)
    check_compatible(family, datamodule.info, chosen)
    scheduler = build_scheduler(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    module = GenerativeModule(family, datamodule.info, instantiate(cfg.optimizer), scheduler, cfg.seed, run_config)
    callbacks, loggers = build_callbacks_and_loggers(cfg, module)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in loggers:
        logger.log_hyperparams(run_config)
    timings: dict[str, float] = {}
    ckpts: dict[str, str | None] = {}
    try:
        metrics, samples = _fit_test_sample(cfg, module, trainer, datamodule, timings, ckpts)
    except TrainingDivergedError as err:  # keep a record of the failed run next to its checkpoints
        results = build_results(cfg, chosen, module, trainer, {}, timings, None, checkpoint_paths(trainer), "failed", str(err))
        if trainer.is_global_zero:
            write_results(results, cfg.paths.output_dir)
        raise
    results = build_results(cfg, chosen, module, trainer, metrics, timings, samples, ckpts)
    if trainer.is_global_zero:
        results["path"] = str(write_results(results, cfg.paths.output_dir))
    return results


def report(results: dict[str, Any]) -> str:
    """The closing lines a user reads: test NLL and where everything is."""
    t = results["test"]
    nll = (
        f"test NLL: {t['nll_bpd']:.4f} {t['unit']} ({t['nll_kind']}) = {t['nll_nats']:.2f} nats/example"
        if t["nll_kind"] != "none" else f"test NLL: — ({results['family']} has no likelihood)"
    )
    return f"{nll}\nsamples: {results['samples']}\ncheckpoint: {results['checkpoint']}\nresults: {results['path']}"


def _record_refusal(cfg: DictConfig, err: Exception) -> None:
    """results.json for a run refused before training (a diverged run has already written its own)."""
    out = Path(cfg.paths.output_dir) / "results.json"
    if out.exists():
        return
    chosen = choices(cfg)
    try:
        family = build_family(cfg).name
    except Exception:  # the model config itself is broken: name the option
        family = chosen.get("model")
    write_results({"status": "refused", "error": str(err), "family": family, "model": chosen.get("model"),
                   "loss": chosen.get("loss"), "dataset": chosen.get("dataset"), "seed": cfg.get("seed"),
                   "sweep_group": sweep_group(), "test": {"nll_kind": "none"}, "val": {}},
                  cfg.paths.output_dir)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point; returns the best validation NLL (bits/dim) for Hydra sweepers (tuning on
    the test set would leak it into the choice of hyperparameters)."""
    try:
        results = run(cfg)
    except USER_ERRORS as err:
        if sweep_group() is None:
            sys.exit(f"\nerror: {err}")
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
