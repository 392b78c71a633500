"""Build the pieces of a run from its config, and refuse incompatible combinations early.

Compatibility is decided by the objects themselves (``Family.check_objective``,
``Family.check_data``); this module only turns a refusal into a message that names the
valid choices, found by asking every option of the ``model`` / ``loss`` config groups.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import genlab.runs  # noqa: F401  (registers the ${genlab_run_id:} resolver of configs/train.yaml)
from genlab.conditioning import ClassCondition, ConditionError, label_prior
from genlab.data.base import DataError, DataInfo
from genlab.data.latents import LatentCache
from genlab.families.base import Conditional, Family, IncompatibleConfigError, LatentPrior, able, registered

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def group_options(group: str) -> list[str]:
    """Names of the options of a config group (the YAML files in ``configs/<group>/``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """The node an option contributes to its group (``model`` options are ``@package _global_``)."""
    cfg = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    return cfg[group] if group in cfg and "_target_" not in cfg else cfg


def choices(cfg: DictConfig) -> dict[str, str]:
    """The chosen option per group (``model=...``), from Hydra's runtime where available."""
    if HydraConfig.initialized():
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    return {g: "?" for g in ("model", "loss", "dataset")}


def compose_run(overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None) -> DictConfig:
    """A run config from ``genlab-train`` overrides, outside ``@hydra.main`` (scripts, notebooks,
    benchmarks): ``genlab.train.run(compose_run(["model=ddpm", "trainer.max_steps=100"]))``.

    ``output_dir`` defaults to what ``genlab-train`` would use (``<paths.log_dir>/runs/<date>/<time>_<id>``).
    Hydra's runtime (the chosen options, used in results.json) is set as for a real run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    out = Path(output_dir) if output_dir is not None else Path(OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out.absolute())
        cfg.paths.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def build_family(cfg: DictConfig, datamodule: Any = None) -> Family:
    """Instantiate ``cfg.model`` with ``cfg.loss`` as its training objective; with ``cfg.stage1``
    (``+stage1=<run dir>``) as the prior over that first stage's latents (:func:`wrap_prior`), whose
    latents are then cached under ``<paths.data_dir>/genlab_latents`` for ``datamodule``'s splits; for a
    conditional run (``cfg.conditional``, e.g. ``+conditional=class``) with the condition built for
    ``datamodule``'s labels (:func:`build_condition`; ``datamodule`` is then required)."""
    family = instantiate(cfg.model, objective=instantiate(cfg.loss))
    if cfg.get("stage1"):
        family = wrap_prior(cfg, family)
    if isinstance(family, LatentPrior) and datamodule is not None:
        data_dir = OmegaConf.select(cfg, "paths.data_dir")
        family.use_latent_cache(LatentCache.of(datamodule, Path(data_dir) / "genlab_latents" if data_dir else None))
    if cfg.get("conditional"):
        if datamodule is None:
            raise IncompatibleConfigError("a conditional run's family is built with its datamodule (the labels give "
                                          "the number of classes and p(y)): build_family(cfg, datamodule)")
        family.condition = build_condition(cfg, family, datamodule)
    return family


def wrap_prior(cfg: DictConfig, prior: Family) -> Family:
    """``+stage1=<run dir>``: the run's model ``prior`` as the prior over that first stage's latents, in the
    registered :class:`~genlab.families.base.LatentPrior` family. A prior that cannot model the latents or
    has no likelihood of them is refused, naming the ``model`` options that can be one."""
    model = choices(cfg).get("model", "?")
    if isinstance(prior, LatentPrior):
        raise IncompatibleConfigError(
            f"+stage1={cfg.stage1} makes the run's model the prior over a first stage, and model={model} has its own "
            "first stage already (model.stage1). Fix: pass +stage1=<run dir> with a plain prior (e.g. model=pixelcnn), "
            "or drop +stage1 and set model.stage1=<run dir>")
    wrappers = [cls for cls in registered() if issubclass(cls, LatentPrior)]
    if not wrappers:
        raise IncompatibleConfigError(f"+stage1 needs a family with a prior over latents ({LatentPrior.__name__}); "
                                      "none is registered in this install. Fix: drop +stage1")
    family = wrappers[0].over(prior, str(cfg.stage1))
    if reason := family.check_prior():
        can = _valid("model", lambda fam: isinstance(fam, Family) and family.with_prior(fam).check_prior() is None)
        raise IncompatibleConfigError(
            f"model={model} cannot be the prior over the first stage +stage1={cfg.stage1} ({reason}). Priors that "
            f"can: {', '.join(can) or 'none in this install'}. Fix: pass model=<one of them>")
    return family


def build_condition(cfg: DictConfig, family: Family, datamodule: Any) -> ClassCondition:
    """The run's :class:`~genlab.conditioning.ClassCondition` (``cfg.conditional``): the number of classes
    from the data's metadata, ``p(y)`` from the train split's labels. Refuses data without labels and
    families that are not :class:`~genlab.families.base.Conditional`, naming the ones that are."""
    info = datamodule.info
    if not isinstance(family, Conditional):
        raise IncompatibleConfigError(
            f"+conditional=class cannot train family {family.name!r}: {Conditional.missing}. Families with a "
            f"conditional model: {able(Conditional)}. Fix: pick one of them (model=...), or drop +conditional")
    train = datamodule.splits["train"]
    if info.num_classes is None or train.y is None:
        labelled = ", ".join(labelled_datasets()) or "none"
        raise IncompatibleConfigError(
            f"+conditional=class needs labels, and dataset {info.name!r} has none{datamodule.source()}. Datasets with "
            f"labels: {labelled} (an `array` .npz with a `y` array has them too). Fix: choose one of them, or drop "
            "+conditional")
    factory = build_for_user("conditional", lambda: instantiate(cfg.conditional))
    try:
        return factory(num_classes=info.num_classes, prior=label_prior(train.y, info.num_classes))
    except ConditionError as err:
        raise IncompatibleConfigError(str(err)) from None


def build_for_user(what: str, make: Callable[[], Any]) -> Any:
    """``make()``, with a constructor's refusal (Hydra wraps it in ``InstantiationException``)
    raised as the one-paragraph error a user reads: the constructor's own :class:`DataError` /
    :class:`IncompatibleConfigError`, or one that names the config node and the cause."""
    try:
        return make()
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (DataError, IncompatibleConfigError)):
            raise cause from None
        node = re.search(r"full_key: (\S+)", str(err))
        raise IncompatibleConfigError(
            f"the {what} config{' node ' + node.group(1) if node else ''} cannot be built: "
            f"{type(cause).__name__ if cause else 'error'}: {cause or err}. Fix: correct or drop the override "
            f"of that option (genlab-train --help lists every group and option)") from err


