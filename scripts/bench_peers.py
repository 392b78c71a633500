#!/usr/bin/env python
"""genlab side by side with peer libraries: the same data, batch size, optimizer recipe and number of
training steps, one thread, CPU time per step (docs/peers.md).

    python scripts/bench_peers.py --data-dir ../shared/data [--peers vae,ddpm,glow,cfm] [--steps 50]
        [--warmup 10] [--pairs 3] [--nll] [--nll-images N] [--samples 64]

The peers (``pip install -e ".[bench]"``), each against a genlab benchmark experiment:

* ``vae``: pythae's ``VAE`` (``reconstruction_loss="bce"``) with custom encoder / decoder of exactly
  the sizes of ``experiment=vae_binarized_mnist``'s MLPs, against that experiment.
* ``ddpm``: lucidrains' denoising-diffusion-pytorch ``Unet`` + ``LearnedGaussianDiffusion`` (learned
  variances, as genlab's ``loss=hybrid``), the Unet's width chosen to match the parameter count of
  ``experiment=ddpm_mnist``'s UNet; also the CPU seconds of DDIM-50 sampling (``--samples`` images).
* ``glow``: normflows' multi-scale Glow (``GlowBlock``, ``Logit`` transform) with the scales and
  steps of ``experiment=flow_mnist``, its coupling width chosen to match the parameter count.
* ``cfm``: torchcfm's ``ConditionalFlowMatcher`` (sigma 0) with the very UNet of
  ``experiment=flow_matching_mnist`` (genlab's ``UNet``, same arguments).

Protocol: for each pair, ``--pairs`` interleaved pairs of fresh processes (genlab then the peer, then
the peer then genlab, ...), each with one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``),
train ``--warmup`` untimed then ``--steps`` timed steps and report ``time.process_time`` per step.
genlab's side is its real training loop (``genlab.train.run``, timed by the ``StepClock`` callback of
scripts/bench_overhead.py, validation / checkpoints / samples off). The peer's side is a plain loop
over batches of the same size drawn from genlab's in-memory training split (with its batch transform,
e.g. dynamic binarisation), mapped to the input the peer's examples use, and the experiment's recipe:
its optimizer and learning rate, LR schedule, gradient clipping, EMA and precision (bf16 autocast).
``--nll`` then evaluates both trained models on the test split: the VAE by the importance-weighted
estimate with genlab's ``model.test_k`` samples (genlab's estimator for genlab, the same estimator
written here for pythae's encoder / decoder), the flows by the one-draw dequantisation bound.

The parent prints a markdown table: parameters, ms per step, the peer/genlab ratio (median and range
over the pairs) and what was measured after the equal number of steps.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead as bo  # noqa: E402
from bench_overhead import StepClock  # noqa: E402,F401  (genlab's clock, named __main__.StepClock in the run)

INSTALL = 'pip install -e ".[bench]"'
LN2 = math.log(2.0)


def count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def nearest_width(make: Callable[[int], nn.Module], target: int, widths: list[int]) -> int:
    """The width in ``widths`` (ascending; parameters increasing with it) whose model ``make(width)``
    has the parameter count nearest ``target`` (bisection)."""
    lo, hi = 0, len(widths) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(make(widths[mid])) < target else (lo, mid)
    return min((widths[lo], widths[hi]), key=lambda w: abs(count(make(w)) - target))


def genlab_params(cfg: Any, info: Any) -> int:
    """Parameters of the genlab experiment's nets (built by genlab's builders from ``cfg``)."""
    from genlab.builders import build_family

    return count(build_family(cfg).build(info))


def mlp(dims: list[int], activation: str) -> nn.Sequential:
    """``Linear`` layers between ``dims`` with the activation between them (genlab's ``MLP`` layout)."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), getattr(nn, activation)()]
    return nn.Sequential(*layers[:-1])


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, diag exp(logvar))`` summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


