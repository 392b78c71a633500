"""The generative classifier: a class-conditional model read as a Bayes classifier.

``p(y | x) = p(x | y) p(y) / sum_k p(x | k) p(k)`` with the model's ``log p(x | y)`` for every class
(one likelihood evaluation per class, with the same random numbers for all classes) and ``p(y)`` the
train split's label frequencies; a family with its own classifier head (a JEM energy: ``p(y|x)`` is
the softmax of its logits) gives its scores directly (:meth:`Conditional.class_scores`). Where the
likelihood is a bound or an estimate, ``p(y | x)`` is the classifier of those bounds (reported).

Reported on the labelled examples of ``split``:

* accuracy (with its binomial standard error) and the label NLL ``-log p(y | x)`` (nats);
* the expected calibration error (ECE, Guo et al. 2017: ``sum_b |B_b|/n |acc(B_b) - conf(B_b)|``
  over ``bins`` equal-width confidence bins) and its reliability diagram (``reliability.png``);
* "bits the label is worth": the mean over images of ``log2 p(x | y) - log2 p(x) = log2 p(y | x) -
  log2 p(y)``, an estimate of the mutual information ``I(X; Y)``, which lies in ``[0, H(Y)]``.

Writes ``classify.json``, ``classify.md`` and ``reliability.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.families.base import Conditional, Likelihood
from genlab.tasks.base import TaskConfig, TaskContext, TaskError, Unsupported, batches, write_report
from genlab.tasks.registry import TASKS


@dataclass
class Config(TaskConfig):
    """bins: confidence bins of the calibration error and the reliability diagram."""

    n: int = 1000
    bins: int = 15


def _check(ctx: TaskContext) -> None:
    if not isinstance(ctx.family, Conditional):
        raise Unsupported.lacking("classify", ctx.family, Conditional)
    if not isinstance(ctx.family, Likelihood):
        raise Unsupported.lacking("classify", ctx.family, Likelihood)
    if not ctx.module.conditional:
        raise TaskError(f"the run {ctx.run_dir} is unconditional (p(x), no labels): a generative classifier needs "
                        "p(x | y). Fix: train with +conditional=class, e.g. genlab-train model=... dataset=mnist "
                        "+conditional=class, and pass that run")


def log_posterior(ctx: TaskContext, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, str]:
    """``log p(y | x)`` ``(B, K)`` and where it comes from (the likelihood's kind, or ``logits``)."""
    module, cond = ctx.module, ctx.family.condition
    with module.inference():
        scores = ctx.family.class_scores(module.nets, x)
        source = "logits"
        if scores is None:
            scores, ll = module.class_log_likelihoods({"x": x, "y": y.to(x.device)}, "test", seed)
            if ll is None or ll.kind == "none":
                raise Unsupported("classify", ctx.family.name, f"it has no likelihood p(x | y) on {ctx.info.name} "
                                  "data and no classifier head", TASKS["classify"].families)
            scores, source = scores + cond.log_prior(scores.device), ll.kind
    return torch.log_softmax(scores.double(), dim=1).cpu(), source


def calibration(conf: Tensor, correct: Tensor, bins: int) -> tuple[float, list[dict[str, float]]]:
    """The expected calibration error and the per-bin ``(lo, hi, n, accuracy, confidence)``."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=True)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            acc, c = float(correct[m].double().mean()), float(conf[m].mean())
            ece += int(m.sum()) / len(conf) * abs(acc - c)
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()), "accuracy": acc,
                         "confidence": c})
    return ece, rows


def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    _check(ctx)
    x, y = ctx.real(cfg.split, cfg.n, cfg.seed)
    if y is None:
        raise TaskError(f"split '{cfg.split}' of dataset {ctx.info.name!r} has no labels to classify against")
    y = y.long()
    parts = [log_posterior(ctx, xb, yb, cfg.seed + i)
             for i, (xb, yb) in enumerate(zip(batches(x, cfg.batch_size), batches(y, cfg.batch_size)))]
    logp = torch.cat([p for p, _ in parts])
    report = summarize(logp, y, ctx.family.condition.log_prior(), cfg.bins)
    report.update(source=parts[0][1], family=ctx.family.name, dataset=ctx.info.name, split=cfg.split)
    report["plot"] = str(reliability_png(report["bins"], ctx.out_dir / "reliability.png"))
    write_report(ctx.out_dir, "classify", report, render(report))
    return report


def summarize(logp: Tensor, y: Tensor, log_prior: Tensor, bins: int) -> dict[str, Any]:
    """Accuracy, label NLL, ECE and the label's worth in bits from ``log p(y | x)`` ``(N, K)``."""
    n = len(y)
    conf, pred = logp.exp().max(1)
    correct = pred == y
    acc = float(correct.double().mean())
    own = logp.gather(1, y[:, None])[:, 0]
    worth = (own - log_prior.cpu()[y]) / math.log(2)  # log2 p(y|x) - log2 p(y) per image
    p = log_prior.exp()
    ece, rows = calibration(conf, correct, bins)
    return {"n": n, "accuracy": acc, "accuracy_se": math.sqrt(max(acc * (1 - acc), 0.0) / n),
            "label_nll_nats": float(-own.mean()), "ece": ece, "bins": rows,
            "label_bits": float(worth.mean()), "label_bits_se": float(worth.std() / math.sqrt(n)) if n > 1 else None,
            "label_entropy_bits": float(-(p[p > 0] * p[p > 0].log2()).sum()),
            "confusion": torch.bincount(y * logp.shape[1] + pred, minlength=logp.shape[1] ** 2)
            .view(logp.shape[1], -1).tolist()}


def render(r: dict[str, Any]) -> str:
    lines = [f"# Generative classifier: {r['family']} on {r['dataset']} ({r['split']}, {r['n']} examples)", "",
             f"p(y|x) from: {r['source']} {'likelihoods' if r['source'] != 'logits' else '(the model head)'}", "",
             "| accuracy | label NLL (nats) | ECE | bits the label is worth | H(Y) bits |", "|---|---|---|---|---|",
             f"| {r['accuracy']:.4f} ± {r['accuracy_se']:.4f} | {r['label_nll_nats']:.4f} | {r['ece']:.4f} | "
             f"{r['label_bits']:.3f} ± {r['label_bits_se'] or 0:.3f} | {r['label_entropy_bits']:.3f} |", "",
             "Reliability diagram: reliability.png"]
    r["summary"] = [f"accuracy {r['accuracy']:.4f} ± {r['accuracy_se']:.4f}, label NLL {r['label_nll_nats']:.4f} nats, "
                    f"ECE {r['ece']:.4f}, label worth {r['label_bits']:.3f} of {r['label_entropy_bits']:.3f} bits"]
    return "\n".join(lines)


def reliability_png(rows: list[dict[str, float]], path: Path) -> Path:
    """Accuracy against confidence per bin (the diagonal: perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["accuracy"] for r in rows],
           width=[r["hi"] - r["lo"] for r in rows], edgecolor="k", alpha=0.7, label="accuracy")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
