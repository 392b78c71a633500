#!/usr/bin/env python
"""Benchmarks of the char-level Transformer LM (``model=transformer``), issue #3.

    python scripts/bench_transformer.py --which match [--steps 300] [--text-file F] [-- overrides]
    python scripts/bench_transformer.py --which cache [--tokens 256 --batch 8]
    python scripts/bench_transformer.py --which pydoc [--minutes 10]
    python scripts/bench_transformer.py --which all

* ``match``: the same model trained for the same steps by genlab (``genlab.train.run`` with
  ``experiment=transformer_text trainer.max_steps=N``) and by a minimal hand-written PyTorch
  loop (its own model definition below, same hyperparameters read from the composed config,
  same initial weights, the same batches in the same order, AdamW + warm-up/cosine schedule,
  gradient clipping). Compares the final validation loss in nats/char; target |diff| <= 0.02.
* ``cache``: ancestral sampling of ``--tokens`` tokens for ``--batch`` sequences with the KV
  cache vs the default full recomputation (``ARNet.next_params``); target speedup >= 5x.
* ``pydoc``: ``genlab-train experiment=transformer_text`` (10-minute CPU budget), val/test
  bits per char.

Each prints markdown table rows for the docs. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.bench import budget, run_training

MATCH_TARGET, SPEEDUP_TARGET = 0.02, 5.0
SNAPSHOT: dict = {}  # filled by the Snapshot callback inside genlab's run


# -- (a) the reference implementation: plain PyTorch, no genlab.nets ---------------------------
def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RefBlock(nn.Module):
    def __init__(self, d: int, nh: int, ratio: int) -> None:
        super().__init__()
        self.nh, self.ln1, self.qkv, self.proj = nh, nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, ratio * d), nn.Linear(ratio * d, d)

    def forward(self, h: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
        b, t, c = h.shape
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in self.qkv(self.ln1(h)).split(c, 2))
        if cos is not None:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        h = h + self.proj(y)
        return h + self.out(F.gelu(self.fc(self.ln2(h))))


class RefLM(nn.Module):
    """GPT: token (+learned position) embedding, pre-LN blocks, final LN, tied head."""

    def __init__(self, vocab: int, block: int, d: int, layers: int, nh: int, positions: str, ratio: int = 4) -> None:
        super().__init__()
        self.vocab, self.tok = vocab, nn.Embedding(vocab + 1, d)  # id `vocab` = BOS
        self.pos = nn.Embedding(block, d) if positions == "learned" else None
        self.blocks = nn.ModuleList(RefBlock(d, nh, ratio) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        hs = d // nh
        ang = torch.arange(block, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        self.cos, self.sin = (ang.cos().float(), ang.sin().float()) if positions == "rotary" else (None, None)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, x: Tensor) -> Tensor:
        """Characters ``x (B, T)`` -> logits ``(B, T, V)`` of ``x_t`` given ``BOS, x_<t``."""
        inp = torch.cat([torch.full_like(x[:, :1], self.vocab), x[:, :-1]], 1)
        h = self.tok(inp) + (self.pos.weight[: x.shape[1]] if self.pos is not None else 0)
        for blk in self.blocks:
            h = blk(h, self.cos, self.sin)
        return self.ln_f(h) @ self.tok.weight[: self.vocab].T


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_reference(cfg, dm, init: dict[str, Tensor] | None) -> tuple[RefLM, float, bool]:
    """The hand-written loop; returns (model, seconds, whether the seed alone gave genlab's init)."""
    net, opt_cfg, sch = cfg.model.net, cfg.optimizer, cfg.get("scheduler") or {}
    torch.manual_seed(cfg.seed)
    model = RefLM(dm.info.levels, dm.info.dims, net.d_model, net.n_layers, net.n_heads, net.positions)
    same_init = init is not None and all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), init.values()))
    if init is not None:  # guarantee the same start even if the RNG streams differ
        for p, q in zip(model.parameters(), init.values(), strict=True):
            p.data.copy_(q)
    steps, clip = cfg.trainer.max_steps, cfg.trainer.gradient_clip_val
    opt = torch.optim.AdamW(model.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.get("weight_decay", 0.01))
    lam = functools.partial(warmup_cosine, total=steps, warmup=sch.get("warmup_steps", 0), min_ratio=sch.get("min_ratio", 0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam if sch else (lambda s: 1.0))  # scheduler=none: constant
    loader, step, epoch, t0 = dm.train_dataloader(), 0, 0, time.perf_counter()
    while step < steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            x = batch["x"]
            loss = F.cross_entropy(model(x).reshape(-1, dm.info.levels), x.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    return model, time.perf_counter() - t0, same_init


@torch.no_grad()
def val_nats_per_char(neg_log_p, blocks: Tensor, batch: int = 64) -> float:
    """Mean NLL per character over the val blocks; ``neg_log_p(x) -> summed nats``."""
    return sum(float(neg_log_p(blocks[i : i + batch])) for i in range(0, len(blocks), batch)) / blocks.numel()


class Snapshot(L.Callback):
    """Inside genlab's run: record the initial weights, and the val NLL at the end of training."""

    def on_fit_start(self, trainer, pl_module) -> None:
        SNAPSHOT["init"] = copy.deepcopy(pl_module.nets["net"].state_dict())

    def on_train_end(self, trainer, pl_module) -> None:
        was = pl_module.training
        pl_module.eval()
        blocks, family = trainer.datamodule.splits["val"].x, pl_module.family
        SNAPSHOT["val"] = val_nats_per_char(lambda x: -family.log_likelihood(pl_module.nets, {"x": x}).log_px.sum(), blocks)
        SNAPSHOT["step"] = trainer.global_step
        pl_module.train(was)


def compose(overrides: list[str], out_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from genlab.builders import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"paths.output_dir={out_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.callbacks.snapshot = {"_target_": "__main__.Snapshot"}
    return cfg


def data_overrides(a) -> list[str]:
    return ["dataset=text_file", f"dataset.source.path={a.text_file}"] if a.text_file else []


def bench_match(a) -> bool:
    from hydra.utils import instantiate

    from genlab.train import run

    overrides = ["experiment=transformer_text", *data_overrides(a), f"trainer.max_steps={a.steps}",
                 "trainer.max_time=null", "num_samples=4", "callbacks.samples.every_n_epochs=100000", *a.overrides]
    cfg = compose(overrides, tempfile.mkdtemp(prefix="bench_match_"))
    print("genlab:", " ".join(overrides), flush=True)
    t0 = time.perf_counter()
    results = run(cfg)
    t_genlab = time.perf_counter() - t0
    assert SNAPSHOT["step"] == a.steps, SNAPSHOT
    dm = instantiate(cfg.dataset)
    model, t_ref, same_init = train_reference(cfg, dm, SNAPSHOT["init"])
    model.eval()
    blocks = dm.splits["val"].x
    ref = val_nats_per_char(lambda x: F.cross_entropy(model(x).transpose(1, 2), x, reduction="sum"), blocks)
    diff, ok = SNAPSHOT["val"] - ref, abs(SNAPSHOT["val"] - ref) <= MATCH_TARGET
    n = cfg.model.net
    print(f"genlab val {SNAPSHOT['val']:.4f} nats/char ({t_genlab:.0f}s incl. test+samples), reference "
          f"{ref:.4f} nats/char ({t_ref:.0f}s), diff {diff:+.2e}; init from the same seed identical: {same_init}")
    print("| benchmark | data | model | steps | genlab val (nats/char) | plain PyTorch val (nats/char) | diff | pass (abs <= 0.02) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| match | {dm.info.name} ({blocks.numel():,} val chars) | d={n.d_model} L={n.n_layers} h={n.n_heads} "
          f"{n.positions} ({results['params']:,} params) | {a.steps} | {SNAPSHOT['val']:.4f} | {ref:.4f} | "
          f"{diff:+.4f} | {'yes' if ok else 'NO'} |")
    return ok


def _time_sampling(family, nets, n: int, seed: int = 0) -> tuple[Tensor, float]:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    x = family.sample(nets, n)
    return x, time.perf_counter() - t0


def bench_cache(a) -> bool:
    from genlab.data.base import DataInfo
    from genlab.distributions import Categorical
    from genlab.families.autoregressive import Autoregressive
    from genlab.nets.ar import ARNet
    from genlab.nets.transformer import TransformerLM

    net = functools.partial(TransformerLM, d_model=128, n_layers=4, n_heads=4, positions="rotary")
    family = Autoregressive(net, Categorical(), top_k=1)  # greedy: both ways must give the same text
    torch.manual_seed(0)
    nets = family.build(DataInfo("bench", "text", (a.tokens,), 96)).eval()
    cached, t_cache = _time_sampling(family, nets, a.batch)
    nocache = nets["net"]
    nocache.init_state = lambda x: None  # the default: one full forward pass per token
    nocache.next_params = functools.partial(ARNet.next_params, nocache)
    full, t_full = _time_sampling(family, nets, a.batch)
    speedup, same = t_full / t_cache, torch.equal(cached, full)
    ok = speedup >= SPEEDUP_TARGET and same
    print(f"sampling {a.tokens} tokens x {a.batch}: KV cache {t_cache:.2f}s, full recompute {t_full:.2f}s, "
          f"speedup {speedup:.1f}x, same greedy samples: {same} (torch threads: {torch.get_num_threads()})")
    print("| benchmark | setting | KV cache (s) | full recompute (s) | speedup | pass (>= 5x) |")
    print("|---|---|---|---|---|---|")
    setting = f"{a.tokens} tokens x batch {a.batch}, d=128 L=4 h=4 rotary, CPU {torch.get_num_threads()} thread(s)"
    print(f"| cache | {setting} | {t_cache:.2f} | {t_full:.2f} | "
          f"{speedup:.1f}x | {'yes' if ok else 'NO'} |")
    return ok


def bench_pydoc(a) -> bool:
    r = run_training(["experiment=transformer_text", *data_overrides(a), f"trainer.max_time={budget(a.minutes)}",
                      *a.overrides])
    if r is None:
        return False
    print("| model | data | budget | steps | val bits/char | test bits/char | test nats/char |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['model']} ({r['params']:,} params) | {r['dataset']} | {a.minutes} min CPU | {r['global_step']} | "
          f"{r['val']['nll_bpd']:.4f} | {r['test']['nll_bpd']:.4f} | {r['test']['nll_bpd'] * math.log(2):.4f} |")
    print(f"results: {r['path']}")
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=["match", "cache", "pydoc", "all"], default="all")
    p.add_argument("--steps", type=int, default=300, help="match: optimizer steps of both trainings")
    p.add_argument("--text-file", help="match/pydoc: a UTF-8 text file instead of the pydoc text")
    p.add_argument("--tokens", type=int, default=256, help="cache: tokens per sample")
    p.add_argument("--batch", type=int, default=8, help="cache: samples drawn at once")
    p.add_argument("--minutes", type=int, default=10, help="pydoc: training budget")
    p.add_argument("--threads", type=int, help="torch CPU threads in this process (match, cache); 1 is steadier on a busy machine")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (match, pydoc)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    benches = {"match": bench_match, "cache": bench_cache, "pydoc": bench_pydoc}
    chosen = list(benches) if a.which == "all" else [a.which]
    ok = [benches[name](a) for name in chosen]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
