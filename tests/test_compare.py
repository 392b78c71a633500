"""experiment=compare_families -> genlab-compare: one row per family, real plots, W&B offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genlab.compare import compare, main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real (tiny) compare sweep through the CLI: two families on digits, 12 steps each."""
    logs = tmp_path_factory.mktemp("logs")
    cmd = [sys.executable, "-m", "genlab.train", "experiment=compare_families", "+family=vae,flow",
           f"paths.log_dir={logs}", "trainer.max_time=null", "trainer.max_steps=12", "num_samples=20",
           "callbacks.progress_bar.refresh_rate=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = (logs / "sweeps" / "compare").iterdir()
    return sweep_dir


@pytest.mark.slow
def test_the_sweep_runs_every_listed_family_with_the_same_seed_and_data(sweep):
    runs = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert sorted(r["family"] for r in runs) == ["flow", "vae"]
    assert {r["dataset"] for r in runs} == {"digits"} and {r["seed"] for r in runs} == {0}
    assert all(r["global_step"] == 12 and r["history"] for r in runs)  # one validation each, with its time
    assert len({r["sweep_group"] for r in runs}) == 1 and runs[0]["sweep_group"].endswith(sweep.name)
    names = [p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert sorted(n.split("_", 1)[1] for n in names) == ["flow_seed0", "vae_seed0"]  # <job>_<family>_seed<seed>


@pytest.mark.slow
def test_compare_writes_one_row_per_family_and_real_pngs(sweep, tmp_path, capsys):
    assert main([str(sweep), "--quality-n", "60", "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    families = [r["family"] for r in rows]
    assert families[:2] == ["vae", "flow"] and "real data (val split)" in families
    for r in rows[:2]:
        assert float(r["nll_bpd"]) > 0 and r["nll_kind"] in ("bound", "estimate")
        assert float(r["fd"]) >= 0 and 0 <= float(r["precision"]) <= 1 and int(r["params"]) > 0
    for name in ("nll.png", "nll_vs_time.png", "samples.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep / "comparison.md").read_text()
    assert "| vae | vae_conv |" in md and "| flow | glow |" in md
    # one seed each: bare values (no interval), ranks marked as unsupported by an interval, one protocol
    assert all(r["seeds"] == "1" and r["nll_bpd_ci95"] == "" and r["nll_rank"].endswith("?") for r in rows[:2])
    assert len({r["protocol"] for r in rows}) == 1 and rows[0]["quality_n"] == "60" and "Warning" not in md
    assert (sweep / "fd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written:" in capsys.readouterr().out


def test_a_family_without_likelihood_shows_a_dash_never_a_number(sweep, tmp_path):
    fake = tmp_path / "sweep"
    for i, p in enumerate(sweep.rglob("results.json")):
        r = json.loads(p.read_text())
        if r["family"] == "vae":  # pretend this run had no likelihood (like a GAN) and a dataset metric
            r.update(family="gan", model="dcgan", test={"nll_kind": "none"}, history=[],
                     sample_metrics={"mode_coverage": 0.875, "modes_total": 8.0})
        (fake / str(i)).mkdir(parents=True)
        (fake / str(i) / "results.json").write_text(json.dumps(r))
    compare(fake, quality_n=None)
    md = (fake / "comparison.md").read_text()
    gan_row = next(line for line in md.splitlines() if line.startswith("| gan |"))
    assert gan_row.split("|")[5].strip() == "—" and gan_row.split("|")[6].strip() == "none"
    header = md.splitlines()[4]  # dataset metrics some run reports get a column; unknown keys do not
    assert "mode_coverage" in header and "modes_total" not in header and gan_row.split("|")[-2].strip() == "0.875"


def test_wandb_offline_run_holds_the_table_and_plots(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = compare(sweep, quality_n=None, use_wandb=True)
    run_dir = Path(res["wandb_dir"])
    assert list(run_dir.glob("run-*.wandb"))
    assert list(run_dir.glob("files/media/table/comparison_*.table.json"))
    assert {p.name.split("_")[0] for p in run_dir.glob("files/media/images/*.png")} >= {"nll", "samples"}


def test_no_results_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_refused_run_does_not_stop_the_sweep_and_is_listed(tmp_path):
    cmd = [sys.executable, "-m", "genlab.train", "experiment=compare_families", "+family=autoregressive,flow",
           "dataset=mixture2d", f"paths.log_dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stderr.count("error: model=") == 2
    (sweep_dir,) = (tmp_path / "sweeps" / "compare").iterdir()
    compare(sweep_dir, quality_n=None)
    rows = list(csv.DictReader(open(sweep_dir / "comparison.csv")))
    assert [(r["family"], r["model"]) for r in rows] == [("autoregressive (refused)", "pixelcnn"), ("flow (refused)", "glow")]
    assert all(r["nll_bpd"] == "" for r in rows)
