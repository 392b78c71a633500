"""The EBM's capabilities against closed forms, with a separable quadratic energy: the exact grid
likelihood and its cached partition function, the energy score, clamped-Langevin inpainting (the
missing coordinate samples its Gaussian marginal, the observed ones stay) and per-call samplers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.families.base import Denoiser, Encoder, EnergyScorer, Inpainter, Likelihood, SequentialCoder
from genlab.families.ebm import EBM, ContrastiveDivergence, Langevin

MU, S = torch.tensor([0.2, -0.3]), 0.1
POINTS = DataInfo(name="pts", kind="points", shape=(2,), levels=32)


class Quadratic(nn.Module):
    """``E(y) = |y - MU|^2 / (2 S^2)`` (a Gaussian's energy), counting its calls."""

    def __init__(self, in_dim: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, y: Tensor) -> Tensor:
        self.calls += 1
        return ((y - MU.to(y) - self.shift) ** 2).sum(-1, keepdim=True) / (2 * S**2)


def _ebm(info: DataInfo = POINTS, sampler: Langevin | None = None) -> tuple[EBM, nn.ModuleDict]:
    ebm = EBM(Quadratic, sampler or Langevin(step_size=S**2 / 40, noise_std=None, sample_steps=600),
              buffer_size=64, objective=ContrastiveDivergence())
    return ebm, ebm.build(info)


def _centres(x: Tensor, levels: int) -> Tensor:
    return (2 * x.double() + 1) / levels - 1


def test_ebm_capabilities():
    for capability in (Likelihood, EnergyScorer, Inpainter):
        assert issubclass(EBM, capability)
    assert not issubclass(EBM, (Denoiser, Encoder, SequentialCoder))
    assert EBM.inpaint_method == "Langevin with the known pixels clamped"


def test_exact_grid_likelihood_of_a_separable_energy_and_the_energy_score():
    ebm, nets = _ebm()
    x = torch.randint(0, 32, (10, 2), dtype=torch.uint8)
    energy = ((_centres(x, 32) - MU.double()) ** 2).sum(-1) / (2 * S**2)
    torch.testing.assert_close(ebm.score_energy(nets, x).double(), energy, rtol=1e-5, atol=1e-4)
    # separable: log Z = sum_d logsumexp_v -(c(v) - mu_d)^2 / (2 S^2)
    c = _centres(torch.arange(32), 32)
    log_z = sum(torch.logsumexp(-(c - m) ** 2 / (2 * S**2), 0) for m in MU.double())
    ll = ebm.log_likelihood(nets, {"x": x})
    assert ll.kind == "exact" and ll.extras == {}
    torch.testing.assert_close(ll.log_px, -energy - log_z, rtol=1e-5, atol=1e-4)
    big, big_nets = _ebm(DataInfo(name="img", kind="image", shape=(1, 8, 8), levels=4))
    assert big.log_likelihood(big_nets, {"x": torch.zeros(2, 1, 8, 8, dtype=torch.uint8)}) is None


def test_log_partition_is_cached_on_the_nets_until_the_weights_change():
    ebm, nets = _ebm()
    net = nets["energy"]
    first = ebm.log_partition(nets)
    calls = net.calls
    assert ebm.log_partition(nets) is first and net.calls == calls  # cached: no grid evaluation
    with torch.no_grad():
        net.shift.add_(0.05)  # an optimizer step moves the version counter
    moved = ebm.log_partition(nets)
    assert net.calls > calls and not torch.equal(moved, first)
    assert not any(k.startswith("log_z") for k in nets.state_dict())  # the cache is not checkpointed
    other, other_nets = _ebm()  # another run's nets have their own cache (the first weights)
    assert torch.equal(other.log_partition(other_nets), first)


def test_clamped_langevin_keeps_the_observed_pixels_and_samples_the_missing_ones_marginal():
    torch.manual_seed(0)
    ebm, nets = _ebm(DataInfo(name="pts", kind="points", shape=(2,), levels=256))
    x = torch.randint(0, 256, (2000, 2), dtype=torch.uint8)
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, 1] = True

    class Options:
        steps = None  # model.sampler.sample_steps

    filled = ebm.inpaint(nets, x, missing, Options())
    assert filled.dtype == torch.uint8 and torch.equal(filled[:, 0], x[:, 0])
    y = _centres(filled[:, 1], 256)  # separable energy: the missing coordinate ~ N(MU_1, S^2), discretised
    assert float(y.mean()) == pytest.approx(float(MU[1]), abs=0.01)
    assert float(y.std()) == pytest.approx(S, rel=0.1)


def test_sampling_takes_a_langevin_sampler_per_call():
    ebm, nets = _ebm()
    torch.manual_seed(0)
    x = ebm.sample(nets, 8, sampler=Langevin(sample_steps=0))  # no steps: the buffer states, binned
    torch.manual_seed(0)
    assert torch.equal(x, ebm.to_data(nets, nets["buffer"].draw(8)[1]))
    torch.manual_seed(0)
    assert not torch.equal(ebm.sample(nets, 8), x)  # the configured sampler's 600 steps
