#!/usr/bin/env python
"""Framework overhead per training step: genlab (Lightning, the generic module, its callbacks) against
a bare ``for`` loop over the SAME family objects (built by genlab's own builders from the same config).

    python scripts/bench_overhead.py [--families vae,gan,...] [--steps 60] [--warmup 10] [--pairs 3]
        [--data-dir ../shared/data] [--cadence]

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
this is the per-step cost of the framework alone. With ``--cadence`` genlab keeps the experiment's
validation, checkpoints and sample grids (the test and the final samples stay off), and their cost
is spread over the timed steps: the cost of a real run against a loop that evaluates nothing.
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
# what a timed genlab run always leaves out: the test, the final samples, the bar, the summary
ALWAYS = ["trainer.num_sanity_val_steps=0", "trainer.limit_test_batches=0", "trainer.max_time=null",
          "trainer.max_epochs=-1", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false", "num_samples=0", "logger=csv", "threads=1"]
# and, unless --cadence, the run's validation, checkpoints and sample grids
GENLAB_ONLY = ["trainer.limit_val_batches=0", "callbacks.samples=null", "callbacks.checkpoint=null",
               "callbacks.last_checkpoint=null", *ALWAYS]


def clock(device: torch.device) -> float:
    """CPU seconds of this process on a CPU; on a GPU wall seconds after the queued kernels have run
    (its time is the device's, which CPU time does not see)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


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
            self.t0, self.start = clock(pl_module.device), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None and trainer.global_step >= trainer.max_steps:
            self.t1, self.steps = clock(pl_module.device), trainer.global_step - self.start

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"s_per_step": (self.t1 - self.t0) / self.steps}))


def compose(family: str, data_dir: str, steps: int, out: Path, extra: list[str]):
    from genlab.builders import compose_run

    return compose_run([*EXPERIMENTS[family], f"paths.data_dir={data_dir}", f"trainer.max_steps={steps}", *extra], out)


def genlab_side(family: str, data_dir: str, steps: int, warmup: int, cadence: bool = False,
                device: str = "cpu") -> float:
    """CPU seconds per step of ``genlab.train.run``: everything but the training steps switched off, or
    with ``cadence`` the experiment's own validation, checkpoints and sample grids kept."""
    from genlab.train import run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clock.json"
        clock = ["+callbacks.clock._target_=__main__.StepClock", f"+callbacks.clock.warmup={warmup}",
                 f"+callbacks.clock.out={out}"]
        where = ["trainer.accelerator=gpu", "trainer.devices=1"] if device == "cuda" else []
        run(compose(family, data_dir, warmup + steps, Path(tmp) / "run",
                    [*(ALWAYS if cadence else GENLAB_ONLY), *where, *clock]))
        return json.loads(out.read_text())["s_per_step"]


def plain_side(family: str, data_dir: str, steps: int, warmup: int, device: str = "cpu") -> float:
    """Seconds per step (CPU seconds; wall seconds on a GPU) of a bare loop over the same family, nets,
    data and optimizer, clipping gradients where the config does (automatic-optimisation families, as
    Lightning does)."""
    from hydra.utils import instantiate

    from genlab.builders import build_family, build_scheduler

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(family, data_dir, warmup + steps, Path(tmp) / "run", [])
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    split, batch_size, dev = dm.splits["train"], cfg.dataset.batch_size, torch.device(device)
    fam = build_family(cfg)
    nets = fam.build(dm.info).to(dev)
    nets.train()
    if (cfg.get("callbacks") or {}).get("channels_last"):
        nets.to(memory_format=torch.channels_last)
    bf16 = str(cfg.trainer.get("precision")) == "bf16-mixed"
    groups = fam.param_groups(nets)
    opts = {name: instantiate(cfg.optimizer)(params) for name, params in groups.items()}
    make_sched = build_scheduler(cfg)
    scheds = {n: make_sched(o, total_steps=warmup + steps) for n, o in opts.items()} if make_sched else {}
    schedule, clip = fam.schedule() or ["main"], None if fam.schedule() else cfg.trainer.get("gradient_clip_val")
    ema, g, t0 = _ema(cfg, nets), torch.Generator().manual_seed(0), None
    for step in range(warmup + steps):
        if step == warmup:
            t0 = clock(dev)
        idx = torch.randint(len(split.x), (batch_size,), generator=g)
        x = split.x[idx]
        batch = {"x": (split.transform(x, g) if split.transform is not None else x).to(dev)}
        group = schedule[step % len(schedule)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = fam.loss(nets, batch, group=group) if fam.schedule() else fam.loss(nets, batch)
        opts[group].zero_grad(set_to_none=True)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(nets.parameters(), float(clip))
        opts[group].step()
        if group in scheds:
            scheds[group].step()
        if ema is not None:
            ema()
    return (clock(dev) - t0) / steps


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
    if args.inner == "genlab":
        s_per_step = genlab_side(args.family, args.data_dir, args.steps, args.warmup, args.cadence, args.device)
    else:
        s_per_step = plain_side(args.family, args.data_dir, args.steps, args.warmup, args.device)
    print(json.dumps({"s_per_step": s_per_step}))
    return 0


def measure(family: str, side: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--inner", side, "--family", family, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data-dir", args.data_dir, *(["--cadence"] if args.cadence else [])]
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
    p.add_argument("--cadence", action="store_true",
                   help="keep the experiment's validation, checkpoints and sample grids in the genlab runs (use "
                        "--steps beyond the validation interval, e.g. 1200 for the VAE's 600-step epochs)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: both sides on the GPU (genlab with trainer.accelerator=gpu), timed in wall seconds")
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
