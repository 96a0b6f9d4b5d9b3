"""BERT-style encoder (Devlin et al. 2019): masked-LM pretraining and a classification head.

Token + learned position + segment (token type) embeddings -> LayerNorm -> dropout -> n_layer post-LayerNorm
blocks (bidirectional attention, GELU MLP; layers.PostLNBlock) -> hidden states [B, T, C]. On top, one of:
- the masked-LM head (num_labels = 0, mlm_head true): dense -> GELU -> LayerNorm -> decoder tied to the token
  embedding + bias, as BERT's `cls.predictions`; trained by `lmlab train` on data prepared with a WordPiece
  tokenizer (MLMBlocks: 15% of the tokens chosen, 80% -> [MASK], 10% -> a random token, 10% unchanged);
- a classification head (num_labels >= 2): the [CLS] vector (pooling "cls") or the mean over the real tokens
  ("mean"), BERT's pooler (dense + tanh; pooler true), dropout, a linear layer. Trained by `lmlab classify`.
- nothing (an imported BertModel without its pretraining heads: num_labels 0, mlm_head false): hidden states only.

Weights import from any Hugging Face BertModel (`lmlab convert --from hf-bert`, lmlab.convert): hidden states match
transformers' to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_choice, check_fraction, check_positive
from ..errors import LmlabError
from .base import checked_config
from .classifier import ClassifierMixin, check_classifier, pool
from .layers import PostLNBlock, check_heads, init_weights

POOLINGS = ("cls", "mean")


@dataclass
class EncoderConfig:
    family: str = "encoder"
    vocab_size: int = 0  # 0 = take it from the prepared data
    block_size: int = 128  # maximum sequence length (learned positions; BERT: 512)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_inner: int = 0  # MLP width (BERT's intermediate_size); 0 = 4 * n_embd
    type_vocab_size: int = 2  # segments (sentence A / B)
    dropout: float = 0.1
    activation: str = "gelu"  # gelu (exact; BERT's "gelu") | gelu_tanh
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    num_labels: int = 0  # 0: masked-LM model (or bare encoder); >= 2: classifier
    pooling: str = "cls"  # cls | mean (classifier)
    pooler: bool = True  # BERT's pooler: dense + tanh on the pooled vector (the classifier's input)
    mlm_head: bool = True  # masked-LM head when num_labels is 0
    mlm_probability: float = 0.15  # share of tokens chosen for masked-LM prediction

    def validate(self) -> None:
        check_positive(self, "block_size", "n_layer", "n_head", "n_embd", "type_vocab_size")
        if self.vocab_size < 0 or self.n_inner < 0:
            raise LmlabError("model.vocab_size and model.n_inner must be >= 0 (0 = default).")
        check_heads(self)
        check_choice(self, "activation", ("gelu", "gelu_tanh"))
        if not 0 < self.mlm_probability < 1:
            raise LmlabError(f"model.mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.num_labels:
            check_classifier(self, POOLINGS)
        else:
            check_fraction(self)


class MLMHead(nn.Module):
    """BERT's cls.predictions: transform (dense, GELU, LayerNorm), then the decoder tied to the token embedding."""

    def __init__(self, cfg: EncoderConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.decoder.weight = embedding.weight

    def forward(self, h):
        return self.decoder(self.ln(F.gelu(self.dense(h), approximate=self.approximate)))


class Encoder(ClassifierMixin, nn.Module):
    family = "encoder"

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = checked_config(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.ln_emb = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            PostLNBlock(cfg.n_embd, cfg.n_head, True, cfg.dropout, causal=False, activation=cfg.activation,
                        eps=cfg.layer_norm_eps, hidden=cfg.n_inner or 4 * cfg.n_embd) for _ in range(cfg.n_layer))
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd) if cfg.pooler else None
        self.classifier = nn.Linear(cfg.n_embd, cfg.num_labels) if cfg.num_labels else None
        self.mlm = MLMHead(cfg, self.wte) if not cfg.num_labels and cfg.mlm_head else None
        self.apply(init_weights)  # BERT: N(0, 0.02) weights, zero biases; LayerNorm gains 1
        if self.mlm is not None:
            nn.init.zeros_(self.mlm.decoder.bias)

    @classmethod
    def training_data(cls, cfg):
        """Masked-LM batches from a prepared data directory (WordPiece ids)."""
        if cfg.model.num_labels:
            return super().training_data(cfg)
        if not cfg.model.mlm_head:
            raise LmlabError("model.mlm_head is false, so this encoder has nothing to pretrain; set it true.")
        return MLMBlocks(cfg.data.dir, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed,
                         cfg.model.mlm_probability)

    # ------------------------------------------------------------------ forward

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, T, C] of ids [B, T]; mask [B, T] is true on real tokens (None: all real)."""
        B, T = ids.shape
        if T > self.cfg.block_size:
            raise LmlabError(f"sequence of {T} tokens is longer than the encoder's block_size {self.cfg.block_size}.")
        x = self.wte(ids) + self.wpe.weight[:T]
        x = x + (self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0])
        x = self.drop(self.ln_emb(x))
        attn_mask = None
        if mask is not None and not bool(mask.all()):
            attn_mask = mask[:, None, None, :]  # [B, 1, 1, T]: every query sees the real keys of its row
        for block in self.blocks:
            x = block(x, attn_mask)
        return x

    def forward(self, ids, mask=None, token_type_ids=None):
        return self.hidden(ids, mask, token_type_ids)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_labels]."""
        if self.classifier is None:
            raise LmlabError("this encoder has no classification head (num_labels 0); fine-tune it with "
                             "`lmlab classify train --model encoder --init RUN`.")
        v = pool(self.hidden(ids, mask), mask, self.cfg.pooling)
        if self.pooler is not None:
            v = torch.tanh(self.pooler(v))
        return self.classifier(self.drop(v))

    def loss(self, batch) -> torch.Tensor:
        """Classifier: cross-entropy on the labels of (ids, mask, labels). MLM: cross-entropy on the chosen
        tokens of (ids, labels), labels -100 where nothing is predicted."""
        if self.classifier is not None:
            return super().loss(batch)
        if self.mlm is None:
            raise LmlabError("this encoder has no masked-LM head (model.mlm_head false) and no classifier.")
        ids, labels = batch[0], batch[1]
        h = self.hidden(ids)
        chosen = labels != -100
        return F.cross_entropy(self.mlm(h[chosen]).float(), labels[chosen])


