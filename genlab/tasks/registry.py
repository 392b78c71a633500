"""The task list: name, one-line summary, the capabilities it needs, and where it lives.

Each task module defines ``Config`` (a dataclass deriving :class:`genlab.tasks.base.TaskConfig`,
its docstring documents the options) and ``run(ctx, cfg) -> dict`` (the report; its
``"summary"`` lines are printed). Modules are imported only when their task runs. Which families
can do a task is computed from the registered families' capabilities
(:mod:`genlab.families.base`), never typed here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genlab.families import base as fb


@dataclass(frozen=True)
class Need:
    """A capability a task can use, how ``--help`` qualifies a family that has it (``label(cls)``, or
    a fixed ``note``), e.g. anomaly detection by likelihood or by energy."""

    capability: type
    label: Callable[[type], str] | None = None
    note: str = ""
    also: tuple[type, ...] = ()  # capabilities a family needs as well (e.g. a likelihood besides a condition)

    def families(self) -> str:
        if self.also:
            able = [c.name for c in fb.registered() if all(issubclass(c, k) for k in (self.capability, *self.also))]
            return ", ".join(able) or "none of the registered families"
        names = fb.able(self.capability, self.label)
        return f"{names} ({self.note})" if self.note and self.label is None else names


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    needs: tuple[Need, ...]  # any one of them; empty: every family that samples
    module: str
    everyone: str = ""  # the "families" line when ``needs`` is empty
    many: str = ""  # the module's function that runs the task over several runs (``ckpt=<sweep dir>``), if any

    @property
    def families(self) -> str:
        """The registered families that can do this task, as ``genlab-task --help`` lists them."""
        return "; ".join(n.families() for n in self.needs) if self.needs else self.everyone

    def load(self) -> tuple[type, Any]:
        mod = importlib.import_module(self.module)
        return mod.Config, mod.run

    def load_many(self) -> Callable[[list[str], list[str]], dict[str, Any]]:
        """``fn(runs, args) -> report``: the task over several runs (a table across them)."""
        return getattr(importlib.import_module(self.module), self.many)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("anomaly", "per-example NLL; AUROC and ROC curve of test data against out-of-distribution inputs",
         (Need(fb.Likelihood, note="likelihood"), Need(fb.EnergyScorer, note="energy")), "genlab.tasks.anomaly"),
    Task("inpaint", "fill masked pixels (box, random, bottom half); error on the masked pixels, PNG",
         (Need(fb.Inpainter, lambda c: c.inpaint_method),), "genlab.tasks.inpaint"),
    Task("denoise", "noisy input -> clean output by running the reverse process from the matching noise "
         "level; PSNR", (Need(fb.Denoiser),), "genlab.tasks.denoise"),
    Task("interpolate", "interpolate between real images in latent space; PNG strips",
         (Need(fb.Encoder, lambda c: c.encoder_kind),), "genlab.tasks.interpolate"),
    Task("augment", "write N samples as an .npz dataset; classifier accuracy with real+synthetic vs real",
         (), "genlab.tasks.augment", everyone="every family that samples images"),
    Task("compress", "lossless compression to a real bitstream (rANS coding with the model's "
         "conditionals), bit-exact round trip; size vs NLL, PNG, gzip, xz", (Need(fb.SequentialCoder),),
         "genlab.tasks.compress"),
    Task("classify", "a class-conditional run as a Bayes classifier p(y|x) ∝ p(x|y) p(y): accuracy, label NLL, "
         "calibration (ECE, reliability PNG), bits the label is worth", (Need(fb.Conditional, also=(fb.Likelihood,)),),
         "genlab.tasks.classify"),
    Task("restore", "inverse problems y = A(x) + noise (mask, downsample, blur, Fourier, projection) with the model "
         "as the prior; PSNR, SSIM, consistency against pseudo-inverse and Tikhonov, PNG",
         (Need(fb.Restorer, lambda c: "/".join(c.restore_methods) + (f"; {'|'.join(c.restore_operators)} only"
                                                                     if c.restore_operators else "")),),
         "genlab.tasks.restore", many="run_many"),
]}