@torch.no_grad()
def iw_estimate(encode: Callable, log_px_given_z: Callable, x: Tensor, k: int) -> Tensor:
    """``log (1/k) sum_i p(x, z_i) / q(z_i|x)``, ``z_i ~ q(z|x)`` (Burda et al. 2016, Eq. 8), nats ``(B,)``:
    ``encode(x) -> (mu, logvar)``, ``log_px_given_z(z, x) -> (B',)``; samples in memory-bounded chunks."""
    mu, logvar = encode(x)
    b = x.shape[0]
    chunk = max(1, min(k, int(2e7 // (b * x[0].numel()))))
    weights = []
    for start in range(0, k, chunk):
        kc = min(chunk, k - start)
        z = mu + torch.randn(kc, *mu.shape) * (0.5 * logvar).exp()
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        xs = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])
        log_px = log_px_given_z(z.reshape(kc * b, -1), xs).view(kc, b)
        weights.append(log_px + log_pz - gaussian_log_prob(z, mu, logvar))
    return torch.logsumexp(torch.cat(weights), 0) - math.log(k)


def test_images(dm: Any, n: int | None) -> Tensor:
    """The first ``n`` (None: all) images of genlab's test split (binarised once, for binary data)."""
    x = dm.splits["test"].x
    return x if n is None else x[:n]


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int) -> Tensor:
    """``fn`` over ``x`` in batches, concatenated."""
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


