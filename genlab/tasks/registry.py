"""The task list: name, one-line summary, the families that can do it, and where it lives.

Each task module defines ``Config`` (a dataclass deriving :class:`genlab.tasks.base.TaskConfig`,
its docstring documents the options) and ``run(ctx, cfg) -> dict`` (the report; its
``"summary"`` lines are printed). Modules are imported only when their task runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    families: str
    module: str

    def load(self) -> tuple[type, Any]:
        mod = importlib.import_module(self.module)
        return mod.Config, mod.run


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("anomaly", "per-example NLL; AUROC and ROC curve of test data against out-of-distribution inputs",
         "autoregressive, vae, flow, diffusion, flow_matching (likelihood); ebm (energy)", "genlab.tasks.anomaly"),
    Task("inpaint", "fill masked pixels (box, random, bottom half); error on the masked pixels, PNG",
         "autoregressive (exact for bottom half), diffusion (RePaint), flow_matching (path replacement), "
         "vae (iterated reconstruction), ebm (clamped Langevin)", "genlab.tasks.inpaint"),
    Task("denoise", "noisy input -> clean output by running the reverse process from the matching noise "
         "level; PSNR", "diffusion, flow_matching", "genlab.tasks.denoise"),
    Task("interpolate", "interpolate between real images in latent space; PNG strips",
         "vae, flow, flow_matching (ODE inversion), diffusion (DDIM inversion)", "genlab.tasks.interpolate"),
    Task("augment", "write N samples as an .npz dataset; classifier accuracy with real+synthetic vs real",
         "every family that samples images", "genlab.tasks.augment"),
    Task("compress", "lossless compression to a real bitstream (rANS coding with the model's "
         "conditionals), bit-exact round trip; size vs NLL, PNG, gzip, xz", "autoregressive",
         "genlab.tasks.compress"),
]}
