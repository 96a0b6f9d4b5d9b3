"""GPT: decoder-only causal Transformer language model (Radford et al. 2018/2019; nanoGPT's shape).

Token embedding + learned or sinusoidal positions -> n_layer pre-LN blocks -> final LayerNorm -> LM
head tied to the token embedding. The causal-LM calls (`loss`, `logprobs_next` with the KV cache as its state,
`token_logprobs`, ...) are decoder.DecoderLM's, shared with the Llama family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import LmlabError
from . import kernels
from .decoder import DecoderLM, run_block
from .layers import Block, KVCache, check_transformer, init_weights, sinusoidal_positions


@dataclass
class GPTConfig:
    family: str = "gpt"
    vocab_size: int = 0  # 0 = take it from the prepared data
    block_size: int = 256  # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2: true; nanoGPT's default: false)
    pos_encoding: str = "learned"  # learned | sinusoidal
    tie_weights: bool = True  # LM head shares the token embedding matrix
    activation: str = "gelu"  # gelu (exact) | gelu_tanh (GPT-2)
    layer_norm_eps: float = 1e-5

    def validate(self) -> None:
        check_transformer(self)
        if self.vocab_size < 0:
            raise LmlabError(f"model.vocab_size must be >= 0 (0 = from the data), got {self.vocab_size}.")


class GPT(DecoderLM):
    family = "gpt"

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.wpe = None
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.n_embd, cfg.n_head, cfg.bias, cfg.dropout, causal=True,
                  activation=cfg.activation, eps=cfg.layer_norm_eps) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(init_weights)
        # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * n_layer).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None,
               segments: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, T, C] for token ids idx [B, T] (after any cached positions); `pad` [B]: left
        padding (decoder.padded_positions); `segments` [B, T]: rows packing several examples
        (decoder.packed_positions)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        self.check_length(start, T)
        positions, mask = self.layout(start, T, pad, segments, idx.device)
        table = self.wpe.weight if self.wpe is not None else self.pos_table
        x = self.wte(idx) + table[positions]
        x = self.drop(x) if self.training else x
        # A decoding step (one new position per row) on CPU runs every block in one call of the decoding
        # kernel (kernels.py), which computes what the blocks compute; otherwise, or where it cannot, the blocks.
        if not (T == 1 and cache is not None and kernels.gpt_blocks_apply(self.blocks, x, cache, pad)):
            for i, block in enumerate(self.blocks):
                x = run_block(self, block, x, cache, i, mask)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def new_cache(self, batch: int) -> KVCache:
        c = self.cfg
        p = self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head, p.dtype, p.device)