# ---------------------------------------------------------------------------------------------
# Masked-LM data
# ---------------------------------------------------------------------------------------------


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, vocab_size: int, mask_id: int,
                special_ids, probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: choose `probability` of the non-special tokens; of those 80% -> [MASK], 10% -> a random
    token, 10% unchanged. Returns (inputs, labels) with labels -100 where the token was not chosen."""
    special = torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype))
    draw = torch.rand(ids.shape, generator=generator)
    chosen = (draw < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    how = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (how < 0.8)] = mask_id
    randomised = chosen & (how >= 0.8) & (how < 0.9)
    inputs[randomised] = torch.randint(vocab_size, ids.shape, generator=generator)[randomised]
    return inputs, labels


def _tokenizer_of(data_dir):
    from ..tokenizer import WordPieceTokenizer, load_tokenizer

    tok = load_tokenizer(data_dir)
    if not isinstance(tok, WordPieceTokenizer):
        raise LmlabError(f"masked-LM pretraining needs data prepared with a WordPiece tokenizer ({data_dir} uses "
                         f"{tok.kind}); prepare it with a BERT tokenizer.json (e.g. one from `lmlab convert`).")
    return tok


class MLMBlocks:
    """Windows of the prepared ids, each [CLS] + block_size - 1 tokens, masked as BERT does ([SEP] between documents).

    `batch(split, index)` -> (inputs, labels), a pure function of (seed, split, index) like TokenBlocks.
    """

    def __init__(self, data_dir, block_size: int, batch_size: int, seed: int = 0, probability: float = 0.15):
        from ..data import TokenBlocks

        self.tokenizer = _tokenizer_of(data_dir)
        self.windows = TokenBlocks(data_dir, max(1, block_size - 2), batch_size, seed)  # + 1 token, + [CLS]
        self.seed, self.probability = seed, probability

    def split(self, split: str) -> np.ndarray:
        return self.windows.split(split)

    def batch(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data import _seed_for

        x, y = self.windows.batch(split, index)
        tok = self.tokenizer
        ids = torch.cat([torch.full((x.shape[0], 1), tok.cls_id, dtype=x.dtype), x, y[:, -1:]], dim=1)
        gen = torch.Generator().manual_seed(_seed_for(self.seed + 1, split, int(index)))
        return mask_tokens(ids, gen, tok.vocab_size, tok.mask_id, tok.special_ids, self.probability)
