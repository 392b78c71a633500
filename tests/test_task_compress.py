"""genlab-task compress: the rANS coder against ideal code lengths, and real files from tiny AR models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genlab.tasks import rans
from genlab.tasks.base import TaskError, load_context
from genlab.tasks.cli import main
from genlab.families.autoregressive.family import level_log_probs
from genlab.tasks.compress import Config, Header, decode_file

FAST = ["callbacks.samples.every_n_epochs=1000", "trainer.limit_val_batches=2"]


# -- the coder ---------------------------------------------------------------------------------
def _stream(rng: np.random.Generator, n: int, k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random distributions over ``k`` symbols (Dirichlet(alpha)) and a draw from each."""
    p = rng.dirichlet(np.full(k, alpha), size=n)
    s = (p.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=k - 1)
    return p, s


@pytest.mark.parametrize("prob_bits,k", [(16, 2), (24, 17), (12, 256), (24, 256)])
def test_round_trip_costs_the_ideal_length_plus_a_flush(prob_bits, k):
    rng = np.random.default_rng(prob_bits + k)
    p, s = _stream(rng, 5000, k, 0.3)
    freqs = rans.quantize(np.log(p), prob_bits)
    data = rans.encode(s.tolist(), freqs, prob_bits)
    assert rans.decode(data, freqs, prob_bits) == s.tolist()
    ideal_bits = -np.log2(p[np.arange(len(s)), s]).sum()
    quant_loss = k / ((1 << prob_bits) * math.log(2)) * len(s)  # the bound of quantize's docstring
    assert 8 * len(data) <= 1.01 * (ideal_bits + quant_loss) + 8 * rans.flush_bytes(prob_bits) + 8
    assert 8 * len(data) >= 0.99 * ideal_bits  # no coder beats the information content


def test_decoder_tables_can_depend_on_the_symbols_decoded_so_far():
    """An adaptive model (counts of the symbols seen so far) drives the decoder one symbol at a time."""
    rng, k, bits, probs = np.random.default_rng(1), 5, 16, np.array([0.6, 0.2, 0.1, 0.07, 0.03])
    s = rng.choice(k, size=3000, p=probs)

    def table(counts: np.ndarray) -> np.ndarray:
        return rans.quantize(np.log(counts / counts.sum())[None], bits)[0]

    counts, freqs = np.ones(k), []
    for sym in s:
        freqs.append(table(counts))
        counts[sym] += 1
    data = rans.encode(s.tolist(), freqs, bits)
    dec, counts, out = rans.RansDecoder(data, bits), np.ones(k), []
    for _ in range(len(s)):
        out.append(dec.get(rans.cumulative(table(counts)[None])[0].tolist()))
        counts[out[-1]] += 1
    assert out == s.tolist() and dec.done()
    entropy_bits = -len(s) * (probs * np.log2(probs)).sum()  # 1.66 bits/symbol, uniform: 2.32
    learning_cost = (k - 1) / 2 * math.log2(len(s)) + 8  # of the count-based model (KT estimator)
    assert 8 * len(data) <= 1.02 * entropy_bits + learning_cost + 8 * rans.flush_bytes(bits)


def test_quantize_keeps_every_symbol_sums_to_the_total_and_is_deterministic():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.full(40, 0.05), size=200).clip(1e-300))
    lp[0] = 0.0  # all equal
    lp[1:, 3] = -np.inf  # impossible symbols still get a frequency of 1
    f = rans.quantize(lp, 12)
    assert f.dtype == np.int64 and f.shape == lp.shape
    assert (f >= 1).all() and (f.sum(1) == 4096).all() and (f[1:, 3] == 1).all()
    assert f[0].max() - f[0].min() <= 40  # equal probabilities, equal frequencies up to the residue
    assert np.array_equal(f, rans.quantize(lp.copy(), 12))
    assert np.array_equal(f, rans.quantize(lp + 7.5, 12))  # unnormalised log-probs are fine
    p = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))
    assert np.abs(f / 4096 - p).max() <= 41 / 4096  # close to the probabilities
    with pytest.raises(ValueError, match="prob_bits"):
        rans.quantize(np.zeros((1, 300)), 8)


