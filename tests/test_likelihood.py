"""Likelihood accounting against closed forms."""

import math

import pytest
import torch

from genlab.distributions import Bernoulli, Categorical, DiscretizedLogistic
from genlab.metrics.likelihood import (
    LogLikelihood,
    bpd_to_nats,
    continuous_to_discrete,
    nats_to_bpd,
    summarize_nll,
    uniform_dequantize,
    uniform_log_likelihood,
)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_uniform_model_scores_log2_levels_bits_per_dim(levels):
    x = torch.randint(0, levels, (5, 3, 4, 4), dtype=torch.uint8)
    s = summarize_nll(uniform_log_likelihood(x, levels), dims=48)
    assert s["nll_bpd"] == pytest.approx(math.log2(levels), rel=1e-12)
    assert s["nll_nats"] == pytest.approx(48 * math.log(levels), rel=1e-12)


def test_unit_conversions_are_inverse():
    assert nats_to_bpd(bpd_to_nats(1.234, 784), 784) == pytest.approx(1.234)
    assert nats_to_bpd(784 * math.log(2), 784) == pytest.approx(1.0)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantised_uniform_density_gives_the_uniform_discrete_model(levels):
    # p(y) = 1 on [0,1]^D: after the D log(1/L) correction, exactly log2(L) bits/dim
    x = torch.randint(0, levels, (4, 10))
    y = uniform_dequantize(x, levels)
    assert ((y >= 0) & (y < 1)).all() and (torch.floor(y * levels) == x).all()
    log_px = continuous_to_discrete(torch.zeros(4), dims=10, bin_width=1.0 / levels)
    assert summarize_nll(log_px, 10)["nll_bpd"] == pytest.approx(math.log2(levels))


def test_nll_kind_is_validated():
    with pytest.raises(ValueError, match="nll kind"):
        LogLikelihood(torch.zeros(2), "approximately")


def _all_levels(levels, d=3):
    return torch.arange(levels).view(levels, 1).expand(levels, d)


@pytest.mark.parametrize("obs,levels", [(Categorical(), 17), (Categorical(), 2), (DiscretizedLogistic(), 17),
                                        (DiscretizedLogistic(), 256), (DiscretizedLogistic(), 2), (Bernoulli(), 2)])
def test_observation_models_are_normalised_over_the_levels(obs, levels):
    torch.manual_seed(0)
    params = torch.randn(1, obs.num_params(levels), 3) * 2
    if isinstance(obs, DiscretizedLogistic):
        params[:, 1] = torch.tensor([-6.0, -2.0, 0.5])  # sharp, medium, broad
    x = _all_levels(levels)
    logp = obs.log_prob_per_dim(params.expand(levels, -1, -1), x, levels)
    total = torch.logsumexp(logp.double(), 0).exp()
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_bernoulli_equals_two_level_categorical():
    logit = torch.randn(6, 1, 5)
    cat = torch.cat([torch.zeros_like(logit), logit], 1)
    x = torch.randint(0, 2, (6, 5))
    torch.testing.assert_close(Bernoulli().log_prob(logit, x, 2), Categorical().log_prob(cat, x, 2))


@pytest.mark.parametrize("obs,levels", [(Categorical(), 5), (DiscretizedLogistic(), 9), (Bernoulli(), 2)])
def test_observation_samples_follow_log_prob(obs, levels):
    torch.manual_seed(1)
    params = torch.randn(1, obs.num_params(levels), 1)
    n = 40_000
    draws = obs.sample(params.expand(n, -1, -1), levels)[:, 0]
    freq = torch.bincount(draws, minlength=levels).double() / n
    probs = obs.log_prob_per_dim(params.expand(levels, -1, -1), _all_levels(levels, 1), levels)[:, 0].exp().double()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    assert obs.mean(params, levels)[0, 0] == pytest.approx(float((probs * torch.arange(levels)).sum()), abs=0.05 * levels)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_mean_is_the_enumerated_expectation(levels):
    from genlab.distributions import DiscreteObservation, DiscretizedLogistic

    torch.manual_seed(0)
    params = torch.stack([torch.rand(5, 30) * 2.4 - 1.2, torch.rand(5, 30) * 6 - 5], dim=1)  # mu, log s
    obs = DiscretizedLogistic()
    enumerated = DiscreteObservation.mean(obs, params, levels)  # sum_l l P(l), the base class's definition
    torch.testing.assert_close(obs.mean(params, levels), enumerated, atol=2e-4 * levels, rtol=1e-4)
    probs = torch.stack([obs.log_prob_per_dim(params, torch.full((5, 30), lvl), levels).exp() for lvl in range(levels)], -1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 30), atol=1e-5, rtol=0)  # a distribution over the levels
