"""Decoder-only Transformer language model over discrete tokens (GPT-2 style, pre-LayerNorm).

The example is flattened in the net's generation order (:meth:`ARNet.order`: identity for text,
raster ``(h, w, c)`` for images) into ``D`` tokens with values in ``{0, ..., L-1}``; a
beginning-of-sequence token (id ``L``) is prepended and the last token dropped, so the input at
position ``t`` is ``(BOS, x_0, ..., x_{D-2})[t]`` and the causal output at ``t`` holds the
parameters of ``P(x_t | x_{<t})`` (Radford et al. 2019; Vaswani et al. 2017, Eq. 1 attention
``softmax(QK^T / sqrt(hs)) V`` with a causal mask).

Positions are learned absolute embeddings or rotary embeddings (RoPE, Su et al. 2021, Eq. 34:
each pair of query/key features is rotated by the angle ``t * theta_i``,
``theta_i = 10000^{-2i/hs}``, so ``q_t . k_s`` depends on ``t - s`` only).

**Class token** (``conditional=True``): the input at position 0 is the condition vector ``c``
(the class embedding, ``(B, d_model)``) instead of the BOS token's embedding, so every causal
output ``P(x_t | x_{<t}, c)`` attends to it (the class token of conditional Transformer LMs, e.g.
Keskar et al. 2019's control codes and the class-conditional image GPT of Esser et al. 2021).
The net adds no parameter; the BOS row stays in the table (same keys) but is not read.

Sampling is incremental: :meth:`TransformerLM.init_state` allocates a key/value cache and every
:meth:`TransformerLM.next_params` call feeds ONE token through the layers, attending to the
cached keys/values of the earlier positions (``D`` one-token steps for ``D`` tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.nets.ar import ARNet


class Rotary(nn.Module):
    """Rotary position embedding for heads of size ``hs`` (even) at positions ``0..max_len-1``.

    Feature ``i`` of the first half is paired with feature ``i`` of the second half (GPT-NeoX
    layout) and the pair is rotated by ``t * theta_i``.
    """

    def __init__(self, head_size: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/n_heads = {head_size}")
        theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)  # (hs/2,)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * theta  # (T, hs/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """Rotate ``x (B, nh, T, hs)`` holding positions ``start .. start+T-1``."""
        t = x.shape[2]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]  # (T, hs/2)
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; with a cache, appends the new keys/values to it."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self, h: Tensor, rope: Rotary | None, cache: tuple[Tensor, Tensor] | None = None, start: int = 0
    ) -> Tensor:
        """``h (B, T, C)`` at positions ``start..start+T-1`` -> ``(B, T, C)``.

        Without a cache, ``start`` is 0 and every position attends to itself and the positions
        before it. With ``cache = (K, V)``, each ``(B, nh, D, hs)``, the keys/values of the
        positions ``< start`` are read from it and those of the new positions written into it.
        """
        b, t, c = h.shape
        q, k, v = self.qkv(h).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:
            q, k = rope(q, start), rope(k, start)
        if cache is not None:
            if t > 1 and start > 0:
                raise ValueError("a cached step feeds one token, or a whole prefix from position 0")
            cache[0][:, :, start : start + t], cache[1][:, :, start : start + t] = k, v
            k, v = (z[:, :, : start + t].to(q.dtype) for z in cache)  # (B, nh, start+T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=t > 1)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, h: Tensor, rope: Rotary | None, cache: tuple[Tensor, Tensor] | None = None, start: int = 0) -> Tensor:
        h = h + self.attn(self.ln1(h), rope, cache, start)
        return h + self.mlp(self.ln2(h))


@dataclass
class KVCache:
    """Keys and values of the positions fed so far: per layer ``(B, nh, D, hs)`` buffers, of
    which the first ``length`` positions are filled."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0
    cond: Tensor | None = None  # the class token's vector (B, C), fed at position 0; None: BOS


