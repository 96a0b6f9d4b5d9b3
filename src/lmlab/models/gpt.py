"""GPT: decoder-only causal Transformer language model (Radford et al. 2018/2019; nanoGPT's shape).

Token embedding + learned or sinusoidal positions -> n_layer pre-LN blocks -> final LayerNorm -> LM
head tied to the token embedding. Answers the causal-LM interface shared by every family:
`loss(batch)`, `logprobs_next(ids, state)` (state = KV cache) and `token_logprobs(ids)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmlabError
from . import kernels
from .base import NeuralLM
from .layers import Block, KVCache, check_transformer, init_weights, linear, sinusoidal_positions


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


class GPT(NeuralLM):
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

    @classmethod
    def training_data(cls, cfg):
        """Random windows of block_size tokens (nanoGPT)."""
        from ..data import TokenBlocks

        return TokenBlocks(cfg.data.dir, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)

    @property
    def block_size(self) -> int:
        return self.cfg.block_size

    # ------------------------------------------------------------------ forward

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, T, C] for token ids idx [B, T] (after any cached positions).

        `pad` [B]: left padding, the number of placeholder columns before each row's first real token
        (batched prompts of different lengths). A row's positions count from its first real token and its
        queries never see its padding keys, so each row computes what it would alone.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise LmlabError(f"sequence of {start + T} tokens is longer than the model's "
                             f"block_size {self.cfg.block_size}.")
        table = self.wpe.weight if self.wpe is not None else self.pos_table
        mask = None
        if pad is None:
            pos = table[start:start + T]
        else:
            cols = torch.arange(start, start + T, device=idx.device)
            pos = table[(cols - pad[:, None]).clamp(min=0)]  # [B, T, C]
            keys = torch.arange(start + T, device=idx.device)
            # [B, 1, T, keys]: causal and not padding; a padding query sees itself (no empty row: no NaN).
            mask = ((keys <= cols[:, None]) & (keys >= pad[:, None, None])) | (keys == cols[:, None])
            mask = mask[:, None]
        x = self.wte(idx) + pos
        x = self.drop(x) if self.training else x
        # A decoding step (one new position per row) on CPU runs every block in one call of the decoding
        # kernel (kernels.py), which computes what the blocks compute; otherwise, or where it cannot, the blocks.
        if not (T == 1 and cache is not None and kernels.gpt_blocks_apply(self.blocks, x, cache, pad)):
            for i, block in enumerate(self.blocks):
                x = block(x, cache, i, mask)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for every position."""
        return self.lm_head(self.hidden(idx))

    def loss(self, batch) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a training batch (x, y)."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    # ------------------------------------------------------------------ causal-LM interface

    def new_cache(self, batch: int) -> KVCache:
        c = self.cfg
        p = self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head, p.dtype, p.device)

    @torch.inference_mode()
    def logprobs_next(self, ids: torch.Tensor, state: KVCache | None = None, pad: torch.Tensor | None = None):
        """Log-probabilities [B, V] of the next token after each row of ids [B, T] (the whole history).

        `state` is the KV cache from the previous call: only the tokens it has not seen are run.
        Past block_size, the context is cropped to the last block_size tokens and recomputed
        (nanoGPT's behaviour), since learned positions stop at block_size.
        `pad` [B] (optional): rows are left-padded, row b's tokens start at column pad[b] (the ids before it
        are placeholders, never seen); pass the same pad at every step of a generation.
        """
        B, T = ids.shape
        if T > self.cfg.block_size:
            if pad is not None:
                pad = (pad - (T - self.cfg.block_size)).clamp(min=0)
            ids, T, state = ids[:, -self.cfg.block_size:], self.cfg.block_size, None
        if state is None or state.length > T or state.rows != B or state.length == T:
            state = self.new_cache(B)
            if pad is not None and bool((pad >= T).any()):
                raise LmlabError(f"every row needs a real token: left padding {pad.tolist()} for {T} columns.")
        h = self.hidden(ids[:, state.length:], state, pad)
        return F.log_softmax(linear(self.lm_head, h[:, -1]).float(), dim=-1), state

    @torch.inference_mode()
    def logprobs_last(self, ids: torch.Tensor, state: KVCache | None, n: int):
        """Log-probabilities [B, n, V] of the token after each of the last n prefixes of ids [B, T]
        (ids[:, :T-n+1] ... ids[:, :T]) in one forward pass: speculative decoding's verification step.

        The cache must hold a prefix of ids; positions it holds past T - n are recomputed. Past block_size
        each prefix is cropped to its own last block_size tokens, as logprobs_next does: the n windows then
        run side by side as one batch (no cache is kept).
        """
        B, T = ids.shape
        block = self.cfg.block_size
        if T > block:
            first = max(0, T - n + 1 - block)  # windows ids[:, s:s + block] for s = first .. T - block
            windows = ids.unfold(1, block, 1)[:, first:]
            m = windows.shape[1]
            h = self.hidden(windows.reshape(B * m, block)).view(B, m, block, -1)
            short = block - (T - n + 1)  # prefixes shorter than block: positions of the first window (s = 0)
            h = torch.cat([h[:, 0, block - 1 - short:block - 1], h[:, :, -1]], dim=1) if short > 0 else h[:, :, -1]
            return F.log_softmax(self.lm_head(h).float(), dim=-1), None
        if state is None or state.rows != B:
            state = self.new_cache(B)
        state.rollback(T - n)
        h = self.hidden(ids[:, state.length:], state)
        return F.log_softmax(self.lm_head(h[:, -n:]).float(), dim=-1), state

    @torch.inference_mode()
    def token_logprobs(self, ids, stride: int | None = None, batch_size: int = 8) -> np.ndarray:
        """Natural-log probability of ids[1:], each given up to block_size previous tokens.

        Sliding windows (HF perplexity recipe): each window predicts `stride` new tokens with
        block_size - stride tokens of extra context. stride = block_size gives disjoint windows.
        """
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)).to(self.wte.weight.device)
        n, block = ids.numel(), self.cfg.block_size
        stride = min(stride or max(1, block // 2), block)
        out = np.empty(max(n - 1, 0), dtype=np.float64)
        windows = []  # (input start, first target, end): targets ids[first:end] from inputs ids[start:end-1]
        for first in range(1, n, stride):
            end = min(first + stride, n)
            windows.append((max(0, end - 1 - block), first, end))
        full = [w for w in windows if w[2] - 1 - w[0] == block]
        partial = [w for w in windows if w[2] - 1 - w[0] != block]
        for group in [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in partial]:
            x = torch.stack([ids[s:e - 1] for s, _, e in group])
            y = torch.stack([ids[s + 1:e] for s, _, e in group])
            lp = torch.log_softmax(self(x).float(), dim=-1).gather(-1, y[..., None])[..., 0]
            for row, (s, first, e) in enumerate(group):
                out[first - 1:e - 1] = lp[row, first - s - 1:].double().cpu().numpy()
        return out
