"""``genlab-sample``: draw samples from a trained run, with any sampler setting, and write them as files.

    genlab-sample <run dir | checkpoint.ckpt> [n=64] [out=DIR] [seed=0] [label=K] [batch=100] [device=auto]
                  [key=value ...]

Options:
  n        number of samples (default 64)
  out      output folder (default <run dir>/generated)
  seed     seed of the draw: batch i of ``batch`` samples is seeded seed + (its first index), as in genlab-eval
  label    a conditional run's class for every sample: its id (0..K-1) or, for an image folder, its
           folder name. Without it a conditional run draws an equal number of each class (class i % K
           for sample i: one column of the grid per class); an unconditional run refuses a label
  batch    samples per call of the model (the progress bar moves once a batch)
  device   cpu, cuda, cuda:1, ... (auto: cuda where available)
  key=value  any other dotted key changes the run's stored config before it is rebuilt, as genlab-eval's
           overrides: sampler settings, e.g. model.sampler.steps=20, or a whole sampler with
           model.sampler='{_target_: ..., steps: 10}' (the architecture cannot change)

Writes into ``out``: ``samples.png`` (a grid; ``samples.txt`` for text, a scatter plot for points),
``samples.npz`` for images in the ``array`` dataset's format (``x`` uint8, ``y`` the labels of a
conditional run; train on it with ``genlab-train dataset=array dataset.path=<out>/samples.npz
dataset.levels=<levels>``), ``samples.pt`` (the raw tensor in data space, as ``genlab-eval --samples``
reads it) and ``samples.json`` (what was drawn: checkpoint, n, seed, labels, overrides, files).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from genlab import progress
from genlab.builders import load_run
from genlab.callbacks.samples import write_samples
from genlab.checkpoints import CheckpointError
from genlab.data.base import DataError
from genlab.evaluate import draw_samples, find_checkpoint
from genlab.families.base import IncompatibleConfigError

OPTIONS = {"n": 64, "out": None, "seed": 0, "label": None, "batch": 100, "device": "auto"}


class SampleError(ValueError):
    """A ``genlab-sample`` request that cannot be served (the message says why and the fix)."""


def parse(argv: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    """``(source, options, overrides)`` from the command line: the first argument is the run, ``key=value``
    with a key of :data:`OPTIONS` is an option, any other dotted ``key=value`` a config override."""
    if not argv or "=" in argv[0]:
        raise SampleError("the first argument is the run: a run directory (holding results.json) or a checkpoint "
                          ".ckpt, e.g. genlab-sample logs/runs/<date>/<time> n=64")
    options, overrides = dict(OPTIONS), []
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if not eq:
            raise SampleError(f"arguments must be key=value, got {arg!r}. Options: {', '.join(OPTIONS)}; "
                              "sampler settings as dotted keys, e.g. model.sampler.steps=20")
        if key in OPTIONS:
            options[key] = value
        elif "." in key.lstrip("+~"):
            overrides.append(arg)
        else:
            raise SampleError(f"unknown option {key!r}. Options: {', '.join(OPTIONS)}; config overrides are dotted "
                              "keys, e.g. model.sampler.steps=20 (genlab-sample --help)")
    return argv[0], _typed(options), overrides


def _typed(options: dict[str, Any]) -> dict[str, Any]:
    """``n``, ``seed`` and ``batch`` as integers (``n``, ``batch`` at least 1)."""
    for key in ("n", "seed", "batch"):
        try:
            options[key] = int(options[key])
        except (TypeError, ValueError):
            raise SampleError(f"{key}={options[key]!r} is not an integer") from None
        if key != "seed" and options[key] < 1:
            raise SampleError(f"{key}={options[key]}: pass a positive integer")
    return options


def resolve_label(label: Any, module: Any, dm: Any) -> int | None:
    """The class id that ``label`` (an id, or a class name where the data name their classes) means;
    None without a label. Refused for an unconditional run and outside ``0..K-1``."""
    if label is None:
        return None
    if not module.conditional:
        raise SampleError(f"label={label} was given, but this {module.family.name} run is unconditional (trained "
                          "without +conditional=class): it has no class to sample. Fix: drop label=, or sample a run "
                          "trained with +conditional=class")
    k = module.family.condition.num_classes
    names = list(getattr(dm, "classes", None) or [])
    if str(label) in names:
        return names.index(str(label))
    try:
        value = int(label)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < k:
        known = f" or one of the class names {names}" if names else ""
        raise SampleError(f"label={label} is not a class of this run: pass an id in 0..{k - 1}{known}")
    return value


def labels_for(module: Any, n: int, label: int | None) -> torch.Tensor | None:
    """The labels of the ``n`` samples: ``label`` for all, else class ``i % K`` for sample ``i``
    (None for an unconditional run)."""
    if not module.conditional:
        return None
    if label is not None:
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % module.family.condition.num_classes


def write_outputs(x: torch.Tensor, y: torch.Tensor | None, info: Any, out: Path, nrow: int | None) -> dict[str, str]:
    """The grid (or text / scatter plot), the ``array``-format ``.npz`` (images only) and the raw ``.pt``."""
    from genlab.tasks.augment import write_npz

    out.mkdir(parents=True, exist_ok=True)
    files = {"grid": str(write_samples(x, info, out / "samples", nrow))}
    if info.kind == "image":
        write_npz(out / "samples.npz", x.to(torch.uint8), y)
        files["npz"] = str(out / "samples.npz")
    torch.save(x, out / "samples.pt")
    files["tensor"] = str(out / "samples.pt")
    return files


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SampleError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, ... or auto)") from None


def load(source: str | Path, overrides: list[str]) -> tuple[Any, Any, Path, Path]:
    """``(module, datamodule, checkpoint, run dir)``, with an override that cannot be applied refused
    in one paragraph naming it."""
    ckpt, run_dir = find_checkpoint(source)
    try:
        module, dm = load_run(str(ckpt), overrides=overrides)
    except (HydraException, OmegaConfBaseException, TypeError) as err:
        cause = err.__cause__ or err
        raise SampleError(f"the run cannot be rebuilt with the overrides {' '.join(overrides) or '(none)'}: "
                          f"{type(cause).__name__}: {str(cause).splitlines()[0]}. Fix: correct or drop them (a "
                          "sampler setting's key as in the run's .hydra/config.yaml or the model's config)") from None
    return module, dm, ckpt, run_dir


def sample_run(source: str | Path, n: int = 64, out: str | Path | None = None, seed: int = 0, label: Any = None,
               batch: int = 100, device: str = "auto", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Draw ``n`` samples of a run (module docstring) and write them to ``out``; returns ``samples.json``."""
    overrides = list(overrides)
    module, dm, ckpt, run_dir = load(source, overrides)
    y = labels_for(module, n, resolve_label(label, module, dm))
    dev = _device(device)
    module.to(dev)
    t0 = time.perf_counter()
    x = draw_samples(module, n, seed, None if y is None else y.to(dev), chunk=batch).cpu()
    seconds = time.perf_counter() - t0
    square = label is not None or y is None
    info = module.info
    files = write_outputs(x, y, info, Path(out) if out else run_dir / "generated",
                          None if square else module.family.condition.num_classes)
    record = {"run": str(run_dir), "checkpoint": str(ckpt), "family": module.family.name, "dataset": info.name,
              "n": len(x), "seed": seed, "batch": batch, "overrides": overrides, "levels": info.levels,
              "labels": None if y is None else ("all " + str(int(y[0])) if label is not None else "class i % K"),
              "label_counts": None if y is None else torch.bincount(y).tolist(), "device": str(dev),
              "seconds": seconds, "files": files}
    if "npz" in files:
        record["train_command"] = f"genlab-train dataset=array dataset.path={files['npz']} dataset.levels={info.levels}"
    path = Path(files["tensor"]).with_name("samples.json")
    path.write_text(json.dumps(record, indent=2))
    return {**record, "path": str(path)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    progress.set_enabled(True)  # a command: its bar shows (GENLAB_PROGRESS=0 still hides it)
    try:
        source, options, overrides = parse(argv)
        record = sample_run(source, overrides=overrides, **options)
    except (FileNotFoundError, ValueError, CheckpointError, DataError, IncompatibleConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{record['n']} samples of the {record['family']} run {record['run']} ({record['seconds']:.1f} s):")
    for kind, path in record["files"].items():
        print(f"  {kind}: {path}")
    if "train_command" in record:
        print(f"train on them: {record['train_command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
