"""A family defined outside genlab/ (tests/tiny_family: one folder, its YAML) trains, is compared and
is offered exactly the tasks its capabilities allow, with no edit to genlab/ or configs/."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from genlab.families import base as fb

TINY = Path(__file__).parent / "tiny_family"


@pytest.fixture
def tiny():
    """The tiny family registered for one test (and unregistered after, so other tests see the built-ins)."""
    import tiny_family

    fb._REGISTRY.setdefault(tiny_family.IndependentPixels.name, tiny_family.IndependentPixels)
    yield tiny_family.IndependentPixels
    fb._REGISTRY.pop(tiny_family.IndependentPixels.name, None)


def test_the_tiny_likelihood_is_exact_against_the_closed_form(tiny):
    from genlab.data.base import DataInfo

    info = DataInfo("toy", "image", (1, 2, 2), 3)
    fam = tiny()
    nets = fam.build(info)
    with torch.no_grad():
        nets["logits"].theta.copy_(torch.tensor([[0.0, 1.0, 2.0]]).expand(4, 3))
    x = torch.tensor([[[[0, 1], [2, 2]]]], dtype=torch.uint8)
    p = torch.tensor([1.0, math.e, math.e**2]) / (1 + math.e + math.e**2)
    expected = float(p[0].log() + p[1].log() + 2 * p[2].log())
    assert float(fam.log_likelihood(nets, {"x": x}).log_px) == pytest.approx(expected, rel=1e-6)
    # the coder's conditionals are the marginals, and they sum to one
    lp = fam.next_log_probs(nets, x, 3, fam.start_coding(nets, x))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1))


def test_a_family_outside_genlab_trains_compares_and_gets_its_tasks(tiny, tmp_path, capsys):
    from genlab.builders import compose_run
    from genlab.compare import compare
    from genlab.tasks.cli import main as task_main
    from genlab.train import run

    sweep = tmp_path / "sweep"
    cfg = compose_run(["model=independent", "dataset=digits", f"hydra.searchpath=[file://{TINY / 'configs'}]",
                       "trainer.max_steps=100", "optimizer.lr=0.1", "num_samples=4", "callbacks.progress_bar.refresh_rate=0"],
                      sweep / "0_independent")
    results = run(cfg)
    assert results["status"] == "finished" and results["family"] == "independent"
    # it learned: the test NLL is far below the uniform model's log2(17) bits/dim
    assert results["test"]["nll_bpd"] < math.log2(17) - 0.5 and results["test"]["nll_kind"] == "exact"

    compare(sweep, quality_n=None)
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [r["family"] for r in rows] == ["independent"] and float(rows[0]["nll_bpd"]) > 0

    assert task_main(["--help"]) == 0
    listed = {}
    for line in capsys.readouterr().out.splitlines():
        if line.strip().startswith("families:"):
            listed[task] = "independent" in line
        elif line.startswith("  ") and line.split():
            task = line.split()[0]
    assert listed == {"anomaly": True, "inpaint": True, "denoise": False, "interpolate": False,
                      "augment": False, "compress": True, "classify": True, "restore": False}

    ckpt = results["checkpoints"]["best"] or results["checkpoints"]["last"]
    out = tmp_path / "compress"
    assert task_main(["compress", f"ckpt={ckpt}", f"out={out}", "n=20"]) == 0  # rANS with its conditionals
    assert "bit-exact" in (out / "compress.md").read_text() or (out / "compress.json").exists()
    assert task_main(["denoise", f"ckpt={ckpt}", f"out={tmp_path / 'd'}"]) == 2
    assert "not available for the independent family" in capsys.readouterr().err
