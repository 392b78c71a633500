"""Two-stage models: the composed bound against closed forms, the refusals, and a tiny real VQ-VAE + PixelCNN."""

import json
import math
from functools import partial

import pytest
import torch
from torch import Tensor

from genlab.data.toy import ToyDataModule
from genlab.distributions import Categorical
from genlab.families.autoregressive import Autoregressive
from genlab.families.base import Family, IncompatibleConfigError, LatentAutoencoder, Nets
from genlab.families.latent import Stage1, TwoStage
from genlab.nets.pixelcnn import GatedPixelCNN

STAGE1 = ("model=vqvae", "model.downsample=2", "model.codebook_size=16", "model.encoder.channels=16",
          "model.decoder.channels=16", "model.encoder.res_blocks=1", "model.decoder.res_blocks=1")
SMALL_PRIOR = ("model.prior.net.channels=8", "model.prior.net.layers=2", "model.prior.net.out_hidden=16")
QUICK = ("threads=1", "num_samples=6", "callbacks.progress_bar.refresh_rate=0", "trainer.limit_val_batches=1")


class IdentityStage(Family, LatentAutoencoder):
    """A first stage whose codes ARE the pixels and whose decoder is exact: ``p(x | z) = [x = z]``
    (no ``name``: not registered)."""

    def latent_info(self, nets: Nets):
        return nets.info

    def encode_latents(self, nets: Nets, x: Tensor) -> Tensor:
        return x.clone()

    def latent_log_likelihood(self, nets: Nets, x: Tensor, z: Tensor) -> Tensor:
        same = (x == z).flatten(1).all(1)
        return torch.where(same, 0.0, -math.inf)

    def decode_latents(self, nets: Nets, z: Tensor) -> Tensor:
        return z.clone()


def _prior():
    net = partial(GatedPixelCNN, channels=8, layers=2, kernel_size=3, out_hidden=8)
    return Autoregressive(net, Categorical())


def _identity_two_stage(info):
    family = TwoStage(_prior(), Stage1(IdentityStage(), Nets(info, {}), "identity"))
    assert family.check_data(info) is None
    return family, family.build(info)


def test_identity_first_stage_makes_the_composed_nll_the_priors_exactly():
    torch.manual_seed(0)
    info = ToyDataModule(levels=4).info
    family, nets = _identity_two_stage(info)
    x = torch.randint(0, 4, (8, *info.shape), dtype=torch.uint8)
    ll = family.log_likelihood(nets, {"x": x})
    prior = family.prior.log_likelihood(nets["prior"], {"x": x})
    assert ll.kind == "bound" and family.likelihood_kind(info) == "bound"
    torch.testing.assert_close(ll.log_px, prior.log_px.double(), rtol=0, atol=0)
    torch.testing.assert_close(ll.extras["recon_nats"], torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(ll.extras["prior_nats"], -prior.log_px.double())
    loss, prior_loss = family.loss(nets, {"x": x}), family.prior.loss(nets["prior"], {"x": x})
    torch.testing.assert_close(loss.loss, prior_loss.loss)
    s = family.sample(nets, 3)
    assert s.shape == (3, *info.shape) and s.dtype == torch.uint8


def test_the_first_stage_is_frozen_and_only_the_prior_trains():
    info = ToyDataModule(levels=4).info
    family, nets = _identity_two_stage(info)
    nets.train()
    assert not nets["stage1"].training and nets["prior"].training
    groups = family.param_groups(nets)
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(p.numel() for p in nets["prior"].parameters())


def test_a_missing_stage1_is_refused_naming_the_fix(make_cfg, tmp_path):
    from genlab.train import run

    cfg = make_cfg("model=latent_pixelcnn")
    with pytest.raises(IncompatibleConfigError, match="model.stage1 is not set.*model=vqvae"):
        run(cfg)
    family = TwoStage(_prior(), str(tmp_path / "nowhere"))
    assert "does not exist" in family.check_data(ToyDataModule().info)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """A VQ-VAE trained 40 steps on digits (4x4 codes, K = 16)."""
    from conftest import compose_run
    from genlab.train import run

    return run(compose_run([*STAGE1, "trainer.max_steps=40", *QUICK], tmp_path_factory.mktemp("vq") / "run"))


def test_tiny_vqvae_plus_pixelcnn_reports_a_bound_with_both_parts(stage1_run, make_cfg):
    from genlab.builders import load_run
    from genlab.train import run

    run_dir = str(json.loads(open(stage1_run["path"]).read())["checkpoint"]).rsplit("/checkpoints/", 1)[0]
    cfg = make_cfg("model=latent_pixelcnn", f"model.stage1={run_dir}", *SMALL_PRIOR, "trainer.max_steps=40", *QUICK)
    results = json.loads(open(run(cfg)["path"]).read())
    test, metrics = results["test"], results["metrics"]
    assert results["family"] == "two_stage" and test["nll_kind"] == "bound" and math.isfinite(test["nll_bpd"])
    assert metrics["test/recon_bpd"] + metrics["test/prior_bpd"] == pytest.approx(test["nll_bpd"], rel=1e-5)
    stage1_test = json.loads(open(stage1_run["path"]).read())["metrics"]
    assert metrics["test/recon_nats"] == pytest.approx(stage1_test["test/recon_nats"], rel=1e-6)  # frozen stage 1
    samples = torch.load(results["samples"].replace(".png", ".pt"))
    assert samples.shape == (6, 1, 8, 8) and samples.dtype == torch.uint8 and int(samples.max()) < 17
    module, _ = load_run(results["checkpoint"])  # one model: rebuilt from its checkpoint alone
    assert isinstance(module.family, TwoStage) and module.family.latent_info().shape == (1, 4, 4)


def test_a_first_stage_of_other_data_or_without_codes_is_refused(stage1_run, make_cfg, tmp_path):
    from genlab.train import run

    ckpt = json.loads(open(stage1_run["path"]).read())["checkpoint"]
    family = TwoStage(_prior(), ckpt)
    assert "trained on digits" in family.check_data(ToyDataModule().info)
    vae = run(make_cfg("model=vae", "model.test_k=2", "trainer.max_steps=2", *QUICK, name="vae"))
    family = TwoStage(_prior(), vae["checkpoint"])
    reason = family.check_data(ToyDataModule().info)
    assert "is a vae run, which cannot be a first stage" in reason and "vqvae" in reason


def test_a_composed_bound_on_toy_data_is_not_below_its_entropy(make_cfg):
    from genlab.train import run

    stage1 = run(make_cfg(*STAGE1, "dataset=toy", "trainer.max_steps=30", *QUICK, name="vq_toy"))
    cfg = make_cfg("model=latent_pixelcnn", f"model.stage1={stage1['checkpoint']}", "dataset=toy", *SMALL_PRIOR,
                   "trainer.max_steps=30", *QUICK, name="two_stage_toy")
    test = json.loads(open(run(cfg)["path"]).read())["test"]
    assert test["nll_kind"] == "bound"
    assert test["nll_bpd"] >= ToyDataModule().info.entropy_bpd - 3 * test["nll_bpd_se"]
