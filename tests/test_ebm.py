"""Energy-based models: SGLD against a closed form, the CD gradient's sign, exact grid NLL on a
2-D mixture (vs a single Gaussian and the true entropy), divergence guard, replay-buffer checkpoints."""

import json
import math

import pytest
import torch

from genlab.builders import load_run
from genlab.data.base import DataInfo
from genlab.families.base import IncompatibleConfigError, LossOutput
from genlab.families.ebm import EBM, ContrastiveDivergence, Langevin
from genlab.families.ebm.family import grid_cells
from genlab.module import GenerativeModule, TrainingDivergedError
from genlab.nets.mlp import MLP
from genlab.train import run

POINTS = DataInfo(name="pts", kind="points", shape=(2,), levels=256)


def _ebm(info: DataInfo = POINTS, **kw) -> tuple[EBM, torch.nn.ModuleDict]:
    from functools import partial

    ebm = EBM(partial(MLP, hidden=(32, 32)), Langevin(step_size=1e-3, noise_std=None, train_steps=5),
              buffer_size=64, objective=ContrastiveDivergence(alpha=0.1), **kw)
    return ebm, ebm.build(info)


def test_sgld_samples_a_gaussian_energy_with_the_right_moments():
    """Proper Langevin (noise_std=None: sqrt(2 step)) on E = |x - mu|^2 / (2 s^2) targets N(mu, s^2 I)."""
    torch.manual_seed(0)
    mu, s = torch.tensor([0.2, -0.3]), 0.1
    sgld = Langevin(step_size=s**2 / 40, noise_std=None, bounds=None)
    assert sgld.noise_std == pytest.approx(math.sqrt(2 * sgld.step_size))
    x = sgld(lambda y: ((y - mu) ** 2).sum(-1) / (2 * s**2), torch.rand(4000, 2) * 2 - 1, steps=600)
    torch.testing.assert_close(x.mean(0), mu, atol=0.01, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), s**2), atol=0, rtol=0.1)


def test_sgld_works_under_inference_mode_and_stays_in_bounds():
    sgld = Langevin(step_size=1.0, noise_std=0.5, bounds=(-1.0, 1.0))
    with torch.inference_mode():
        x = sgld(lambda y: -(y**2).sum(-1), torch.zeros(16, 3), steps=5)
    assert x.abs().max() <= 1.0 and x.abs().max() > 0


def test_contrastive_divergence_step_lowers_data_energy_and_raises_sample_energy():
    torch.manual_seed(0)
    ebm, nets = _ebm()
    y_data, y_sample = torch.randn(64, 2) * 0.1 + 0.5, torch.rand(64, 2) * 2 - 1
    before = ebm.energy(nets, y_data).mean().item(), ebm.energy(nets, y_sample).mean().item()
    opt = torch.optim.SGD(nets.parameters(), lr=0.05)
    out = ebm.objective(ebm, nets, y_data, y_sample)
    assert set(out.logs) >= {"e_data", "e_sample", "cd", "reg"}
    out.loss.backward()
    opt.step()
    assert ebm.energy(nets, y_data).mean().item() < before[0]
    assert ebm.energy(nets, y_sample).mean().item() > before[1]


def test_grid_probabilities_are_normalised_and_the_discrete_mapping_round_trips():
    ebm, nets = _ebm(DataInfo(name="small", kind="points", shape=(2,), levels=16))
    assert ebm.likelihood_kind(nets.info) == "exact"
    cells = grid_cells(0, 256, 16, (2,))
    assert cells[17].tolist() == [1, 1] and len(torch.unique(cells, dim=0)) == 256
    assert torch.logsumexp(ebm.grid_log_probs(nets), 0).item() == pytest.approx(0.0, abs=1e-9)
    assert torch.equal(ebm.to_data(nets, ebm.embed(nets, cells, dequantize=True)), cells.to(torch.uint8))
    big, big_nets = _ebm(DataInfo(name="img", kind="image", shape=(1, 8, 8), levels=4))
    assert big.likelihood_kind(big_nets.info) == "none"


def test_divergence_check_names_the_problem_and_the_fixes():
    ebm, _ = _ebm()
    ok = LossOutput(torch.tensor(0.0), {"e_data": torch.tensor(-1.0), "e_sample": torch.tensor(1.0)})
    assert ebm.diverged(ok) is None
    for bad in (float("nan"), 1e9):
        reason = ebm.diverged(LossOutput(torch.tensor(0.0), {"e_data": torch.tensor(bad), "e_sample": torch.tensor(0.0)}))
        assert "energies exploded" in reason and "loss.alpha" in reason and "spectral_norm" in reason


def _gaussian_grid_nll(train: torch.Tensor, test: torch.Tensor, levels: int) -> float:
    """NLL (nats) on ``test`` of the single Gaussian fitted by moments to ``train`` (bin centres),
    discretised exactly on the same ``levels^2`` grid (density at bin centres, normalised)."""
    centre = lambda x: (2 * x.double() + 1) / levels - 1  # noqa: E731
    gauss = torch.distributions.MultivariateNormal(centre(train).mean(0), torch.cov(centre(train).T))
    log_z = torch.logsumexp(gauss.log_prob(centre(grid_cells(0, levels**2, levels, (2,)))), 0)
    return float(-(gauss.log_prob(centre(test)) - log_z).mean())


