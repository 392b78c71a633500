"""Jacobian-based truncation of GAN samples (genlab/families/gan/jacobian.py)."""

from __future__ import annotations

import pytest
import torch

from genlab.builders import load_run
from genlab.families.gan import GAN, GANSampler
from genlab.families.gan.jacobian import JacobianTruncation


def test_score_is_the_closed_form_jacobian_norm_for_an_elementwise_generator():
    """G(z) = tanh(a z) elementwise (a 2x2 image of a 4-D latent): J = diag(a sech^2(a z)), so
    J J^T is diagonal and the Rademacher estimate is exact: sum_i a^2 sech^4(a z_i), divided by
    ink^p with ink = sum((G(z) + 1) / 2)."""
    a = 1.7
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()

    def fake(zz):
        return torch.tanh(a * zz).view(-1, 1, 2, 2)

    exact = (a**2 * torch.cosh(a * z.double()).pow(-4)).sum(1)
    ink = ((torch.tanh(a * z.double()) + 1) / 2).sum(1)
    for power in (0.0, 1.0, 2.0):
        got = JacobianTruncation(probes=1, ink_power=power, batch=4).scores(fake, z)
        torch.testing.assert_close(got, exact / ink**power, rtol=1e-5, atol=0)


def test_score_estimates_the_frobenius_norm_of_a_dense_jacobian():
    """A dense nonlinear generator: the probe average converges to the exact ||J||_F^2 per sample."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(9, 3, generator=g), torch.randn(9, generator=g)

    def fake(zz):
        return torch.tanh(zz @ w.T + b).view(-1, 1, 3, 3)

    z = torch.randn(5, 3, generator=g)
    exact = torch.stack([torch.autograd.functional.jacobian(lambda v: fake(v[None]).flatten(), zi).pow(2).sum()
                         for zi in z]).double()
    est = JacobianTruncation(probes=4000).scores(fake, z)
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0)
    assert not torch.allclose(JacobianTruncation(probes=1).scores(fake, z), exact, rtol=0.05)  # it is an estimate


def test_truncation_keeps_the_flattest_proposals_in_order_and_bad_settings_name_the_fix():
    """1-D latent, G(z) = tanh(3 z): |J| = 3 sech^2(3 z) falls with |z|, so keeping 80% of 50
    proposals keeps exactly the 40 with the largest |z|, in their drawing order."""
    jt = JacobianTruncation(keep=0.8)
    assert jt.proposals(40) == 50 and jt.proposals(41) == 52 and JacobianTruncation(keep=1.0).proposals(7) == 7
    z = torch.randn(50, 1, generator=torch.Generator().manual_seed(2))
    kept = jt.select(jt.scores(lambda zz: torch.tanh(3 * zz).view(-1, 1, 1, 1), z), 40)
    expected = z.abs().squeeze(1).argsort(descending=True)[:40].sort().values
    assert torch.equal(kept, expected)
    with pytest.raises(ValueError, match="41 samples asked from 40 proposals"):
        jt.select(torch.zeros(40), 41)
    assert JacobianTruncation.parse(None) is None
    assert JacobianTruncation.parse({"keep": 0.5, "ink_power": 2}) == JacobianTruncation(keep=0.5, ink_power=2.0)
    for bad, match in [({"keep": 0.0}, "keep must be in \\(0, 1\\]"), ({"keep": 1.5}, "keep must be in"),
                       ({"probes": 0}, "probes must be a whole number >= 1"), ({"ink_power": -1}, "ink_power must be"),
                       ({"kept": 0.8}, "unknown keys \\['kept'\\]"), (0.8, "must be a mapping")]:
        with pytest.raises(ValueError, match=match):
            JacobianTruncation.parse(bad)


@pytest.mark.slow
def test_truncated_ring_samples_are_more_often_on_a_mode_and_keep_the_modes(trained_run):
    """Ring of 8 (seeded, the refinement test's training): the samples between two modes are where the
    generator's Jacobian is large, so keeping the flattest 80% lands more samples within the
    high-quality radius of a mode, and no mode is lost. Ink normalisation is refused for points."""
    results = trained_run("gan_ring_refine", "experiment=gan_mixture2d", "trainer.max_steps=800")
    plain_module, dm = load_run(results["checkpoints"]["last"])
    truncated, _ = load_run(results["checkpoints"]["last"],
                            overrides=["model.sampler.jacobian_truncation={keep: 0.8, ink_power: 0}"])
    family, nets = truncated.family, truncated.nets
    with pytest.raises(ValueError, match="GAN.draw: 100 samples take 125 latents"):
        family.draw(nets, family.sampling_generator(nets), 100, z=torch.randn(100, 2))
    plain = dm.sample_metrics(plain_module.sample(2000, seed=0))
    x = truncated.sample(2000, seed=0)
    assert x.shape == (2000, 2)
    kept = dm.sample_metrics(x)
    assert kept["high_quality"] > plain["high_quality"] + 0.05, (kept, plain)
    assert kept["modes_covered"] >= plain["modes_covered"]
    inked = GAN(family.generator_factory, family.discriminator_factory,
                sampler=GANSampler(jacobian_truncation=JacobianTruncation(ink_power=2.0)))
    assert "set model.sampler.jacobian_truncation.ink_power=0" in inked.check_data(dm.info)


def test_truncation_keeps_each_latent_with_its_categorical_code(tiny_infogan):
    """Images with InfoGAN codes: the kept samples are generated from kept rows of the proposals,
    each ``z`` with its own code, in drawing order."""
    family, nets, generator, inputs = tiny_infogan("model.sampler.jacobian_truncation={keep: 0.5, ink_power: 2}")
    torch.manual_seed(0)
    z0 = torch.randn(16, family.latent_dim)
    x = family.draw(nets, generator, 8, z=z0)
    proposals, final = inputs[0], inputs[-1]  # the scoring pass over all 16, the final draw of the kept 8
    assert x.shape == (8, *nets.info.shape) and proposals.shape[0] == 16 and final.shape[0] == 8
    assert torch.equal(proposals[:, : family.latent_dim], z0)
    rows = [int(torch.nonzero((proposals == r).all(1))[0]) for r in final]  # each kept (z, code) is a proposal
    assert rows == sorted(rows) and len(set(rows)) == 8