def test_a_wrong_table_is_noticed():
    p, s = _stream(np.random.default_rng(3), 500, 4, 1.0)
    freqs = rans.quantize(np.log(p), 16)
    data = rans.encode(s.tolist(), freqs, 16)
    with pytest.raises(ValueError, match="not consumed exactly|ended early"):
        rans.decode(data, rans.quantize(np.log(p[::-1]), 16), 16)


def test_level_log_probs_enumerates_a_normalised_distribution():
    from genlab.distributions import Bernoulli, Categorical, DiscretizedLogistic, DiscretizedLogisticMixture

    torch.manual_seed(0)
    for obs, levels in [(Categorical(), 5), (Bernoulli(), 2), (DiscretizedLogistic(), 256),
                        (DiscretizedLogisticMixture(3), 17)]:
        params = torch.randn(4, obs.num_params(levels))
        lp = level_log_probs(obs, params, levels)
        assert lp.shape == (4, levels)
        torch.testing.assert_close(lp.exp().sum(1), torch.ones(4), atol=1e-4, rtol=0)
        x = torch.randint(0, levels, (4,))
        torch.testing.assert_close(lp[torch.arange(4), x], obs.log_prob_per_dim(params[..., None], x[:, None],
                                                                                 levels)[:, 0])


def test_header_round_trip_with_multi_byte_varints():
    h = Header(1000, (3, 300, 17), 256, torch.uint8, 7, 24, bytes(range(8)), [5, 127, 128, 2**31 + 5] + [9] * 139)
    packed = h.pack()
    assert Header.unpack(packed + b"streams") == (h, len(packed))
    assert len(packed) == 4 + 4 + (2 + 1 + 2) + (1 + 2 + 1) + (1 + 1 + 2 + 5 + 139) + 8
    with pytest.raises(TaskError, match="bad magic"):
        Header.unpack(b"PNG" + packed)


# -- the task on tiny trained models ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pixelcnn(trained_run):
    return trained_run("pixelcnn_digits", "model=pixelcnn", "dataset=digits", *FAST, "trainer.max_steps=150",
                       "optimizer.lr=3e-3", "model.net.channels=16", "model.net.layers=3", "model.net.kernel_size=3",
                       "model.net.first_kernel_size=5", "model.net.out_hidden=32")["checkpoint"]


def _examples_and_nll_bits(ckpt: str, n: int, split: str = "test") -> tuple[torch.Tensor, float, object]:
    ctx = load_context("compress", Config(ckpt=ckpt, out=None))
    x, _ = ctx.real(split, n)
    with torch.no_grad():
        nats = -ctx.family.log_likelihood(ctx.nets, {"x": x}).log_px.double().sum().item()
    return x, nats / math.log(2), ctx