@pytest.mark.slow
def test_mixture2d_exact_nll_beats_a_gaussian_and_respects_the_entropy(make_cfg):
    results = run(make_cfg("experiment=ebm_mixture2d", "trainer.max_epochs=12", "model.sampler.train_steps=20",
                           "callbacks.samples.every_n_epochs=100"))
    assert results["test"]["nll_kind"] == "exact" and results["family"] == "ebm"
    module, dm = load_run(results["checkpoint"])
    dm.setup("test")
    train, test = dm.splits["train"].x, dm.splits["test"].x
    ebm, nets = module.family, module.nets
    assert torch.logsumexp(ebm.grid_log_probs(nets), 0).item() == pytest.approx(0.0, abs=1e-9)
    nll = -ebm.log_likelihood(nets, {"x": test}).log_px
    assert float(nll.mean()) == pytest.approx(results["test"]["nll_nats"], rel=1e-4)
    entropy = dm.info.entropy_nats
    assert float(nll.mean()) >= entropy - 3 * float(nll.std()) / math.sqrt(len(nll))
    gaussian = _gaussian_grid_nll(train, test, dm.info.levels)
    assert float(nll.mean()) < gaussian - 0.5, (float(nll.mean()), gaussian, entropy)
    print(f"EBM {float(nll.mean()):.3f} nats, gaussian {gaussian:.3f}, entropy {entropy:.3f}")
    assert results["sample_metrics"]["modes_covered"] >= 6


def test_exploding_energies_stop_the_run_and_keep_the_last_good_checkpoint(make_cfg, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = EBM.loss

    def exploding(self, nets, batch):
        calls["n"] += 1
        if calls["n"] == 9:  # after two epochs (4 steps each) and their checkpoints
            nets["energy"].net[-1].weight.data.mul_(1e7)
        return original(self, nets, batch)

    monkeypatch.setattr(EBM, "loss", exploding)
    with pytest.raises(TrainingDivergedError, match="EBM energies exploded") as err:
        run(make_cfg("experiment=ebm_mixture2d", "dataset.n_train=1024", "trainer.max_epochs=5",
                     "callbacks.samples.every_n_epochs=100"))
    msg = str(err.value)
    assert "at step 8" in msg and "last.ckpt" in msg and "loss.alpha" in msg and "optimizer.lr" in msg
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "energies exploded" in results["error"]
    ckpt = torch.load(results["checkpoints"]["last"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    assert ckpt["state_dict"]["nets.energy.net.4.weight"].abs().max() < 100


def _ckpt(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_replay_buffer_survives_a_checkpoint_round_trip_and_resume(make_cfg):
    """The buffer is in the checkpoint; a resumed run continues the same chains exactly."""
    common = ["experiment=ebm_mixture2d", "dataset.n_train=1024", "model.buffer_size=512",
              "callbacks.samples.every_n_epochs=100", "num_samples=16"]
    full = run(make_cfg(*common, "trainer.max_epochs=4", name="full"))
    half = run(make_cfg(*common, "trainer.max_epochs=2", name="half"))
    last = half["checkpoints"]["last"]
    module, _ = load_run(last)
    saved = _ckpt(last)["state_dict"]
    torch.testing.assert_close(module.nets["buffer"].samples, saved["nets.buffer.samples"], rtol=0, atol=0)
    fresh = GenerativeModule(module.family, module.info, torch.optim.Adam)  # untrained
    assert not torch.equal(fresh.nets["buffer"].samples, module.nets["buffer"].samples)
    resumed = run(make_cfg(*common, "trainer.max_epochs=4", f"ckpt_path={last}", name="resumed"))
    a, b = _ckpt(full["checkpoints"]["last"]), _ckpt(resumed["checkpoints"]["last"])
    assert a["global_step"] == b["global_step"] == 2 * _ckpt(last)["global_step"] > 0
    a, b = a["state_dict"], b["state_dict"]
    torch.testing.assert_close(a["nets.buffer.samples"], b["nets.buffer.samples"], rtol=0, atol=1e-6)


def test_images_train_with_no_likelihood_and_text_is_refused(make_cfg):
    results = run(make_cfg("model=ebm", "dataset=toy", "trainer.max_epochs=1", "model.energy_net.channels=8",
                           "model.buffer_size=64", "model.sampler.train_steps=2", "model.sampler.sample_steps=3",
                           "callbacks.samples.every_n_epochs=1", "num_samples=8"))  # samples in a val hook
    assert results["test"]["nll_kind"] == "none" and results["family"] == "ebm"
    module, _ = load_run(results["checkpoint"])
    x = module.sample(8, seed=0)
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.uint8 and int(x.max()) < 4
    with pytest.raises(IncompatibleConfigError, match="text ids are unordered categories"):
        run(make_cfg("model=ebm_mlp", "dataset=text", "dataset.block_size=32", name="text"))
    with pytest.raises(IncompatibleConfigError, match="only handles image data, not points"):
        run(make_cfg("model=ebm", "dataset=mixture2d", name="points"))
