"""Density estimation and anomaly detection: per-example NLL, and how well it separates the test
set from out-of-distribution (OOD) inputs.

The score of an example is its negative log-likelihood in bits/dim under the model (the
family's ``log_likelihood``: exact, a bound or an estimate — its kind is reported). An EBM on
data too large to normalise scores by its energy ``E(x) = -log p(x) - log Z`` instead: the same
ranking, without the constant. A higher score means "more anomalous"; the AUROC of each OOD set
against the in-distribution examples (``split``) is the probability that a random OOD example
scores higher than a random in-distribution one (0.5 = chance; < 0.5 = the model likes the OOD
data *better*, a known failure of likelihood models, Nalisnick et al. 2019).

OOD sets, made from the in-distribution examples themselves (``ood=[...]``):

* ``noise``: uniform random values at every dimension (images, points, text);
* ``inverted``: ``L - 1 - x`` (images);
* ``rotated``: rotated by 90 degrees (square images);
* ``flipped``: upside down (images);
* ``shuffled``: the tokens of each sequence in random order (text);
* and ``ood_file=<.npy/.npz>``: another dataset in the ``array`` format (same shape and levels,
  e.g. another digit set), named by its file.

Writes ``anomaly.json`` (AUROCs, mean NLLs, per-example scores), ``anomaly.md``, ``roc.png``
(the ROC curves) and ``scores.png`` (score histograms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from genlab.families.base import EnergyScorer, Likelihood
from genlab.tasks.base import TaskConfig, TaskContext, TaskError, Unsupported, batches, stream_seed, write_report
from genlab.tasks.registry import TASKS

TRANSFORMS = {"image": ("noise", "inverted", "rotated", "flipped"), "points": ("noise",),
              "text": ("noise", "shuffled")}


@dataclass
class Config(TaskConfig):
    """ood: OOD sets made from the examples (noise, inverted, rotated, flipped; text: noise, shuffled).
    ood_file: an extra OOD set from a .npy/.npz file (array format, same shape and levels).
    """

    ood: list[str] = field(default_factory=lambda: ["noise", "inverted", "rotated", "flipped"])
    ood_file: str | None = None
    n: int = 500


def make_ood(name: str, x: Tensor, kind: str, levels: int, generator: torch.Generator) -> Tensor:
    """The OOD set ``name`` built from the in-distribution examples ``x`` (same shape and dtype)."""
    allowed = TRANSFORMS.get(kind, ())
    if name not in allowed:
        raise TaskError(f"OOD set '{name}' is not defined for {kind} data; choose from {list(allowed)} "
                        f"or pass ood_file=<.npy/.npz>")
    if name == "noise":
        return torch.randint(0, levels, x.shape, generator=generator).to(x.dtype).to(x.device)
    if name == "inverted":
        return (levels - 1 - x.long()).to(x.dtype)
    if name == "rotated":
        if x.shape[-1] != x.shape[-2]:
            raise TaskError(f"ood=rotated needs square images, got {tuple(x.shape[-2:])}; drop it from ood=[...]")
        return torch.rot90(x, 1, dims=(-2, -1)).contiguous()
    if name == "flipped":
        return torch.flip(x, dims=(-2,)).contiguous()
    # shuffled (text)
    perm = torch.argsort(torch.rand(x.shape, generator=generator), dim=-1).to(x.device)
    return torch.gather(x, -1, perm)


def load_ood_file(path: str, ctx: TaskContext, n: int) -> Tensor:
    """The first ``n`` examples of an array-format file, checked against the model's data."""
    from genlab.data.array import load_array_file
    from genlab.data.base import DataError

    try:
        x, _ = load_array_file(Path(path))
    except DataError as e:
        raise TaskError(str(e)) from e
    t = torch.as_tensor(x[:n])
    if t.ndim == len(ctx.info.shape) and ctx.info.kind == "image":
        t = t.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    if tuple(t.shape[1:]) != tuple(ctx.info.shape):
        raise TaskError(f"ood_file {path} holds examples of shape {tuple(t.shape[1:])}, the model's data are "
                        f"{tuple(ctx.info.shape)}. Fix: resize it to the same shape first")
    if t.min() < 0 or t.max() >= ctx.info.levels:
        raise TaskError(f"ood_file {path} has values in [{int(t.min())}, {int(t.max())}], the model's data "
                        f"have {ctx.info.levels} levels (0..{ctx.info.levels - 1}). Fix: quantise it first")
    dtype = torch.uint8 if ctx.info.levels <= 256 and ctx.info.kind != "text" else torch.long
    return t.to(dtype).to(ctx.device)


def scorer(ctx: TaskContext) -> tuple[str, callable, list[str]]:
    """``(what, score, kinds)``: ``score(x) -> (B,)`` NLL in the data's unit, or the energy in nats
    (higher = more anomalous);
    ``kinds`` collects the likelihood kinds (exact / bound / estimate) as it scores."""
    family, nets, dims = ctx.family, ctx.nets, ctx.info.dims
    probe = ctx.real("test", 2)[0]
    kinds: list[str] = []
    if isinstance(family, Likelihood) and family.log_likelihood(nets, {"x": probe}, stage="test") is not None:

        def nll(x: Tensor) -> Tensor:
            ll = family.log_likelihood(nets, {"x": x}, stage="test")
            kinds.append(ll.kind)
            return -ll.log_px.double().cpu() / (dims * math.log(2))

        return "likelihood", nll, kinds
    if isinstance(family, EnergyScorer):
        def energy(x: Tensor) -> Tensor:
            with torch.no_grad():
                return family.score_energy(nets, x).double().cpu()

        return "energy", energy, kinds
    raise Unsupported("anomaly", family.name, "it defines no likelihood (nll_kind none) and no energy",
                      TASKS["anomaly"].families)


