"""Recurrent language models: Elman RNN (tanh), LSTM and GRU, on PyTorch's fused nn.RNN / nn.LSTM / nn.GRU.

Embedding -> dropout -> n_layer stacked recurrent layers (dropout between them) -> dropout -> linear
decoder, optionally tied to the embedding (Press & Wolf 2017; Inan et al. 2017). Dropout is applied to
the non-recurrent connections only, as in Zaremba et al. 2014, "Recurrent neural network regularization".

Training is truncated BPTT over contiguous streams (data.TokenStreams, PyTorch's word_language_model):
the model carries its hidden state from one batch to the next, detached so gradients stop at the chunk
boundary, and zeroes it when a batch says `reset` (the first chunk of an epoch). Training and evaluation
carry separate states, so the Trainer's periodic evaluation does not disturb the training streams.
Documents are separated by the tokenizer's end-of-text token (data.prepare writes it before every document
but the first, for BPE): each row's state is zeroed just before it reads that token, so a new document starts
from the same state as the first one, in training, evaluation and generation alike.

Answers the causal-LM interface shared by every family: `loss(batch)`, `logprobs_next(ids, state)` (state =
hidden state + tokens consumed) and `token_logprobs(ids)` (the whole history, carried through the text).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_choice, check_fraction, check_positive
from ..errors import LmlabError
from .base import NeuralLM
from .classifier import ClassifierMixin, check_classifier, pool

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig:
    family: str = "rnn"
    cell: str = "lstm"  # rnn (Elman, tanh) | lstm | gru
    vocab_size: int = 0  # 0 = take it from the prepared data
    block_size: int = 35  # truncated-BPTT length: tokens per training chunk (not a limit on the context)
    n_embd: int = 200  # embedding size
    n_hidden: int = 200  # hidden units per layer
    n_layer: int = 2
    dropout: float = 0.0  # on embeddings, between layers and before the decoder (Zaremba et al. 2014)
    tie_weights: bool = False  # decoder shares the embedding matrix; needs n_embd == n_hidden
    eot_id: int = -1  # end-of-text token of the data (set by `lmlab train` from meta.json); -1: none

    def validate(self) -> None:
        check_positive(self, "block_size", "n_layer", "n_embd", "n_hidden")
        if self.vocab_size < 0:
            raise LmlabError(f"model.vocab_size must be >= 0 (0 = from the data), got {self.vocab_size}.")
        check_choice(self, "cell", CELLS)
        check_fraction(self)
        if self.tie_weights and self.n_embd != self.n_hidden:
            raise LmlabError(f"model.tie_weights needs model.n_embd == model.n_hidden (got {self.n_embd} and "
                             f"{self.n_hidden}); make them equal or set model.tie_weights false.")


def detach(hidden):
    """Cut the graph behind a hidden state (a tensor, or LSTM's (h, c) pair): truncated BPTT."""
    return None if hidden is None else _map(hidden, lambda h: h.detach())


def _first(hidden) -> torch.Tensor:
    return hidden[0] if isinstance(hidden, tuple) else hidden


def _rows(hidden) -> int:
    return _first(hidden).shape[1]


def _zero_rows(hidden, rows: torch.Tensor):
    """The hidden state with the rows where `rows` is true set to zero (no in-place write: autograd safe)."""
    if hidden is None:
        return None  # None already means zeros
    keep = (~rows).to(_first(hidden).dtype)[None, :, None]
    return _map(hidden, lambda h: h * keep)


class RNNState:
    """The decoding state of a recurrent model (a DecodeState): the hidden state of each row after the first
    `length` columns, and each row's last output. Rows of different lengths share the columns (left padding:
    a shorter row's state is simply its own), so appending rows and trimming columns move no numbers."""

    def __init__(self, hidden, length: int, last: torch.Tensor):
        self.hidden, self.length, self.last = hidden, length, last

    def select(self, rows: torch.Tensor) -> "RNNState":
        """The state of the given batch rows, in that order (beam search; a server's batch drops rows)."""
        return RNNState(_map(self.hidden, lambda h: h.index_select(1, rows)), self.length,
                        self.last.index_select(0, rows))

    def extend(self, other: "RNNState") -> "RNNState":
        hidden = _map(self.hidden, lambda h, o: torch.cat([h, o], 1), other.hidden)
        return RNNState(hidden, max(self.length, other.length), torch.cat([self.last, other.last]))

    def trim(self, columns: int) -> "RNNState":
        return RNNState(self.hidden, self.length - columns, self.last)

    def rollback(self, length: int) -> "RNNState | None":
        """A recurrent state cannot forget tokens: only "no change" is possible (else None: recompute)."""
        return self if length >= self.length else None


def _map(hidden, fn, *others):
    """fn over a hidden state's tensors (LSTM: the (h, c) pair), pairing them with others' tensors."""
    if isinstance(hidden, tuple):
        return tuple(fn(*parts) for parts in zip(hidden, *others))
    return fn(hidden, *others)


class RNNLM(NeuralLM):
    family = "rnn"

    def __init__(self, cfg: RNNConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        # nn.RNN/LSTM/GRU apply their `dropout` between stacked layers only (not after the last one).
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        # word_language_model's initialisation: U(-0.1, 0.1) embedding and decoder, zero decoder bias.
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        if not cfg.tie_weights:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        nn.init.zeros_(self.lm_head.bias)
        self._carried = {True: None, False: None}  # hidden state carried across batches, per train/eval mode

    @classmethod
    def training_data(cls, cfg):
        """Contiguous streams for truncated BPTT (the hidden state flows from one batch to the next)."""
        from ..data import TokenStreams

        return TokenStreams(cfg.data.dir, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)

    @property
    def block_size(self) -> None:
        """No context limit: the hidden state summarises the whole history (block_size is the BPTT length)."""
        return None

    # ------------------------------------------------------------------ forward

    def forward(self, idx: torch.Tensor, hidden=None, starts: torch.Tensor | None = None):
        """Logits [B, T, V] for token ids idx [B, T] after `hidden` (None = zeros), and the new hidden state.

        A row's state is zeroed just before each end-of-text token it reads (the start of a new document), and
        before column starts[b] of row b (its first real token after left padding): the sequence is run in
        pieces cut at those columns, so the fused kernel still does the work.
        """
        T = idx.shape[1]
        reset = (idx == self.cfg.eot_id) if self.cfg.eot_id >= 0 else None  # [B, T]: zero the row's state here
        if starts is not None:
            first = torch.arange(T, device=idx.device)[None, :] == starts[:, None]
            reset = first if reset is None else reset | first
        cuts = [] if reset is None else torch.nonzero(reset.any(0)).flatten().tolist()
        pieces, start = [], 0
        for cut in cuts + [T]:
            if cut > start:
                out, hidden = self.rnn(self.drop(self.wte(idx[:, start:cut])), hidden)
                pieces.append(out)
            if cut < T:
                hidden = _zero_rows(hidden, reset[:, cut])
            start = cut
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return self.lm_head(self.drop(out)), hidden

    def loss(self, batch) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a batch (x, y[, reset]), carrying the hidden state.

        With a reset flag (TokenStreams) the state of the previous batch of the same mode is continued
        unless reset is true; a plain (x, y) batch (random windows) starts from zeros.
        """
        x, y = batch[0], batch[1]
        carry = len(batch) > 2
        hidden = self._carried[self.training] if carry and not bool(batch[2]) else None
        if hidden is not None and _rows(hidden) != x.shape[0]:
            hidden = None
        logits, hidden = self(x, hidden)
        if carry:
            self._carried[self.training] = detach(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def carried_state(self) -> dict:
        """The training hidden state carried into the next batch (saved in trainer_state.pt for exact resume)."""
        hidden = self._carried[True]
        if hidden is None:
            return {}
        return {f"h{i}": h.cpu() for i, h in enumerate(hidden if isinstance(hidden, tuple) else (hidden,))}

    def load_carried_state(self, state: dict) -> None:
        if not state:
            self._carried[True] = None
            return
        device = self.wte.weight.device
        parts = tuple(state[f"h{i}"].to(device) for i in range(len(state)))
        self._carried[True] = parts if self.cfg.cell == "lstm" else parts[0]

    # ------------------------------------------------------------------ causal-LM interface

    @torch.inference_mode()
    def logprobs_next(self, ids: torch.Tensor, state: RNNState | None = None, pad: torch.Tensor | None = None):
        """Log-probabilities [B, V] of the next token after each row of ids [B, T] (the whole history).

        `state` is the RNNState of the previous call: only the tokens after state.length are run. `pad` [B]: left
        padding; a row's state starts from zeros at its first real token, so it computes what it would alone.
        """
        B, T = ids.shape
        if state is None or state.length > T or _rows(state.hidden) != B:
            state = RNNState(None, 0, None)
        if state.length < T:
            starts = None if pad is None else pad - state.length
            logits, hidden = self(ids[:, state.length:], state.hidden, starts)
            state = RNNState(hidden, T, logits[:, -1])
        return F.log_softmax(state.last.float(), dim=-1), state

    @torch.inference_mode()
    def token_logprobs(self, ids, stride: int | None = None, chunk: int = 1024, streams: int | None = None,
                       context: int | None = None) -> np.ndarray:
        """Natural-log probability of ids[1:], each given every previous token of its stream (state carried in chunks).

        One stream runs at batch 1, where every step reads all the weights for one token (memory-bound). So a
        long text is cut into `streams` contiguous pieces run side by side, as word_language_model's evaluation
        batches the test set: default one stream per 4,096 tokens, at most 16. A piece after the first starts
        from a zero state (its first token is context only), so 15 of 245k WikiText-2 test tokens lose their
        history. streams=1 carries the state through the whole text. `stride` and `context` are accepted for
        interface parity with windowed models and ignored.
        """
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)).to(self.wte.weight.device)
        n = ids.numel()
        targets = max(n - 1, 0)
        streams = max(1, min(streams or min(16, targets // 4096), max(targets, 1)))
        bounds = np.linspace(0, targets, streams + 1).astype(int)  # stream s predicts ids[b_s + 1 : b_{s+1} + 1]
        length = int(np.diff(bounds).max()) if targets else 0
        x = torch.zeros(streams, length, dtype=torch.long, device=ids.device)
        y = torch.zeros_like(x)
        for s in range(streams):
            a, b = bounds[s], bounds[s + 1]
            x[s, :b - a], y[s, :b - a] = ids[a:b], ids[a + 1:b + 1]
        lp = torch.empty(streams, length, dtype=torch.float64)
        hidden = None
        for start in range(0, length, chunk):  # padding at the end of shorter streams comes after their tokens
            logits, hidden = self(x[:, start:start + chunk], hidden)
            picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, y[:, start:start + chunk, None])[..., 0]
            lp[:, start:start + chunk] = picked.double().cpu()
        return np.concatenate([lp[s, :bounds[s + 1] - bounds[s]].numpy() for s in range(streams)])


# ---------------------------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------------------------


@dataclass
class RNNClassifierConfig:
    family: str = "rnn_classifier"
    cell: str = "lstm"  # rnn | lstm | gru
    vocab_size: int = 0
    n_embd: int = 128
    n_hidden: int = 128  # per direction
    n_layer: int = 1
    dropout: float = 0.0  # on embeddings, between layers and on the pooled vector
    bidirectional: bool = True
    pooling: str = "max"  # max | mean over the outputs of the real tokens, or last (final hidden state(s))
    num_labels: int = 2
    pad_id: int = 0

    def validate(self) -> None:
        check_positive(self, "n_layer", "n_embd", "n_hidden", "vocab_size")
        check_choice(self, "cell", CELLS)
        check_classifier(self, ("max", "mean", "last"))


class RNNClassifier(ClassifierMixin, nn.Module):
    """Embedding -> (bi)directional RNN/LSTM/GRU over the real tokens (packed) -> max / mean / last pooling ->
    dropout -> linear. A bidirectional model concatenates both directions (2 x n_hidden features)."""

    family = "rnn_classifier"

    def __init__(self, cfg: RNNClassifierConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, bidirectional=cfg.bidirectional)
        self.head = nn.Linear(cfg.n_hidden * (2 if cfg.bidirectional else 1), cfg.num_labels)
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        with torch.no_grad():
            self.wte.weight[cfg.pad_id].zero_()

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        lengths = mask.long().sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.drop(self.wte(ids)), lengths, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        if self.cfg.pooling == "last":
            h = _first(hidden).view(self.cfg.n_layer, 2 if self.cfg.bidirectional else 1, ids.shape[0], -1)[-1]
            v = torch.cat(list(h), dim=-1)  # the last layer's final state of each direction
        else:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            v = pool(out, mask, self.cfg.pooling)
        return self.head(self.drop(v))
