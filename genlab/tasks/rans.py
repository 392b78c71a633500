"""Range asymmetric numeral systems (rANS, Duda 2013), byte-oriented, in pure Python integers.

An entropy coder turns a sequence of symbols ``s_1..s_N`` and their model probabilities
``p_i(s_i)`` into about ``-sum_i log2 p_i(s_i)`` bits. rANS keeps one integer state ``x``;
with integer frequencies ``f`` summing to ``M = 2^prob_bits`` and cumulative starts ``c``,
encoding a symbol of frequency ``f`` and start ``c`` maps

    x  ->  C(x) = floor(x / f) * M + (x mod f) + c          (state grows by ~ log2(M/f) bits)

and decoding inverts it from the low ``prob_bits`` bits of the state (the "slot"):

    slot = x mod M,  s = the symbol with c_s <= slot < c_s + f_s,
    x  ->  D(x) = f_s * floor(x / M) + slot - c_s.

The state is kept in ``[L, 256 L)`` by moving whole bytes to/from the stream
(renormalisation, as in Giesen's ``rans_byte.h``): before encoding, bytes are shifted out
while ``x >= 256 * (L / M) * f``; after decoding, bytes are shifted in while ``x < L``.
rANS is a stack (LIFO): the decoder pops symbols in the reverse of the order they were
pushed, so an encoder pushes the sequence backwards and the decoder reads it forwards. That
is what lets an autoregressive model drive the decoder: each conditional is computed from the
symbols already decoded, and the encoder (which knows all of them) computes the same ones.

Python integers are unbounded, so the state is wider than the usual 32 bits:
``L = 2^(prob_bits + 16)``. The coding loss of the integer arithmetic is then about
``M / L = 2^-16`` of the information per symbol, and the final flush costs
``ceil((prob_bits + 24) / 8)`` bytes per stream.

Frequencies come from log-probabilities through :func:`quantize`, a deterministic integer
rule: the same float input gives the same integers, which encoder and decoder rely on.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np

STATE_SHIFT = 16  # L = 2^(prob_bits + STATE_SHIFT): the state's lower bound
MAX_PROB_BITS = 30


def _check_prob_bits(prob_bits: int) -> None:
    if not 1 <= prob_bits <= MAX_PROB_BITS:
        raise ValueError(f"prob_bits must be in [1, {MAX_PROB_BITS}], got {prob_bits}")


def quantize(log_probs: np.ndarray, prob_bits: int) -> np.ndarray:
    """Integer frequencies ``(B, K)`` int64, every one ``>= 1``, each row summing to ``2^prob_bits``.

    ``log_probs (B, K)`` are log-probabilities (natural log, normalised or not; ``-inf``
    allowed). The rule, all in exact integer arithmetic after one float64 step:

    1. ``w = floor(exp(lp - max lp) * 2^W)`` with ``W = 62 - prob_bits`` (so products below fit
       int64), ``S = sum w`` (exact integers: no float summation order to worry about);
    2. ``f = 1 + floor(w * (M - K) / S)`` (every symbol stays decodable);
    3. the residue ``M - sum f`` (in ``[0, K)``) goes to the first most probable symbol.

    A probability ``p`` is thus coded at ``f / M >= p (1 - K/M)`` for the likely symbols: the
    loss is at most ``K / (M ln 2)`` bits per symbol.
    """
    _check_prob_bits(prob_bits)
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (B, K), got shape {lp.shape}")
    b, k = lp.shape
    m = 1 << prob_bits
    if k > m:
        raise ValueError(f"{k} symbols do not fit {prob_bits} probability bits (each needs a frequency >= 1); "
                         f"raise prob_bits to at least {int(np.ceil(np.log2(k)))}")
    top = lp.max(axis=1, keepdims=True)
    if not np.isfinite(top).all() or np.isnan(lp).any():
        raise ValueError("log_probs contain NaN or a row without any finite entry")
    w = np.floor(np.exp(lp - top) * float(1 << (62 - prob_bits))).astype(np.int64)  # (B, K), max 2^W
    s = w.sum(axis=1, keepdims=True)  # exact: K * 2^W < 2^63 since K <= M
    freq = 1 + (w * (m - k)) // s
    freq[np.arange(b), w.argmax(axis=1)] += m - freq.sum(axis=1)
    return freq


def cumulative(freq: np.ndarray) -> np.ndarray:
    """Cumulative starts ``(B, K+1)``: ``cum[:, s]`` is symbol ``s``'s start, ``cum[:, K] = M``."""
    freq = np.asarray(freq, dtype=np.int64)
    return np.concatenate([np.zeros((freq.shape[0], 1), dtype=np.int64), np.cumsum(freq, axis=1)], axis=1)


