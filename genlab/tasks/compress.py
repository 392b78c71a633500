"""Lossless compression with an autoregressive model: a real file, rANS-coded, decoded back bit-exactly.

By Shannon's source coding theorem a model ``P`` codes ``x`` in about ``-log2 P(x)`` bits, so an
autoregressive model's NLL *is* a compressed size; this task makes the file and measures it.
For each dimension, in the net's generation order ``o``, the model gives the conditional
``P(x_{o(i)} | x_{o(<i)})`` over all ``L`` levels; :func:`genlab.tasks.rans.quantize` turns it
into integer frequencies summing to ``2^prob_bits`` and :mod:`genlab.tasks.rans` codes the
symbol. The file holds ``-sum_i log2 P(x_i) + (quantisation and flush overhead)`` bits.

Determinism is the whole game: the decoder computes each conditional from a partially decoded
batch (the dimensions not yet decoded are zeros), so the encoder must feed the network the
*same* inputs in the *same* batches — not one teacher-forced pass, whose floats in the unseen
positions (conv padding, attention over other inputs, batched kernels) may differ in the last
bit and make a frequency table differ. Encoder and decoder therefore run one shared loop
(:func:`_chain`): start from zeros, and at step ``i`` ask ``net.next_params(x, i, state)``,
quantise, then write the true (encoder) or decoded (decoder) symbol into ``x[o(i)]``. Examples
are coded in chunks of ``batch_size``, one rANS stream per chunk, symbols in
position-major, example-minor order, so decoding runs one network call per position for the
whole chunk. cuDNN is put into deterministic mode while coding. A file decodes only with the
same checkpoint (a fingerprint of the weights is in the header) and, in general, on the same
kind of device and software: floats may differ elsewhere.

File layout (every byte counts in the reported size; ``varint`` = LEB128, 1 byte below 128)::

    magic "GLRC" | version u8 | dtype u8 | prob_bits u8 | ndim u8 | count, batch_size, levels,
    shape[0..ndim), byte length of each chunk's stream: varints | weights fingerprint 8 bytes
    | the chunks' rANS streams

Baselines on the same examples: PNG per image (PIL, optimised, summed; a 1-bit PNG for binary
images), ``gzip -9`` and ``xz -9`` of the raw array (one byte per dimension), and for binary
data the same of the bit-packed array. A two-stage model over a VQ-VAE codes a longer message: the
codes with the prior's conditionals, then the image with the decoder given them (its file measures the
composed bound; :mod:`genlab.families.latent.coding`). Latent-variable models with a stochastic encoder
(VAE, flows, diffusion) would need bits-back coding (Townsend et al. 2019), which is not implemented.

Writes ``images.rans`` (``text.rans`` for text), ``compress.json`` and ``compress.md``.
"""

from __future__ import annotations

import gzip
import io
import lzma
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genlab.checkpoints import weights_digest
from genlab.families.base import Nets, SequentialCoder
from genlab.tasks import rans
from genlab.tasks.base import TaskConfig, TaskContext, TaskError, Unsupported, batches, write_report

MAGIC, VERSION = b"GLRC", 1
DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)  # header code = index


@dataclass
class Config(TaskConfig):
    """Encode ``n`` examples of ``split`` into a file with rANS and the model's conditionals,
    decode it back and check it is bit-exact; compare the size with the model's NLL and with
    PNG, gzip and xz. ``batch_size`` examples share one rANS stream (and one network call per
    dimension).

    prob_bits: precision of the coded probabilities (frequencies sum to 2^prob_bits, each >= 1);
        the quantisation costs at most levels / (2^prob_bits ln 2) bits per dimension.
    """

    prob_bits: int = 24


# -- the file header -------------------------------------------------------------------------
def _varint(v: int) -> bytes:
    """LEB128: 7 bits per byte, low bits first, the high bit set on all but the last byte."""
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _read_varint(data: bytes, off: int) -> tuple[int, int]:
    """The value at ``data[off:]`` and the offset after it."""
    v, shift = 0, 0
    while True:
        if off >= len(data):
            raise TaskError("the rANS file header is truncated")
        byte = data[off]
        v, shift, off = v | (byte & 0x7F) << shift, shift + 7, off + 1
        if byte < 0x80:
            return v, off


