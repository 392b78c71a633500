"""Two-stage models: the composed bound against closed forms, the refusals, and a tiny real VQ-VAE + PixelCNN."""

import json
import math
from functools import partial

import pytest
import torch
from torch import Tensor

from genlab.data.latents import LatentCache, checkpoint_digest
from genlab.data.toy import ToyDataModule
from genlab.distributions import Categorical
from genlab.families.autoregressive import Autoregressive
from genlab.families.base import Family, IncompatibleConfigError, LatentAutoencoder, Nets
from genlab.families.latent import Stage1, TwoStage, load_stage1
from genlab.families.latent.stage1 import checkpoint_of
from genlab.families.vqvae import VQVAE
from genlab.nets.pixelcnn import GatedPixelCNN

STAGE1 = ("model=vqvae", "model.downsample=2", "model.codebook_size=16", "model.encoder.channels=16",
          "model.decoder.channels=16", "model.encoder.res_blocks=1", "model.decoder.res_blocks=1")
SMALL_PRIOR = ("model.prior.net.channels=8", "model.prior.net.layers=2", "model.prior.net.out_hidden=16")
SMALL_PIXELCNN = ("model=pixelcnn", "model.net.channels=8", "model.net.layers=2", "model.net.out_hidden=16",
                  "model.net.kernel_size=3", "model.net.first_kernel_size=5")
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


def _run_dir(results: dict) -> str:
    return str(json.loads(open(results["path"]).read())["checkpoint"]).rsplit("/checkpoints/", 1)[0]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """A VQ-VAE trained 40 steps on digits (4x4 codes, K = 16)."""
    from conftest import compose_run
    from genlab.train import run

    return run(compose_run([*STAGE1, "trainer.max_steps=40", *QUICK], tmp_path_factory.mktemp("vq") / "run"))


def test_tiny_vqvae_plus_pixelcnn_reports_a_bound_with_both_parts(stage1_run, make_cfg, tmp_path):
    from genlab.builders import load_run
    from genlab.train import run

    run_dir = _run_dir(stage1_run)
    cfg = make_cfg("model=latent_pixelcnn", f"model.stage1={run_dir}", *SMALL_PRIOR, "trainer.max_steps=40", *QUICK,
                   f"paths.data_dir={tmp_path / 'data'}")
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
    _compresses_to_its_bound(results["checkpoint"], tmp_path)


def _compresses_to_its_bound(ckpt: str, tmp_path) -> None:
    """rANS over the codes (the prior's conditionals) then the pixels given them (the decoder): the file
    decodes bit-exactly and its size is the composed bound -log2 P(z) - log2 p(x|z) plus the coder's overhead."""
    from genlab.tasks.cli import run_task

    from genlab.builders import load_run
    from genlab.data.digits import DigitsDataModule
    from genlab.tasks.compress import decode_file

    r = run_task("compress", [f"ckpt={ckpt}", "n=24", "batch_size=8", "split=test", f"out={tmp_path / 'compress'}"])
    assert 0 <= r["payload_overhead_pct"] < 2.0  # the message IS the bound (VQ: a deterministic encoder)
    module, _ = load_run(ckpt)
    x = DigitsDataModule().splits["test"].x[:24]
    bound_bits = -module.family.log_likelihood(module.nets, {"x": x}).log_px.sum().item() / math.log(2)
    assert r["nll_bits"] == pytest.approx(bound_bits, rel=1e-6)
    assert torch.equal(decode_file(tmp_path / "compress" / "images.rans", module.family, module.nets), x)


def test_a_first_stage_of_other_data_or_without_codes_is_refused(stage1_run, make_cfg, tmp_path):
    from genlab.train import run

    ckpt = json.loads(open(stage1_run["path"]).read())["checkpoint"]
    family = TwoStage(_prior(), ckpt)
    assert "trained on digits" in family.check_data(ToyDataModule().info)
    other = run(make_cfg(*SMALL_PIXELCNN, "trainer.max_steps=2", *QUICK, name="pixelcnn"))
    family = TwoStage(_prior(), other["checkpoint"])
    reason = family.check_data(ToyDataModule().info)
    assert "is a run of the autoregressive family, which cannot be a first stage" in reason
    assert "vqvae" in reason and "vae" in reason.split("Families that can:")[1]


def test_a_composed_bound_on_toy_data_is_not_below_its_entropy(make_cfg, tmp_path):
    from genlab.train import run

    stage1 = run(make_cfg(*STAGE1, "dataset=toy", "trainer.max_steps=30", *QUICK, name="vq_toy"))
    cfg = make_cfg(f"+stage1={stage1['checkpoint']}", *SMALL_PIXELCNN, "dataset=toy", "trainer.max_steps=30", *QUICK,
                   f"paths.data_dir={tmp_path / 'data'}", name="two_stage_toy")
    test = json.loads(open(run(cfg)["path"]).read())["test"]
    assert test["nll_kind"] == "bound"
    assert test["nll_bpd"] >= ToyDataModule().info.entropy_bpd - 3 * test["nll_bpd_se"]


def _refuse_encoding(*args, **kwargs):
    raise AssertionError("the first stage encoded images: the cached latents were not reused")


