"""Encoder-decoder Transformer (Vaswani et al. 2017) for translation, summarization and denoising pretraining.

Source ids [B, S] -> token embedding x sqrt(n_embd) + sinusoidal (or learned) positions -> n_layer encoder
blocks (bidirectional self-attention; source padding hidden by a key mask) -> memory [B, S, C].
Target ids [B, T] (shifted right: the end-of-sequence token starts every target, as BART's decoder does) ->
the same embedding -> n_decoder_layer decoder blocks (causal self-attention, cross-attention over the memory,
MLP) -> LM head. One matrix serves the encoder embedding, the decoder embedding and the LM head (tie_weights;
the BPE vocabulary is shared by both languages). norm "pre" puts LayerNorm before each sub-layer (GPT-2; steady
without a long warmup), "post" after each residual sum (the original Transformer).

Training is teacher forcing: `loss(batch)` is the label-smoothed cross-entropy of the target tokens (padding
ignored); validation (eval mode) reports the plain cross-entropy, so val loss stays a log-likelihood.

Decoding goes through the one decoding driver (lmlab.decoding): the model is an EncoderDecoder (models/base.py),
`bind(src)` encodes a batch of sources once and returns a `BoundDecoder`, a CausalLM over target ids whose
`logprobs_next(target_ids, state)` state (a DecodeState) holds the decoder's self-attention KV cache, the
per-layer cross-attention keys/values of the memory and the source padding mask, row by row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmlabError
from .base import checked_config, logprobs_last_by_steps
from ..config import check_choice, check_fraction
from .layers import Block, DecoderBlock, KVCache, check_transformer, init_weights, sinusoidal_positions


@dataclass
class Seq2SeqConfig:
    family: str = "seq2seq"
    vocab_size: int = 0  # 0 = take it from the prepared data
    block_size: int = 128  # longest source and longest target, in tokens (end-of-sequence token included)
    n_layer: int = 3  # encoder blocks
    n_decoder_layer: int = 0  # decoder blocks; 0 = n_layer
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True
    norm: str = "pre"  # pre | post (LayerNorm before each sub-layer, or after each residual sum)
    pos_encoding: str = "sinusoidal"  # sinusoidal (Vaswani et al.) | learned
    tie_weights: bool = True  # one matrix: encoder embedding, decoder embedding, LM head
    label_smoothing: float = 0.1  # Szegedy et al. 2016; Vaswani et al. used 0.1
    activation: str = "gelu"  # gelu | gelu_tanh
    layer_norm_eps: float = 1e-5
    # Special ids, filled from the prepared data's meta.json (-1 = not set yet).
    eos_id: int = -1  # end of sequence; also the decoder's start token
    pad_id: int = -1
    mask_id: int = -1  # the denoising objective's <mask>

    def validate(self) -> None:
        check_transformer(self)
        if self.n_decoder_layer < 0 or self.vocab_size < 0:
            raise LmlabError("model.n_decoder_layer and model.vocab_size must be >= 0 (0 = default).")
        check_fraction(self, "label_smoothing")
        check_choice(self, "norm", ("pre", "post"))
        if self.block_size < 2:
            raise LmlabError("model.block_size must be at least 2 (a token and the end-of-sequence token).")


@dataclass
class DecoderState:
    """What decoding carries from step to step, row by row (one row per hypothesis): a DecodeState."""
    cache: KVCache  # decoder self-attention keys/values
    memory_k: torch.Tensor  # cross-attention keys of every decoder layer [L, B, H, S, hs]
    memory_v: torch.Tensor
    mask: torch.Tensor  # source padding [B, 1, 1, S], True = a real token

    @property
    def length(self) -> int:
        return self.cache.length

    def select(self, rows: torch.Tensor) -> "DecoderState":
        return DecoderState(self.cache.select(rows), self.memory_k.index_select(1, rows),
                            self.memory_v.index_select(1, rows), self.mask.index_select(0, rows))

    def extend(self, other: "DecoderState") -> "DecoderState":
        """Both states' rows; sources of different lengths are padded to the longer one (and masked)."""
        S = max(self.mask.shape[-1], other.mask.shape[-1])

        def widen(state):
            extra = S - state.mask.shape[-1]
            return (F.pad(state.memory_k, (0, 0, 0, extra)), F.pad(state.memory_v, (0, 0, 0, extra)),
                    F.pad(state.mask, (0, extra), value=False))

        (k1, v1, m1), (k2, v2, m2) = widen(self), widen(other)
        return DecoderState(self.cache.extend(other.cache), torch.cat([k1, k2], 1), torch.cat([v1, v2], 1),
                            torch.cat([m1, m2]))

    def trim(self, columns: int) -> "DecoderState":
        return DecoderState(self.cache.trim(columns), self.memory_k, self.memory_v, self.mask)

    def rollback(self, length: int) -> "DecoderState":
        return DecoderState(self.cache.rollback(length), self.memory_k, self.memory_v, self.mask)


