"""What a model family declares, so that nothing outside a family's file branches on its class.

The protocols (typing.Protocol; isinstance checks them at run time):
- `CausalLM`: predicts the next token (GPT, RNN, n-gram, a user's own family). generate, eval, compare and
  serve use only its calls, so whether a model can be served or generated from is `isinstance(m, CausalLM)`.
- `DecodeState`: what a causal LM carries from one `logprobs_next` call to the next for a batch of rows (a KV
  cache, a hidden state): the decoding driver (lmlab.decoding) selects, appends and trims rows through it.
- `Classifier`: labelled texts -> class logits (lmlab classify). `EncoderDecoder`: source -> target ids
  (lmlab seq2seq translate, eval --refs).
- `Trainable`: what the one Trainer needs, `loss(batch)` and the data it trains on; `CarriesState` is the
  optional hook of a model that carries state from batch to batch (an RNN's hidden state), saved for resume.

Left padding is the one padding scheme of decoding: a batch of rows of different lengths is right-aligned in
[B, T] ids, and `pad[b]` columns before row b's first real token repeat that token as placeholders. A causal LM
computes for each row what it computes for the row alone (its positions count from its first real token).

`NeuralLM` is the base of the torch causal LMs (GPT, RNN; a user's family may use it too): the vocabulary check,
parameter count, device, `score`, and the generic verification call of speculative decoding.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn

from ..errors import LmlabError


@runtime_checkable
class DecodeState(Protocol):
    """A causal LM's memory of a batch of left-padded rows: it has seen the first `length` columns of each row.

    The operations may reuse memory (the state passed in is not used again by the caller).
    """

    length: int

    def select(self, rows: torch.Tensor) -> "DecodeState":
        """The state of these rows, in this order (beam search keeps its best beams; the server drops rows)."""

    def extend(self, other: "DecodeState") -> "DecodeState":
        """This state's rows, then `other`'s; the one that has seen fewer columns is left-padded to the other's."""

    def trim(self, columns: int) -> "DecodeState":
        """Forget the first `columns` columns, padding in every row (room in a cache that reached its limit)."""

    def rollback(self, length: int) -> "DecodeState | None":
        """The state after the first `length` columns (rejected draft tokens); None when it cannot go back."""


@runtime_checkable
class CausalLM(Protocol):
    """A language model over token ids that predicts the next token.

    `block_size` is its context limit in tokens (None: no limit, as an RNN or an n-gram): past it, decoding keeps
    each row's last block_size tokens, as nanoGPT does.
    """

    family: str
    vocab_size: int
    block_size: int | None
    device: torch.device

    def logprobs_next(self, ids: torch.Tensor, state: DecodeState | None = None,
                      pad: torch.Tensor | None = None) -> tuple[torch.Tensor, DecodeState | None]:
        """Natural-log probabilities [B, V] of the token after each row of ids [B, T] (each row's whole history,
        left-padded by pad [B]). `state` is what the previous call returned for these rows (None: nothing seen);
        only the columns it has not seen are run. Returns the new state (None: the model keeps none)."""

    def logprobs_last(self, ids: torch.Tensor, state: DecodeState | None, n: int):
        """Log-probabilities [B, n, V] after each of the last n prefixes of ids, and the state (verification in
        speculative decoding: one pass where the model can)."""

    def token_logprobs(self, ids) -> np.ndarray:
        """Natural-log probability of each token it predicts in the sequence `ids` (the last len(result) ids)."""

    def num_parameters(self) -> int:
        """Its size for a comparison table: trainable weights (an n-gram model: its n-gram entries)."""


@runtime_checkable
class Classifier(Protocol):
    """A text classifier: a batch (ids [B, T], mask [B, T] true on real tokens) -> class logits [B, num_labels]."""

    family: str

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def predict_proba(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class EncoderDecoder(Protocol):
    """A source -> target model: `bind(src)` encodes padded sources once and returns the CausalLM over target ids
    that the decoding driver runs (translation, summarization)."""

    family: str
    block_size: int

    def bind(self, src: torch.Tensor) -> CausalLM: ...


@runtime_checkable
class Trainable(Protocol):
    """What the Trainer needs of a model: the training loss of a batch, and (a classmethod) the batches to train on,
    an object whose `batch(split, index)` is a pure function of its arguments (exact resume)."""

    def loss(self, batch) -> torch.Tensor: ...

    @classmethod
    def training_data(cls, cfg): ...


@runtime_checkable
class CarriesState(Protocol):
    """A model that carries state from one training batch to the next (truncated BPTT); the Trainer saves it in
    trainer_state.pt so that a resumed run continues exactly."""

    def carried_state(self) -> dict: ...

    def load_carried_state(self, state: dict) -> None: ...


def what_it_is(model) -> str:
    """How a model that cannot do what was asked should be described, and what to run instead."""
    if isinstance(model, Classifier):
        return (f"a {model.family} text classifier, not a language model; use `lmlab classify eval` / "
                "`lmlab classify predict` with it")
    if isinstance(model, EncoderDecoder):
        return (f"a seq2seq run: score its output against references with --refs FILE [--metric bleu|chrf|rouge], "
                "or decode with `lmlab seq2seq translate`")
    return f"a {getattr(model, 'family', type(model).__name__)} model, not a causal language model"


def require_causal(model, source) -> None:
    """Refuse a model that is not a CausalLM, in one sentence naming `source`."""
    if not isinstance(model, CausalLM):
        raise LmlabError(f"{source} is {what_it_is(model)}.")


def logprobs_last_by_steps(model, ids: torch.Tensor, state, n: int):
    """CausalLM.logprobs_last for any model: n cached calls of logprobs_next (GPT does it in one pass)."""
    out = []
    for end in range(ids.shape[1] - n + 1, ids.shape[1] + 1):
        logprobs, state = model.logprobs_next(ids[:, :end], state)
        out.append(logprobs)
    return torch.stack(out, dim=1), state


def checked_config(cfg, fix: str = "prepare data first or set --model.vocab_size"):
    """A model's config after its own checks (validate() is optional), with a vocabulary size: 0 means it was
    never filled in from the prepared data, and `fix` says how to."""
    if hasattr(cfg, "validate"):
        cfg.validate()
    if cfg.vocab_size < 1:
        raise LmlabError(f"model.vocab_size is not set; {fix}.")
    return cfg


class NeuralLM(nn.Module):
    """The base of the torch causal LMs (GPT, RNN): config check, parameter count, device, `score`."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = checked_config(cfg)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def score(self, ids) -> float:
        """Total natural-log probability of the tokens the model predicts (ids[1:] given what precedes)."""
        return float(self.token_logprobs(ids).sum())

    def logprobs_last(self, ids: torch.Tensor, state, n: int):
        return logprobs_last_by_steps(self, ids, state, n)
