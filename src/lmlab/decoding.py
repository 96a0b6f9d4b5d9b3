"""The one decoding driver: `lmlab generate`, seq2seq translation, beam search and the server's continuous batching
all decode through a `Batch` of `Row`s, and every row ends by the one rule of `Row.accept`.

- A `Row` is one sequence: its history (prompt + tokens so far), how its next token is chosen (a Sampling chain
  and its own seeded generator) and when it ends: the end-of-text token, a stop string (StopText: exactly
  where the string begins, even across tokens) or its token limit.
- A `Batch` holds the rows one causal LM decodes together: their ids right-aligned in a shared column space
  (left padding, the one padding scheme: models/base.py), the model's DecodeState for them, and the context
  limit. Rows join (`add`: their prompts are prefilled, each distinct prompt once, and their state is appended)
  and leave (`remove`) between steps; `step` runs every row's newest token in one call of the model.
  Past block_size a row keeps its last block_size tokens as context, as nanoGPT does: such rows leave the
  cached batch and are recomputed each step; when the shared columns reach block_size, the padding that every
  row has is trimmed. Nothing here knows a model family: only the protocols of models/base.py.
- `advance` chooses the next token of a set of rows and passes it to each row; `decode` runs rows to the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .sampling import Sampling


# --------------------------------------------------------------------------- text and stop strings

class StopText:
    """The text of one sequence as its tokens arrive, ending exactly where a stop string begins.

    `add(id)` returns the text that is now certain: a tail that could be the start of a stop string is held
    back until the next tokens decide, so a stream never shows part of a stop string.
    """

    def __init__(self, tokenizer, stop: list[str], context: list[int] = ()):
        from .tokenizer import StreamDecoder

        self.decoder = StreamDecoder(tokenizer, context)  # context: the prompt's last token (see StreamDecoder)
        self.stop = list(stop)
        self.text, self.emitted, self.stopped = "", 0, False

    def add(self, token_id: int) -> str:
        return self._extend(self.decoder.add(token_id))

    def flush(self) -> str:
        out = self._extend(self.decoder.flush()) if not self.stopped else ""
        tail, self.emitted = self.text[self.emitted:], len(self.text)
        return out + tail

    def final(self) -> str:
        """The whole text once the sequence has ended (flushes what the decoder and the stop check held)."""
        self.flush()
        return self.text

    def _extend(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        before = len(self.text)
        self.text += piece
        hits = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            safe = len(self.text)
        else:
            safe = len(self.text) - self._held()
        out, self.emitted = self.text[self.emitted:safe], max(self.emitted, safe)
        return out

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # the tokens behind `text` (up to and including the one that completed a stop string)
    logprobs: list[float]  # the model's natural-log probability of each of token_ids
    finish_reason: str  # "stop" (a stop string or end-of-text) or "length"
    end_logprob: float = 0.0  # beam search: log p of the end-of-text token that finished it (0 when none did)


# --------------------------------------------------------------------------- one sequence

def end_ids(tokenizer, cfg) -> frozenset:
    """The ids that end a row without becoming one of its tokens: the tokenizer's end-of-text and the config's
    stop_token_ids (a chat template's turn-end tokens)."""
    return frozenset(i for i in (tokenizer.eot_id, *cfg.stop_token_ids) if i is not None)


class Row:
    """One sequence being decoded. `text` (a StopText) may be None when only token ids matter (no stop strings
    then); `eot` (an end-of-text id, a set of them, or None) ends the row without becoming one of its tokens."""

    def __init__(self, prompt: list[int], sampling: Sampling, generator: torch.Generator | None, limit: int,
                 text: StopText | None = None, eot=None):
        self.history = list(prompt)
        self.sampling, self.generator, self.limit, self.text = sampling, generator, limit, text
        self.ends = frozenset(() if eot is None else (eot,) if isinstance(eot, int) else eot)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None if limit > 0 else "length"
        self.slot = -1  # its row in the Batch's state; -1: recomputed every step (past block_size), or not in one

    def accept(self, token: int, logprob: float) -> str:
        """Take the chosen token; return the text it made certain. Sets `finish` ("stop" or "length") when the
        row ends: at end-of-text (not a token of the row), at a stop string, or at `limit` tokens."""
        if token in self.ends:
            self.finish = "stop"
            return self.text.flush() if self.text else ""
        self.history.append(token)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        piece = self.text.add(token) if self.text else ""
        if self.text and self.text.stopped:
            self.finish = "stop"
        elif len(self.tokens) >= self.limit:
            self.finish = "length"
        if self.finish and self.text:
            piece += self.text.flush()
        return piece

    def completion(self) -> Completion:
        text = self.text.final() if self.text else ""
        return Completion(text, self.tokens, self.logprobs, self.finish or "length")


# --------------------------------------------------------------------------- rows decoded together

class Batch:
    """The rows one causal LM decodes together (see the module docstring). `rows` keeps the order rows joined in;
    `step` and `add` return log-probabilities in that order. The model's state is changed in place, in inference
    mode."""

    def __init__(self, model):
        self.model, self.block, self.device = model, model.block_size, model.device
        if self.device.type == "cpu":
            from .runtime import tune_allocator

            tune_allocator()  # as the Trainer does: a step's large buffers (logits) reuse memory, no page faults
        self.rows: list[Row] = []
        self.slots: list[Row] = []  # the rows in the state, in its order
        self.state = None
        self.width = 0  # columns of the shared space (the state has seen width - 1 of them at a step)
        self.stale = True  # the rows changed: the arrangement below is rebuilt at the next step
        self.ids: torch.Tensor | None = None  # [len(slots), capacity] left-padded histories
        self.pad: torch.Tensor | None = None
        self.recomputed: list[Row] = []  # rows past block_size (slot -1)
        self.in_order = False  # slots == rows, one by one (the caller's new tokens are the new column as they are)
        self.order: torch.Tensor | None = None  # rows' positions in (slots + recomputed), None when the same order

    @torch.inference_mode()
    def add(self, rows: list[Row]) -> torch.Tensor:
        """Prefill the new rows' histories in one left-padded call; return their next-token log-probabilities.
        (Rows are not merged by equal prompts: a bound seq2seq decoder's rows differ by their source.)"""
        prompts = [r.history for r in rows]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=self.device)
        pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long, device=self.device)
        logprobs, state = self.model.logprobs_next(ids, None, pad if bool(pad.any()) else None)
        self.state = state if not self.slots else _extend(self.state, state)
        self.width = max(self.width, width + 1)  # + the column of the token each row chooses next
        for r in rows:
            r.slot = len(self.slots)
            self.slots.append(r)
        self.rows += rows
        self.stale = True
        return logprobs

    def step(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run each row's newest token; the next-token log-probabilities [len(rows), V]. `tokens` [len(rows)]: those
        newest tokens as the caller chose them (the same as the histories' last ids; saves reading those)."""
        if self.block is not None and self.width > self.block:  # (else every history fits: width bounds them)
            self._keep_within(self.block)
        if self.slots and not self.stale and self.width > self.ids.shape[1]:
            self.stale = True  # the ids buffer is full: rebuilt with room to grow
        fresh = self.stale
        if fresh:
            self._arrange()
        parts = []
        if self.slots:
            if not fresh:  # one new column: each row's newest token
                column = tokens if tokens is not None and self.in_order else \
                    torch.tensor([r.history[-1] for r in self.slots], device=self.device)
                self.ids[:, self.width - 1] = column
            logprobs, self.state = self.model.logprobs_next(self.ids[:, :self.width], self.state, self.pad)
            self.width += 1
            parts.append(logprobs)
        if self.recomputed:  # past block_size: the last block_size tokens, no cache (nanoGPT)
            ids = torch.tensor([r.history[-self.block:] for r in self.recomputed], dtype=torch.long,
                               device=self.device)
            parts.append(self.model.logprobs_next(ids, None)[0])
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out if self.order is None else out[self.order]

    @torch.inference_mode()
    def remove(self, rows: list[Row]) -> None:
        """Drop rows (finished, cancelled); the last rows of the state move into the freed slots."""
        gone = {id(r) for r in rows}
        self.rows = [r for r in self.rows if id(r) not in gone]
        leaving = sorted(r.slot for r in rows if r.slot >= 0)
        for r in rows:
            r.slot = -1
        if leaving:
            self._release(leaving)
        self.stale = True

    @torch.inference_mode()
    def reorder(self, parents: list[int], rows: list[Row]) -> None:
        """Beam search: the new rows continue the rows at `parents` (indices into `rows`), in this order."""
        kept = [i for i, p in enumerate(parents) if self.rows[p].slot >= 0]
        slots = torch.tensor([self.rows[parents[i]].slot for i in kept], dtype=torch.long, device=self.device)
        self.state = _select(self.state, slots) if kept else None
        for r in rows:
            r.slot = -1
        self.slots = [rows[i] for i in kept]
        for i, r in enumerate(self.slots):
            r.slot = i
        self.rows, self.stale = list(rows), True

    # -- the shared column space

    def _arrange(self) -> None:
        """After the rows changed: the ids buffer from the histories (right-aligned at `width`, each row's first
        token repeated as its padding, room to grow), the padding, and how the outputs line up with `rows`."""
        histories = [r.history for r in self.slots]
        if histories:
            self.ids = torch.tensor([[h[0]] * (self.width - len(h)) + h + [0] * 64 for h in histories],
                                    dtype=torch.long, device=self.device)
            pad = torch.tensor([self.width - len(h) for h in histories], dtype=torch.long, device=self.device)
            self.pad = pad if bool(pad.any()) else None
        self.recomputed = [r for r in self.rows if r.slot < 0]
        order = self.slots + self.recomputed
        self.in_order = not self.recomputed and all(a is b for a, b in zip(order, self.rows))
        if self.in_order:
            self.order = None
        else:
            position = {id(r): i for i, r in enumerate(order)}
            self.order = torch.tensor([position[id(r)] for r in self.rows], device=self.device)
        self.stale = False

    def _keep_within(self, block: int) -> None:
        """Rows whose history passed block_size leave the state; padding every row has is trimmed at the limit."""
        longer = [r.slot for r in self.slots if len(r.history) > block]
        if longer:
            with torch.inference_mode():
                self._release(sorted(longer))
        if self.slots and self.width > block:  # the state must hold `width` columns at this step
            trim = self.width - max(len(r.history) for r in self.slots)
            with torch.inference_mode():
                self.state = self.state.trim(trim) if self.state is not None else None
            self.width -= trim
            self.stale = True

    def _release(self, slots: list[int]) -> None:
        """Take rows out of the state: the last remaining rows fill the freed slots (few rows move)."""
        leaving, count = set(slots), len(self.slots) - len(slots)
        order = list(range(count))
        holes = [s for s in order if s in leaving]
        movers = [s for s in range(count, len(self.slots)) if s not in leaving]
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        for s in slots:
            self.slots[s].slot = -1
        self.slots = [self.slots[s] for s in order]
        for i, r in enumerate(self.slots):
            r.slot = i
        self.state = _select(self.state, torch.tensor(order, dtype=torch.long, device=self.device)) if order else None
        if not self.slots:
            self.width = 0
        self.stale = True


def _select(state, rows: torch.Tensor):
    return None if state is None else state.select(rows)


def _extend(state, other):
    return None if state is None else state.extend(other)


# --------------------------------------------------------------------------- choosing and ending

@dataclass
class Step:
    """What `advance` chose for each row: the tokens [B] and their log-probabilities under the model [B], the text
    each token made certain, and the `top` most likely (token, log-probability) pairs of each row (or None)."""
    tokens: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    tops: list | None = None


def choose(rows: list[Row], logprobs: torch.Tensor) -> torch.Tensor:
    """The next token [B] of each row: its Sampling chain's history processors, then its choice; rows of one chain
    (or equal chains) are chosen together."""
    first = rows[0].sampling
    shared = all(r.sampling is first for r in rows)
    processed = logprobs
    if any(r.sampling.history for r in (rows[:1] if shared else rows)):
        processed = logprobs.clone()
        for i, r in enumerate(rows):
            if r.sampling.history:
                processed[i:i + 1] = r.sampling.process_history(logprobs[i:i + 1], r.history)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows if not shared else ()):
        groups.setdefault(r.sampling.key, []).append(i)
    if shared or len(groups) == 1:
        return first.choose(processed, [r.generator for r in rows])
    next_ids = torch.empty(len(rows), dtype=torch.long, device=logprobs.device)
    for members in groups.values():
        index = torch.tensor(members, device=logprobs.device)
        next_ids[index] = rows[members[0]].sampling.choose(processed[index], [rows[i].generator for i in members])
    return next_ids


def advance(rows: list[Row], logprobs: torch.Tensor, top: int = 0) -> Step:
    """Choose the next token of each row from its log-probabilities [len(rows), V] and pass it to the row."""
    tokens = choose(rows, logprobs)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    texts = [r.accept(t, lp) for r, t, lp in zip(rows, tokens.tolist(), chosen.tolist())]
    tops = None
    if top:
        values, indices = logprobs.topk(min(top, logprobs.shape[1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    return Step(tokens, chosen, texts, tops)


def decode(model, rows: list[Row]) -> Iterator[tuple[list[Row], Step]]:
    """Decode rows to their end in one Batch; after each step yield the rows that took a token and what they took
    (a row that ended at end-of-text took one too)."""
    batch = Batch(model)
    live = [r for r in rows if r.finish is None]
    if not live:
        return
    logprobs = batch.add(live)
    while True:
        stepped = list(batch.rows)
        step = advance(stepped, logprobs)
        yield stepped, step
        finished = [r for r in stepped if r.finish is not None]
        if finished:
            batch.remove(finished)
        if not batch.rows:
            return
        logprobs = batch.step(None if finished else step.tokens)
