"""VQ-VAE: the quantiser against closed forms, the bound's parts, and the bound against a known entropy."""

import json
import math
from functools import partial

import pytest
import torch

from genlab.data.toy import ToyDataModule
from genlab.families.base import LatentAutoencoder
from genlab.families.vqvae import VQObjective, VQVAE, VectorQuantizer
from genlab.families.vqvae.nets import GridDecoder, GridEncoder
from genlab.families.vqvae.quantizer import nearest_codes, usage

SMALL = {"model=vqvae", "model.downsample=2", "model.encoder.channels=16", "model.decoder.channels=16",
         "model.encoder.res_blocks=1", "model.decoder.res_blocks=1"}


def _vq(info, **kw):
    vq = VQVAE(partial(GridEncoder, channels=8, res_blocks=1), partial(GridDecoder, channels=8, res_blocks=1),
               codebook_size=8, code_dim=4, downsample=2, objective=VQObjective(), **kw)
    return vq, vq.build(info)


def _quantizer(k=5, d=3, decay=0.0, restart_after=0, codebook=None):
    q = VectorQuantizer(k, d, decay=decay, restart_after=restart_after)
    q.set_codebook(torch.randn(k, d) if codebook is None else torch.as_tensor(codebook, dtype=torch.float32))
    return q  # initialised: the first update keeps this codebook


def test_nearest_code_lookup_equals_brute_force():
    torch.manual_seed(0)
    z, codebook = torch.randn(500, 6), torch.randn(32, 6)
    brute = torch.stack([((codebook - v) ** 2).sum(1).argmin() for v in z])
    assert torch.equal(nearest_codes(z, codebook), brute)
    q = _quantizer(32, 6, codebook=codebook)
    grid = z[:48].view(3, 4, 4, 6).permute(0, 3, 1, 2)  # (B, Dz, h, w), position-major like flat()
    assert torch.equal(q.lookup(grid).flatten(), brute[:48])
    torch.testing.assert_close(q(grid).z_st, q.embed(q.lookup(grid)))  # the value is z_q


