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
3. A class-conditional run (``+conditional=class``) draws labelled samples instead: an equal number
   per class, each sample's label the one it was drawn for (no pseudo-labelling, every sample kept);
   the ``real`` classifier's agreement with those labels is reported (``label_agreement``).

Writes ``samples.npz``, ``augment.json`` / ``augment.md`` and ``augment.png`` (kept samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.tasks.base import TaskConfig, TaskContext, TaskError, require_images, save_rows, stream_seed, write_report
from genlab.tasks.registry import TASKS

if TYPE_CHECKING:  # imported where used: the metrics load only when the task runs
    from genlab.metrics.quality import ClassifierConfig, FeatureClassifier



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


def draw_samples(ctx: TaskContext, n: int, batch: int, seed: int, y: Tensor | None = None) -> Tensor:
    """``n`` samples of the model (on the CPU), drawn ``batch`` at a time, batch ``i`` with seed ``seed + i``;
    ``y``: the labels ``(n,)`` of a conditional model's samples."""
    parts = [ctx.module.sample(min(batch, n - i), seed=seed + i, **({} if y is None else {"y": y[i:i + batch]})).cpu()
             for i in range(0, n, batch)]
    return torch.cat(parts)


def requested_labels(ctx: TaskContext, n: int) -> Tensor | None:
    """Labels for a conditional model's samples, an equal number per class (None: unconditional)."""
    return torch.arange(n) % ctx.family.condition.num_classes if ctx.module.conditional else None


def write_npz(path, x: Tensor, y: Tensor | None = None, confidence: Tensor | None = None) -> None:
    """Images ``(N, C, H, W)`` -> the ``array`` format (single-channel images stored ``(N, H, W)``)."""
    arr = x.numpy().astype(np.uint8)
    if arr.shape[1] == 1:
        arr = arr[:, 0]
    extra = {} if y is None else {"y": y.numpy().astype(np.int64)}
    if confidence is not None:
        extra["confidence"] = confidence.numpy().astype(np.float32)
    np.savez_compressed(path, x=arr, **extra)


# -- the task -------------------------------------------------------------------------------------
def run(ctx: TaskContext, cfg: Config) -> dict:
    """Write ``n_synthetic`` samples to ``samples.npz`` and, where the data have labels, pseudo-label
    them and score the three classifiers (module docstring); returns the report."""
    require_images("augment", ctx, TASKS["augment"].families)
    if cfg.n_synthetic < 1:
        raise TaskError(f"n_synthetic={cfg.n_synthetic}: write at least one sample")
    info = ctx.info
    y_req = requested_labels(ctx, cfg.n_synthetic)
    x_syn = draw_samples(ctx, cfg.n_synthetic, cfg.batch_size, cfg.seed, y_req)
    report: dict = {"task": "augment", "family": ctx.family.name, "dataset": info.name, "checkpoint": str(ctx.ckpt),
                    "n_synthetic": len(x_syn), "levels": info.levels}
    npz = ctx.out_dir / "samples.npz"
    if info.num_classes is None or ctx.dm.splits["train"].y is None:
        write_npz(npz, x_syn)
        report["classifier"] = f"dataset {info.name} has no labels: samples written, no classifier comparison"
        write_report(ctx.out_dir, "augment", report, _unlabelled_markdown(report, npz))
        report["summary"] = [f"{len(x_syn)} samples written to {npz} ({report['classifier']})"]
        return report
    report.update(label_and_compare(ctx, cfg, x_syn, npz, y_req))
    _, md_path = write_report(ctx.out_dir, "augment", report, _markdown(report, cfg.classifier_steps))
    report["summary"] = _summary(report, md_path)
    return report


def real_data(ctx: TaskContext, cfg: Config) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_real, y_real, x_test, y_test)``: ``n_real`` labelled train images (a random subset, its
    own seed stream) and the whole test split, as discrete images and integer labels."""
    from genlab.metrics.quality import discrete

    train, test = ctx.dm.splits["train"], ctx.dm.splits["test"]
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "real_subset"))
    x_train, y_train = discrete(train), train.y.long()
    idx = torch.randperm(len(x_train), generator=g)[: cfg.n_real or len(x_train)]
    return x_train[idx], y_train[idx], discrete(test), test.y.long()


@dataclass
class ClassifierScorer:
    """Trains a fresh :class:`~genlab.metrics.quality.FeatureClassifier` (the same architecture and
    number of steps every time) on given images and scores it on the test images."""

    info: DataInfo
    ccfg: ClassifierConfig
    x_test: Tensor
    y_test: Tensor

    def fit(self, x: Tensor, y: Tensor) -> tuple[FeatureClassifier, dict[str, float]]:
        """The trained classifier and ``{n_train, test_accuracy, seconds}``."""
        from genlab.metrics.quality import FeatureClassifier, accuracy, fit_classifier

        info, ccfg = self.info, self.ccfg
        clf = FeatureClassifier(info.shape, info.levels, info.num_classes, ccfg.width, ccfg.feature_dim)
        seconds = fit_classifier(clf, x, y, ccfg)
        return clf, {"n_train": len(x), "test_accuracy": accuracy(clf, self.x_test, self.y_test), "seconds": seconds}


def pseudo_label(clf: FeatureClassifier, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
    """``(confidence, label)`` of every image by ``clf``: ``max_k p(k | x)`` and ``argmax_k p(k | x)``."""
    with torch.no_grad():
        probs = torch.cat([torch.softmax(clf(x[i:i + batch]), -1) for i in range(0, len(x), batch)])
    return probs.max(-1)


def label_and_compare(ctx: TaskContext, cfg: Config, x_syn: Tensor, npz: Path, y_req: Tensor | None = None) -> dict:
    """Label the samples ``x_syn`` with the ``real`` classifier (or, for a conditional model, take the
    labels ``y_req`` they were drawn for and keep them all), write them with their labels and
    confidences to ``npz``, train the ``real+synthetic`` and ``synthetic`` classifiers on the kept
    ones (if any) and save up to 32 kept samples to ``augment.png``; returns the report's entries."""
    from genlab.metrics.quality import ClassifierConfig

    info = ctx.info
    x_real, y_real, x_test, y_test = real_data(ctx, cfg)
    scorer = ClassifierScorer(info, ClassifierConfig(epochs=1, min_steps=cfg.classifier_steps, seed=cfg.seed),
                              x_test, y_test)
    clf_real, scores_real = scorer.fit(x_real, y_real)
    conf, y_syn = pseudo_label(clf_real, x_syn)
    agreement = None if y_req is None else float((y_syn == y_req).double().mean())
    keep = conf >= cfg.min_confidence if y_req is None else torch.ones(len(x_syn), dtype=torch.bool)
    y_syn = y_syn if y_req is None else y_req
    write_npz(npz, x_syn, y_syn, conf)
    results = {"real": scores_real}
    if keep.sum() >= 1:
        results["real+synthetic"] = scorer.fit(torch.cat([x_real, x_syn[keep]]), torch.cat([y_real, y_syn[keep]]))[1]
        results["synthetic"] = scorer.fit(x_syn[keep], y_syn[keep])[1]
    hist = torch.bincount(y_syn[keep], minlength=info.num_classes).tolist()
    png = _save_kept(x_syn[keep] if keep.any() else x_syn, info.levels, ctx.out_dir / "augment.png")
    return {
        "n_real": len(x_real), "min_confidence": cfg.min_confidence if y_req is None else None,
        "labels": "pseudo-labels of the real classifier" if y_req is None else "requested (conditional model)",
        "label_agreement": agreement, "kept": int(keep.sum()),
        "kept_class_hist": hist, "n_test": len(x_test), "classifiers": results,
        "files": {"npz": str(npz), "png": str(png)},
        "train_command": f"genlab-train dataset=array dataset.path={npz} dataset.levels={info.levels}",
    }


