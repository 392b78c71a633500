"""Comparison rigour: intervals over seeds, ties, the protocol of every sample metric, Inception from local weights."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import genlab.evaluate as evaluate_mod
from genlab.compare import compare, main as compare_main, write_tables
from genlab.data.digits import DigitsDataModule
from genlab.evaluate import evaluate, main as eval_main
from genlab.metrics.intervals import Interval, format_interval, t_interval, tied_ranks
from genlab.metrics.quality import (INCEPTION_FILE, ClassifierConfig, InceptionError, classifier_protocol,
                                    get_classifier, inception_features, inception_metrics, inception_scores,
                                    inception_weights, load_inception)

T975 = {1: 12.706204736174698, 2: 4.302652729911275, 3: 3.182446305284263}  # Student-t 0.975 quantiles
CHEAP = {"a": ClassifierConfig(epochs=1, min_steps=20, seed=0), "b": ClassifierConfig(epochs=1, min_steps=20, seed=1)}


# -- intervals and ranks ------------------------------------------------------------------------
def test_the_interval_is_the_closed_form_t_interval_and_one_value_has_none():
    iv = t_interval([1.0, 1.2, 1.4])  # mean 1.2, sample sd 0.2
    assert iv.mean == pytest.approx(1.2) and iv.n == 3
    assert iv.half == pytest.approx(T975[2] * 0.2 / math.sqrt(3), rel=1e-9)
    two = t_interval([2.0, 3.0])  # sd 1/sqrt(2): half = t_{.975,1} * 0.5
    assert two.half == pytest.approx(T975[1] * 0.5, rel=1e-9) and (two.low, two.high) == pytest.approx(
        (2.5 - T975[1] * 0.5, 2.5 + T975[1] * 0.5))
    one = t_interval([5.0])
    assert one.half is None and one.n == 1 and format_interval(one) == "5" and "±" not in format_interval(one)
    assert t_interval([None, 1.0, float("nan"), 3.0]).n == 2 and t_interval([None]) is None
    assert format_interval(iv) == f"1.2 ± {iv.half:.2g}"


def test_overlapping_intervals_are_ties_and_a_single_seed_is_marked_unknown():
    a, b, c = (t_interval(v) for v in ([1.00, 1.01, 1.02], [1.015, 1.02, 1.025], [2.0, 2.01, 2.02]))
    d = Interval(1.5, None, 1)
    assert a.high > b.low  # a and b overlap; c is separated from both
    assert tied_ranks([a, b, c, d, None]) == ["=1", "=1", "4", "3?", None]
    assert tied_ranks([a, c]) == ["1", "2"]  # separated: plain ranks


# -- seeds grouped in the table -------------------------------------------------------------------
def fake_run(root: Path, name: str, family: str, seed: int, nll: float | None, lr: float = 1e-3,
             status: str = "finished", se: float = 0.01) -> Path:
    """A results.json as genlab-train writes it (the fields the table reads), in ``root/name``."""
    out = root / name
    out.mkdir(parents=True)
    config = {"seed": seed, "dataset": {"_target_": "digits", "seed": seed}, "model": {"lr": lr},
              "paths": {"output_dir": str(out)}, "callbacks": {"checkpoint": {"dirpath": f"{out}/checkpoints"}},
              "logger": {"csv": {"save_dir": str(out)}}, "trainer": {"max_steps": 10}}
    test = {"nll_kind": "none"} if nll is None else {"nll_bpd": nll, "nll_kind": "exact", "unit": "bits/dim",
                                                     "nll_bpd_se": se, "nll_examples": 250.0}
    r = {"status": status, "family": family, "model": f"{family}_m", "loss": "l", "dataset": "digits", "seed": seed,
         "params": 1000, "train_seconds": 10.0 + seed, "test": test, "data": {"shape": [1, 8, 8], "levels": 17},
         "history": [{"seconds": 1.0, "nll_bpd": (nll or 0) + 0.1}], "config": config}
    (out / "results.json").write_text(json.dumps(r))
    return out


def test_runs_that_differ_only_by_seed_are_one_row_with_the_t_interval(tmp_path, capsys):
    values = [1.10, 1.20, 1.35]
    for s, v in enumerate(values):
        fake_run(tmp_path, f"{s}_vae_seed{s}", "vae", s, v, se=0.01 * (s + 1))
    fake_run(tmp_path, "3_flow_seed0", "flow", 0, 1.5)
    fake_run(tmp_path, "4_vae_lr", "vae", 0, 1.0, lr=0.1)  # another config: its own row
    fake_run(tmp_path, "5_vae_failed", "vae", 3, 1.9, status="failed")  # a failed seed: shown, not averaged
    assert compare_main([str(tmp_path), "--no-quality"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    vae = next(r for r in rows if r["family"] == "vae" and r["seeds"] == "3")
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert float(vae["nll_bpd"]) == pytest.approx(mean) and vae["seed_list"] == "0,1,2"
    assert float(vae["nll_bpd_ci95"]) == pytest.approx(T975[2] * sd / math.sqrt(3), rel=1e-9)
    assert float(vae["nll_se"]) == pytest.approx(0.02) and float(vae["nll_n"]) == 250
    assert float(vae["train_s_ci95"]) == pytest.approx(T975[2] * 1.0 / math.sqrt(3), rel=1e-9)  # 10, 11, 12 s
    flow = next(r for r in rows if r["family"] == "flow")
    assert flow["seeds"] == "1" and flow["nll_bpd_ci95"] == "" and float(flow["nll_bpd"]) == 1.5
    assert [r["family"] for r in rows].count("vae") == 2 and "vae (failed)" in [r["family"] for r in rows]
    md = (tmp_path / "comparison.md").read_text()
    flow_line = next(line for line in md.splitlines() if line.startswith("| flow |"))
    assert flow_line.split("|")[5].strip() == "1.5"  # one seed: the bare value, no ± 0
    assert f"| {mean:.4g} ± {T975[2] * sd / math.sqrt(3):.2g} |" in md
    assert (tmp_path / "nll.png").read_bytes()[:4] == b"\x89PNG"


def test_ranks_in_the_table_mark_ties(tmp_path):
    values = {"vae": [1.00, 1.01, 1.02], "flow": [1.015, 1.02, 1.025], "autoregressive": [2.0, 2.01, 2.02]}
    for name, vals in values.items():
        for s, v in enumerate(vals):
            fake_run(tmp_path, f"{name}_{s}", name, s, v)
    fake_run(tmp_path, "gan_0", "gan", 0, None)
    compare(tmp_path, quality_n=None)
    ranks = {r["family"]: r["nll_rank"] for r in csv.DictReader(open(tmp_path / "comparison.csv"))}
    assert ranks == {"vae": "=1", "flow": "=1", "autoregressive": "3", "gan": ""}


# -- protocols ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """Two cheap digits classifiers (seeds 0 and 1) in caches ``a`` and ``b``."""
    root = tmp_path_factory.mktemp("clf")
    dm = DigitsDataModule(seed=0)
    return {k: (*get_classifier(dm, root / k, cfg, log=lambda *_: None), root / k) for k, cfg in CHEAP.items()}


def test_the_feature_net_hash_changes_when_the_classifier_is_retrained(classifiers):
    clf_a, meta_a, cache_a = classifiers["a"]
    clf_b, meta_b, _ = classifiers["b"]
    logs: list[str] = []
    again, meta_again = get_classifier(DigitsDataModule(seed=0), cache_a, CHEAP["a"], log=logs.append)
    p_a, p_again, p_b = (classifier_protocol(c, m, 100, 100) for c, m in ((clf_a, meta_a), (again, meta_again),
                                                                          (clf_b, meta_b)))
    assert logs == [] and p_a == p_again  # loaded from the cache: the same weights, the same protocol
    assert p_b["feature_net"]["weights_sha256"] != p_a["feature_net"]["weights_sha256"] and p_b["id"] != p_a["id"]
    assert p_b["feature_net"]["config"]["seed"] == 1 and p_a["feature_net"]["config"]["seed"] == 0
    with torch.no_grad():  # any change of the weights changes the hash
        next(again.parameters()).add_(1e-6)
    assert classifier_protocol(again, meta_a, 100, 100)["id"] != p_a["id"]
    other_n = classifier_protocol(clf_a, meta_a, 200, 100)
    assert other_n["id"] != p_a["id"] and other_n["n_samples"] == 200 and p_a["reference"]["split"] == "test"
    assert p_a["settings"]["kid_subset_size"] == 50


def _quality(fd: float) -> dict:
    return {"fd": fd, "kid": fd / 10, "precision": 0.5, "recall": 0.5, "confident_share": 0.5}


def test_two_runs_scored_with_different_n_are_flagged_not_averaged(classifiers, tmp_path):
    clf, meta, _ = classifiers["a"]
    runs = []
    for seed, n in ((0, 100), (1, 200)):
        out = fake_run(tmp_path / "sweep", f"vae_{seed}", "vae", seed, 1.2)
        r = json.loads((out / "results.json").read_text())
        r.update(run_dir=str(out), quality=_quality(30.0 + seed), quality_protocol=classifier_protocol(clf, meta, n, n))
        runs.append(r)
    logs: list[str] = []
    md, csv_path = write_tables(runs, None, tmp_path, log=logs.append)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 2 and [r["seeds"] for r in rows] == ["1", "1"]  # same config, two protocols: two rows
    assert sorted(r["quality_n"] for r in rows) == ["100", "200"] and len({r["protocol"] for r in rows}) == 2
    assert [r["fd_rank"] for r in rows] == ["1?", "1?"]  # ranked within each protocol only
    text = md.read_text()
    assert any("2 protocols" in line for line in logs) and "**Warning**: the sample metrics" in text
    assert text.count("- protocol `") == 2 and "100 samples against 100 test images" in text


def test_an_old_quality_json_without_protocol_is_labelled_unknown(classifiers, tmp_path):
    for seed in (0, 1):
        out = fake_run(tmp_path, f"vae_{seed}", "vae", seed, 1.2)
        q = {"n": 50, "samples": _quality(20.0 + seed), "floor": _quality(5.0)}  # written before protocols
        if seed == 1:
            clf, meta, _ = classifiers["a"]
            q["protocol"] = classifier_protocol(clf, meta, 50, 50)
        (out / "quality.json").write_text(json.dumps(q))
    logs: list[str] = []
    compare(tmp_path, quality_n=50, log=logs.append)  # both reused: no checkpoint is needed
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert "unknown" in {r["protocol"] for r in rows} and len(rows) == 3  # two runs + the floor
    md = (tmp_path / "comparison.md").read_text()
    assert "protocol `unknown`: a quality.json written before protocols were recorded" in md
    assert any("2 protocols" in line for line in logs)


# -- a real run scored end to end ---------------------------------------------------------------
@pytest.fixture
def tiny_sweep(trained_run, tmp_path, monkeypatch):
    """A trained digits VAE copied as two seeds of one config (its results.json, seed 0 and 1); genlab-eval
    uses the cheap classifier named by the cache dir's name (``a`` or ``b``)."""
    results = trained_run("rigour_vae", "trainer.max_steps=2", "trainer.limit_val_batches=1")
    src = Path(results["path"]).parent
    dirs = []
    for seed in (0, 1):
        r = json.loads((src / "results.json").read_text())
        r["seed"] = r["config"]["seed"] = seed
        (tmp_path / "sweep" / f"{seed}_vae").mkdir(parents=True)
        (tmp_path / "sweep" / f"{seed}_vae" / "results.json").write_text(json.dumps(r))
        dirs.append(tmp_path / "sweep" / f"{seed}_vae")
    monkeypatch.setattr(evaluate_mod, "run_classifier",
                        lambda module, dm, cache_dir=None: get_classifier(dm, cache_dir, CHEAP[Path(cache_dir).name]))
    return results, dirs