def test_straight_through_gradients_reach_the_encoder():
    torch.manual_seed(0)
    q = _quantizer()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    w = torch.randn(2, 3, 2, 2)
    (q(z).z_st * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # the decoder's gradient at z_q, copied to z_e
    info = ToyDataModule(levels=4).info
    vq, nets = _vq(info)
    x = torch.randint(0, 4, (8, *info.shape), dtype=torch.uint8)
    vq.loss(nets, {"x": x}).loss.backward()
    grads = [p.grad for p in nets["encoder"].parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert not any(b.requires_grad for b in nets["quantizer"].buffers())  # the codebook learns by EMA only


def test_ema_step_with_decay_zero_moves_each_used_code_to_the_mean_of_its_vectors():
    q = _quantizer(k=3, d=2, codebook=[[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [9.0, 11.0], [12.0, 8.0], [11.0, 11.0], [-1.0, -1.0]])
    grid = z.T.reshape(1, 2, 6, 1)  # (B, Dz, h, w): six positions
    codes = q.lookup(grid)
    assert codes.flatten().tolist() == [0, 0, 1, 1, 1, 0]
    q.update(grid, codes)
    torch.testing.assert_close(q.codebook[0], z[[0, 1, 5]].mean(0))
    torch.testing.assert_close(q.codebook[1], z[[2, 3, 4]].mean(0))
    torch.testing.assert_close(q.codebook[2], torch.tensor([-50.0, 50.0]))  # unused: kept
    assert q.unused.tolist() == [0, 0, 1]


def test_ema_with_decay_mixes_old_statistics():
    q = _quantizer(k=1, d=1, decay=0.5, codebook=[[0.0]])
    z = torch.tensor([2.0, 4.0]).view(1, 1, 2, 1)
    q.update(z, q.lookup(z))
    # N = 0.5 * 1 + 0.5 * 2 = 1.5, m = 0.5 * 0 + 0.5 * 6 = 3: e = 2
    assert float(q.ema_count[0]) == pytest.approx(1.5) and float(q.codebook[0, 0]) == pytest.approx(2.0)


def test_dead_codes_are_restarted_to_encoder_outputs():
    torch.manual_seed(0)
    q = _quantizer(k=4, d=2, decay=0.9, restart_after=2,
                   codebook=[[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    z = torch.randn(1, 2, 4, 4) * 0.1  # every vector goes to code 0
    q.update(z, q.lookup(z))
    assert q.unused.tolist() == [0, 1, 1, 1] and float(q.codebook[1, 0]) == 100.0  # not yet
    q.update(z, q.lookup(z))
    rows = q.flat(z)
    for j in (1, 2, 3):  # restarted: each is one of the batch's vectors, with fresh statistics
        assert (rows - q.codebook[j]).abs().sum(1).min() == 0
        assert float(q.ema_count[j]) == 1.0 and torch.equal(q.ema_sum[j], q.codebook[j])
    assert q.unused.tolist() == [0, 0, 0, 0]


def test_first_update_initialises_the_codebook_from_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 2, decay=0.99)
    z = torch.randn(1, 2, 4, 4) + 5.0
    q.update(z, q.lookup(z))
    assert bool(q.initialised) and float(q.codebook.mean()) == pytest.approx(5.0, abs=1.0)


def test_codebook_usage_is_reported():
    k = 8
    same = usage(torch.zeros(10, dtype=torch.long), k)
    assert float(same["perplexity"]) == pytest.approx(1.0) and float(same["codes_used"]) == pytest.approx(1 / k)
    every = usage(torch.arange(k).repeat(3), k)
    assert float(every["perplexity"]) == pytest.approx(k) and float(every["codes_used"]) == 1.0
    info = ToyDataModule(levels=4).info
    vq, nets = _vq(info)
    logs = vq.loss(nets, {"x": torch.randint(0, 4, (8, *info.shape), dtype=torch.uint8)}).logs
    assert {"perplexity", "codes_used", "recon_bpd", "commitment", "bound_bpd"} <= set(logs)
    assert 1.0 <= float(logs["perplexity"]) <= k


def test_bound_is_reconstruction_nll_plus_code_grid_size_times_log_k():
    torch.manual_seed(0)
    info = ToyDataModule(levels=4).info
    vq, nets = _vq(info)
    x = torch.randint(0, 4, (6, *info.shape), dtype=torch.uint8)
    ll = vq.log_likelihood(nets, {"x": x})
    recon = vq.log_px_given_vectors(nets, vq.to_latent(nets, x), x).double()
    dz = (info.shape[1] // 2) * (info.shape[2] // 2)
    assert ll.kind == "bound" and vq.prior_nats(info) == pytest.approx(dz * math.log(8))
    torch.testing.assert_close(ll.log_px, recon - dz * math.log(8))
    torch.testing.assert_close(ll.extras["recon_nats"] + ll.extras["prior_nats"], -ll.log_px)
    # the first-stage view gives the same reconstruction term from the code grid
    z = vq.encode_latents(nets, x)
    assert z.shape == (6, 1, 4, 4) and z.dtype == torch.uint8 and isinstance(vq, LatentAutoencoder)
    torch.testing.assert_close(vq.latent_log_likelihood(nets, x, z).double(), recon)


def test_samples_and_decoding_are_in_data_space():
    info = ToyDataModule(levels=4).info
    vq, nets = _vq(info)
    s = vq.sample(nets, 5)
    assert s.shape == (5, *info.shape) and s.dtype == torch.uint8 and int(s.max()) < 4
    x = torch.randint(0, 4, (3, *info.shape), dtype=torch.uint8)
    mean = vq.from_latent(nets, vq.to_latent(nets, x))
    assert mean.shape == x.shape and float(mean.min()) >= 0 and float(mean.max()) <= 3


@pytest.mark.parametrize("info,match", [
    (ToyDataModule(levels=4, shape=(1, 6, 6)).info, "does not divide"),
])
def test_data_it_cannot_model_is_refused_with_the_fix(info, match):
    vq = VQVAE(GridEncoder, GridDecoder, downsample=4)
    assert match in vq.check_data(info)
    from genlab.data.base import DataInfo
    assert "not images" in vq.check_data(DataInfo(name="t", kind="text", shape=(16,), levels=30))


def test_trained_vqvae_bound_is_not_below_the_entropy_of_toy_data(make_cfg):
    from genlab.train import run

    cfg = make_cfg(*SMALL, "dataset=toy", "trainer.max_steps=40", "threads=1", "num_samples=4",
                   "callbacks.progress_bar.refresh_rate=0", "trainer.limit_val_batches=1")
    results = run(cfg)
    test = json.loads(open(results["path"]).read())["test"]
    entropy_bpd = ToyDataModule().info.entropy_bpd
    assert test["nll_kind"] == "bound" and math.isfinite(test["nll_bpd"])
    assert test["nll_bpd"] >= entropy_bpd - 3 * test["nll_bpd_se"]