@pytest.mark.slow
def test_pixelcnn_file_decodes_exactly_and_costs_its_nll(pixelcnn, tmp_path, capsys):
    n = 30
    assert main(["compress", f"ckpt={pixelcnn}", f"out={tmp_path}", f"n={n}", "batch_size=16"]) == 0
    assert "round trip exact" in capsys.readouterr().out
    report = json.loads((tmp_path / "compress.json").read_text())
    path = tmp_path / "images.rans"
    assert report["roundtrip_exact"] is True and report["file_bytes"] == path.stat().st_size

    x, nll_bits, ctx = _examples_and_nll_bits(pixelcnn, n)
    decoded = decode_file(path, ctx.family, ctx.nets)  # a fresh decode, here
    assert decoded.dtype == x.dtype and torch.equal(decoded, x)

    data = path.read_bytes()
    header, offset = Header.unpack(data)
    assert (header.count, header.shape, header.batch_size) == (n, (1, 8, 8), 16) and len(header.chunk_bytes) == 2
    assert offset == report["header_bytes"] and offset + sum(header.chunk_bytes) == len(data)
    slack = 8 * (offset + len(header.chunk_bytes) * rans.flush_bytes(header.prob_bits))
    assert 0.99 * nll_bits <= 8 * len(data) <= 1.03 * nll_bits + slack
    assert report["nll_bits"] == pytest.approx(nll_bits, rel=1e-6)
    assert report["bits_per_dim"] == pytest.approx(8 * len(data) / (n * 64))
    assert report["nll_bits_per_dim"] < math.log2(17)  # the model learnt something: below a uniform code

    base = report["baselines"]
    assert {"PNG (per image)", "gzip -9", "xz -9"} <= set(base)
    assert base["PNG (per image)"]["bytes"] > n * 57  # each PNG carries its signature, IHDR, IDAT and IEND
    for v in base.values():
        assert v["bits_per_dim"] == pytest.approx(8 * v["bytes"] / (n * 64)) and v["bytes"] > len(data)
    assert "| rANS + model (this file) |" in (tmp_path / "compress.md").read_text()


def test_a_corrupt_or_foreign_file_is_refused(pixelcnn, tmp_path):
    assert main(["compress", f"ckpt={pixelcnn}", f"out={tmp_path}", "n=4"]) == 0
    path = tmp_path / "images.rans"
    ctx = load_context("compress", Config(ckpt=pixelcnn, out=str(tmp_path)))
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(TaskError, match="truncated"):
        decode_file(path, ctx.family, ctx.nets)
    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # a bit error in the stream
    path.write_bytes(bytes(flipped))
    with pytest.raises(TaskError, match="decoding failed|not consumed exactly"):
        decode_file(path, ctx.family, ctx.nets)
    with torch.no_grad():
        next(ctx.nets.parameters()).add_(1e-3)  # another model
    path.write_bytes(data)
    with pytest.raises(TaskError, match="another model"):
        decode_file(path, ctx.family, ctx.nets)


def test_text_with_the_transformer_skips_png(trained_run, tmp_path):
    ckpt = trained_run("transformer_text_tiny", "model=transformer", "dataset=text", "dataset.block_size=24", *FAST,
                       "trainer.limit_test_batches=2", "trainer.max_steps=30", "model.net.d_model=16",
                       "model.net.n_layers=1", "model.net.n_heads=2")["checkpoint"]
    assert main(["compress", f"ckpt={ckpt}", f"out={tmp_path}", "n=6", "batch_size=4"]) == 0
    report = json.loads((tmp_path / "compress.json").read_text())
    x, nll_bits, ctx = _examples_and_nll_bits(ckpt, 6)
    assert torch.equal(decode_file(tmp_path / "text.rans", ctx.family, ctx.nets), x)
    assert report["dims"] == 24 and "PNG (per image)" not in report["baselines"]
    payload = 8 * sum(report["chunk_bytes"])
    assert 0.99 * nll_bits <= payload <= 1.03 * nll_bits + 2 * 8 * rans.flush_bytes(report["prob_bits"])


def test_a_latent_variable_model_is_refused_by_name(trained_run, tmp_path, capsys):
    ckpt = trained_run("vae_digits_tiny", "model=vae", "dataset=digits", *FAST, "trainer.max_steps=3",
                       "trainer.limit_test_batches=1", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]",
                       "model.test_k=2")["checkpoint"]
    assert main(["compress", f"ckpt={ckpt}", f"out={tmp_path}", "n=4"]) == 2
    err = capsys.readouterr().err
    assert "vae" in err and "It works with: autoregressive" in err and "bits-back" in err
    assert not (tmp_path / "images.rans").exists()


def test_bad_precision_is_a_clear_error(pixelcnn, tmp_path, capsys):
    assert main(["compress", f"ckpt={pixelcnn}", f"out={tmp_path}", "n=2", "prob_bits=4"]) == 2
    assert "prob_bits=4 cannot code 17 levels" in capsys.readouterr().err
