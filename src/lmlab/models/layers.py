"""Transformer building blocks shared by every Transformer family (GPT, encoder, seq2seq).

Pre-LayerNorm blocks (GPT-2, Radford et al. 2019): x + Attn(LN(x)), then x + MLP(LN(x)).
Attention goes through F.scaled_dot_product_attention, which picks a fused kernel on CPU and GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmlabError
from . import kernels

# Decoding on CPU (inference, one new position per sequence, a few sequences) reads every weight once per step and
# multiplies it by a few rows, so it is bound by memory. It runs nn.Linear on a copy of the weight packed for that:
# lmlab's small-batch kernel (kernels.py, decode_kernels.cpp) where it builds, else MKL's packed sgemm. (A GPT's
# blocks go through the kernel in one call per step, see GPT.hidden; this serves the LM head and the other families.)
# Measured on the 2-core Xeon, the 48 Linear layers of a 12x768 model (340 MB), two threads: 8 rows 15.2 ms (kernel) /
# 18.4 (MKL packed) / 30.2 (F.linear); 1 row 13.1 / 13.3 / 14.8. MKL's weight is packed for a number of rows, padded
# up to a power of two, so a batch whose size changes (a server's running requests) repacks only when it crosses one;
# the kernel's packing does not depend on the rows. Training (grad enabled), several positions per row (a prompt),
# other devices and dtypes keep the plain path, as does one row without the kernel.
PACK_ROWS = (1, 64)  # inclusive range of rows that use a packed weight; None turns packing off


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x); a decoding step on CPU goes through a packed copy of the weight (see PACK_ROWS).

    One packed copy per layer (the weight's memory once more), made on first use and again whenever the
    weight changes (an optimizer step bumps its version) or, for MKL, the row bucket.
    """
    rows = x.numel() // max(x.shape[-1], 1)
    if (PACK_ROWS is None or not PACK_ROWS[0] <= rows <= PACK_ROWS[1] or (x.dim() > 2 and x.shape[-2] != 1)
            or type(layer) is not nn.Linear or x.device.type != "cpu" or x.dtype != torch.float32
            or layer.weight.dtype != torch.float32
            or torch.is_grad_enabled()):
        return layer(x)
    w = layer.weight
    x2 = x.reshape(rows, x.shape[-1])
    if kernels.available():
        y = kernels.small_gemm(x2, kernels.packed_weight(layer), w.shape[0], layer.bias)
    elif rows > 1:
        bucket = 1 << (rows - 1).bit_length()
        try:
            packed = kernels.packed_weight(layer, ("mkl", bucket),
                                           lambda w: torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), bucket))
        except (RuntimeError, AttributeError):  # a torch built without MKL: the plain path from now on
            globals()["PACK_ROWS"] = None
            return layer(x)
        if bucket != rows:
            x2 = torch.cat([x2, x2.new_zeros(bucket - rows, x2.shape[1])])
        y = torch.ops.mkl._mkl_linear(x2, packed, w, layer.bias, bucket)[:rows]
    else:  # one row without the kernel: MKL's matrix-vector product is as fast as any packing
        return layer(x)
    return y.view(*x.shape[:-1], y.shape[1])