@dataclass
class Header:
    """Everything the decoder needs besides the model (see the module docstring for the layout)."""

    count: int
    shape: tuple[int, ...]
    levels: int
    dtype: torch.dtype
    batch_size: int
    prob_bits: int
    fingerprint: bytes
    chunk_bytes: list[int]

    def pack(self) -> bytes:
        ints = [self.count, self.batch_size, self.levels, *self.shape, *self.chunk_bytes]
        return (MAGIC + bytes([VERSION, DTYPES.index(self.dtype), self.prob_bits, len(self.shape)])
                + b"".join(_varint(v) for v in ints) + self.fingerprint)

    @classmethod
    def unpack(cls, data: bytes) -> tuple[Header, int]:
        """The header and the offset where the streams start."""
        if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
            raise TaskError("not a genlab rANS file (bad magic); pass a file written by genlab-task compress")
        version, dtype, prob_bits, ndim = data[len(MAGIC):len(MAGIC) + 4]
        if version != VERSION:
            raise TaskError(f"rANS file version {version}, this genlab reads version {VERSION}")
        if dtype >= len(DTYPES):
            raise TaskError(f"the rANS file header is corrupt (dtype code {dtype})")
        off, ints = len(MAGIC) + 4, []
        for _ in range(3 + ndim):
            v, off = _read_varint(data, off)
            ints.append(v)
        count, batch_size, levels, shape = ints[0], ints[1], ints[2], tuple(ints[3:])
        chunk_bytes = []
        for _ in range(math.ceil(count / max(1, batch_size))):
            v, off = _read_varint(data, off)
            chunk_bytes.append(v)
        header = cls(count, shape, levels, DTYPES[dtype], batch_size, prob_bits, data[off:off + 8], chunk_bytes)
        return header, off + 8


def fingerprint(nets: nn.Module) -> bytes:
    """8 bytes of SHA-256 over the weights (names and raw bytes): a file decodes only with these."""
    return weights_digest(nets)[:8]


