"""Sample quality without downloads: features of a small classifier trained on the dataset itself.

A :class:`FeatureClassifier` is trained once per dataset on its own train split and cached on
disk (keyed by the dataset's identity and a hash of the classifier's config). Its penultimate
layer gives the feature space for

* Fréchet distance (``fd``; Heusel et al. 2017, computed by torchmetrics' FID with this network
  as the custom feature extractor) and KID (Bińkowski et al. 2018, torchmetrics);
* precision / recall (Kynkäänniemi et al. 2019, k-NN balls) and density / coverage
  (Naeem et al. 2020);
* and its softmax gives the confident-class share (max probability >= ``confidence``) and the
  class histogram of the samples.

The reference set is (a seeded subset of) the TEST split; :func:`real_floor` gives the same
metrics for other held-out real images (the validation split) against it — what a perfect
model would score. Neither split trained the classifier nor the generative models. (Against
the train split the classifier's features favour memorisation: in a one-off check on MNIST,
held-out real digits scored FD 40 against train while an EBM's samples scored 26; against the
test split the order is the honest one.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


@dataclass
class ClassifierConfig:
    """Architecture and training of the feature classifier (its hash keys the cache)."""

    width: int = 32
    feature_dim: int = 128
    epochs: int = 3
    min_steps: int = 1500  # small datasets (digits) get more epochs
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    version: int = 2  # bump when the architecture code changes

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


class FeatureClassifier(nn.Module):
    """Conv classifier on discrete images ``(B, C, H, W)`` with ``levels`` grey levels.

    Two stride-2 conv stages, average pooling to a 4x4 map, a ``feature_dim`` ReLU layer (the
    features) and a linear head. Inputs are scaled to ``[0, 1]``.
    """

    def __init__(self, shape: tuple[int, ...], levels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.levels = levels
        c = shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keep a coarse 4x4 layout: where strokes are matters
            nn.Linear(16 * 4 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_features = feature_dim

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) discrete -> (B, feature_dim)."""
        return self.body(x.float() / (self.levels - 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    """The classifier's penultimate layer as a torchmetrics custom feature extractor."""

    def __init__(self, clf: FeatureClassifier) -> None:
        super().__init__()
        self.clf, self.num_features = clf, clf.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.clf.features(x)


# -- the cached classifier ------------------------------------------------------------------
def _identity(info: Any, n_train: int) -> dict[str, Any]:
    return {"dataset": info.name, "shape": list(info.shape), "levels": info.levels,
            "num_classes": info.num_classes, "n_train": n_train}


def get_classifier(dm: Any, cache_dir: str | Path, cfg: ClassifierConfig | None = None,
                   log: Any = print) -> tuple[FeatureClassifier, dict[str, Any]]:
    """The feature classifier for datamodule ``dm`` (labelled images), trained once and cached.

    Returns the network (eval mode) and its metadata (test accuracy, training seconds, path).
    """
    cfg = cfg or ClassifierConfig()
    info, splits = dm.info, dm.splits
    if info.kind != "image" or info.num_classes is None or splits["train"].y is None:
        raise ValueError(f"sample-quality features need labelled images; dataset {info.name} ({info.kind}, "
                         f"num_classes={info.num_classes}) has none. Fix: use digits, mnist or cifar10.")
    ident = _identity(info, len(splits["train"]))
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    path = Path(cache_dir) / f"classifier-{info.name}-{key}-{cfg.key()}.pt"
    clf = FeatureClassifier(info.shape, info.levels, info.num_classes, cfg.width, cfg.feature_dim)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        clf.load_state_dict(saved["state_dict"])
        return clf.eval(), saved["meta"]
    log(f"training the {info.name} feature classifier once (cached at {path}) ...")
    meta = {**_train(clf, splits, cfg), "config": asdict(cfg), "data": ident, "path": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": clf.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)
    log(f"feature classifier: test accuracy {meta['test_accuracy']:.4f} ({meta['train_seconds']:.0f} s)")
    return clf.eval(), meta


def fit_classifier(clf: FeatureClassifier, x: Tensor, y: Tensor, cfg: ClassifierConfig) -> float:
    """Train ``clf`` on discrete images ``x`` with labels ``y`` (Adam, one-cycle schedule, at least
    ``cfg.min_steps`` steps); returns the training seconds. Leaves ``clf`` in eval mode."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    y = y.long()
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    t0 = time.perf_counter()
    clf.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(cfg.batch_size):
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    clf.eval()
    return time.perf_counter() - t0


def _train(clf: FeatureClassifier, splits: dict, cfg: ClassifierConfig) -> dict[str, float]:
    seconds = fit_classifier(clf, discrete(splits["train"]), splits["train"].y, cfg)
    test = splits["test"]
    return {"test_accuracy": accuracy(clf, discrete(test), test.y.long()), "train_seconds": seconds}


@torch.no_grad()
def accuracy(clf: FeatureClassifier, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    pred = torch.cat([clf(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])
    return (pred == y).double().mean().item()


# -- feature-space metrics --------------------------------------------------------------------
def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` between two Gaussians."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    vals, vecs = torch.linalg.eigh(cov1)
    s1_half = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(s1_half @ cov2 @ s1_half).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross)


def _knn_radii(feats: Tensor, k: int) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    d = torch.cdist(feats, feats)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the share of fake points inside
    some real point's k-NN ball, and of real points inside some fake point's ball."""
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = torch.cdist(fake, real)  # (F, R)
    precision = (d <= r_real[None]).any(dim=1).double().mean().item()
    recall = (d.T <= r_fake[None]).any(dim=1).double().mean().item()
    return {"precision": precision, "recall": recall}


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020): ``density = 1/(kM) sum_j sum_i 1[Y_j in B(X_i)]``,
    ``coverage = 1/N sum_i 1[exists j: Y_j in B(X_i)]`` with real k-NN balls ``B(X_i)``."""
    r_real = _knn_radii(real, k)
    inside = torch.cdist(fake, real) <= r_real[None]  # (F, R)
    density = inside.double().sum().item() / (k * len(fake))
    coverage = inside.any(dim=0).double().mean().item()
    return {"density": density, "coverage": coverage}


@torch.no_grad()
def _embed(clf: FeatureClassifier, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
    feats = torch.cat([clf.features(x[i:i + batch]) for i in range(0, len(x), batch)]).double()
    probs = torch.softmax(clf.head(feats.float()), -1).double()
    return feats, probs


@torch.no_grad()
def quality_metrics(clf: FeatureClassifier, real: Tensor, fake: Tensor, confidence: float = 0.9,
                    kid_subset: int = 1000, max_nn: int = 5000) -> dict[str, Any]:
    """All feature-space metrics of ``fake`` images against ``real`` ones (both discrete, same shape).

    k-NN metrics use at most ``max_nn`` points of each set (pairwise distances).
    """
    n = min(len(real), len(fake))
    extractor = _Features(clf)
    fid = FrechetInceptionDistance(feature=extractor, reset_real_features=True)
    with warnings.catch_warnings():  # "KID keeps all features in memory": a few thousand here
        warnings.simplefilter("ignore", UserWarning)
        # subsets of half the data: with subset_size = n every subset is the whole set and the std is 0
        kid = KernelInceptionDistance(feature=extractor, subset_size=max(2, min(kid_subset, n // 2)), subsets=50)
    for metric in (fid, kid):
        for i in range(0, len(real), 1000):
            metric.update(real[i:i + 1000], real=True)
        for i in range(0, len(fake), 1000):
            metric.update(fake[i:i + 1000], real=False)
    kid_mean, kid_std = kid.compute()
    f_real, _ = _embed(clf, real[:max_nn])
    f_fake, probs = _embed(clf, fake[:max_nn])
    top = probs.max(-1)
    hist = torch.bincount(top.indices, minlength=probs.shape[-1]).double() / len(probs)
    return {
        "fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
        **precision_recall(f_real, f_fake), **density_coverage(f_real, f_fake),
        "confident_share": (top.values >= confidence).double().mean().item(),
        "class_hist": [round(v, 4) for v in hist.tolist()],
        "n_fake": len(fake), "n_real": len(real),
    }


def discrete(split: Any, seed: int = 0) -> Tensor:
    """A split's examples as the model sees them (its batch transform applied, e.g. binarisation)."""
    return split.transform(split.x, torch.Generator().manual_seed(seed)) if split.transform else split.x


def split_subset(split: Any, n: int, seed: int) -> Tensor:
    """``n`` examples of a split (a seeded random subset, as the model sees them)."""
    x = discrete(split, seed)
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def reference_set(dm: Any, n: int, seed: int = 0) -> Tensor:
    """``n`` test images (a seeded subset): the real reference that samples are compared with."""
    return split_subset(dm.splits["test"], n, seed)


def reference_labels(dm: Any, n: int, seed: int = 0) -> Tensor | None:
    """The labels of :func:`reference_set`'s images (same subset), or None for unlabelled data."""
    split = dm.splits["test"]
    if split.y is None:
        return None
    return split.y[torch.randperm(len(split.x), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def conditional_quality(clf: FeatureClassifier, real: Tensor, real_y: Tensor, fake: Tensor, fake_y: Tensor,
                        min_per_class: int = 10) -> dict[str, Any]:
    """Metrics of class-conditional samples ``fake`` drawn for labels ``fake_y``:

    * ``label_accuracy``: the share whose in-domain classifier label is the requested one;
    * ``intra_fd``: the Fréchet distance between the samples of class ``c`` and the real images of
      class ``c`` (classifier features), averaged over the classes with at least ``min_per_class`` of
      both (``intra_fd_per_class``: each, None where too few)."""
    f_real, _ = _embed(clf, real)
    f_fake, probs = _embed(clf, fake)
    acc = (probs.argmax(-1).cpu() == fake_y.cpu()).double().mean().item()
    per_class: list[float | None] = []
    for c in range(probs.shape[-1]):
        a, b = f_real[real_y.cpu() == c], f_fake[fake_y.cpu() == c]
        ok = min(len(a), len(b)) >= min_per_class
        per_class.append(frechet_distance(a.mean(0), a.T.cov(), b.mean(0), b.T.cov()) if ok else None)
    done = [v for v in per_class if v is not None]
    return {"label_accuracy": acc, "intra_fd": sum(done) / len(done) if done else None,
            "intra_fd_per_class": per_class}


def real_floor(clf: FeatureClassifier, dm: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """The metrics of other held-out real images (validation split) against the reference: the floor."""
    return quality_metrics(clf, reference_set(dm, n, seed), split_subset(dm.splits["val"], n, seed + 1))


# -- Inception metrics, only with local weights ------------------------------------------------
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights() -> Path | None:
    """Local Inception-v3 (FID) weights: ``$GENLAB_INCEPTION_WEIGHTS`` or torch hub's checkpoint dir."""
    env = os.environ.get("GENLAB_INCEPTION_WEIGHTS")
    path = Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return path if path.is_file() else None


def inception_metrics(real: Tensor, fake: Tensor, levels: int) -> dict[str, Any]:
    """Standard Inception FID and IS (torchmetrics + torch-fidelity) where the weights are on disk;
    otherwise ``{"notice": ...}`` saying why they were skipped (they need a download)."""
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        return {"notice": "Inception FID/IS skipped: torch-fidelity is not installed (pip install torch-fidelity)"}
    path = inception_weights()
    if path is None:
        return {"notice": f"Inception FID/IS skipped: no local Inception weights (set GENLAB_INCEPTION_WEIGHTS "
                          f"or put {INCEPTION_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'})"}
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore

    def rgb(x: Tensor) -> Tensor:  # uint8 (B, 3, H, W), as Inception expects
        x = (x.float() * 255 / (levels - 1)).round().to(torch.uint8)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    fid = FrechetInceptionDistance(feature_extractor_weights_path=str(path))
    logits = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        score = InceptionScore(feature=logits)
    for i in range(0, len(real), 250):
        fid.update(rgb(real[i:i + 250]), real=True)
    for i in range(0, len(fake), 250):
        fid.update(rgb(fake[i:i + 250]), real=False)
        score.update(rgb(fake[i:i + 250]))
    is_mean, is_std = score.compute()
    return {"fid": float(fid.compute()), "is": float(is_mean), "is_std": float(is_std), "weights": str(path)}
