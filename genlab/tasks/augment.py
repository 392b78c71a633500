"""Data augmentation / generation: write samples as a dataset, and measure whether they help.

1. ``n_synthetic`` samples are written to ``samples.npz`` in the ``array`` datamodule's format
   (``x`` uint8 ``(N, H, W)`` or ``(N, C, H, W)``, ``y`` int labels, plus ``confidence``), so they
   train anything in genlab: ``genlab-train dataset=array dataset.path=<out>/samples.npz
   dataset.levels=<L>``.
2. Where the data have labels, the models are unconditional, so the samples are labelled the
   semi-supervised way: a classifier trained on ``n_real`` labelled real train images labels
   them (pseudo-labels, Lee 2013), and only samples it labels with confidence
   ``>= min_confidence`` are kept. Three classifiers of the same architecture (the
   :class:`~genlab.metrics.quality.FeatureClassifier`), the same number of steps, are then scored
   on the test split:

   * ``real``: the ``n_real`` real images alone;
   * ``real+synthetic``: the real images and the kept samples;
   * ``synthetic``: the kept samples alone (a "classification accuracy score", Ravuri & Vinyals
     2019: how much of the class structure the samples carry).

   The generative model was trained on the unlabelled train split; no labels beyond the
   ``n_real`` ones are used anywhere.

Writes ``samples.npz``, ``augment.json`` / ``augment.md`` and ``augment.png`` (kept samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from genlab.tasks.base import TaskConfig, TaskContext, TaskError, require_images, save_rows, stream_seed, write_report

SUPPORTED = "every family that samples images (autoregressive, vae, flow, diffusion, flow_matching, gan, ebm)"


@dataclass
class Config(TaskConfig):
    """n_synthetic: samples to write (and to use as extra training data).
    n_real: labelled real train images for the classifiers (null: the whole train split).
    min_confidence: keep samples whose pseudo-label has at least this probability.
    classifier_steps: optimizer steps of each classifier.
    """

    n_synthetic: int = 1000
    n_real: int | None = 500
    min_confidence: float = 0.9
    classifier_steps: int = 1500


def draw_samples(ctx: TaskContext, n: int, batch: int, seed: int) -> Tensor:
    parts = [ctx.module.sample(min(batch, n - i), seed=seed + i).cpu() for i in range(0, n, batch)]
    return torch.cat(parts)


def write_npz(path, x: Tensor, y: Tensor | None = None, confidence: Tensor | None = None) -> None:
    """Images ``(N, C, H, W)`` -> the ``array`` format (single-channel images stored ``(N, H, W)``)."""
    arr = x.numpy().astype(np.uint8)
    if arr.shape[1] == 1:
        arr = arr[:, 0]
    extra = {} if y is None else {"y": y.numpy().astype(np.int64)}
    if confidence is not None:
        extra["confidence"] = confidence.numpy().astype(np.float32)
    np.savez_compressed(path, x=arr, **extra)


def run(ctx: TaskContext, cfg: Config) -> dict:
    from genlab.metrics.quality import ClassifierConfig, FeatureClassifier, accuracy, discrete, fit_classifier

    require_images("augment", ctx, SUPPORTED)
    if cfg.n_synthetic < 1:
        raise TaskError(f"n_synthetic={cfg.n_synthetic}: write at least one sample")
    info = ctx.info
    x_syn = draw_samples(ctx, cfg.n_synthetic, cfg.batch_size, cfg.seed)
    report: dict = {"task": "augment", "family": ctx.family.name, "dataset": info.name, "checkpoint": str(ctx.ckpt),
                    "n_synthetic": len(x_syn), "levels": info.levels}
    npz = ctx.out_dir / "samples.npz"
    train = ctx.dm.splits["train"]
    if info.num_classes is None or train.y is None:
        write_npz(npz, x_syn)
        report["classifier"] = f"dataset {info.name} has no labels: samples written, no classifier comparison"
        md = f"# Augmentation: {ctx.family.name} on {info.name}\n\n{len(x_syn)} samples in `{npz}` (no labels)."
        write_report(ctx.out_dir, "augment", report, md)
        report["summary"] = [f"{len(x_syn)} samples written to {npz} ({report['classifier']})"]
        return report

    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "real_subset"))
    x_train, y_train = discrete(train), train.y.long()
    idx = torch.randperm(len(x_train), generator=g)[: cfg.n_real or len(x_train)]
    x_real, y_real = x_train[idx], y_train[idx]
    test = ctx.dm.splits["test"]
    x_test, y_test = discrete(test), test.y.long()
    ccfg = ClassifierConfig(epochs=1, min_steps=cfg.classifier_steps, seed=cfg.seed)

    def fit(x: Tensor, y: Tensor) -> tuple[FeatureClassifier, float, float]:
        clf = FeatureClassifier(info.shape, info.levels, info.num_classes, ccfg.width, ccfg.feature_dim)
        seconds = fit_classifier(clf, x, y, ccfg)
        return clf, accuracy(clf, x_test, y_test), seconds

    clf_real, acc_real, sec_real = fit(x_real, y_real)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(clf_real(x_syn[i:i + 1000]), -1) for i in range(0, len(x_syn), 1000)])
    conf, y_syn = probs.max(-1)
    keep = conf >= cfg.min_confidence
    write_npz(npz, x_syn, y_syn, conf)
    results = {"real": {"n_train": len(x_real), "test_accuracy": acc_real, "seconds": sec_real}}
    if keep.sum() >= 1:
        _, acc_aug, sec_aug = fit(torch.cat([x_real, x_syn[keep]]), torch.cat([y_real, y_syn[keep]]))
        _, acc_syn, sec_syn = fit(x_syn[keep], y_syn[keep])
        results["real+synthetic"] = {"n_train": len(x_real) + int(keep.sum()), "test_accuracy": acc_aug,
                                     "seconds": sec_aug}
        results["synthetic"] = {"n_train": int(keep.sum()), "test_accuracy": acc_syn, "seconds": sec_syn}
    hist = torch.bincount(y_syn[keep], minlength=info.num_classes).tolist()
    shown = x_syn[keep][:32] if keep.any() else x_syn[:32]
    png = save_rows([shown[i:i + 16] for i in range(0, len(shown), 16) if len(shown[i:i + 16]) == 16] or [shown],
                    info.levels, ctx.out_dir / "augment.png")
    report.update({
        "n_real": len(x_real), "min_confidence": cfg.min_confidence, "kept": int(keep.sum()),
        "kept_class_hist": hist, "n_test": len(x_test), "classifiers": results,
        "files": {"npz": str(npz), "png": str(png)},
        "train_command": f"genlab-train dataset=array dataset.path={npz} dataset.levels={info.levels}",
    })
    rows = [f"| {k} | {v['n_train']} | {100 * v['test_accuracy']:.2f}% |" for k, v in results.items()]
    md = "\n".join([
        f"# Augmentation: {ctx.family.name} on {info.name}", "",
        f"checkpoint: `{ctx.ckpt}`; {len(x_syn)} samples in `{npz}`; {int(keep.sum())} kept with pseudo-label "
        f"confidence >= {cfg.min_confidence} (labeller: the `real` classifier); kept per class: {hist}", "",
        f"Test accuracy on {len(x_test)} test images (same classifier, {cfg.classifier_steps} steps each):", "",
        "| training data | images | test accuracy |", "|---|---|---|", *rows, "",
        "![kept samples](augment.png)", "", f"Train on the samples: `{report['train_command']}`",
    ])
    _, md_path = write_report(ctx.out_dir, "augment", report, md)
    report["summary"] = [f"{len(x_syn)} samples -> {npz} ({int(keep.sum())} confidently labelled)",
                         *[f"  {r}" for r in rows], f"report: {md_path}"]
    return report