# -- the coding loop shared by encoder and decoder ------------------------------------------------
@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """cuDNN in deterministic mode (no autotuned algorithm choice) while coding."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


Pick = Callable[[int, int, np.ndarray], np.ndarray]  # (step, position, cum (B, L+1)) -> symbols (B,)


@torch.no_grad()
def _chain(family: SequentialCoder, nets: Nets, b: int, dtype: torch.dtype, prob_bits: int,
           pick: Pick) -> Tensor:
    """Fill ``b`` examples from zeros, one dimension at a time in the coding order; at each step the
    cumulative frequency tables ``(B, L+1)`` go to ``pick``, whose symbols are written in."""
    device = next(nets.parameters()).device
    mdtype = family.message_dtype(nets) or dtype
    m = torch.zeros(b, *family.message_shape(nets), dtype=mdtype, device=device)  # the message (default: x)
    flat = m.view(b, -1)
    state = family.start_coding(nets, m)
    for step, pos in enumerate(family.coding_order(nets).tolist()):
        logp = family.next_log_probs(nets, m, step, state)  # (B, L)
        cum = rans.cumulative(rans.quantize(logp.double().cpu().numpy(), prob_bits))  # (B, L+1)
        flat[:, pos] = torch.from_numpy(pick(step, pos, cum)).to(device=device, dtype=mdtype)
    return family.from_message(nets, m).to(dtype)


def encode_chunk(family: SequentialCoder, nets: nn.ModuleDict, x: Tensor, prob_bits: int) -> bytes:
    """One rANS stream for the examples ``x (B, *shape)``, symbols position-major, example-minor."""
    b = len(x)
    truth = family.to_message(nets, x).reshape(b, -1).long().cpu().numpy()  # (B, message length)
    rows = np.arange(b)
    starts = np.zeros((truth.shape[1], b), dtype=np.int64)  # (D steps, B)
    freqs = np.zeros_like(starts)

    def pick(step: int, pos: int, cum: np.ndarray) -> np.ndarray:
        sym = truth[:, pos]
        starts[step], freqs[step] = cum[rows, sym], cum[rows, sym + 1] - cum[rows, sym]
        return sym

    _chain(family, nets, b, x.dtype, prob_bits, pick)
    enc = rans.RansEncoder(prob_bits)
    for start, freq in zip(reversed(starts.ravel().tolist()), reversed(freqs.ravel().tolist()), strict=True):
        enc.put(start, freq)  # LIFO: the last symbol first
    return enc.finish()


def decode_chunk(family: SequentialCoder, nets: nn.ModuleDict, data: bytes, b: int, dtype: torch.dtype,
                 prob_bits: int) -> Tensor:
    """The ``b`` examples of one stream (:func:`encode_chunk`'s inverse)."""
    dec = rans.RansDecoder(data, prob_bits)

    def pick(step: int, pos: int, cum: np.ndarray) -> np.ndarray:
        return np.array([dec.get(row) for row in cum.tolist()], dtype=np.int64)

    try:
        x = _chain(family, nets, b, dtype, prob_bits, pick)
    except ValueError as e:  # the stream ran out: corrupt, or decoded with other probabilities
        raise TaskError(f"decoding failed: {e}. Fix: decode with the checkpoint and device used to encode") from e
    if not dec.done():
        raise TaskError("a rANS stream was not consumed exactly: the decoder saw other probabilities than the "
                        "encoder (different weights, device or kernels). Fix: decode with the checkpoint and "
                        "device used to encode (device=cpu is deterministic)")
    return x


# -- files -------------------------------------------------------------------------------------
def encode_file(path: Path, family: SequentialCoder, nets: nn.ModuleDict, x: Tensor, batch_size: int,
                prob_bits: int) -> Header:
    """Write ``x (N, *shape)`` (discrete, values in ``[0, levels)``) to ``path``; returns its header."""
    info = nets.info
    if tuple(x.shape[1:]) != tuple(info.shape) or x.dtype not in DTYPES:
        raise TaskError(f"examples of shape {tuple(x.shape[1:])} ({x.dtype}) do not match the model's "
                        f"{tuple(info.shape)} (integer data)")
    if len(x) and (int(x.min()) < 0 or int(x.max()) >= info.levels):
        raise TaskError(f"examples hold values outside [0, {info.levels}): not the model's discrete data")
    with deterministic_kernels():
        streams = [encode_chunk(family, nets, chunk, prob_bits) for chunk in batches(x, batch_size)]
    header = Header(len(x), tuple(info.shape), info.levels, x.dtype, max(1, batch_size), prob_bits,
                    fingerprint(nets), [len(s) for s in streams])
    path.write_bytes(header.pack() + b"".join(streams))
    return header


def decode_file(path: Path, family: SequentialCoder, nets: nn.ModuleDict) -> Tensor:
    """Read a file of :func:`encode_file` back, ``(N, *shape)`` in the stored dtype."""
    data = Path(path).read_bytes()
    header, off = Header.unpack(data)
    info = nets.info
    if header.fingerprint != fingerprint(nets) or header.shape != tuple(info.shape) or header.levels != info.levels:
        raise TaskError(f"{path} was encoded with another model (weights fingerprint, shape or levels differ). "
                        f"Fix: decode with the checkpoint that encoded it")
    if off + sum(header.chunk_bytes) != len(data):
        raise TaskError(f"{path} is truncated or has trailing bytes ({len(data)} bytes, the header says "
                        f"{off + sum(header.chunk_bytes)})")
    chunks = []
    with deterministic_kernels():
        for i, size in enumerate(header.chunk_bytes):
            b = min(header.batch_size, header.count - i * header.batch_size)
            chunks.append(decode_chunk(family, nets, data[off:off + size], b, header.dtype, header.prob_bits))
            off += size
    return torch.cat(chunks) if chunks else torch.zeros(0, *header.shape, dtype=header.dtype)


# -- measurements --------------------------------------------------------------------------------
@torch.no_grad()
def nll_bits(family: SequentialCoder, nets: nn.ModuleDict, x: Tensor, batch_size: int) -> float:
    """``-sum log2 P(x)`` over the examples (teacher-forced, exact)."""
    nats = sum(-family.log_likelihood(nets, {"x": xb}).log_px.double().sum().item() for xb in batches(x, batch_size))
    return nats / math.log(2)


def _png_bytes(img: np.ndarray, levels: int) -> int:
    """Bytes of one ``(C, H, W)`` image as an optimised PNG (1-bit for binary data)."""
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    pil = Image.fromarray(arr.astype(bool)) if levels == 2 and img.shape[0] == 1 else Image.fromarray(arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.tell()


def baseline_bytes(x: np.ndarray, kind: str, levels: int) -> dict[str, int]:
    """Sizes of general-purpose lossless codecs on the examples ``x (N, *shape)``: gzip -9 and xz -9
    of the raw array (one byte per dimension, two beyond 256 levels), the same bit-packed for
    binary data, and PNG per image (summed) for 1- or 3-channel images."""
    raw = x.astype(np.uint8 if levels <= 256 else np.uint16).tobytes()
    out = {"gzip -9": len(gzip.compress(raw, 9, mtime=0)), "xz -9": len(lzma.compress(raw, preset=9))}
    if levels == 2:
        packed = np.packbits(x.astype(np.uint8).reshape(-1)).tobytes()
        out["gzip -9 (packbits)"] = len(gzip.compress(packed, 9, mtime=0))
        out["xz -9 (packbits)"] = len(lzma.compress(packed, preset=9))
    if kind == "image" and levels <= 256 and x.ndim == 4 and x.shape[1] in (1, 3):
        out["PNG (per image)"] = sum(_png_bytes(img, levels) for img in x)
    return out


# -- the task -------------------------------------------------------------------------------------
def run(ctx: TaskContext, cfg: Config) -> dict[str, Any]:
    """Encode ``cfg.n`` real examples to a rANS file, decode it, check the round trip; sizes vs NLL."""
    family, nets, info = ctx.family, ctx.nets, ctx.info
    if not isinstance(family, SequentialCoder):
        raise Unsupported.lacking("compress", family, SequentialCoder)
    if ctx.module.conditional:
        raise TaskError("compress codes with the model's unconditional conditionals P(x_d | x_<d); this run is "
                        "class-conditional, and coding with p(x | y) would need the labels in the bitstream (not "
                        "implemented). Fix: compress with an unconditional run of the same model")
    if info.levels > 1 << cfg.prob_bits or not 1 <= cfg.prob_bits <= rans.MAX_PROB_BITS:
        raise TaskError(f"prob_bits={cfg.prob_bits} cannot code {info.levels} levels; use "
                        f"{max(1, math.ceil(math.log2(info.levels)))} <= prob_bits <= {rans.MAX_PROB_BITS}")
    x, _ = ctx.real(cfg.split, cfg.n)
    if len(x) == 0:
        raise TaskError(f"split '{cfg.split}' has no examples; choose another split")
    path = ctx.out_dir / f"{'images' if info.kind == 'image' else info.kind}.rans"
    t0 = time.perf_counter()
    header = encode_file(path, family, nets, x, cfg.batch_size, cfg.prob_bits)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = decode_file(path, family, nets)
    decode_s = time.perf_counter() - t0
    check_roundtrip(x, decoded, path)
    report = _report(ctx, cfg, x, path, header, nll_bits(family, nets, x, cfg.batch_size))
    report.update(encode_s=encode_s, decode_s=decode_s)
    report["summary"] = _summary(report)
    write_report(ctx.out_dir, "compress", report, _markdown(report))
    return report


def check_roundtrip(x: Tensor, decoded: Tensor, path: Path) -> None:
    """Refuse a decode that differs from the input anywhere (names how many examples, and the fix)."""
    n = len(x)
    wrong = (decoded.reshape(n, -1).cpu() != x.reshape(n, -1).cpu()).any(1).sum().item()
    if decoded.dtype != x.dtype or wrong:
        raise TaskError(f"the round trip is not exact: {wrong} of {n} examples differ after decoding {path}. "
                        f"The network gave other probabilities when decoding (nondeterministic kernels?). "
                        f"Fix: device=cpu")


def _report(ctx: TaskContext, cfg: Config, x: Tensor, path: Path, header: Header, model_bits: float) -> dict[str, Any]:
    """Sizes against the model's NLL and the generic compressors."""
    info, n = ctx.info, len(x)
    dims = info.dims
    file_bytes = path.stat().st_size
    header_bytes = file_bytes - sum(header.chunk_bytes)
    bpd = lambda nbytes: 8 * nbytes / (n * dims)  # noqa: E731
    base = baseline_bytes(x.cpu().numpy(), info.kind, info.levels)
    family = ctx.family
    return {
        "task": "compress", "family": family.name, "dataset": info.name, "split": cfg.split,
        "n": n, "dims": dims, "shape": list(info.shape), "levels": info.levels, "prob_bits": cfg.prob_bits,
        "batch_size": header.batch_size, "file": str(path), "file_bytes": file_bytes, "header_bytes": header_bytes,
        "chunk_bytes": header.chunk_bytes, "bits_per_dim": bpd(file_bytes),
        "nll_bits": model_bits, "nll_bits_per_dim": model_bits / (n * dims),
        "overhead_pct": 100 * (8 * file_bytes / model_bits - 1) if model_bits > 0 else None,
        "payload_overhead_pct": 100 * (8 * sum(header.chunk_bytes) / model_bits - 1) if model_bits > 0 else None,
        "uniform_bits_per_dim": math.log2(info.levels), "encode_s": None, "decode_s": None,
        "roundtrip_exact": True,
        "baselines": {k: {"bytes": v, "bits_per_dim": bpd(v)} for k, v in base.items()},
    }


def _summary(r: dict[str, Any]) -> list[str]:
    base = ", ".join(f"{k} {v['bits_per_dim']:.3f}" for k, v in r["baselines"].items())
    return [
        f"{r['n']} examples x {r['dims']} dims -> {r['file']}: {r['file_bytes']} bytes = "
        f"{r['bits_per_dim']:.4f} bits/dim (model NLL {r['nll_bits_per_dim']:.4f} bits/dim, overhead "
        f"{r['overhead_pct']:.2f}% incl. {r['header_bytes']}-byte header); round trip exact",
        f"baselines (bits/dim): {base}; uniform {r['uniform_bits_per_dim']:.3f}",
        f"encode {r['encode_s']:.2f} s, decode {r['decode_s']:.2f} s",
    ]


def _markdown(r: dict[str, Any]) -> str:
    rans_bytes = r["file_bytes"]
    rows = [("rANS + model (this file)", rans_bytes, r["bits_per_dim"]),
            ("model NLL (ideal code length)", r["nll_bits"] / 8, r["nll_bits_per_dim"])]
    rows += [(k, v["bytes"], v["bits_per_dim"]) for k, v in r["baselines"].items()]
    rows.append((f"uniform (log2 {r['levels']})", r["n"] * r["dims"] * r["uniform_bits_per_dim"] / 8,
                 r["uniform_bits_per_dim"]))
    lines = [f"# Lossless compression: {r['dataset']} ({r['split']}), {r['n']} examples x {r['dims']} dims", "",
             f"Round trip exact: {r['roundtrip_exact']}. Header {r['header_bytes']} bytes; overhead over the "
             f"NLL {r['overhead_pct']:.2f}% (streams alone {r['payload_overhead_pct']:.2f}%); prob_bits "
             f"{r['prob_bits']}; {len(r['chunk_bytes'])} rANS stream(s) of up to {r['batch_size']} examples; encode "
             f"{r['encode_s']:.2f} s, decode {r['decode_s']:.2f} s.", "",
             "| method | bytes | bits/dim | x rANS size |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {size:,.0f} | {bits:.4f} | {size / rans_bytes:.2f} |" for name, size, bits in rows]
    return "\n".join(lines)