class Seq2Seq(nn.Module):
    family = "seq2seq"

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        checked_config(cfg, "prepare data with `lmlab seq2seq prepare` first")
        for name in ("eos_id", "pad_id"):
            if not 0 <= getattr(cfg, name) < cfg.vocab_size:
                raise LmlabError(f"model.{name} is {getattr(cfg, name)}, not a token of the vocabulary; train on data "
                                 "written by `lmlab seq2seq prepare`, which sets it.")
        self.cfg = cfg
        C, V = cfg.n_embd, cfg.vocab_size
        self.n_decoder_layer = cfg.n_decoder_layer or cfg.n_layer
        self.wte = nn.Embedding(V, C)
        self.dec_wte = None if cfg.tie_weights else nn.Embedding(V, C)
        if cfg.pos_encoding == "learned":
            self.enc_wpe, self.dec_wpe = nn.Embedding(cfg.block_size, C), nn.Embedding(cfg.block_size, C)
        else:
            self.enc_wpe = self.dec_wpe = None
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, C), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        pre = cfg.norm == "pre"
        self.encoder = nn.ModuleList(Block(C, cfg.n_head, cfg.bias, cfg.dropout, causal=False,
                                           activation=cfg.activation, eps=cfg.layer_norm_eps)
                                     for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderBlock(C, cfg.n_head, cfg.bias, cfg.dropout, cfg.activation,
                                                  cfg.layer_norm_eps, pre_norm=pre)
                                     for _ in range(self.n_decoder_layer))
        # Pre-LN stacks end with a LayerNorm (their residual stream is never normalised otherwise).
        self.enc_ln = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias) if pre else None
        self.dec_ln = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias) if pre else None
        self.lm_head = nn.Linear(C, V, bias=False)
        # N(0, 0.02) everywhere (GPT-2), embeddings included. Embeddings are multiplied by sqrt(n_embd) (Vaswani
        # et al. sec. 3.4). fairseq's N(0, 1/n_embd) start was tried and dropped: with the tied head, each
        # position's own input token then gets a logit of ~sqrt(n_embd) (initial loss ~14 instead of ln V), and
        # unlearning that shrinks the shared embedding until the encoder output hardly depends on the source
        # (a 2 x 64 model never learned to copy 6 tokens in 300 steps; with N(0, 0.02) it did).
        self.apply(init_weights)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if pre:  # GPT-2: projections into the residual stream start smaller, by 1/sqrt(2 * depth)
            for block, depth in [(b, cfg.n_layer) for b in self.encoder] + [(b, self.n_decoder_layer) for b in self.decoder]:
                projs = [block.attn.proj, block.mlp.proj] + ([block.cross.proj] if hasattr(block, "cross") else [])
                for proj in projs:
                    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * depth))

    @classmethod
    def training_data(cls, cfg):
        """Padded (source, target input, target output) batches of a `lmlab seq2seq prepare` directory; a
        monolingual (denoising) directory corrupts each source on the fly. Sets the special ids of cfg.model
        from the data's meta.json."""
        from ..tasks.pairs import training_batches

        return training_batches(cfg)

    @property
    def block_size(self) -> int:
        return self.cfg.block_size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward

    def _embed(self, ids: torch.Tensor, table: nn.Embedding, wpe, start: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.cfg.block_size:
            raise LmlabError(f"a sequence of {start + T} tokens is longer than the model's block_size "
                             f"{self.cfg.block_size}.")
        pos = wpe.weight[start:start + T] if wpe is not None else self.pos_table[start:start + T]
        return self.drop(table(ids) * math.sqrt(self.cfg.n_embd) + pos)

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """[B, 1, 1, S] bool: True where the source holds a real token (not padding)."""
        return (src != self.cfg.pad_id)[:, None, None, :]

    def encode(self, src: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [B, S, C] of source ids [B, S] (right-padded with pad_id)."""
        mask = self.source_mask(src) if mask is None else mask
        x = self._embed(src, self.wte, self.enc_wpe)
        for block in self.encoder:
            if self.cfg.norm == "pre":
                x = block(x, attn_mask=mask)
            else:  # the same sub-layers, LayerNorm after each residual sum
                x = block.ln_1(x + block.attn(x, attn_mask=mask))
                x = block.ln_2(x + block.mlp(x))
        return self.enc_ln(x) if self.enc_ln is not None else x

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of every decoder layer: two [L, B, H, S, hs] tensors."""
        kvs = [block.cross.memory_kv(memory) for block in self.decoder]
        return torch.stack([k for k, _ in kvs]), torch.stack([v for _, v in kvs])

    def decode(self, tgt: torch.Tensor, memory_k, memory_v, mask, cache: KVCache | None = None) -> torch.Tensor:
        """Final decoder hidden states [B, T, C] of target ids [B, T] (after any cached positions)."""
        start = cache.length if cache is not None else 0
        table = self.dec_wte if self.dec_wte is not None else self.wte
        x = self._embed(tgt, table, self.dec_wpe, start)
        for i, block in enumerate(self.decoder):
            x = block(x, (memory_k[i], memory_v[i]), mask, cache, i)
        if cache is not None:
            cache.length += tgt.shape[1]
        return self.dec_ln(x) if self.dec_ln is not None else x

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of the next target token at every target position (teacher forcing)."""
        mask = self.source_mask(src)
        k, v = self.memory_kv(self.encode(src, mask))
        return self.lm_head(self.decode(tgt, k, v, mask))

    def loss(self, batch) -> torch.Tensor:
        """Mean label-smoothed cross-entropy (nats) over the real target tokens of (src, tgt_in, tgt_out);
        padding in tgt_out is -100. In eval mode there is no smoothing: the loss is the plain NLL."""
        src, tgt_in, tgt_out = batch
        logits = self(src, tgt_in)
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt_out.reshape(-1),
                               ignore_index=-100, label_smoothing=smoothing)

    # ------------------------------------------------------------------ decoding

    def bind(self, src: torch.Tensor) -> "BoundDecoder":
        """A decoder for these (padded) sources [B, S]: their encoder output is computed once, here."""
        return BoundDecoder(self, src)


class BoundDecoder:
    """The seq2seq model seen by the decoding driver as a CausalLM over target ids, for a fixed batch of sources.

    Row r of the target ids belongs to source r // (rows / sources): with num_return_sequences n, each source's
    n rows sit together. Padding and <mask> are never produced. Target rows all start at once (with the
    end-of-sequence token), so they are never left-padded.
    """

    family = "seq2seq"

    def __init__(self, model: Seq2Seq, src: torch.Tensor):
        self.model = model
        self.cfg = model.cfg
        self.block_size, self.vocab_size = model.cfg.block_size, model.cfg.vocab_size
        self.device = next(model.parameters()).device
        src = src.to(self.device)
        with torch.inference_mode():
            self.mask = model.source_mask(src)
            self.memory_k, self.memory_v = model.memory_kv(model.encode(src, self.mask))
        self.banned = [i for i in (model.cfg.pad_id, model.cfg.mask_id) if 0 <= i < model.cfg.vocab_size]

    def new_state(self, rows: int) -> DecoderState:
        sources = self.mask.shape[0]
        if rows % sources:
            raise LmlabError(f"{rows} target rows cannot be spread over {sources} sources.")
        k, v, mask = self.memory_k, self.memory_v, self.mask
        if rows != sources:
            index = torch.arange(sources, device=mask.device).repeat_interleave(rows // sources)
            k, v, mask = k.index_select(1, index), v.index_select(1, index), mask.index_select(0, index)
        c = self.cfg
        cache = KVCache(self.model.n_decoder_layer, rows, c.n_head, c.block_size, c.n_embd // c.n_head,
                        k.dtype, k.device)
        return DecoderState(cache, k, v, mask)

    @torch.inference_mode()
    def logprobs_next(self, ids: torch.Tensor, state: DecoderState | None = None, pad: torch.Tensor | None = None):
        """Log-probabilities [B, V] of the next target token after each row of target ids [B, T]."""
        B, T = ids.shape
        if T > self.block_size:
            raise LmlabError(f"a target of {T} tokens is longer than the model's block_size {self.block_size}; "
                             "lower max_new_tokens.")
        if pad is not None and bool(pad.any()):
            raise LmlabError("seq2seq target rows all start with the end-of-sequence token; they cannot be "
                             "left-padded.")
        if state is None or state.cache.length >= T or state.cache.rows != B:
            state = self.new_state(B)
        h = self.model.decode(ids[:, state.cache.length:], state.memory_k, state.memory_v, state.mask, state.cache)
        logits = self.model.lm_head(h[:, -1]).float()
        if self.banned:
            logits[:, self.banned] = float("-inf")
        return F.log_softmax(logits, dim=-1), state

    def logprobs_last(self, ids: torch.Tensor, state, n: int):
        return logprobs_last_by_steps(self, ids, state, n)

    @staticmethod
    def reorder_state(state: DecoderState, rows: torch.Tensor) -> DecoderState:
        return state.select(rows)

    def token_logprobs(self, ids):
        raise LmlabError("a seq2seq decoder scores target tokens given a source: use `lmlab eval RUN --data SRC "
                         "--refs REF` for the model's output, or the training loss for teacher-forced targets.")