class TransformerLM(ARNet):
    """Causal Transformer over the example's tokens in generation order (see module docstring).

    Args:
        shape, levels, num_params: see :class:`ARNet` (vocabulary = ``levels`` + BOS).
        d_model: width ``C``.
        n_layers: number of blocks.
        n_heads: attention heads ``nh`` (head size ``hs = C / nh``).
        positions: ``learned`` absolute embeddings or ``rotary`` (RoPE in every layer).
        tie_weights: share the output head with the token embedding (``W_out = E[:L]``) when the
            output is a categorical over the levels (``num_params == levels``).
        dropout: dropout on embeddings, attention weights and residual branches.
        mlp_ratio: hidden width of the MLP as a multiple of ``d_model``.
        conditional: the input at position 0 is a condition vector ``c (B, d_model)``
            (:attr:`cond_dim`) instead of the BOS embedding (module docstring).
    """

    input_kinds = ("image", "text", "points")

    def __init__(
        self,
        shape: tuple[int, ...],
        levels: int,
        num_params: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        positions: Literal["learned", "rotary"] = "learned",
        tie_weights: bool = True,
        dropout: float = 0.0,
        mlp_ratio: int = 4,
        conditional: bool = False,
    ) -> None:
        super().__init__(shape, levels, num_params)
        if positions not in ("learned", "rotary"):
            raise ValueError(f"positions={positions!r} is unknown; valid: learned, rotary")
        self.d_model, self.n_heads = d_model, n_heads
        self.cond_dim = d_model if conditional else None
        self.tok_emb = nn.Embedding(levels + 1, d_model)  # id `levels` is BOS
        self.pos_emb = nn.Embedding(self.dims, d_model) if positions == "learned" else None
        self.rope = Rotary(d_model // n_heads, self.dims) if positions == "rotary" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.tied = tie_weights and num_params == levels
        self.head = None if self.tied else nn.Linear(d_model, num_params)
        self.register_buffer("_inverse", torch.argsort(self._order), persistent=False)
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02/sqrt(2L))."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))

    # -- shared pieces -------------------------------------------------------------------
    def _embed(self, tokens: Tensor, start: int, c: Tensor | None = None) -> Tensor:
        """Token ids ``(B, T)`` at positions ``start..`` -> ``(B, T, C)``; with a condition ``c (B, C)``,
        position 0 (the BOS slot) holds ``c`` instead of the BOS embedding (the class token)."""
        h = self.tok_emb(tokens)
        if c is not None and start == 0:
            h = torch.cat([c[:, None].to(h.dtype), h[:, 1:]], dim=1)
        if self.pos_emb is not None:
            h = h + self.pos_emb.weight[start : start + tokens.shape[1]]
        return self.drop(h)

    def _head(self, h: Tensor) -> Tensor:
        """Final LayerNorm and output head: ``(B, T, C)`` -> ``(B, T, P)``."""
        h = self.ln_f(h)
        return F.linear(h, self.tok_emb.weight[: self.levels]) if self.tied else self.head(h)

    def tokens(self, x: Tensor) -> Tensor:
        """``x (B, *shape)`` -> the input tokens ``(BOS, x_o(0), ..., x_o(D-2))``, ``(B, D)``."""
        seq = x.reshape(x.shape[0], -1).long()[:, self._order]  # (B, D) in generation order
        bos = seq.new_full((x.shape[0], 1), self.levels)
        return torch.cat([bos, seq[:, :-1]], dim=1)

    # -- training / likelihood -----------------------------------------------------------
    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``x (B, *shape)`` (and the class token ``c (B, C)`` when conditional) -> ``params (B, P, D)``
        in flat ``(C, H, W)`` layout."""
        self.check_condition(x, c)
        h = self._embed(self.tokens(x), 0, c)  # (B, D, C)
        for block in self.blocks:
            h = block(h, self.rope)
        out = self._head(h).transpose(1, 2)  # (B, P, D), generation order
        return out[:, :, self._inverse]  # position order[t] <- t

    # -- incremental sampling ------------------------------------------------------------
    def init_state(self, x: Tensor, c: Tensor | None = None) -> KVCache:
        """An empty key/value cache for the batch ``x``: per layer ``(B, nh, D, hs)``, and the class
        token ``c (B, C)`` to feed first (when conditional)."""
        self.check_condition(x, c)
        w = self.tok_emb.weight
        size = (x.shape[0], self.n_heads, self.dims, self.d_model // self.n_heads)
        n = len(self.blocks)
        return KVCache([w.new_zeros(size) for _ in range(n)], [w.new_zeros(size) for _ in range(n)], cond=c)

    def next_params(self, x: Tensor, step: int, state: KVCache) -> Tensor:
        """Feed one token (BOS, or the class token, at step 0, else ``x`` at ``order[step-1]``) at
        position ``step``; return the parameters ``(B, P)`` of dimension ``order[step]``. Steps must
        come in order."""
        if step != state.length:
            raise ValueError(f"the cache holds {state.length} positions, so the next step is {state.length}, not {step}")
        if step == 0:
            tok = x.new_full((x.shape[0], 1), self.levels, dtype=torch.long)
        else:
            tok = x.reshape(x.shape[0], -1)[:, self._order[step - 1]].long().unsqueeze(1)  # (B, 1)
        h = self._embed(tok, step, state.cond)  # (B, 1, C)
        for block, k, v in zip(self.blocks, state.keys, state.values):
            h = block(h, self.rope, (k, v), step)
        state.length += 1
        return self._head(h)[:, 0]  # (B, P)
