"""VAE maths against closed forms, and its likelihood against data of known entropy."""

import math

import pytest
import torch
from torch import nn

from genlab.data.toy import ToyDataModule
from genlab.families.vae import ELBO, IWAE, VAE
from genlab.families.vae.family import gaussian_log_prob, kl_to_standard_normal
from genlab.distributions import Categorical
from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.mlp import MLP
from functools import partial


def _vae(info, latent=4, **kw):
    vae = VAE(partial(MLP, hidden=[32]), partial(MLP, hidden=[32]), Categorical(), latent_dim=latent, **kw)
    return vae, vae.build(info)


def test_gaussian_log_prob_matches_torch_distributions():
    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mu, logvar), ref)


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 0.7]])
    z = mu + torch.randn(200_000, 2) * (0.5 * logvar).exp()
    mc = (gaussian_log_prob(z, mu, logvar) - gaussian_log_prob(z, torch.zeros(2), torch.zeros(2))).mean()
    assert float(kl_to_standard_normal(mu, logvar)) == pytest.approx(float(mc), abs=0.01)


def _zero_last_layers(nets):
    for net in nets.values():
        last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


@pytest.mark.parametrize("k", [1, 7, 300])
def test_uniform_vae_scores_exactly_log2_levels(k):
    # zero outputs: q(z|x) = p(z) and p(x|z) uniform over levels -> log p(x) = -D log L for any k
    info = ToyDataModule(levels=5).info
    vae, nets = _vae(info, test_k=k)
    _zero_last_layers(nets)
    x = torch.randint(0, 5, (6, *info.shape), dtype=torch.uint8)
    ll = vae.log_likelihood(nets, {"x": x}, stage="test")
    torch.testing.assert_close(ll.log_px, torch.full((6,), -info.dims * math.log(5)))
    assert ll.kind == ("bound" if k == 1 else "estimate")


def test_iwae_bound_tightens_with_k_and_chunking_is_exact():
    torch.manual_seed(0)
    info = ToyDataModule(levels=4).info
    vae, nets = _vae(info)
    x = torch.randint(0, 4, (16, *info.shape), dtype=torch.uint8)
    bounds = []
    for k in (1, 10, 200):
        torch.manual_seed(1)
        lw = vae.log_weights(nets, x, k)
        bounds.append(float((torch.logsumexp(lw.detach(), 0) - math.log(k)).mean()))
    assert bounds[0] < bounds[1] < bounds[2]
    # ELBO objective == k=1 bound in expectation (both estimate E_q[log w])
    torch.manual_seed(2)
    elbo = torch.stack([-ELBO()(vae, nets, x).loss for _ in range(200)]).mean() * info.dims
    assert float(elbo) == pytest.approx(bounds[0], rel=0.02)
    # a k=1 IWAE loss is the negative ELBO (same sampling), per dim
    torch.manual_seed(3)
    iw = IWAE(k=1)(vae, nets, x).loss
    torch.manual_seed(3)
    assert float(iw) == pytest.approx(-float((vae.log_weights(nets, x, 1)).mean()) / info.dims, rel=1e-5)


def test_sample_and_interpolate_shapes_and_types():
    info = ToyDataModule(levels=4).info
    vae, nets = _vae(info)
    s = vae.sample(nets, 5)
    assert s.dtype == torch.uint8 and s.shape == (5, *info.shape) and int(s.max()) < 4
    xa, xb = vae.sample(nets, 2), vae.sample(nets, 2)
    path = vae.interpolate(nets, xa, xb, steps=6)
    assert path.shape == (2, 6, *info.shape) and path.min() >= 0 and path.max() <= 3
    # endpoints decode the posterior means of the inputs
    mu_a, _ = vae.encode(nets, xa)
    end = vae.observation.mean(vae.decoder_params(nets, mu_a), 4).view(2, *info.shape)
    torch.testing.assert_close(path[:, 0], end)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_conv_backbones_fit_any_image_size(shape):
    enc, dec = ConvEncoder(shape, 10), ConvDecoder(10, (7 * shape[0], *shape[1:]))
    assert enc(torch.randn(2, *shape)).shape == (2, 10)
    assert dec(torch.randn(2, 10)).shape == (2, 7 * shape[0], *shape[1:])
