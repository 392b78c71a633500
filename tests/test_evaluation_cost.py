"""Evaluation never dominates a run: a cheap sanity check, bars that move inside long evaluations, a
stratified default bound with its standard error and the exact sum one switch away."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from genlab import progress
from genlab.module import SANITY_EXAMPLES

TINY = Path(__file__).parent / "tiny_family"


@pytest.fixture
def tiny():
    from genlab.families import base as fb
    import tiny_family

    fb._REGISTRY.setdefault(tiny_family.IndependentPixels.name, tiny_family.IndependentPixels)
    yield tiny_family.IndependentPixels
    fb._REGISTRY.pop(tiny_family.IndependentPixels.name, None)


def test_the_sanity_check_evaluates_a_few_examples_and_validation_all_of_them(tiny, tmp_path, monkeypatch):
    from genlab.builders import compose_run
    from genlab.train import run

    seen: list[int] = []
    original = tiny.log_likelihood

    def recording(self, nets, batch, stage="test"):
        seen.append(len(batch["x"]))
        return original(self, nets, batch, stage)

    monkeypatch.setattr(tiny, "log_likelihood", recording)
    cfg = compose_run(["model=independent", "dataset=digits", f"hydra.searchpath=[file://{TINY / 'configs'}]",
                       "trainer.max_steps=3", "trainer.num_sanity_val_steps=2", "trainer.limit_val_batches=2",
                       "trainer.limit_test_batches=1", "num_samples=0", "callbacks.progress_bar.refresh_rate=0"],
                      tmp_path / "run")
    results = run(cfg)
    assert results["status"] == "finished"
    # two sanity batches of SANITY_EXAMPLES, then the validation's and the test's full batches
    assert seen[:2] == [SANITY_EXAMPLES, SANITY_EXAMPLES]
    assert all(n > SANITY_EXAMPLES for n in seen[2:]) and len(seen) >= 4


def _capture_bars(monkeypatch) -> None:
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "MININTERVAL", 0.0)
    monkeypatch.setenv("GENLAB_PROGRESS", "1")
    progress.set_enabled(True)


def test_the_diffusion_bound_moves_a_bar_per_chunk_of_timesteps(monkeypatch, capsys):
    from genlab.families.diffusion.bound import variational_bound
    from test_diffusion_capabilities import _mlp_family  # a tiny family on a known data space
    from genlab.data.base import DataInfo

    _capture_bars(monkeypatch)
    fam, nets = _mlp_family(DataInfo("t", "image", (1, 2, 2), 5), timesteps=40)
    x0 = torch.rand(6, 1, 2, 2) * 2 - 1
    est = variational_bound(fam.model(nets), x0, timesteps=None, chunk=6 * 4)  # 39 terms, 4 per call
    err = capsys.readouterr().err
    assert "bound: 39 KL terms of 6 examples" in err
    assert max(int(n) for n in re.findall(r"(\d+)/39 ", err)) == 39  # moved chunk by chunk to the end
    assert torch.isfinite(est.nll).all()


def test_an_ode_solve_reports_the_share_of_time_reached(monkeypatch, capsys):
    from genlab.families.flow_matching.ode import ODESolver

    _capture_bars(monkeypatch)
    y = ODESolver("dopri5", rtol=1e-6, atol=1e-6).integrate(lambda t, y: -y, torch.ones(3), 0.0, 2.0)
    torch.testing.assert_close(y, torch.full((3,), math.exp(-2.0)), rtol=1e-5, atol=1e-6)
    err = capsys.readouterr().err
    assert "ODE solve (dopri5) from t=0 to 2" in err
    assert max(float(v) for v in re.findall(r"(\d\.\d\d)/1\.00", err)) > 0.5  # the bar follows t


def test_bars_are_off_where_the_run_hides_its_own(monkeypatch, capsys):
    _capture_bars(monkeypatch)
    monkeypatch.setenv("GENLAB_PROGRESS", "0")
    with progress.bar("hidden", total=3) as bar:
        bar.advance(3)
    monkeypatch.setenv("GENLAB_PROGRESS", "1")
    progress.set_enabled(False)
    with progress.bar("hidden too", total=3) as bar:
        bar.advance(3)
    progress.set_enabled(True)
    assert "hidden" not in capsys.readouterr().err


def test_a_bar_on_a_continuous_total_only_moves_forwards(monkeypatch):
    _capture_bars(monkeypatch)
    with progress.bar("t", total=1.0) as bar:
        bar.reach(0.5)
        bar.reach(0.25)  # an adaptive solver retrying a rejected step
        assert bar.done == 0.5
        bar.reach(1.0)
        assert bar.done == 1.0


def test_the_default_diffusion_bound_is_stratified_with_an_error_and_the_exact_sum_a_switch_away(tmp_path):
    from genlab.builders import compose_run

    cfg = compose_run(["model=ddpm", "dataset=digits"], tmp_path / "a")
    assert cfg.model.test_timesteps == 32 and cfg.model.val_timesteps == 8
    exact = compose_run(["model=ddpm", "dataset=digits", "model.test_timesteps=null"], tmp_path / "a")
    assert exact.model.test_timesteps is None