def test_plus_stage1_wraps_a_prior_and_a_later_run_reuses_the_cached_latents(stage1_run, make_cfg, tmp_path,
                                                                             monkeypatch):
    from genlab.builders import load_run
    from genlab.train import run

    run_dir, data = _run_dir(stage1_run), tmp_path / "data"
    first = json.loads(open(run(make_cfg(f"+stage1={run_dir}", *SMALL_PIXELCNN, "trainer.max_steps=10", *QUICK,
                                         f"paths.data_dir={data}", name="first"))["path"]).read())
    assert first["family"] == "two_stage" and first["model"] == "pixelcnn" and first["test"]["nll_kind"] == "bound"
    key = load_stage1(run_dir).digest
    assert key == checkpoint_digest(checkpoint_of(run_dir)) and len(key) == 16
    files = sorted(p.name for p in (data / "genlab_latents" / key).iterdir())
    assert files == ["digits_test.pt", "digits_train.pt", "digits_val.pt"]

    monkeypatch.setattr(VQVAE, "encode_latents", _refuse_encoding)  # a second prior: no image is encoded again
    second = json.loads(open(run(make_cfg("model=latent_pixelcnn", f"model.stage1={run_dir}", *SMALL_PRIOR,
                                          "trainer.max_steps=10", *QUICK, f"paths.data_dir={data}",
                                          name="second"))["path"]).read())
    assert second["metrics"]["test/recon_nats"] == pytest.approx(first["metrics"]["test/recon_nats"], rel=1e-9)
    module, _ = load_run(first["checkpoint"])  # one model, rebuilt from its checkpoint alone (+stage1 is stored)
    assert isinstance(module.family, TwoStage) and isinstance(module.family.prior, Autoregressive)


def test_a_changed_stage1_checkpoint_gets_new_latents(stage1_run, tmp_path):
    ckpt = tmp_path / "changed.ckpt"
    state = torch.load(checkpoint_of(_run_dir(stage1_run)), map_location="cpu", weights_only=False)
    name = next(k for k in state["state_dict"] if "decoder" in k and k.endswith("weight"))
    state["state_dict"][name] = state["state_dict"][name] * 1.01  # e.g. trained on
    torch.save(state, ckpt)
    old, new = load_stage1(_run_dir(stage1_run)), load_stage1(ckpt)
    assert new.digest != old.digest
    images = {"test": torch.randint(0, 17, (3, 1, 8, 8), dtype=torch.uint8)}
    family = TwoStage(_prior(), new)
    family.use_latent_cache(LatentCache(tmp_path / "cache", "digits", images))
    nets = family.build(new.nets.info)
    z = family.latents(nets, images["test"])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [new.digest]
    torch.testing.assert_close(z, family.encode(nets, images["test"]))

    stale = TwoStage(_prior(), load_stage1(ckpt))  # e.g. a two-stage checkpoint trained over the file before it changed
    stale.use_latent_cache(LatentCache(tmp_path / "stale", "digits", images))
    nets = stale.build(new.nets.info)
    nets["stage1"].nets.load_state_dict(old.nets.state_dict())
    with pytest.warns(UserWarning, match="not those of"):
        z = stale.latents(nets, images["test"])
    assert not (tmp_path / "stale").exists()  # encoded in memory, never written under the changed file's key
    torch.testing.assert_close(z, stale.encode(nets, images["test"]))


def test_a_prior_without_a_likelihood_is_refused_naming_the_priors_that_can(stage1_run, make_cfg):
    from genlab.train import run

    run_dir = _run_dir(stage1_run)
    with pytest.raises(IncompatibleConfigError, match="model=gan_mlp cannot be the prior.*needs the prior's log P") as err:
        run(make_cfg(f"+stage1={run_dir}", "model=gan_mlp", *QUICK))
    can = str(err.value).split("Priors that can: ")[1].split(". Fix")[0].split(", ")
    assert {"pixelcnn", "transformer"} <= set(can) and not {"gan_mlp", "dcgan", "latent_pixelcnn"} & set(can)
    with pytest.raises(IncompatibleConfigError, match="has its own first stage already"):
        run(make_cfg(f"+stage1={run_dir}", "model=latent_pixelcnn", f"model.stage1={run_dir}", *QUICK))
    with pytest.raises(IncompatibleConfigError, match="does not exist"):
        run(make_cfg("+stage1=/nowhere/run", "model=pixelcnn", *QUICK))


def test_the_transformer_is_a_prior_over_the_code_grid_too(stage1_run, make_cfg, tmp_path):
    from genlab.train import run

    cfg = make_cfg(f"+stage1={_run_dir(stage1_run)}", "model=transformer", "model.net.d_model=16", "model.net.n_layers=1",
                   "model.net.n_heads=2", "trainer.max_steps=5", *QUICK, f"paths.data_dir={tmp_path / 'data'}")
    results = json.loads(open(run(cfg)["path"]).read())
    assert results["family"] == "two_stage" and results["model"] == "transformer"
    assert results["test"]["nll_kind"] == "bound" and math.isfinite(results["test"]["nll_bpd"])
