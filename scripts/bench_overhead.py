#!/usr/bin/env python
"""Framework overhead per training step: genlab (Lightning, the generic module, its callbacks) against
a bare ``for`` loop over the SAME family objects (built by genlab's own builders from the same config).

    python scripts/bench_overhead.py [--families vae,gan,...] [--steps 60] [--warmup 10] [--pairs 3]
        [--data-dir ../shared/data]

For each family's benchmark experiment, fresh processes are run in interleaved pairs (genlab, plain,
genlab, plain, ...), each with one thread; each process reports the CPU time (``time.process_time``)
of its training steps after ``--warmup`` steps. Printed per family: the CPU ms per step of both, and
the median and range of the per-pair ratios ``genlab / plain - 1`` (the overhead).

Both sides draw batches of the same size from the same in-memory training split (the plain loop by
indexing the tensor directly, with the split's batch transform, e.g. dynamic binarisation), run the
family's loss (per optimizer group in the family's schedule for the GAN), backward and the
optimizer (and the LR scheduler) step, and update an EMA of the weights where the config keeps one
(``callbacks.ema``), with the run's precision (bf16 autocast) and memory format (channels-last).
genlab runs with validation, checkpoints, sample grids and the test switched off:
this is the per-step cost of the framework alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

EXPERIMENTS: dict[str, list[str]] = {
    "vae": ["experiment=vae_binarized_mnist"],
    "pixelcnn": ["experiment=pixelcnn_binarized_mnist"],
    "transformer": ["experiment=transformer_text"],
    "flow": ["experiment=flow_mnist"],
    "diffusion": ["experiment=ddpm_mnist"],
    "flow_matching": ["experiment=flow_matching_mnist"],
    "gan": ["experiment=gan_mnist"],
    "ebm": ["experiment=ebm_mnist"],
}
GENLAB_ONLY = ["trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.limit_test_batches=0",
               "trainer.max_time=null", "trainer.max_epochs=-1", "callbacks.samples=null",
               "callbacks.checkpoint=null", "callbacks.last_checkpoint=null", "callbacks.progress_bar=null",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "num_samples=0",
               "logger=csv", "threads=1"]


class StepClock(L.Callback):
    """CPU seconds per training step after ``warmup`` steps (batch fetch included), written to ``out``
    as JSON when training ends (added to the run as ``+callbacks.clock``). The clock is read twice, at
    the first timed step and after the last (``trainer.max_steps``), as the plain loop reads it: a
    read per step costs more than a microsecond under load, and the plain side makes none."""

    def __init__(self, warmup: int, out: str) -> None:
        self.warmup, self.out = warmup, out
        self.t0 = self.t1 = None
        self.start = self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None and trainer.global_step >= self.warmup:
            self.t0, self.start = time.process_time(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None and trainer.global_step >= trainer.max_steps:
            self.t1, self.steps = time.process_time(), trainer.global_step - self.start

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"s_per_step": (self.t1 - self.t0) / self.steps}))


def compose(family: str, data_dir: str, steps: int, out: Path, extra: list[str]):
    from genlab.builders import compose_run

    return compose_run([*EXPERIMENTS[family], f"paths.data_dir={data_dir}", f"trainer.max_steps={steps}", *extra], out)


def genlab_side(family: str, data_dir: str, steps: int, warmup: int) -> float:
    """CPU seconds per step of ``genlab.train.run`` (everything but the training steps switched off)."""
    from genlab.train import run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clock.json"
        clock = ["+callbacks.clock._target_=__main__.StepClock", f"+callbacks.clock.warmup={warmup}",
                 f"+callbacks.clock.out={out}"]
        run(compose(family, data_dir, warmup + steps, Path(tmp) / "run", [*GENLAB_ONLY, *clock]))
        return json.loads(out.read_text())["s_per_step"]


def plain_side(family: str, data_dir: str, steps: int, warmup: int) -> float:
    """CPU seconds per step of a bare loop over the same family, nets, data and optimizer."""
    from hydra.utils import instantiate

    from genlab.builders import build_family, build_scheduler

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(family, data_dir, warmup + steps, Path(tmp) / "run", [])
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    split, batch_size = dm.splits["train"], cfg.dataset.batch_size
    fam = build_family(cfg)
    nets = fam.build(dm.info)
    nets.train()
    if (cfg.get("callbacks") or {}).get("channels_last"):
        nets.to(memory_format=torch.channels_last)
    bf16 = str(cfg.trainer.get("precision")) == "bf16-mixed"
    groups = fam.param_groups(nets)
    opts = {name: instantiate(cfg.optimizer)(params) for name, params in groups.items()}
    make_sched = build_scheduler(cfg)
    scheds = {n: make_sched(o, total_steps=warmup + steps) for n, o in opts.items()} if make_sched else {}
    schedule = fam.schedule() or ["main"]
    ema = _ema(cfg, nets)
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.process_time()
        idx = torch.randint(len(split.x), (batch_size,), generator=g)
        x = split.x[idx]
        batch = {"x": split.transform(x, g) if split.transform is not None else x}
        group = schedule[step % len(schedule)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fam.loss(nets, batch, group=group) if fam.schedule() else fam.loss(nets, batch)
        opts[group].zero_grad(set_to_none=True)
        out.loss.backward()
        opts[group].step()
        if group in scheds:
            scheds[group].step()
        if ema is not None:
            ema()
    return (time.process_time() - t0) / steps


def _ema(cfg, nets):
    """An EMA update of every parameter (``torch._foreach_lerp_``) where the config keeps one."""
    node = (cfg.get("callbacks") or {}).get("ema")
    if not node:
        return None
    params = list(nets.parameters())
    shadow = [p.detach().clone() for p in params]
    weight = 1.0 - float(node.get("decay", 0.999))
    return lambda: torch._foreach_lerp_(shadow, [p.detach() for p in params], weight)


def inner(args: argparse.Namespace) -> int:
    side = genlab_side if args.inner == "genlab" else plain_side
    print(json.dumps({"s_per_step": side(args.family, args.data_dir, args.steps, args.warmup)}))
    return 0


def measure(family: str, side: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--inner", side, "--family", family, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} {family} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["s_per_step"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(EXPERIMENTS), help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per process")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--pairs", type=int, default=3, help="interleaved (genlab, plain) process pairs per family")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--inner", choices=["genlab", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        return inner(args)
    print("| family | genlab ms/step | plain ms/step | overhead median | overhead range |\n|---|---:|---:|---:|---:|")
    for family in args.families.split(","):
        pairs = [(measure(family, "genlab", args), measure(family, "plain", args)) for _ in range(args.pairs)]
        ratios = [a / b - 1 for a, b in pairs]
        print(f"| {family} | {1000 * statistics.median(a for a, _ in pairs):.2f} | "
              f"{1000 * statistics.median(b for _, b in pairs):.2f} | {100 * statistics.median(ratios):+.1f}% | "
              f"{100 * min(ratios):+.1f}% … {100 * max(ratios):+.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