def _valid(group: str, accept, context: dict | None = None) -> list[str]:
    """The options of ``group`` whose instance ``accept`` takes; ``context``: top-level keys their
    interpolations need (``${seed}``, ``${paths.data_dir}``)."""
    out = []
    for name in group_options(group):
        node = load_option(group, name)
        if context is not None:
            node = OmegaConf.merge(context, {group: node})[group]
        try:
            if accept(instantiate(node)):
                out.append(name)
        except Exception:  # an option that cannot be built stand-alone is simply not listed
            continue
    return out


def labelled_datasets() -> list[str]:
    """The ``dataset`` options whose data carry class labels (``info.num_classes``), with their defaults."""
    return _valid("dataset", lambda dm: bool(dm.info.num_classes), {"seed": 0, "paths": {"data_dir": "data"}})


def check_compatible(family: Family, info: DataInfo, chosen: dict[str, str]) -> None:
    """Raise :class:`IncompatibleConfigError` naming the valid choices, before any training."""
    model, loss, dataset = chosen.get("model", "?"), chosen.get("loss", "?"), chosen.get("dataset", "?")
    reason = family.check_objective(family.objective)
    if reason:
        valid = _valid("loss", lambda obj: family.check_objective(obj) is None)
        raise IncompatibleConfigError(
            f"loss={loss} cannot train model={model} ({reason}). Valid choices of loss for "
            f"model={model}: {', '.join(valid) or 'none'}. Fix: pass one of them (e.g. loss={valid[0] if valid else '...'}) "
            f"or drop the loss override to use the model's default."
        )
    reason = family.check_data(info)
    if reason:
        valid = _valid("model", lambda fam: isinstance(fam, Family) and fam.check_data(info) is None)
        raise IncompatibleConfigError(
            f"model={model} cannot be trained on dataset={dataset} ({reason}). Models that can: "
            f"{', '.join(valid) or 'none in this install'}. Fix: pass model=<one of them>, or choose "
            f"another dataset or model option that fits (see configs/model/)."
        )


def build_callbacks_and_loggers(cfg: DictConfig, module: Any = None) -> tuple[list[Any], list[Any]]:
    """Instantiate every entry of the ``callbacks`` and ``logger`` groups (null entries skipped).

    For a family without a likelihood on these data (``likelihood_kind(info) == "none"``), checkpoint
    callbacks that monitor ``val/nll_*`` are dropped (or, if they are the only ones, keep the
    latest checkpoint): there is no NLL to rank by, and none is made up.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if module is not None and module.family.likelihood_kind(module.info) == "none":
        by_nll = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and str(cb.monitor).startswith("val/nll")]
        others = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb not in by_nll]
        for cb in by_nll:  # no NLL to rank by: the latest checkpoint (last.ckpt) is what there is
            if others:
                callbacks.remove(cb)
            else:
                cb.monitor = None
    loggers = []
    for lg in (cfg.get("logger") or {}).values():
        if lg is not None:
            extra = wandb_identity(cfg, lg, module) if str(lg.get("_target_", "")).endswith("WandbLogger") else {}
            loggers.append(instantiate(lg, **extra))
    return callbacks, loggers


def sweep_group() -> str | None:
    """The name shared by the runs of one Hydra multirun (its sweep directory), else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None
    return "_".join(Path(str(hc.sweep.dir)).parts[-3:])