def _save_kept(x: Tensor, levels: int, path: Path) -> Path:
    """The first 32 images of ``x`` as rows of 16 (one short row if there are fewer than 16)."""
    shown = x[:32]
    return save_rows([shown[i:i + 16] for i in range(0, len(shown), 16) if len(shown[i:i + 16]) == 16] or [shown],
                     levels, path)


# -- the report -----------------------------------------------------------------------------------
def _unlabelled_markdown(r: dict, npz: Path) -> str:
    """The report of data without labels: where the samples are."""
    return f"# Augmentation: {r['family']} on {r['dataset']}\n\n{r['n_synthetic']} samples in `{npz}` (no labels)."


def _rows(r: dict) -> list[str]:
    """One table row per classifier: training data, images, test accuracy."""
    return [f"| {k} | {v['n_train']} | {100 * v['test_accuracy']:.2f}% |" for k, v in r["classifiers"].items()]


def _markdown(r: dict, classifier_steps: int) -> str:
    """The report: the samples, how many were kept, and the three classifiers' test accuracies."""
    return "\n".join([
        f"# Augmentation: {r['family']} on {r['dataset']}", "",
        f"checkpoint: `{r['checkpoint']}`; {r['n_synthetic']} samples in `{r['files']['npz']}`; {_kept(r)}; kept "
        f"per class: {r['kept_class_hist']}", "",
        f"Test accuracy on {r['n_test']} test images (same classifier, {classifier_steps} steps each):", "",
        "| training data | images | test accuracy |", "|---|---|---|", *_rows(r), "",
        "![kept samples](augment.png)", "", f"Train on the samples: `{r['train_command']}`",
    ])


def _kept(r: dict) -> str:
    """How the samples were labelled and which were kept."""
    if r["label_agreement"] is not None:
        return (f"labels: the ones requested from the conditional model, all {r['kept']} kept (the `real` classifier "
                f"agrees with {100 * r['label_agreement']:.1f}% of them)")
    return f"{r['kept']} kept with pseudo-label confidence >= {r['min_confidence']} (labeller: the `real` classifier)"


def _summary(r: dict, md_path: Path) -> list[str]:
    """The lines printed at the end: the samples, the classifiers' table rows, the report's path."""
    how = (f"labelled as requested, {100 * r['label_agreement']:.1f}% agreement" if r["label_agreement"] is not None
           else f"{r['kept']} confidently labelled")
    return [f"{r['n_synthetic']} samples -> {r['files']['npz']} ({how})",
            *[f"  {row}" for row in _rows(r)], f"report: {md_path}"]