class RansEncoder:
    """Push symbols as ``(start, freq)`` pairs; :meth:`finish` returns the stream.

    LIFO: the decoder returns the symbols in the reverse order of the :meth:`put` calls.
    """

    def __init__(self, prob_bits: int) -> None:
        _check_prob_bits(prob_bits)
        self.prob_bits = prob_bits
        self.lower = 1 << (prob_bits + STATE_SHIFT)
        self.state = self.lower
        self._out = bytearray()  # bytes in the reverse of their stream order

    def put(self, start: int, freq: int) -> None:
        """Encode one symbol with frequency ``freq`` (``>= 1``) starting at ``start``."""
        x, x_max = self.state, (self.lower >> self.prob_bits << 8) * freq
        while x >= x_max:
            self._out.append(x & 0xFF)
            x >>= 8
        self.state = ((x // freq) << self.prob_bits) + x % freq + start

    def finish(self) -> bytes:
        """Flush the state (high byte first in the stream) and return all bytes in stream order."""
        x = self.state
        for _ in range(flush_bytes(self.prob_bits)):
            self._out.append(x & 0xFF)
            x >>= 8
        self._out.reverse()
        return bytes(self._out)


def flush_bytes(prob_bits: int) -> int:
    """Bytes of the final state: it lies in ``[L, 256 L)``, ``L = 2^(prob_bits + 16)``."""
    return (prob_bits + STATE_SHIFT + 8 + 7) // 8


class RansDecoder:
    """Pop symbols from a stream, one at a time, each with its own cumulative table."""

    def __init__(self, data: bytes, prob_bits: int) -> None:
        _check_prob_bits(prob_bits)
        self.prob_bits, self.mask = prob_bits, (1 << prob_bits) - 1
        self.lower = 1 << (prob_bits + STATE_SHIFT)
        self.data, n = data, flush_bytes(prob_bits)
        if len(data) < n:
            raise ValueError(f"a rANS stream has at least {n} bytes, got {len(data)}")
        self.state, self.pos = int.from_bytes(data[:n], "big"), n

    def get(self, cum: Sequence[int]) -> int:
        """Decode one symbol given its step's cumulative table ``cum`` (length ``K+1``, ``cum[0] = 0``,
        ``cum[K] = M``), e.g. a row of :func:`cumulative` as a list."""
        x = self.state
        slot = x & self.mask
        s = bisect.bisect_right(cum, slot) - 1
        start = cum[s]
        x = (cum[s + 1] - start) * (x >> self.prob_bits) + slot - start
        data, pos = self.data, self.pos
        while x < self.lower:
            if pos >= len(data):
                raise ValueError("the rANS stream ended early: corrupt data or different probabilities than at encoding")
            x = (x << 8) | data[pos]
            pos += 1
        self.state, self.pos = x, pos
        return s

    def done(self) -> bool:
        """True when the whole stream was consumed and the state is back at its initial value,
        which holds after decoding exactly the encoded symbols with the encoder's tables."""
        return self.pos == len(self.data) and self.state == self.lower


def encode(symbols: Iterable[int], freqs: Iterable[np.ndarray], prob_bits: int) -> bytes:
    """Encode ``symbols[i]`` with the frequency table ``freqs[i]`` (``(K,)``) into a stream that
    :func:`decode` (or a :class:`RansDecoder`) reads in the same order."""
    pairs = []
    for s, f in zip(symbols, freqs, strict=True):
        f = np.asarray(f, dtype=np.int64)
        pairs.append((int(f[:s].sum()), int(f[s])))
    enc = RansEncoder(prob_bits)
    for start, freq in reversed(pairs):
        enc.put(start, freq)
    return enc.finish()


def decode(data: bytes, freqs: Iterable[np.ndarray], prob_bits: int) -> list[int]:
    """Decode one symbol per frequency table (the tables of :func:`encode`, in the same order)."""
    dec = RansDecoder(data, prob_bits)
    out = [dec.get(cumulative(np.asarray(f)[None])[0].tolist()) for f in freqs]
    if not dec.done():
        raise ValueError("the rANS stream was not consumed exactly: wrong tables or corrupt data")
    return out