def test_quality_json_records_the_protocol_and_compare_refuses_to_average_across_feature_nets(
        tiny_sweep, classifiers, tmp_path):
    results, (run0, run1) = tiny_sweep
    assert results["test"]["nll_examples"] == len(DigitsDataModule(seed=0).splits["test"])
    q0 = evaluate(run0, n=40, seed=3, cache_dir=classifiers["a"][2])
    evaluate(run1, n=40, cache_dir=classifiers["b"][2])  # scored with a retrained classifier
    p = json.loads((run0 / "quality.json").read_text())["protocol"]
    assert p == q0["protocol"] and p["n_samples"] == 40 and p["n_reference"] == 40 and p["seed"] == 3
    assert p["reference"] == {"split": "test", "subset_seed": 0} and p["overrides"] == []
    assert p["feature_net"]["weights_sha256"] == classifier_protocol(*classifiers["a"][:2], 1, 1)["feature_net"][
        "weights_sha256"] and p["feature_net"]["config"]["min_steps"] == 20
    sweep = run0.parent
    logs: list[str] = []
    compare(sweep, quality_n=40, cache_dir=str(classifiers["a"][2]), log=logs.append)
    rows = [r for r in csv.DictReader(open(sweep / "comparison.csv")) if r["family"] == "vae"]
    assert len(rows) == 2 and any("2 protocols" in line for line in logs)  # not averaged across feature nets
    compare(sweep, quality_n=40, cache_dir=str(classifiers["a"][2]), rescore=True, log=logs.append)
    rows = [r for r in csv.DictReader(open(sweep / "comparison.csv")) if r["family"] == "vae"]
    assert len(rows) == 1 and rows[0]["seeds"] == "2" and rows[0]["fd_ci95"] != ""  # one protocol: one row
    assert "Warning" not in (sweep / "comparison.md").read_text() and (sweep / "fd.png").exists()


