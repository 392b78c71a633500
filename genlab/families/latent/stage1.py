"""The trained first stage of a two-stage model: found from a run directory or a checkpoint,
rebuilt from the config its checkpoint stores (:func:`genlab.builders.load_run`), frozen."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from genlab.data.base import DataInfo
from genlab.data.latents import checkpoint_digest, state_digest
from genlab.families.base import Family, IncompatibleConfigError, LatentAutoencoder, Nets, able

TRAIN_HINT = ("train one first (e.g. genlab-train model=vqvae dataset=<the same data>) and pass "
              "+stage1=<its run dir> model=<a prior, e.g. pixelcnn>")


class Frozen(nn.Module):
    """The first stage's nets inside a two-stage model's nets: no gradients, and always in eval mode
    (``train()`` of the surrounding module leaves them in eval), so training the prior cannot change
    them; their weights are saved in the two-stage checkpoints all the same."""

    def __init__(self, nets: Nets) -> None:
        super().__init__()
        self.nets = nets.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)


@dataclass
class Stage1:
    """A loaded first stage: its family (a :class:`LatentAutoencoder`), its nets, where it came from, and
    ``digest``: the key of its cached latents (the checkpoint file's SHA-256, 16 hex digits; None: not
    from a file, its latents are not cached on disk), and ``weights``: the :func:`state_digest` of the
    nets that file holds (the cache is only used while the nets still hold them)."""

    family: Family
    nets: Nets
    source: str = "<given>"
    digest: str | None = None
    weights: str | None = None


def checkpoint_of(source: str | Path) -> Path:
    """The checkpoint of a run directory (the one its results.json names, else ``checkpoints/best.ckpt``
    or ``last.ckpt``), or ``source`` itself when it is a file."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise IncompatibleConfigError(f"the first stage {source} (+stage1 / model.stage1) does not exist. Fix: {TRAIN_HINT}")
    results = path / "results.json"
    named = json.loads(results.read_text()).get("checkpoint") if results.is_file() else None
    for ckpt in (named, path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    raise IncompatibleConfigError(f"the first stage {source} (+stage1 / model.stage1) holds no checkpoint (no checkpoints/best.ckpt or last.ckpt). "
                                  f"Fix: pass a finished run's directory, or {TRAIN_HINT}")


def load_stage1(source: str | Path) -> Stage1:
    """The first stage trained in ``source`` (a run directory or a checkpoint); a run whose family is not
    a :class:`LatentAutoencoder` is refused, naming the families that are."""
    from genlab.builders import load_run  # the builders build families: imported when a stage is loaded

    ckpt = checkpoint_of(source)
    module, _ = load_run(str(ckpt))
    if not isinstance(module.family, LatentAutoencoder):
        raise IncompatibleConfigError(
            f"the first stage {source} (+stage1 / model.stage1) is a run of the {module.family.name} family, which cannot be a first stage: "
            f"{LatentAutoencoder.missing}. Families that can: {able(LatentAutoencoder)}. Fix: {TRAIN_HINT}")
    nets = module.nets.eval()
    return Stage1(module.family, nets, str(ckpt), checkpoint_digest(ckpt), state_digest(nets))


def mismatch(stage: Stage1, info: DataInfo) -> str | None:
    """Why the first stage cannot encode ``info``'s data (it was trained on other data), or None."""
    have = stage.nets.info
    ours, theirs = (info.name, info.kind, tuple(info.shape), info.levels), \
        (have.name, have.kind, tuple(have.shape), have.levels)
    if ours == theirs:
        return None
    return (f"the first stage {stage.source} was trained on {have.name} {have.kind} data of shape {tuple(have.shape)} "
            f"with {have.levels} levels, and this run's data are {info.name} of shape {tuple(info.shape)} with "
            f"{info.levels} levels. Fix: pass the dataset it was trained on, or {TRAIN_HINT}")
