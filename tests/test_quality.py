"""Sample-quality metrics against closed forms, and the cached feature classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy import linalg
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from genlab.data.digits import DigitsDataModule
from genlab.metrics.quality import (ClassifierConfig, density_coverage, frechet_distance, get_classifier,
                                    precision_recall, quality_metrics, real_floor, reference_set)


def _exact_moments(n, mu, cov, seed):
    """n points whose empirical mean and unbiased covariance are exactly mu and cov."""
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # unit covariance
    return mu + z @ torch.linalg.cholesky(cov).T


def test_frechet_distance_matches_closed_forms():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # commuting (diagonal) covariances: ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2
    expected = 5.0 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(3), m2 @ m2.T + 0.1 * torch.eye(3)
    ref = (mu1 - mu2).square().sum() + torch.trace(s1 + s2) - 2 * linalg.sqrtm(s1.numpy() @ s2.numpy()).real.trace()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(ref), rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_torchmetrics_fid_with_a_custom_feature_net_equals_the_closed_form():
    class Identity(nn.Module):
        num_features = 3

        def forward(self, x):
            return x

    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    s1 = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    s2 = torch.eye(3, dtype=torch.float64) * 0.7
    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(_exact_moments(500, mu1, s1, 1), real=True)
    fid.update(_exact_moments(400, mu2, s2, 2), real=False)
    assert float(fid.compute()) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-5)


def test_precision_recall_density_coverage_on_identical_and_disjoint_sets():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    assert density_coverage(x, x)["coverage"] == 1.0
    far = x + 100.0
    assert precision_recall(x, far) == {"precision": 0.0, "recall": 0.0}
    assert density_coverage(x, far) == {"density": 0.0, "coverage": 0.0}
    # half the fakes on the data, half far away: precision halves, recall stays high
    half = torch.cat([x[:150], far[150:]])
    pr = precision_recall(x, half)
    assert pr["precision"] == pytest.approx(0.5) and pr["recall"] > 0.4


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifiers")
    logs = []
    get_classifier(DigitsDataModule(seed=0), path, ClassifierConfig(), log=logs.append)
    assert len(logs) == 2 and "test accuracy" in logs[1]
    return path


@pytest.mark.slow
def test_feature_classifier_is_trained_once_cached_and_separates_real_from_noise(classifier_cache):
    dm = DigitsDataModule(seed=0)
    logs = []
    clf, meta = get_classifier(dm, classifier_cache, log=logs.append)
    assert meta["test_accuracy"] > 0.9 and len(list(classifier_cache.glob("classifier-digits-*.pt"))) == 1
    again, meta2 = get_classifier(dm, classifier_cache, log=logs.append)
    assert meta2 == meta and logs == []  # loaded from the cache: no training
    for p, q in zip(clf.parameters(), again.parameters()):
        assert torch.equal(p, q)
    floor = real_floor(clf, dm, 180)
    noise = torch.randint(0, 17, (180, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bad = quality_metrics(clf, reference_set(dm, 180), noise)
    assert floor["fd"] < bad["fd"] / 5 and floor["precision"] > bad["precision"]
    assert floor["confident_share"] > bad["confident_share"] and sum(floor["class_hist"]) == pytest.approx(1.0, abs=1e-3)
    assert len(floor["class_hist"]) == 10 and max(floor["class_hist"]) < 0.2


def test_unlabelled_data_is_refused_with_the_fix(tmp_path):
    from genlab.data.toy import ToyDataModule

    with pytest.raises(ValueError, match="need labelled images.*Fix"):
        get_classifier(ToyDataModule(mode="independent"), tmp_path)


@pytest.mark.slow
def test_genlab_eval_scores_a_trained_run_next_to_the_real_floor(make_cfg, classifier_cache, capsys, monkeypatch):
    monkeypatch.setenv("GENLAB_INCEPTION_WEIGHTS", "/nonexistent/inception.pth")
    from genlab.evaluate import main
    from genlab.train import run

    results = run(make_cfg("trainer.max_epochs=2"))
    run_dir = Path(results["path"]).parent
    assert main([str(run_dir), "--n", "150", "--cache-dir", str(classifier_cache)]) == 0
    printed = capsys.readouterr().out
    assert "| samples |" in printed and "| real val (floor) |" in printed
    out = json.loads((run_dir / "quality.json").read_text())
    assert out["n"] == 150 and out["family"] == "vae" and out["sample_seconds_per_1000"] > 0
    # a 2-epoch VAE is far from real data: worse than the floor in Frechet distance
    assert out["samples"]["fd"] > out["floor"]["fd"] and len(out["samples"]["class_hist"]) == 10
    assert main([str(run_dir / "nowhere")]) == 2
    # the protocol is saved and printed; no Inception metrics unless asked for (the in-domain ones need no file)
    assert out["protocol"]["n_samples"] == out["protocol"]["n_reference"] == 150 and out["protocol"]["seed"] == 0
    assert f"protocol {out['protocol']['id']}" in printed and out["inception"] is None and "Inception" not in printed
    # asked for without the weights on this machine: a clear error naming where to put them, before any sampling
    assert main([str(run_dir), "--n", "150", "--inception"]) == 2
    assert "GENLAB_INCEPTION_WEIGHTS" in capsys.readouterr().err
    # evaluation overrides go to their own file, recorded in it; quality.json is left alone
    before = (run_dir / "quality.json").read_text()
    assert main([str(run_dir), "--n", "150", "--cache-dir", str(classifier_cache), "model.test_k=7"]) == 0
    (other,) = run_dir.glob("quality_*.json")
    assert json.loads(other.read_text())["overrides"] == ["model.test_k=7"]
    assert (run_dir / "quality.json").read_text() == before
    assert main([str(run_dir), "model.test_k"]) == 2 and "key=value" in capsys.readouterr().err