def wandb_identity(cfg: DictConfig, lg: DictConfig, module: Any) -> dict[str, Any]:
    """W&B group (the sweep, unless set) and tags (family, model, dataset, plus configured ones)."""
    chosen = choices(cfg)
    tags = list(lg.get("tags") or [])
    tags += [t for t in (module.family.name, chosen.get("model"), chosen.get("dataset"))
             if t and t != "?" and t not in tags]
    return {"group": lg.get("group") or sweep_group(), "tags": tags}


def upgraded(cfg: DictConfig) -> DictConfig:
    """A stored run config with its ``model`` node as this version's family builds it
    (:meth:`Family.upgrade_config`, e.g. options that moved into ``model.sampler``)."""
    model = cfg.get("model")
    target = model.get("_target_") if isinstance(model, DictConfig) else None
    if target:
        try:
            cls = get_class(target)
        except (ImportError, AttributeError, ValueError):  # reported where the family is built
            return cfg
        if isinstance(cls, type) and issubclass(cls, Family):
            cfg.model = OmegaConf.create(cls.upgrade_config(OmegaConf.to_container(cfg.model)))
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """``cfg`` with the ``key=value`` overrides merged in. An override that changes a node's ``_target_``
    (``model.sampler._target_=...Heun``, or ``model.sampler='{_target_: ..., steps: 10}'``) replaces that
    node: the old class's keys (DDIM's ``eta``) would not fit the new one."""
    patch, cfg = OmegaConf.from_dotlist(list(overrides)), copy.deepcopy(cfg)
    for path in _retargeted(cfg, patch):
        OmegaConf.update(cfg, path, {}, merge=False)
    return OmegaConf.merge(cfg, patch)


def _retargeted(cfg: Any, patch: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the nodes of ``cfg`` whose ``_target_`` ``patch`` changes."""
    if not (OmegaConf.is_dict(cfg) and OmegaConf.is_dict(patch)):
        return []
    if "_target_" in patch and "_target_" in cfg and patch["_target_"] != cfg["_target_"]:
        return [prefix.rstrip(".")]
    return [p for k in patch if k in cfg for p in _retargeted(cfg[k], patch[k], f"{prefix}{k}.")]


def load_run(ckpt_path: str, map_location: str = "cpu", overrides: list[str] | None = None) -> tuple[Any, Any]:
    """Rebuild a trained run from a checkpoint alone: ``(module, datamodule)``.

    ``overrides`` (``key=value`` dot-list, e.g. ``model.test_likelihood.solver.method=dopri5``)
    change the stored config before rebuilding: evaluation settings, not the architecture.

    Uses the resolved run config that every genlab checkpoint stores (``genlab_config``).
    """
    from genlab.checkpoints import CheckpointError, read_checkpoint
    from genlab.module import GenerativeModule

    ckpt = read_checkpoint(ckpt_path, map_location=map_location)
    cfg = upgraded(OmegaConf.create(ckpt.get("genlab_config") or {}))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    if "model" not in cfg:
        raise CheckpointError(f"{ckpt_path} is not a genlab checkpoint (no genlab_config). Fix: pass a genlab run's "
                              "checkpoints/*.ckpt (or its run directory)")
    datamodule = instantiate(cfg.dataset)
    module = GenerativeModule(build_family(cfg, datamodule), datamodule.info, instantiate(cfg.optimizer), build_scheduler(cfg),
                              cfg.seed, OmegaConf.to_container(cfg))
    module.on_load_checkpoint(ckpt)  # as Lightning does: the family adapts the saved weights to its config
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:  # missing / unexpected keys, shape mismatches
        raise CheckpointError(f"the weights in {ckpt_path} do not fit the model its config builds"
                              f"{' with the overrides ' + ' '.join(overrides) if overrides else ''} "
                              f"({str(err).splitlines()[0]} ...). Fix: drop architecture overrides; evaluation "
                              "settings only") from err
    return module.eval(), datamodule


def build_scheduler(cfg: DictConfig) -> Any:
    """The ``scheduler`` group's factory, or None for a constant learning rate.

    ``scheduler=none`` is an empty group, but an experiment's settings for its default schedule
    (e.g. ``scheduler: {warmup_steps: 0}``) are merged into it; a scheduler config without a
    ``_target_`` therefore means "none", and those leftover settings are ignored with a note.
    """
    sch = cfg.get("scheduler")
    if not sch:
        return None
    if "_target_" not in sch:
        log.info("scheduler=none: constant learning rate; ignoring the experiment's schedule settings %s",
                 dict(sch))
        return None
    return instantiate(sch)
