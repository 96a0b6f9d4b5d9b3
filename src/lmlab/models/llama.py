"""Llama: the decoder of Llama, Qwen2, Mistral and SmolLM (Touvron et al. 2023), trained here or imported.

Token embedding -> n_layer pre-norm blocks -> RMSNorm -> LM head (tied to the embedding, or not). A block is
x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)) with
- RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight, no bias;
- rotary positions (RoPE, Su et al. 2021) on queries and keys, Hugging Face's layout: the two halves of each
  head's dimensions rotate together (rotate_half), with frequencies theta^(-2i/d);
- grouped-query attention (Ainslie et al. 2023): n_kv_head key/value heads, each shared by n_head / n_kv_head
  query heads (the KV cache holds only those);
- SwiGLU MLP (Shazeer 2020): down(silu(gate(x)) * up(x));
- no biases, except optional ones on q, k and v (Qwen2).
The module names are Hugging Face's (embed_tokens, layers.N.self_attn.q_proj, ..., norm, lm_head) without the
"model." prefix, so checkpoints convert by name. The causal-LM calls are decoder.DecoderLM's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_fraction, check_positive
from ..errors import LmlabError
from . import kernels
from .decoder import DecoderLM, run_block
from .layers import KVCache, init_weights, linear


@dataclass
class LlamaConfig:
    family: str = "llama"
    vocab_size: int = 0  # 0 = take it from the prepared data
    block_size: int = 256  # context length: positions the KV cache holds
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0 = n_head
    n_embd: int = 384
    head_dim: int = 0  # 0 = n_embd // n_head
    intermediate_size: int = 0  # SwiGLU width; 0 = LLaMA's 8/3 x n_embd, rounded up to a multiple of 64
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_weights: bool = True  # the LM head shares the token embedding matrix
    qkv_bias: bool = False  # biases on q, k and v (Qwen2)
    dropout: float = 0.0

    def validate(self) -> None:
        check_positive(self, "block_size", "n_layer", "n_head", "n_embd")
        if self.vocab_size < 0 or self.n_kv_head < 0 or self.head_dim < 0 or self.intermediate_size < 0:
            raise LmlabError("model.vocab_size, n_kv_head, head_dim and intermediate_size must be >= 0 "
                             "(0 = the default).")
        if self.kv_heads > self.n_head or self.n_head % self.kv_heads:
            raise LmlabError(f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head "
                             f"({self.kv_heads}): each key/value head serves the same number of query heads.")
        if not self.head_dim and self.n_embd % self.n_head:
            raise LmlabError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), "
                             "or set model.head_dim.")
        if self.dim_per_head % 2:
            raise LmlabError(f"the head dimension ({self.dim_per_head}) must be even for rotary positions.")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise LmlabError("model.rope_theta and model.rms_norm_eps must be > 0.")
        check_fraction(self)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size or 64 * math.ceil(8 * self.n_embd / 3 / 64)


def rope_tables(length: int, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, dim] of every position (Hugging Face's computation, in float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [B, heads, T, d] at the positions whose cos / sin are [T, d] or [B, 1, T, d]."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd, self.dropout = cfg.n_head, cfg.kv_heads, cfg.dim_per_head, cfg.dropout
        self.q_proj = nn.Linear(cfg.n_embd, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, mask):
        B, T, _ = x.shape
        q = linear(self.q_proj, x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = linear(self.k_proj, x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = linear(self.v_proj, x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        is_causal = mask is None
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
            if past > 0:  # new queries past..past+T-1 see every cached key and the new ones up to themselves
                is_causal = False
                if T > 1 and mask is None:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv < self.n_head)
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=False)

    def forward(self, x):
        return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        a = self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        x = x + (self.drop(a) if self.training else a)
        m = self.mlp(self.post_attention_layernorm(x))
        return x + (self.drop(m) if self.training else m)


class Llama(DecoderLM):
    family = "llama"

    def __init__(self, cfg: LlamaConfig):
        super().__init__(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.block_size, cfg.dim_per_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(init_weights)
        for block in self.layers:  # GPT-2's scaled init of the projections into the residual stream
            for proj in (block.self_attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None,
               segments: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, T, C] for token ids idx [B, T] (after any cached positions); `pad` [B]: left
        padding (decoder.padded_positions: each row's rotary positions count from its first real token);
        `segments` [B, T]: rows packing several examples (decoder.packed_positions)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        self.check_length(start, T)
        positions, mask = self.layout(start, T, pad, segments, idx.device)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, d]: per row, broadcast over the heads
        x = self.embed_tokens(idx)
        x = self.drop(x) if self.training else x
        if not (T == 1 and cache is not None and kernels.llama_blocks_apply(self, x, cache, positions, pad)):
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
            for i, block in enumerate(self.layers):
                x = run_block(self, block, x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def new_cache(self, batch: int) -> KVCache:
        c = self.cfg
        p = self.embed_tokens.weight
        return KVCache(c.n_layer, batch, c.kv_heads, c.block_size, c.dim_per_head, p.dtype, p.device)