class KVCache:
    """Keys and values of every layer for a batch of left-padded rows: `k`, `v` are [n_layer, rows, n_head,
    columns, head_dim] views of storage with room for more rows, so that rows can join, leave and be reordered
    between decoding steps without reallocating (a DecodeState: models/base.py). `length`: the columns filled,
    the same for every row (left padding makes rows of different lengths share them). Columns are allocated as
    they fill, doubling up to max_len (a model with a context of 8,192 does not hold 8,192 columns per row for
    a short generation)."""

    kernel_table = None  # (blocks, their weight table, packed weights) for the decoding kernel: kernels.py
    FIRST_COLUMNS = 256

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, dtype, device):
        shape = (n_layer, batch, n_head, min(max_len, self.FIRST_COLUMNS), head_dim)
        self.store = (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
        self.max_len = max_len
        self._use_rows(batch)
        self.length = 0  # positions filled so far (same for every row)

    def _use_rows(self, rows: int) -> None:
        self.k, self.v = (s[:, :rows] for s in self.store)

    def room_for_columns(self, columns: int) -> None:
        """Room for `columns` positions (doubling, at most max_len); the filled ones are kept."""
        if columns <= self.k.shape[3]:
            return
        if columns > self.max_len:
            raise LmlabError(f"sequence of {columns} tokens is longer than the model's block_size {self.max_len}.")
        new = min(self.max_len, max(columns, 2 * self.k.shape[3]))
        store = tuple(s.new_empty((*s.shape[:3], new, s.shape[4])) for s in self.store)
        for mine, old in zip(store, self.store):
            mine[:, :, :, :self.length] = old[:, :, :, :self.length]
        self.store = store
        self._use_rows(self.rows)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def _room_for_rows(self, rows: int) -> None:
        """Room for `rows` rows (the next power of two), keeping the filled columns of the current rows."""
        if rows <= self.store[0].shape[1]:
            return
        capacity = 1 << (rows - 1).bit_length()
        new = tuple(s.new_zeros((s.shape[0], capacity, *s.shape[2:])) for s in self.store)  # (zeros: see extend)
        for mine, old in zip(new, self.store):
            mine[:, :self.rows, :, :self.length] = old[:, :self.rows, :, :self.length]
        self.store = new
        self._use_rows(self.rows)

    def select(self, rows: torch.Tensor) -> "KVCache":
        """The cache of the given batch rows, in that order (beam search keeps the rows of its best beams; a
        server's batch drops finished rows). In place: only the rows whose position changes are copied."""
        n = rows.numel()
        self._room_for_rows(n)
        moved = torch.nonzero(rows != torch.arange(n, device=rows.device)).flatten()
        if moved.numel():
            for store in self.store:  # gathered before written: overlapping moves are safe
                store[:, moved, :, :self.length] = store[:, rows[moved], :, :self.length]
        self._use_rows(n)
        return self

    def extend(self, other: "KVCache") -> "KVCache":
        """Append other's rows; the side with fewer columns is shifted right (its new padding zeroed: masked
        keys still meet 0 x value in attention, which must not be NaN)."""
        n, length = self.rows, max(self.length, other.length)
        self.room_for_columns(length)
        self._room_for_rows(n + other.rows)
        self._shift(length - self.length)
        for mine, theirs in zip(self.store, (other.k, other.v)):
            mine[:, n:n + other.rows, :, :length - other.length] = 0
            mine[:, n:n + other.rows, :, length - other.length:length] = theirs[:, :, :, :other.length]
        self._use_rows(n + other.rows)
        self.length = length
        return self

    def trim(self, columns: int) -> "KVCache":
        """Forget the first `columns` columns (padding in every row): the rest moves left."""
        self._shift(-columns)
        self.length -= columns
        return self

    def _shift(self, d: int) -> None:
        """Move the filled columns of every row d places right (d > 0, zeros enter) or -d left."""
        if d == 0 or not self.rows:
            return
        L = self.length
        for rows in (self.k, self.v):
            if d > 0:
                rows[:, :, :, d:L + d] = rows[:, :, :, :L].clone()
                rows[:, :, :, :d] = 0
            else:
                rows[:, :, :, :L + d] = rows[:, :, :, -d:L].clone()

    def rollback(self, length: int) -> "KVCache":
        """Forget positions from `length` on (speculative decoding drops the keys of rejected draft tokens);
        their slots are simply overwritten by the next append."""
        self.length = min(self.length, length)
        return self

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v [B, H, T_new, hs] after the cached positions; return all keys/values so far."""
        start, new = self.length, k.shape[2]
        self.room_for_columns(start + new)
        keys, values = self.k[layer], self.v[layer]  # (narrow: fewer ops per decoding step than indexing)
        keys.narrow(2, start, new).copy_(k)
        values.narrow(2, start, new).copy_(v)
        return keys.narrow(2, 0, start + new), values.narrow(2, 0, start + new)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection; causal or bidirectional."""

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, causal: bool):
        super().__init__()
        self.n_head, self.causal, self.dropout = n_head, causal, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, attn_mask=None):
        B, T, C = x.shape
        # [B, T, 3, H, hs] -> three [B, H, T, hs] views; SDPA accepts the strided layout without a copy.
        q, k, v = linear(self.qkv, x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        is_causal = self.causal and attn_mask is None
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
            if past > 0 and self.causal:
                # New queries sit at positions past..past+T-1: each sees every cached key and the new
                # keys up to itself. With one new query that is "all keys": no mask needed. A given mask
                # (left padding, GPT.hidden) already has the causal part.
                is_causal = False
                if T > 1 and attn_mask is None:
                    attn_mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        y = linear(self.proj, y)
        return self.resid_dropout(y) if self.training else y  # (no dropout call per decoding step)


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float, activation: str = "gelu", hidden: int | None = None):
        super().__init__()
        hidden = hidden or 4 * n_embd
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        # "gelu" is the exact erf form (nanoGPT); "gelu_tanh" is GPT-2's / BERT's tanh approximation.
        self.approximate = {"gelu": "none", "gelu_tanh": "tanh"}[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = linear(self.proj, F.gelu(linear(self.fc, x), approximate=self.approximate))
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    """Pre-LayerNorm Transformer block."""

    def __init__(self, n_embd, n_head, bias, dropout, causal, activation="gelu", eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, bias, dropout, causal)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout, activation)

    def forward(self, x, cache=None, layer=0, attn_mask=None):
        x = x + self.attn(self.ln_1(x), cache, layer, attn_mask)
        return x + self.mlp(self.ln_2(x))


