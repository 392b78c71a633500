"""``results.json``: what a finished (or failed) run leaves behind for comparisons."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from genlab.builders import sweep_group
from genlab.checkpoints import config_hash
from genlab.data.base import DataInfo
from genlab.module import GenerativeModule


def _nll(metrics: dict[str, Any], stage: str, kind: str | None, unit: str) -> dict[str, Any]:
    """The ``stage`` NLL in ``unit`` (per dimension) and nats (per example), and its kind (exact,
    bound, ...); ``{"nll_kind": "none"}`` where the family has none or it was not evaluated."""
    if kind is None or f"{stage}/nll_nats" not in metrics:
        return {"nll_kind": "none"}
    errors = {k.split("/", 1)[1]: float(v) for k, v in metrics.items()
              if k.startswith((f"{stage}/nll_bpd_se", f"{stage}/cond_nll", f"{stage}/classifier_accuracy",
                               f"{stage}/nll_examples"))}
    return {
        "nll_bpd": float(metrics[f"{stage}/nll_bpd"]),
        "nll_nats": float(metrics[f"{stage}/nll_nats"]),
        "nll_kind": kind,
        "unit": unit,
        # nll_examples: the number of examples averaged; nll_bpd_se: the per-example standard error; a family
        # may add others (nll_bpd_se_*: a diffusion bound's nll_bpd_se_timesteps, the error of its timestep
        # subsample); a conditional model's log p(x | y): cond_nll_bpd, cond_nll_nats, cond_nll_bpd_se (nll_bpd
        # is then the marginal), and classifier_accuracy: the generative classifier argmax_y p(x | y) p(y) on
        # these examples
        **errors,
    }


@dataclass
class RunOutcome:
    """What a run produced, as :func:`build_results` records it.

    metrics: the logged metrics (``{val,test}/...``, ``samples/...``); empty if it stopped early.
    timings: seconds per phase (``train_seconds``, ...).
    samples: the path of the final sample grid, if one was written.
    checkpoints: ``{"best": path, "last": path}`` (either may be None).
    status: ``finished``, ``failed`` or ``interrupted``; error: the message of the latter two.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    samples: str | None = None
    checkpoints: dict[str, str | None] = field(default_factory=dict)
    status: str = "finished"
    error: str | None = None


def _identity(cfg: DictConfig, chosen: dict[str, str], module: GenerativeModule) -> dict[str, Any]:
    """Which run this is: family, model and loss configs, dataset, seed, sweep and W&B groups."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    return {
        "family": module.family.name,
        "model": chosen.get("model"),
        "loss": chosen.get("loss"),
        "dataset": module.info.name,
        "seed": cfg.get("seed"),
        "conditional": _condition(module),
        "sweep_group": sweep_group(),
        "wandb_group": (wandb_cfg.get("group") or sweep_group()) if wandb_cfg else None,
    }


def _condition(module: GenerativeModule) -> dict[str, Any] | None:
    """A conditional run's condition: classes, the prior ``p(y)``, the label dropout; None if unconditional."""
    if not module.conditional:
        return None
    cond = module.family.condition
    return {"kind": "class", "num_classes": cond.num_classes, "prior": list(cond.prior),
            "dropout": module.family.label_dropout()}


def _progress(module: GenerativeModule, trainer: L.Trainer, timings: dict[str, float]) -> dict[str, Any]:
    """How far it got: parameter count, optimizer steps, epochs and timings."""
    return {
        "params": sum(p.numel() for p in module.nets.parameters()),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_seconds": timings.get("train_seconds"),
        "timings": timings,
    }


def _data(info: DataInfo) -> dict[str, Any]:
    """The data: shape, levels ``L``, dimensions, entropy and the uniform model's ``log2 L`` bits/dim."""
    return {"shape": list(info.shape), "levels": info.levels, "dims": info.dims,
            "entropy_bpd": info.entropy_bpd, "uniform_bpd": math.log2(info.levels)}


def _evaluation(module: GenerativeModule, trainer: L.Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """The val / test NLL (with the best checkpoint's monitored score) and every evaluation metric."""
    info = module.info
    best = getattr(trainer.checkpoint_callback, "best_model_score", None)
    return {
        "val": {**_nll(metrics, "val", module.nll_kind.get("val"), info.unit),
                "best_nll_bpd": float(best) if best is not None else None},
        "test": _nll(metrics, "test", module.nll_kind.get("test"), info.unit),
        # every logged evaluation metric (e.g. the bound's standard error, NFE, modes covered)
        "metrics": {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))},
    }


def _sample_protocol(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """How the end-of-run samples behind ``sample_metrics`` were drawn: how many were asked for
    (``num_samples``; a conditional grid draws ``num_samples // K`` per class), the seed, the sampler
    config; None where no sample metric was computed."""
    if not any(k.startswith("samples/") for k in metrics):
        return None
    return {"metrics": "dataset sample metrics", "num_samples": config.get("num_samples"), "seed": config.get("seed"),
            "sampler": (config.get("model") or {}).get("sampler")}


def build_results(
    cfg: DictConfig, chosen: dict[str, str], module: GenerativeModule, trainer: L.Trainer, outcome: RunOutcome,
) -> dict[str, Any]:
    """Collect the run's identity, metrics (``{val,test}/nll_*``), timings and paths into one dict."""
    metrics, checkpoints = outcome.metrics, outcome.checkpoints
    config = OmegaConf.to_container(cfg, resolve=True)
    return {
        "status": outcome.status,
        "error": outcome.error,
        **_identity(cfg, chosen, module),
        **_progress(module, trainer, outcome.timings),
        "data": _data(module.info),
        **_evaluation(module, trainer, metrics),
        "samples": outcome.samples,
        "history": module.history,
        "sample_metrics": {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("samples/")},
        "sample_protocol": _sample_protocol(config, metrics),
        "checkpoint": checkpoints.get("best") or checkpoints.get("last"),
        "checkpoints": checkpoints,
        "config": config,
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