# -- Inception from a local file ----------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised network of the FID Inception-v3's architecture, saved as a weights file (the
    real weights cannot be fetched here); He-initialised so that its features do not vanish."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    root = tmp_path_factory.mktemp("inception")
    torch.save({}, root / "empty.pth")
    load = nn.Module.load_state_dict
    nn.Module.load_state_dict = lambda self, *a, **k: None  # build the architecture without weights
    try:
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(root / "empty.pth"))
    finally:
        nn.Module.load_state_dict = load
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), root / INCEPTION_FILE)
    return root / INCEPTION_FILE


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tf
    except ImportError:  # the Inception tests skip themselves
        tf = None
    if tf is not None:
        monkeypatch.setattr(tf, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _digits(n: int, seed: int) -> torch.Tensor:
    return DigitsDataModule(seed=0).splits["test"].x[seed:seed + n]


def test_inception_fd_is_zero_and_kid_near_zero_on_identical_sets(inception_file):
    x = _digits(10, 0)
    same = inception_metrics(x, x, 17, weights=inception_file)
    net = load_inception(inception_file)
    noise = torch.randint(0, 17, x.shape, generator=torch.Generator().manual_seed(0))
    (f_x, _), (f_noise, logits) = (inception_features(net, t, 17) for t in (x, noise))
    assert f_x.std() > 1e-3 and torch.isfinite(f_x).all()  # the random network's features carry signal
    apart = inception_scores(f_x, f_noise, logits)
    assert apart["fid"] > 1e-3 and same["fid"] == pytest.approx(0.0, abs=1e-4 * apart["fid"])
    # KID's unbiased estimate: near 0 (within two standard deviations over its subsets, and small against a
    # different set's; random subsets of one small set share points, so it is not exactly 0)
    assert abs(same["kid"]) < min(2 * same["kid_std"], 0.1 * apart["kid"])
    assert math.isfinite(same["is"]) and same["is"] >= 1.0 - 1e-6
    p = same["protocol"]
    assert p["n_samples"] == p["n_reference"] == 10 and p["settings"]["kid_subset_size"] == 5
    assert p["feature_net"]["file_sha256"] == hashlib.sha256(inception_file.read_bytes()).hexdigest()[:16]


def test_a_missing_inception_file_is_a_clear_error_and_never_a_download(tmp_path, monkeypatch, capsys, inception_file):
    monkeypatch.setenv("GENLAB_INCEPTION_WEIGHTS", str(tmp_path))  # a directory without the file
    with pytest.raises(InceptionError, match=f"no file at {tmp_path / INCEPTION_FILE}.*GENLAB_INCEPTION_WEIGHTS"):
        inception_weights()
    with pytest.raises(InceptionError, match="from --inception-weights.*never downloads"):
        inception_weights(tmp_path / "nope.pth")
    assert eval_main([str(tmp_path / "no_run"), "--inception"]) == 2  # refused before anything is loaded
    assert INCEPTION_FILE in capsys.readouterr().err
    fake_run(tmp_path, "run", "vae", 0, 1.0)
    assert compare_main([str(tmp_path), "--inception"]) == 2 and "GENLAB_INCEPTION_WEIGHTS" in capsys.readouterr().err
    assert not (tmp_path / "comparison.md").exists()
    shutil.copy(inception_file, tmp_path / INCEPTION_FILE)
    assert inception_weights() == tmp_path / INCEPTION_FILE  # a directory holding the file
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(InceptionError, match="does not hold Inception-v3 weights"):
        load_inception(tmp_path / "bad.pth")


def test_genlab_eval_inception_records_the_standard_metrics_with_their_protocol(tiny_sweep, classifiers,
                                                                                inception_file, capsys):
    _, (run0, _) = tiny_sweep
    assert eval_main([str(run0), "--n", "8", "--cache-dir", str(classifiers["a"][2]), "--inception",
                      "--inception-weights", str(inception_file)]) == 0
    q = json.loads((run0 / "quality.json").read_text())
    inc = q["inception"]
    assert inc["fid"] >= 0 and inc["protocol"]["n_samples"] == 8 and inc["protocol"]["id"] != q["protocol"]["id"]
    assert f"protocol {inc['protocol']['id']}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_seed_sweep_of_the_compare_experiment_is_one_row_per_family(tmp_path):
    cmd = [sys.executable, "-m", "genlab.train", "experiment=compare_families", "+family=vae", "seed=0,1",
           f"paths.log_dir={tmp_path}", "trainer.max_time=null", "trainer.max_steps=3", "num_samples=8",
           "callbacks.progress_bar.refresh_rate=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "sweeps" / "compare").iterdir()
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert names == ["0_vae_seed0", "1_vae_seed1"]  # the seed in the run directory's name
    compare(sweep, quality_n=None)
    (row,) = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert row["seeds"] == "2" and row["seed_list"] == "0,1" and row["nll_bpd_ci95"] != ""
