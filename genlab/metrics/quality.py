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

Every result carries its **protocol** (:func:`classifier_protocol`): the numbers of samples and of
reference images, the reference split and its subset seed, the feature network (a SHA-256 of its
weights and its training config), the metric settings; its ``id`` hashes exactly these, so two
results with the same id were measured the same way (``genlab-compare`` puts only those in one
column). The sampler, its overrides and the sampling seed are recorded beside it: they are what is
being compared, not how.

Standard Inception metrics (FID, KID, IS; :func:`inception_metrics`) are an opt-in, computed in the
features of the standard FID Inception-v3 (torch-fidelity's ``inception-v3-compat``) read from a
local weights file: ``$GENLAB_INCEPTION_WEIGHTS`` (a file, or a directory holding
``weights-inception-2015-12-05-6726825d.pth``) or torch hub's checkpoint directory. Nothing is ever
downloaded; a missing file is an :class:`InceptionError` that names where to put it.
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
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from genlab.checkpoints import weights_digest

# the measurement settings (recorded in every protocol): confident-class threshold, k of the
# precision/recall and density/coverage balls, KID subsets, points used by the k-NN metrics
CONFIDENCE, PR_K, DC_K, KID_SUBSETS, MAX_NN = 0.9, 3, 5, 50, 5000
REFERENCE_SPLIT, FLOOR_SPLIT, REFERENCE_SEED = "test", "val", 0


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
def quality_metrics(clf: FeatureClassifier, real: Tensor, fake: Tensor, confidence: float = CONFIDENCE,
                    kid_subset: int = 1000, max_nn: int = MAX_NN) -> dict[str, Any]:
    """All feature-space metrics of ``fake`` images against ``real`` ones (both discrete, same shape).

    k-NN metrics use at most ``max_nn`` points of each set (pairwise distances). KID's random
    subsets are seeded (the same sets give the same KID).
    """
    extractor = _Features(clf)
    fid = FrechetInceptionDistance(feature=extractor, reset_real_features=True)
    kid = _kid(extractor, kid_subset_size(min(len(real), len(fake)), kid_subset), KID_SUBSETS)
    for metric in (fid, kid):
        for i in range(0, len(real), 1000):
            metric.update(real[i:i + 1000], real=True)
        for i in range(0, len(fake), 1000):
            metric.update(fake[i:i + 1000], real=False)
    kid_mean, kid_std = seeded(kid.compute)
    f_real, _ = _embed(clf, real[:max_nn])
    f_fake, probs = _embed(clf, fake[:max_nn])
    top = probs.max(-1)
    hist = torch.bincount(top.indices, minlength=probs.shape[-1]).double() / len(probs)
    return {
        "fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
        **precision_recall(f_real, f_fake, PR_K), **density_coverage(f_real, f_fake, DC_K),
        "confident_share": (top.values >= confidence).double().mean().item(),
        "class_hist": [round(v, 4) for v in hist.tolist()],
        "n_fake": len(fake), "n_real": len(real),
    }


def kid_subset_size(n: int, cap: int = 1000) -> int:
    """KID's subset size for ``n`` points: half of them, at most ``cap`` (with subsets of all ``n``
    points every subset is the whole set and the spread over subsets is 0)."""
    return max(2, min(cap, n // 2))


def _kid(feature: nn.Module, subset_size: int, subsets: int) -> KernelInceptionDistance:
    with warnings.catch_warnings():  # "KID keeps all features in memory": a few thousand here
        warnings.simplefilter("ignore", UserWarning)
        return KernelInceptionDistance(feature=feature, subset_size=subset_size, subsets=subsets)


def seeded(fn: Any, seed: int = 0) -> Any:
    """``fn()`` with torch's global generator seeded, and its state restored after (torchmetrics' KID and
    IS draw their subsets from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


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




# -- protocols: how a metric was measured ------------------------------------------------------
# the keys of a protocol that say how it was measured (its id hashes these); the sampler, its
# overrides and the sampling seed are recorded beside them (what is compared, not how)
MEASUREMENT = ("metrics", "dataset", "n_samples", "n_reference", "reference", "floor", "feature_net", "settings")


def protocol_id(protocol: dict[str, Any]) -> str:
    """8 hex digits of a SHA-256 over the measurement part of ``protocol`` (:data:`MEASUREMENT`)."""
    ident = {k: protocol.get(k) for k in MEASUREMENT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]


def feature_net(clf: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The feature network of a protocol: the SHA-256 of its weights (16 hex; changes whenever it is
    retrained differently), its training config and data, and its test accuracy."""
    return {"name": "in-domain classifier", "weights_sha256": weights_digest(clf).hex()[:16],
            "config": meta.get("config"), "data": meta.get("data"), "test_accuracy": meta.get("test_accuracy")}


def classifier_protocol(clf: FeatureClassifier, meta: dict[str, Any], n_samples: int,
                        n_reference: int) -> dict[str, Any]:
    """The protocol of :func:`quality_metrics` against :func:`reference_set` (and the :func:`real_floor`)
    with ``n_samples`` samples and ``n_reference`` reference images, with its ``id``."""
    p = {"metrics": "classifier features", "dataset": (meta.get("data") or {}).get("dataset"),
         "n_samples": n_samples, "n_reference": n_reference,
         "reference": {"split": REFERENCE_SPLIT, "subset_seed": REFERENCE_SEED},
         "floor": {"split": FLOOR_SPLIT, "subset_seed": REFERENCE_SEED + 1},
         "feature_net": feature_net(clf, meta),
         "settings": {"kid_subset_size": kid_subset_size(min(n_samples, n_reference)), "kid_subsets": KID_SUBSETS,
                      "precision_recall_k": PR_K, "density_coverage_k": DC_K, "confidence": CONFIDENCE,
                      "max_nn": MAX_NN}}
    return {"id": protocol_id(p), **p}


# -- Inception metrics, only with local weights ------------------------------------------------
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SUBSETS, INCEPTION_IS_SPLITS = 100, 10  # KID subsets and IS splits (the usual settings)


class InceptionError(RuntimeError):
    """Inception metrics were asked for but cannot be computed here (no weights file, no torch-fidelity)."""


def inception_weights(path: str | Path | None = None) -> Path:
    """The local Inception-v3 (FID) weights: ``path``, else ``$GENLAB_INCEPTION_WEIGHTS``, else torch hub's
    checkpoint directory; a directory is searched for :data:`INCEPTION_FILE`. Never downloads: a missing
    file is an :class:`InceptionError` naming where to put it."""
    env = os.environ.get("GENLAB_INCEPTION_WEIGHTS")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    source = path or env
    where = Path(source) if source else hub / INCEPTION_FILE
    where = where / INCEPTION_FILE if where.is_dir() else where
    if where.is_file():
        return where
    origin = "--inception-weights" if path else "GENLAB_INCEPTION_WEIGHTS" if env else "the default location"
    raise InceptionError(
        f"Inception metrics need the standard FID Inception-v3 weights on disk, and there is no file at {where} "
        f"(from {origin}); genlab never downloads them. Fix: fetch {INCEPTION_URL} where there is a network, then "
        f"set GENLAB_INCEPTION_WEIGHTS=/path/to/{INCEPTION_FILE} (or a directory holding it), pass "
        f"--inception-weights PATH, or put it in {hub}/. Without --inception the in-domain metrics need no file.")


def load_inception(path: Path) -> nn.Module:
    """torch-fidelity's FID Inception-v3 with the weights of ``path``; returns (pool 2048, unbiased logits)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise InceptionError("Inception metrics need torch-fidelity. Fix: pip install torch-fidelity") from err
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=str(path)).eval()
    except Exception as err:  # unpickling / state-dict errors of many kinds
        raise InceptionError(f"{path} does not hold Inception-v3 weights of torch-fidelity's FID network "
                             f"({type(err).__name__}: {str(err).splitlines()[0]}). Fix: use {INCEPTION_URL}") from err


@torch.no_grad()
def inception_features(net: nn.Module, x: Tensor, levels: int, batch: int = 50) -> tuple[Tensor, Tensor]:
    """Discrete images ``(N, C, H, W)`` with ``levels`` levels -> Inception pool features ``(N, 2048)`` and
    unbiased logits ``(N, 1008)`` (float64). Inputs become uint8 RGB (grey repeated), which the network
    resizes to 299 x 299 (TF-1 bilinear, as the reference FID code)."""
    device = next(net.parameters()).device
    pools, logits = [], []
    for i in range(0, len(x), batch):
        xb = (x[i:i + batch].float() * 255 / (levels - 1)).round().to(torch.uint8)
        pool, logit = net((xb.expand(-1, 3, -1, -1) if xb.shape[1] == 1 else xb).to(device))
        pools.append(pool.double().cpu())
        logits.append(logit.double().cpu())
    return torch.cat(pools), torch.cat(logits)


class _Given(nn.Module):
    """Features already computed, as a torchmetrics feature extractor (the identity)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def inception_metrics(real: Tensor, fake: Tensor, levels: int, weights: str | Path | None = None) -> dict[str, Any]:
    """Standard FID, KID and IS of ``fake`` against ``real`` discrete images, in torch-fidelity's FID
    Inception-v3 with the local weights that :func:`inception_weights` finds (each image goes through the
    network once), with their protocol. sFID is not computed."""
    path = inception_weights(weights)
    net = load_inception(path).to("cuda" if torch.cuda.is_available() else "cpu")
    (f_real, _), (f_fake, logits) = inception_features(net, real, levels), inception_features(net, fake, levels)
    scores = inception_scores(f_real, f_fake, logits)
    protocol = inception_protocol(path, len(fake), len(real), scores.pop("kid_subset_size"))
    return {**scores, "weights": str(path), "protocol": protocol}


def inception_scores(f_real: Tensor, f_fake: Tensor, logits_fake: Tensor) -> dict[str, Any]:
    """FID and KID (torchmetrics) between pool features ``(N, 2048)`` of real and fake images, and the IS
    of the fakes' logits ``(M, 1008)``; KID's subsets and IS's splits are seeded."""
    subset = kid_subset_size(min(len(f_real), len(f_fake)))
    fid = FrechetInceptionDistance(feature=_Given(f_real.shape[1]))
    kid = _kid(_Given(f_real.shape[1]), subset, INCEPTION_SUBSETS)
    for metric in (fid, kid):
        metric.update(f_real, real=True)
        metric.update(f_fake, real=False)
    with warnings.catch_warnings():  # "IS keeps all features in memory": the logits, already in memory
        warnings.simplefilter("ignore", UserWarning)
        score = InceptionScore(feature=_Given(logits_fake.shape[1]), splits=INCEPTION_IS_SPLITS)
    score.update(logits_fake)
    (kid_mean, kid_std), (is_mean, is_std) = seeded(kid.compute), seeded(score.compute)
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std), "is": float(is_mean),
            "is_std": float(is_std), "kid_subset_size": subset}


def inception_protocol(path: Path, n_samples: int, n_reference: int, kid_subset: int) -> dict[str, Any]:
    """The protocol of :func:`inception_metrics`: the weights file's SHA-256 (16 hex), n, the reference, settings."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    p = {"metrics": "inception-v3 (FID/KID/IS)", "n_samples": n_samples, "n_reference": n_reference,
         "reference": {"split": REFERENCE_SPLIT, "subset_seed": REFERENCE_SEED},
         "feature_net": {"name": "inception-v3-compat (torch-fidelity)", "file_sha256": h.hexdigest()[:16]},
         "settings": {"kid_subset_size": kid_subset, "kid_subsets": INCEPTION_SUBSETS, "is_splits": INCEPTION_IS_SPLITS,
                      "resize": "299x299 TF-1 bilinear", "grey": "repeated to RGB"}}
    return {"id": protocol_id(p), **p}
