"""``results.json``: what a finished (or failed) run leaves behind for comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from genlab.builders import sweep_group
from genlab.checkpoints import config_hash
from genlab.module import GenerativeModule


def _nll(metrics: dict[str, Any], stage: str, kind: str | None, unit: str) -> dict[str, Any]:
    if kind is None or f"{stage}/nll_nats" not in metrics:
        return {"nll_kind": "none"}
    return {
        "nll_bpd": float(metrics[f"{stage}/nll_bpd"]),
        "nll_nats": float(metrics[f"{stage}/nll_nats"]),
        "nll_kind": kind,
        "unit": unit,
    }


def build_results(
    cfg: DictConfig,
    chosen: dict[str, str],
    module: GenerativeModule,
    trainer: L.Trainer,
    metrics: dict[str, Any],
    timings: dict[str, float],
    samples: str | None,
    checkpoints: dict[str, str | None],
    status: str = "finished",
    error: str | None = None,
) -> dict[str, Any]:
    """Collect the run's identity, metrics (``{val,test}/nll_*``), timings and paths into one dict."""
    info = module.info
    best = getattr(trainer.checkpoint_callback, "best_model_score", None)
    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    return {
        "status": status,
        "error": error,
        "family": module.family.name,
        "model": chosen.get("model"),
        "loss": chosen.get("loss"),
        "dataset": info.name,
        "seed": cfg.get("seed"),
        "sweep_group": sweep_group(),
        "wandb_group": (wandb_cfg.get("group") or sweep_group()) if wandb_cfg else None,
        "params": sum(p.numel() for p in module.nets.parameters()),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_seconds": timings.get("train_seconds"),
        "timings": timings,
        "data": {"shape": list(info.shape), "levels": info.levels, "dims": info.dims,
                 "entropy_bpd": info.entropy_bpd, "uniform_bpd": math.log2(info.levels)},
        "val": {**_nll(metrics, "val", module.nll_kind.get("val"), info.unit),
                "best_nll_bpd": float(best) if best is not None else None},
        "test": _nll(metrics, "test", module.nll_kind.get("test"), info.unit),
        # every logged evaluation metric (e.g. the bound's standard error, NFE, modes covered)
        "metrics": {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))},
        "samples": samples,
        "history": module.history,
        "sample_metrics": {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("samples/")},
        "checkpoint": checkpoints.get("best") or checkpoints.get("last"),
        "checkpoints": checkpoints,
        "config": (config := OmegaConf.to_container(cfg, resolve=True)),
        # what a relaunched sweep compares to skip this run (genlab.runs.previous_run)
        "config_hash": config_hash(config),
    }


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``<out_dir>/results.json`` atomically (a crash never leaves half a file)."""
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)
    return path