def check_transformer(cfg) -> None:
    """The checks every Transformer config with positions shares (GPT, seq2seq): sizes, heads, dropout, positional
    encoding, activation."""
    from ..config import check_choice, check_fraction, check_positive

    check_positive(cfg, "block_size", "n_layer", "n_head", "n_embd")
    check_heads(cfg)
    check_fraction(cfg)
    check_choice(cfg, "pos_encoding", ("learned", "sinusoidal"))
    check_choice(cfg, "activation", ("gelu", "gelu_tanh"))
    if cfg.pos_encoding == "sinusoidal" and cfg.n_embd % 2:
        raise LmlabError("model.n_embd must be even for sinusoidal positions.")


def check_heads(cfg) -> None:
    if cfg.n_embd % cfg.n_head:
        raise LmlabError(f"model.n_embd ({cfg.n_embd}) must be divisible by model.n_head ({cfg.n_head}).")


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """Fixed positional encoding of Vaswani et al. 2017, sec. 3.5: sin on even, cos on odd dims."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


class PostLNBlock(nn.Module):
    """Post-LayerNorm Transformer block (Vaswani et al. 2017; BERT): x = LN(x + Attn(x)), then LN(x + MLP(x)).

    Same attention and MLP modules as the pre-LN `Block` (so the same weight names), normalisation after
    each residual sum instead of before each sub-layer. `hidden` is the MLP width (BERT's intermediate_size).
    """

    def __init__(self, n_embd, n_head, bias, dropout, causal=False, activation="gelu", eps=1e-12, hidden=None):
        super().__init__()
        self.attn = SelfAttention(n_embd, n_head, bias, dropout, causal)
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout, activation, hidden)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps, bias=bias)

    def forward(self, x, attn_mask=None):
        x = self.ln_1(x + self.attn(x, attn_mask=attn_mask))
        return self.ln_2(x + self.mlp(x))


class CrossAttention(nn.Module):
    """Encoder-decoder attention (Vaswani et al. 2017, sec. 3.2.3): queries from the decoder stream x [B, T, C],
    keys and values from the encoder output ("memory") [B, S, C].

    `memory_kv(memory)` projects the memory once into keys/values [B, H, S, hs]; decoding computes them once
    per source and reuses them at every step. `mask` [B, 1, 1, S] (bool, True = attend) hides source padding.
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(n_embd, n_embd, bias=bias)
        self.kv = nn.Linear(n_embd, 2 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, C = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, kv: tuple[torch.Tensor, torch.Tensor], mask=None):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class DecoderBlock(nn.Module):
    """Transformer decoder block: causal self-attention (with an optional KV cache), cross-attention over the
    encoder output, MLP. pre_norm: x + Sub(LN(x)) for each sub-layer (GPT-2 style); else LN(x + Sub(x))
    (Vaswani et al. 2017)."""

    def __init__(self, n_embd, n_head, bias, dropout, activation="gelu", eps=1e-5, pre_norm=True):
        super().__init__()
        self.pre_norm = pre_norm
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, bias, dropout, causal=True)
        self.ln_cross = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.cross = CrossAttention(n_embd, n_head, bias, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout, activation)

    def forward(self, x, memory_kv, memory_mask=None, cache: KVCache | None = None, layer: int = 0):
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache, layer)
            x = x + self.cross(self.ln_cross(x), memory_kv, memory_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache, layer))
        x = self.ln_cross(x + self.cross(x, memory_kv, memory_mask))
        return self.ln_2(x + self.mlp(x))
