"""Discriminator-driven latent refinement of GAN samples (genlab/families/gan/refine.py)."""

from __future__ import annotations

import pytest
import torch

from genlab.builders import load_run
from genlab.families.gan.refine import LatentRefinement

REFINE = "model.sampler.refine={steps: 20, lr: 0.05, penalty: 1.0}"


@pytest.mark.parametrize("distance,penalty", [(3.0, 1.0), (0.5, 1.0), (2.0, 0.0), (4.0, 2.5)])
def test_refinement_reaches_the_closed_form_optimum_of_a_quadratic_score(distance, penalty):
    """score(z) = -||z - m||^2 / 2: the optimum lies on the segment z0 -> m, at distance
    max(0, ||m - z0|| - penalty) from z0 (the penalised objective along the segment is
    (d - r)^2 / 2 + penalty * r)."""
    torch.manual_seed(0)
    z0 = torch.randn(5, 4)
    direction = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    m = z0 + distance * direction
    z = LatentRefinement(steps=3000, lr=0.005, penalty=penalty)(lambda zz: -0.5 * ((zz - m) ** 2).sum(1), z0)
    expected = z0 + max(0.0, distance - penalty) * direction
    torch.testing.assert_close(z, expected, atol=0.03, rtol=0)
    assert not z.requires_grad


def test_refinement_only_moves_the_latents_and_bad_settings_name_the_fix():
    net = torch.nn.Linear(3, 1)
    net.weight.grad = None
    z = LatentRefinement(steps=5, lr=0.1, penalty=0.0)(lambda zz: net(zz).squeeze(1), torch.zeros(4, 3))
    assert net.weight.grad is None and net.bias.grad is None  # the nets' training state is untouched
    # plain ascent on a linear score: Adam moves every coordinate by lr per step, along sign(w)
    torch.testing.assert_close(z, 0.5 * torch.sign(net.weight.detach()).expand(4, 3))
    assert LatentRefinement.parse(None) is None
    assert LatentRefinement.parse({"steps": 3, "lr": 1, "penalty": 0}) == LatentRefinement(3, 1.0, 0.0)
    for bad, match in [({"steps": 0}, "steps must be a whole number >= 1"), ({"lr": -1.0}, "lr must be > 0"),
                       ({"penalty": -0.1}, "penalty must be >= 0"), ({"step": 3}, "unknown keys \\['step'\\]"),
                       ("20", "must be a mapping")]:
        with pytest.raises(ValueError, match=match):
            LatentRefinement.parse(bad)


def test_refined_ring_samples_are_more_often_on_a_mode_and_keep_the_modes(trained_run):
    """Ring of 8 (seeded, a real short training): with refinement more samples land within the
    high-quality radius of a mode than the generator EMA's own, and no mode is lost."""
    results = trained_run("gan_ring_refine", "experiment=gan_mixture2d", "trainer.max_steps=800")
    plain_module, dm = load_run(results["checkpoints"]["last"])
    refined_module, _ = load_run(results["checkpoints"]["last"], overrides=[REFINE])
    assert plain_module.family.sampler.refine is None
    assert refined_module.family.sampler.refine == LatentRefinement(20, 0.05, 1.0)
    plain = dm.sample_metrics(plain_module.sample(2000, seed=0))
    refined = dm.sample_metrics(refined_module.sample(2000, seed=0))
    assert refined["high_quality"] > plain["high_quality"] + 0.03, (refined, plain)
    assert refined["modes_covered"] >= plain["modes_covered"]


def test_refinement_keeps_the_categorical_codes_and_raises_the_discriminator_score(tiny_infogan):
    """Images with InfoGAN codes: only z moves (the codes fed to G stay the ones drawn first),
    the discriminator rates the refined samples higher, and sampling leaves no gradients."""
    # plain ascent (penalty 0): this barely trained discriminator's slope in z is far below 1, so with
    # penalty 1 the optimum is z0 itself (the closed-form test above)
    family, nets, generator, inputs = tiny_infogan("model.sampler.refine={steps: 20, lr: 0.05, penalty: 0}")
    for p in nets.parameters():
        p.grad = None
    torch.manual_seed(0)
    z0 = torch.randn(16, family.latent_dim)
    refined = family.draw(nets, generator, 16, z=z0)
    codes = [x[:, family.latent_dim:] for x in inputs]
    assert len(inputs) == 21 and all(torch.equal(c, codes[0]) for c in codes)  # 20 steps + the final draw
    assert codes[0].sum(1).eq(1).all()  # one-hot
    first, last = inputs[0][:, : family.latent_dim], inputs[-1][:, : family.latent_dim]
    assert torch.equal(first, z0) and not torch.equal(last, z0)  # z moved from its start
    with torch.no_grad():  # the same z0 and codes, unrefined
        plain = torch.tanh(generator(torch.cat([z0, codes[0]], 1))).view_as(refined)
    assert family.discriminate(nets, refined).mean() > family.discriminate(nets, plain).mean()
    assert all(p.grad is None for p in nets.parameters())