def roc(scores_in: Tensor, scores_out: Tensor) -> tuple[float, Tensor, Tensor]:
    """AUROC (OOD = positive, higher score = more anomalous) and the curve (fpr, tpr)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = torch.cat([torch.zeros(len(scores_in)), torch.ones(len(scores_out))]).numpy()
    s = torch.cat([scores_in, scores_out]).numpy()
    fpr, tpr, _ = roc_curve(y, s)
    return float(roc_auc_score(y, s)), torch.as_tensor(fpr), torch.as_tensor(tpr)


def _plots(out: Path, scores: dict[str, Tensor], curves: dict[str, tuple[float, Tensor, Tensor]], unit: str,
           what: str) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (auc, fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate (in-distribution flagged)", ylabel="true positive rate (OOD flagged)",
           title=f"ROC: {what} as anomaly score")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    roc_path = out / "roc.png"
    fig.savefig(roc_path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    finite = torch.cat([s[torch.isfinite(s)] for s in scores.values()])
    lo, hi = (finite.min().item(), finite.max().item()) if len(finite) else (0.0, 1.0)
    for name, s in scores.items():
        ax.hist(s[torch.isfinite(s)].numpy(), bins=40, range=(lo, hi), alpha=0.5, label=name)
    ax.set(xlabel=f"{what} ({unit})", ylabel="examples", title="anomaly scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    hist_path = out / "scores.png"
    fig.savefig(hist_path)
    plt.close(fig)
    return roc_path, hist_path


def run(ctx: TaskContext, cfg: Config) -> dict:
    """Score in-distribution and OOD sets; AUROC, ROC and score plots, report."""
    what, score, kinds = scorer(ctx)
    sets = score_sets(ctx, cfg)
    scores: dict[str, Tensor] = {}
    for i, (name, x) in enumerate(sets.items()):
        parts = []
        for j, xb in enumerate(batches(x, cfg.batch_size)):
            torch.manual_seed(cfg.seed * 1_000_003 + 1000 * i + j)  # estimates (VAE, flow matching) repeatable
            parts.append(score(xb))
        scores[name] = torch.cat(parts)
    in_name = next(iter(sets))
    curves = {name: roc(scores[in_name], s) for name, s in scores.items() if name != in_name}
    return _report(ctx, what, kinds[-1] if kinds else None, scores, curves)


def score_sets(ctx: TaskContext, cfg: Config) -> dict[str, Tensor]:
    """The in-distribution examples first, then every OOD set (transforms of them, and ``ood_file``)."""
    x_in, _ = ctx.real(cfg.split, cfg.n)
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "ood"))  # independent of the model's draws
    sets = {f"{cfg.split} (in-distribution)": x_in}
    for name in cfg.ood:
        sets[name] = make_ood(name, x_in, ctx.info.kind, ctx.info.levels, g)
    if cfg.ood_file:
        sets[Path(cfg.ood_file).stem] = load_ood_file(cfg.ood_file, ctx, cfg.n)
    if len(sets) < 2:
        raise TaskError("no OOD set: pass ood=[noise,...] and/or ood_file=<.npy/.npz>")
    return sets


def _report(ctx: TaskContext, what: str, kind: str | None, scores: dict[str, Tensor],
            curves: dict[str, tuple]) -> dict:
    """Plots, anomaly.json / .md; the report."""
    unit = ctx.info.unit if what == "likelihood" else "nats per example, -log p(x) up to the constant log Z"
    label = "NLL" if what == "likelihood" else "energy"
    roc_path, hist_path = _plots(ctx.out_dir, scores, curves, unit, label)
    rows = [f"| {name} | {len(s)} | {s.mean().item():.4f} | {curves[name][0]:.4f} |" if name in curves
            else f"| {name} | {len(s)} | {s.mean().item():.4f} | — |" for name, s in scores.items()]
    md = "\n".join([
        f"# Anomaly detection: {ctx.family.name} on {ctx.info.name}", "",
        f"checkpoint: `{ctx.ckpt}`; score: {label} in {unit}" + (f" ({kind})" if what == "likelihood" else ""), "",
        f"| set | n | mean {label} | AUROC vs in-distribution |", "|---|---|---|---|", *rows, "",
        "AUROC: probability that an OOD example scores higher than an in-distribution one (0.5 = chance, "
        "< 0.5 = the model prefers the OOD data).", "", "![ROC](roc.png)", "", "![scores](scores.png)",
    ])
    report = {
        "task": "anomaly", "family": ctx.family.name, "dataset": ctx.info.name, "checkpoint": str(ctx.ckpt),
        "score": label, "unit": unit, "nll_kind": kind if what == "likelihood" else None,
        "auroc": {name: c[0] for name, c in curves.items()},
        "mean_score": {name: s.mean().item() for name, s in scores.items()},
        "scores": {name: [round(v, 5) for v in s.tolist()] for name, s in scores.items()},
        "files": {"roc": str(roc_path), "hist": str(hist_path)},
    }
    json_path, md_path = write_report(ctx.out_dir, "anomaly", report, md)
    report["summary"] = [f"{label} of {ctx.family.name} on {ctx.info.name} ({unit}):",
                         *[f"  {r}" for r in rows], f"report: {md_path}"]
    return report
