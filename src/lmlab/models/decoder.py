"""What every decoder-only Transformer with a KV cache shares (GPT, Llama): the causal-LM calls, written once.

A family subclasses `DecoderLM` and gives `hidden(idx, cache, pad)` (the final hidden states of ids, after the
cached positions, with the final norm), `new_cache(batch)` and an `lm_head`; it gets `forward`, `loss`,
`training_data` (random windows of block_size tokens, nanoGPT's), `logprobs_next` (the KV cache as its DecodeState,
left padding, nanoGPT's context cropping past block_size), `logprobs_last` (speculative decoding's verification in
one pass) and `token_logprobs` (sliding windows, the HF perplexity recipe).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LmlabError
from .base import NeuralLM
from .layers import KVCache, linear


def padded_positions(start: int, T: int, pad: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions of the columns start .. start+T-1 and the attention mask of left-padded rows.

    Without padding: positions [T] and no mask (causal attention). With pad [B] (placeholder columns before each
    row's first real token): positions [B, T] counting from each row's first real token, and a mask
    [B, 1, T, start + T] that is causal and hides the padding keys; a padding query sees itself (no empty row, no
    NaN), so each row computes what it would alone.
    """
    cols = torch.arange(start, start + T, device=device)
    if pad is None:
        return cols, None
    keys = torch.arange(start + T, device=device)
    mask = ((keys <= cols[:, None]) & (keys >= pad[:, None, None])) | (keys == cols[:, None])
    return (cols - pad[:, None]).clamp(min=0), mask[:, None]


def packed_positions(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [B, T] and attention mask [B, 1, T, T] of rows that pack several examples (segments [B, T]: the
    example each column belongs to, -1 for the padding at a row's end). Each example attends causally to itself
    only and its positions count from 0, so it computes what it computes alone in a row of its own."""
    T = segments.shape[1]
    cols = torch.arange(T, device=segments.device)
    begins = torch.ones_like(segments, dtype=torch.bool)
    begins[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(begins, cols, 0).cummax(dim=1).values  # the column where each column's example starts
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    return cols - first, mask[:, None]


def run_block(model, block, *args):
    """block(*args), through activation checkpointing (torch.utils.checkpoint: the block's activations are
    recomputed in the backward pass instead of kept) when model.checkpoint_blocks is set and it trains."""
    if model.checkpoint_blocks and model.training and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class DecoderLM(NeuralLM):
    """A decoder-only Transformer LM with a KV cache (see the module docstring)."""

    checkpoint_blocks = False  # train.gradient_checkpointing: run_block recomputes each block in the backward pass

    @classmethod
    def training_data(cls, cfg):
        """Random windows of block_size tokens (nanoGPT), or a fine-tuning directory's examples with the loss on
        their answers (tasks/finetune.py)."""
        from ..data import TokenBlocks, read_meta

        if read_meta(cfg.data.dir).get("task") == "sft":
            from ..tasks.finetune import training_batches

            return training_batches(cfg)
        return TokenBlocks(cfg.data.dir, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)

    @property
    def block_size(self) -> int:
        return self.cfg.block_size

    def check_length(self, start: int, T: int) -> None:
        if start + T > self.cfg.block_size:
            raise LmlabError(f"sequence of {start + T} tokens is longer than the model's "
                             f"block_size {self.cfg.block_size}.")

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None,
               segments: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def layout(self, start: int, T: int, pad, segments, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions and attention mask of the columns: packed examples (packed_positions), left padding, or
        plain causal (decoder.padded_positions)."""
        if segments is not None:
            if start:
                raise LmlabError("packed rows (segments) are for training passes, not for a KV cache.")
            return packed_positions(segments)
        return padded_positions(start, T, pad, device)

    def new_cache(self, batch: int) -> KVCache:
        raise NotImplementedError

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for every position."""
        return self.lm_head(self.hidden(idx))

    def loss(self, batch) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a training batch (x, y) over the targets that are not -100;
        (x, y, segments): rows that pack several examples (packed_positions).

        Where some are -100 (fine-tuning: prompts and padding), the LM head runs on the other positions only, the
        same mean for less: with SmolLM2's 49,152-token head, logits of every position were ~20% of a step's
        forward compute and its largest tensors."""
        x, y, *packed = batch
        h = self.hidden(x, segments=packed[0] if packed else None)
        keep = y != -100
        if not bool(keep.all()):
            h, y = h[keep], y[keep]
        logits = self.lm_head(h)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.inference_mode()
    def logprobs_next(self, ids: torch.Tensor, state: KVCache | None = None, pad: torch.Tensor | None = None):
        """Log-probabilities [B, V] of the next token after each row of ids [B, T] (the whole history).

        `state` is the KV cache from the previous call: only the tokens it has not seen are run.
        Past block_size, the context is cropped to the last block_size tokens and recomputed
        (nanoGPT's behaviour), since positions stop at block_size.
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
    def token_logprobs(self, ids, stride: int | None = None, batch_size: int = 8,
                       context: int | None = None) -> np.ndarray:
        """Natural-log probability of ids[1:], each given up to block_size previous tokens (or `context`, when
        smaller: windows of a long-context model cost T^2 in attention).

        Sliding windows (HF perplexity recipe): each window predicts `stride` new tokens with
        window - stride tokens of extra context. stride = the window gives disjoint windows.
        """
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)).to(self.device)
        n, block = ids.numel(), min(self.cfg.block_size, context or self.cfg.block_size)
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