# -- the peers ------------------------------------------------------------------------------------------
class PythaeVAE:
    """pythae's ``VAE`` with a Bernoulli decoder (``reconstruction_loss="bce"``, sigmoid outputs) and
    encoder / decoder MLPs of genlab's sizes and activation; inputs are the binary images as floats."""

    def __init__(self, cfg: Any, info: Any) -> None:
        from pythae.models import VAE, VAEConfig

        encoder, decoder = _pythae_nets(cfg, info)
        config = VAEConfig(input_dim=tuple(info.shape), latent_dim=cfg.model.latent_dim, reconstruction_loss="bce")
        self.model = VAE(config, encoder=encoder, decoder=decoder)
        self.test_k = cfg.model.test_k

    def loss(self, x: Tensor) -> Tensor:
        return self.model({"data": x.float()}).loss

    def metrics(self, dm: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
        if not args.nll:
            return {}
        vae = self.model.eval()

        def encode(x: Tensor) -> tuple[Tensor, Tensor]:
            out = vae.encoder(x)
            return out.embedding, out.log_covariance

        def log_px_given_z(z: Tensor, x: Tensor) -> Tensor:  # pythae's own p(x|z): -BCE of the sigmoid output
            p = vae.decoder(z)["reconstruction"].flatten(1)
            return -F.binary_cross_entropy(p, x.flatten(1), reduction="none").sum(-1)

        x = test_images(dm, args.nll_images).float()
        ll = batched(lambda xb: iw_estimate(encode, log_px_given_z, xb, self.test_k), x, cfg.dataset.eval_batch_size)
        return {"nll": float(-ll.double().mean()), "unit": f"nats (IW, k={self.test_k}, {len(x)} images)"}


def _pythae_nets(cfg: Any, info: Any) -> tuple[nn.Module, nn.Module]:
    """pythae ``BaseEncoder`` / ``BaseDecoder`` with genlab's ``model.encoder`` / ``model.decoder`` MLP sizes."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    d, z, shape = math.prod(info.shape), cfg.model.latent_dim, tuple(info.shape)
    enc, dec = cfg.model.encoder, cfg.model.decoder

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp([d, *enc.hidden, 2 * z], enc.get("activation", "SiLU"))

        def forward(self, x: Tensor) -> ModelOutput:
            mu, logvar = self.net(x.flatten(1)).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp([z, *dec.hidden, d], dec.get("activation", "SiLU"))

        def forward(self, z: Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, *shape))

    return Encoder(), Decoder()


class LucidrainsDDPM:
    """lucidrains' ``Unet`` (``dim_mults`` and heads of genlab's UNet, full attention at the lowest
    resolution, its linear attention above) in ``LearnedGaussianDiffusion`` (genlab's ``loss=hybrid``:
    learned variances, ``vb_loss_weight``) or ``GaussianDiffusion``; eps prediction, the same schedule
    and T; inputs in [0, 1] (it maps them to [-1, 1] itself). Width: genlab's parameter count."""

    def __init__(self, cfg: Any, info: Any) -> None:
        from denoising_diffusion_pytorch import GaussianDiffusion
        from denoising_diffusion_pytorch.learned_gaussian_diffusion import LearnedGaussianDiffusion

        learned = cfg.loss._target_.endswith("HybridLoss")
        _patch_learned_diffusion()
        self.width = nearest_width(lambda w: self._unet(cfg, info, w, learned), genlab_params(cfg, info),
                                   list(range(8, 257, 2)))
        torch.manual_seed(cfg.seed)
        unet = self._unet(cfg, info, self.width, learned)
        cls, extra = ((LearnedGaussianDiffusion, {"vb_loss_weight": cfg.loss.vlb_weight}) if learned
                      else (GaussianDiffusion, {}))
        schedule = cfg.model.schedule._target_.rsplit(".", 1)[-1].removesuffix("Schedule").lower()
        self.model = cls(unet, image_size=tuple(info.shape[1:]), timesteps=cfg.model.timesteps,
                         sampling_timesteps=cfg.model.sampler.steps, objective="pred_noise", beta_schedule=schedule,
                         ddim_sampling_eta=cfg.model.sampler.eta, **extra)

    @staticmethod
    def _unet(cfg: Any, info: Any, width: int, learned: bool) -> nn.Module:
        from denoising_diffusion_pytorch import Unet

        net = cfg.model.net
        mults, heads = tuple(net.channel_mults), net.heads
        full = tuple(i == len(mults) - 1 for i in range(len(mults)))
        return Unet(dim=width, dim_mults=mults, channels=info.shape[0], learned_variance=learned, dropout=net.dropout,
                    attn_heads=heads, attn_dim_head=tuple(max(1, width * m // heads) for m in mults), full_attn=full)

    def loss(self, x: Tensor) -> Tensor:
        return self.model(x.float() / 255.0)

    def metrics(self, dm: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
        self.model.eval()
        t0 = time.process_time()
        self.model.sample(batch_size=args.samples)
        return {"sample_s": time.process_time() - t0, "width": self.width}


def _patch_learned_diffusion() -> None:
    """denoising-diffusion-pytorch 2.3.4's ``LearnedGaussianDiffusion.model_predictions`` (used by its DDIM
    sampler) names ``partial`` and ``identity`` without importing them (NameError): supply the two."""
    import functools

    from denoising_diffusion_pytorch import denoising_diffusion_pytorch as ddp
    from denoising_diffusion_pytorch import learned_gaussian_diffusion as lgd

    for name, value in (("partial", functools.partial), ("identity", ddp.identity)):
        if not hasattr(lgd, name):
            setattr(lgd, name, value)


class NormflowsGlow:
    """normflows' multi-scale Glow (its README's construction): per scale ``steps_per_scale`` x ``GlowBlock``
    (affine channel coupling with Glow's sigmoid scale, LU 1x1 conv, ActNorm), ``Squeeze``, ``Merge``, a
    trainable diagonal Gaussian per latent, the ``Logit`` transform with genlab's ``logit_alpha``; inputs
    ``(x + u) / 256``. The coupling width is chosen to match genlab's parameter count."""

    def __init__(self, cfg: Any, info: Any) -> None:
        self.width = nearest_width(lambda w: self._glow(cfg, info, w), genlab_params(cfg, info),
                                   list(range(8, 1025, 4)))
        torch.manual_seed(cfg.seed)
        self.model = self._glow(cfg, info, self.width)
        self.dims, self.levels = math.prod(info.shape), info.levels

    @staticmethod
    def _glow(cfg: Any, info: Any, width: int) -> nn.Module:
        import normflows as nf

        (c, h, w), n = info.shape, cfg.model.num_scales
        q0, flows, merges = [], [], []
        for i in range(n):  # the generative direction: level 0 is the coarsest
            blocks = [nf.flows.GlowBlock(c * 2 ** (n + 1 - i), width, split_mode="channel", scale=True)
                      for _ in range(cfg.model.steps_per_scale)]
            flows.append([*blocks, nf.flows.Squeeze()])
            side = 2 ** (n - i)  # the latent of level 0 keeps all channels, the others the factored-out half
            q0.append(nf.distributions.DiagGaussian((c * side * (2 if i == 0 else 1), h // side, w // side)))
            merges += [nf.flows.Merge()] if i > 0 else []
        alpha = cfg.model.logit_alpha
        transform = nf.transforms.Logit(alpha) if alpha is not None else nf.transforms.Shift()
        return nf.MultiscaleFlow(q0, flows, merges, transform=transform, class_cond=False)

    def dequantize(self, x: Tensor) -> Tensor:
        return (x.float() + torch.rand(x.shape)) / self.levels

    def loss(self, x: Tensor) -> Tensor:  # nats per dimension, as genlab's (so that gradient clipping matches)
        return -self.model.log_prob(self.dequantize(x), None).mean() / self.dims

    def metrics(self, dm: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
        if not args.nll:
            return {"width": self.width}
        self.model.eval()
        with torch.no_grad():
            x = test_images(dm, args.nll_images)
            log_py = batched(lambda xb: self.model.log_prob(self.dequantize(xb), None), x, cfg.dataset.eval_batch_size)
        log_px = log_py.double() - self.dims * math.log(self.levels)  # the bin width 1/L of (x + u) / L
        return {"nll": float(-log_px.mean() / (self.dims * LN2)), "unit": f"bits/dim (1 draw, {len(x)} images)",
                "width": self.width}


class TorchCFM:
    """torchcfm's ``ConditionalFlowMatcher(sigma=0)`` (the OT path of genlab's ``loss=cfm``) regressing
    genlab's own UNet (the experiment's ``model.net``); inputs ``x / 127.5 - 1`` as in torchcfm's MNIST
    example."""

    def __init__(self, cfg: Any, info: Any) -> None:
        from hydra.utils import instantiate
        from torchcfm import ConditionalFlowMatcher

        self.matcher = ConditionalFlowMatcher(sigma=float(cfg.loss.path.sigma_min))
        self.model = instantiate(cfg.model.net)(shape=tuple(info.shape), out_mult=1)

    def loss(self, x: Tensor) -> Tensor:
        x1 = x.float() / 127.5 - 1.0
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        return (self.model(xt, t) - ut).pow(2).mean()

    def metrics(self, dm: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Pair:
    """A genlab experiment (``family``: a key of bench_overhead's ``EXPERIMENTS``) and its peer."""

    family: str
    package: str  # the peer's import name
    dist: str  # its distribution (pip) name
    peer: Callable[[Any, Any], Any]  # (run config, DataInfo) -> the peer: .model, .loss(x), .metrics(dm, cfg, args)
    measure: str | None  # compared after training: "nats" / "bpd" (with --nll), "ddim" (sampling seconds)


PAIRS: dict[str, Pair] = {
    "vae": Pair("vae", "pythae", "pythae", PythaeVAE, "nats"),
    "ddpm": Pair("diffusion", "denoising_diffusion_pytorch", "denoising-diffusion-pytorch", LucidrainsDDPM, "ddim"),
    "glow": Pair("flow", "normflows", "normflows", NormflowsGlow, "bpd"),
    "cfm": Pair("flow_matching", "torchcfm", "torchcfm", TorchCFM, None),
}


def require(pairs: list[str]) -> None:
    """Exit with the install command when a peer library is missing."""
    missing = [PAIRS[p].dist for p in pairs if importlib.util.find_spec(PAIRS[p].package) is None]
    if missing:
        sys.exit(f"bench_peers: {', '.join(missing)} not installed. The peer libraries are genlab's `bench` "
                 f"extra: {INSTALL} (docs/peers.md)")


# -- genlab's side: its real training loop -------------------------------------------------------------
class KeepModule(L.Callback):
    """Keeps the trained module and its datamodule for this process (the measurements after training)."""

    module: Any = None
    datamodule: Any = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        KeepModule.module, KeepModule.datamodule = pl_module, trainer.datamodule


def genlab_child(pair: Pair, args: argparse.Namespace) -> dict[str, Any]:
    """``genlab.train.run`` of the experiment (bench_overhead's settings: the training steps only), timed
    by ``StepClock``; then :func:`genlab_metrics` on the trained module."""
    from genlab.train import run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clock.json"
        extra = [*bo.GENLAB_ONLY, "+callbacks.clock._target_=__main__.StepClock",
                 f"+callbacks.clock.warmup={args.warmup}", f"+callbacks.clock.out={out}",
                 "+callbacks.keep._target_=__main__.KeepModule"]
        cfg = bo.compose(pair.family, args.data_dir, args.warmup + args.steps, Path(tmp) / "run", extra)
        run(cfg)
        s_per_step = json.loads(out.read_text())["s_per_step"]
    module = KeepModule.module
    return {"s_per_step": s_per_step, "params": count(module.nets),
            **genlab_metrics(pair, module, KeepModule.datamodule, cfg, args)}


def genlab_metrics(pair: Pair, module: Any, dm: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """DDIM sampling seconds (unguided, the experiment's steps and eta), or with ``--nll`` the family's own
    test estimate (``log_likelihood(..., "test")``) on the test images."""
    fam, nets = module.family, module.nets.eval()
    if pair.measure == "ddim":
        from genlab.families.diffusion import DDIM

        sampler = DDIM(steps=cfg.model.sampler.steps, eta=cfg.model.sampler.eta, guidance=1.0)
        t0 = time.process_time()
        fam.sample(nets, args.samples, sampler)
        return {"sample_s": time.process_time() - t0}
    if pair.measure is None or not args.nll:
        return {}
    x = test_images(dm, args.nll_images)
    with torch.no_grad():
        ll = batched(lambda xb: fam.log_likelihood(nets, {"x": xb}, "test").log_px, x, cfg.dataset.eval_batch_size)
    nats = float(-ll.double().mean())
    if pair.measure == "nats":
        return {"nll": nats, "unit": f"nats (IW, k={fam.test_k}, {len(x)} images)"}
    return {"nll": nats / (nets.info.dims * LN2), "unit": f"bits/dim ({fam.test_samples} draw, {len(x)} images)"}


# -- the peer's side: a plain loop with the experiment's recipe -----------------------------------------
def peer_child(pair: Pair, args: argparse.Namespace) -> dict[str, Any]:
    """Build the peer for the experiment's config, train it with :func:`peer_loop`, then its metrics."""
    from hydra.utils import instantiate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bo.compose(pair.family, args.data_dir, args.warmup + args.steps, Path(tmp) / "run", [])
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    peer = pair.peer(cfg, dm.info)
    s_per_step = peer_loop(peer, cfg, dm.splits["train"], args.steps, args.warmup)
    return {"s_per_step": s_per_step, "params": count(peer.model), "genlab_params": genlab_params(cfg, dm.info),
            **peer.metrics(dm, cfg, args)}


def peer_loop(peer: Any, cfg: Any, split: Any, steps: int, warmup: int) -> float:
    """CPU seconds per step after ``warmup`` steps: batches of the experiment's size drawn from genlab's
    training split (its batch transform applied), the experiment's optimizer, LR schedule, gradient
    clipping (by norm, as Lightning's), EMA (bench_overhead's) and bf16 autocast where it trains so."""
    from hydra.utils import instantiate

    from genlab.builders import build_scheduler

    params = [p for p in peer.model.parameters() if p.requires_grad]
    opt = instantiate(cfg.optimizer)(params)
    make_sched = build_scheduler(cfg)
    sched = make_sched(opt, total_steps=warmup + steps) if make_sched else None
    ema, clip = bo._ema(cfg, peer.model), cfg.trainer.get("gradient_clip_val")
    bf16 = str(cfg.trainer.get("precision")) == "bf16-mixed"
    g = torch.Generator().manual_seed(0)
    peer.model.train()
    t0 = time.process_time()
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.process_time()
        x = split.x[torch.randint(len(split.x), (cfg.dataset.batch_size,), generator=g)]
        x = split.transform(x, g) if split.transform is not None else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = peer.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        if ema is not None:
            ema()
    return (time.process_time() - t0) / steps


# -- the parent: interleaved fresh processes, the table -------------------------------------------------
def spawn(side: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh child process (one thread); its JSON report."""
    cmd = [sys.executable, __file__, "--child", side, "--pair", name, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data-dir", args.data_dir, "--samples", str(args.samples)]
    cmd += ["--nll"] if args.nll else []
    cmd += ["--nll-images", str(args.nll_images)] if args.nll_images else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TQDM_DISABLE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_pair(name: str, args: argparse.Namespace) -> list[tuple[dict, dict]]:
    """``--pairs`` (genlab, peer) reports, the order alternating (genlab first, then the peer first, ...)."""
    runs = []
    for i in range(args.pairs):
        sides = ("genlab", "peer") if i % 2 == 0 else ("peer", "genlab")
        got = {side: spawn(side, name, args) for side in sides}
        runs.append((got["genlab"], got["peer"]))
    return runs


def after_training(runs: list[tuple[dict, dict]]) -> str:
    """The table's last cell: what both measured after the equal steps (medians over the pairs)."""
    g, p = runs[0]
    med = lambda key, side: statistics.median(r[side][key] for r in runs)  # noqa: E731
    if "sample_s" in g:
        return f"DDIM-50 sampling: {med('sample_s', 0):.2f} s / {med('sample_s', 1):.2f} s"
    if "nll" in g:
        return f"test NLL: {med('nll', 0):.4g} / {med('nll', 1):.4g} {g['unit']}"
    return "—"


def table_row(name: str, runs: list[tuple[dict, dict]]) -> str:
    ratios = [p["s_per_step"] / g["s_per_step"] for g, p in runs]
    g_ms = 1000 * statistics.median(g["s_per_step"] for g, _ in runs)
    p_ms = 1000 * statistics.median(p["s_per_step"] for _, p in runs)
    g, p = runs[0]
    peer = f"{PAIRS[name].dist}" + (f" (width {p['width']})" if "width" in p else "")
    return (f"| {name}: genlab `{bo.EXPERIMENTS[PAIRS[name].family][0]}` vs {peer} | {g['params']:,} | "
            f"{p['params']:,} | {g_ms:.1f} | {p_ms:.1f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}–{max(ratios):.2f}) | {after_training(runs)} |")


def parent(args: argparse.Namespace) -> int:
    names = args.peers.split(",")
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        sys.exit(f"bench_peers: unknown peer(s) {unknown}; choose from {', '.join(PAIRS)}")
    require(names)
    versions = ", ".join(f"{PAIRS[n].dist} {importlib.metadata.version(PAIRS[n].dist)}" for n in names)
    print(f"{args.warmup} warm-up + {args.steps} timed steps per process, {args.pairs} pairs, 1 thread; "
          f"torch {torch.__version__}; {versions}\n")
    print("| pair | genlab params | peer params | genlab ms/step | peer ms/step | peer/genlab (median, range) | "
          "after the same steps: genlab / peer |\n|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        print(table_row(name, measure_pair(name, args)), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default=",".join(PAIRS), help=f"comma-separated, of {', '.join(PAIRS)}")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per process")
    p.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    p.add_argument("--pairs", type=int, default=3, help="interleaved (genlab, peer) process pairs per peer")
    p.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw (torchvision layout)")
    p.add_argument("--nll", action="store_true", help="after training, the test NLL of both (vae, glow)")
    p.add_argument("--nll-images", type=int, default=None, help="test images for --nll (default: all 10,000)")
    p.add_argument("--samples", type=int, default=64, help="images of the DDIM-50 sampling timed for ddpm")
    p.add_argument("--child", choices=["genlab", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--pair", choices=list(PAIRS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:
        return parent(args)
    require([args.pair])
    side = genlab_child if args.child == "genlab" else peer_child
    print(json.dumps(side(PAIRS[args.pair], args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
