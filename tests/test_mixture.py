"""The 2-D mixture dataset: exact bin probabilities, entropy, and the mode-coverage metric."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.data.base import DataError
from genlab.data.mixture import Mixture2DDataModule


@pytest.mark.parametrize("kw", [{}, {"mode": "grid", "num_modes": 25, "radius": 0.8, "std": 0.02, "levels": 64}])
def test_exact_entropy_matches_the_empirical_log_loss_of_drawn_points(kw):
    dm = Mixture2DDataModule(**kw)
    p = dm.bin_probs()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12) and (p >= 0).all()
    x = dm.draw(50_000, torch.Generator().manual_seed(1))[0].long()
    logp = p[x[:, 0], x[:, 1]].log()
    se = logp.std().item() / math.sqrt(len(logp))
    assert -logp.mean().item() == pytest.approx(dm.entropy_nats(), abs=4 * se)
    assert dm.info.entropy_bpd == pytest.approx(dm.entropy_nats() / (2 * math.log(2)))
    assert dm.info.kind == "points" and dm.info.shape == (2,) and x.max() < dm.levels


def test_mode_coverage_counts_modes_and_quality():
    dm = Mixture2DDataModule()
    real = dm.draw(4000, torch.Generator().manual_seed(2))[0]
    m = dm.sample_metrics(real)
    assert m["modes_covered"] == 8 and m["high_quality"] > 0.97
    one_mode = dm.draw(4000, torch.Generator().manual_seed(3))[0]
    one_mode[:] = one_mode[0]  # mode collapse onto one point
    assert dm.sample_metrics(one_mode)["modes_covered"] == 1
    noise = torch.randint(0, 256, (4000, 2), generator=torch.Generator().manual_seed(4)).to(torch.uint8)
    m = dm.sample_metrics(noise)
    assert m["high_quality"] < 0.1  # 8 small discs cover a few percent of the box


def test_bad_settings_are_named():
    with pytest.raises(DataError, match="square number"):
        Mixture2DDataModule(mode="grid", num_modes=10)
    with pytest.raises(DataError, match="valid: ring, grid"):
        Mixture2DDataModule(mode="spiral")
    with pytest.raises(DataError, match="at most 256|between 2 and 256"):
        Mixture2DDataModule(levels=1000)
