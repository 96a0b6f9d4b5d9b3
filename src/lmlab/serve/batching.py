"""Continuous batching: one scheduler thread owns a model and decodes every running sequence together.

Between two decode steps the scheduler drops the sequences that finished or whose request was cancelled and
admits queued requests: their prompts are prefilled in one batched pass and their first token is sampled, so a
request joins the running batch as soon as it arrives and leaves it as soon as it is done. Each step is one
forward pass over all running sequences (for a GPT, a second one only for sequences whose context has grown
past block_size, which recompute their last block_size tokens as `lmlab generate` does).

Sampling is generate.py's, row by row as `sample_steps` does it: `process_history` (repetition penalty, bad
words), `choose_next` with each sequence's own seeded generator (sequence i of a request draws from seed + i,
as in `complete`), `StopText` for stop strings across token boundaries, end-of-text ends a sequence.

How a model family runs its rows (a "backend"):
- GPT: one KV cache for the whole batch, rows right-aligned in a shared column space with per-row left padding
  (GPT.logprobs_next's `pad`: a row's positions count from its first real token, its queries never see the
  padding). A joining row's prompt is prefilled alone (left-padded with the other joiners) and its keys/values
  copied into a free row of the batch cache; a leaving row's slot is filled by the last row. When the shared
  columns reach block_size, every row shifts left by the smallest padding.
- RNN / LSTM / GRU: the hidden states of the running rows, stacked; a step runs one token per row.
- n-gram (and any model without a batchable state): each step passes every row's whole history.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..generate import GenerationConfig, StopText, choose_next, crop_prompt, make_generators, process_history

log = logging.getLogger("lmlab.serve")


# --------------------------------------------------------------------------- requests and their sequences

@dataclass
class Event:
    """What one sequence produced in one scheduler step: a token (or none, when it ended without one) and the
    text that became certain with it; `finish` ("stop" or "length") on the sequence's last event."""
    index: int  # the sequence's index in its request (the OpenAI choice index)
    token: int | None
    logprob: float | None
    text: str
    top: list[tuple[int, float]] | None = None  # the most likely tokens at this step, when asked for
    finish: str | None = None


class Request:
    """One API request for the scheduler: prompts (token ids) x n sequences, with one GenerationConfig.

    `on_events(list[Event])` is called from the scheduler thread after each step that produced something
    for this request; `on_done(error)` once at the end (error: None, or the exception that ended it).
    """

    def __init__(self, prompts: list[list[int]], cfg: GenerationConfig, on_events: Callable, on_done: Callable,
                 top_logprobs: int = 0, bad_words: list[list[int]] = ()):
        cfg.validate()
        self.prompts, self.cfg = prompts, cfg
        self.n = cfg.num_return_sequences
        self.rows = len(prompts) * self.n
        self.on_events, self.on_done = on_events, on_done
        self.top_logprobs = top_logprobs
        self.bad_words = list(bad_words)
        self.needs_history = cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0 or bool(self.bad_words)
        self.cancelled = False
        self.sampling_key = (cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
        self.unfinished = 0
        self.submitted = time.perf_counter()


class Sequence:
    """One generated row: its history (prompt + tokens so far; the last one not yet run by the model)."""

    __slots__ = ("request", "index", "history", "generator", "limit", "count", "text", "finish", "slot")

    def __init__(self, request: Request, index: int, prompt: list[int], generator: torch.Generator, tokenizer):
        self.request, self.index, self.generator = request, index, generator
        self.history = list(prompt)
        self.limit = request.cfg.new_tokens(len(prompt))
        self.count = 0  # tokens generated
        self.text = StopText(tokenizer, request.cfg.stop, prompt[-1:])
        self.finish: str | None = None
        self.slot = -1


# --------------------------------------------------------------------------- backends: how a family runs its rows

class GPTBackend:
    """The running rows of a GPT in one KV cache (see the module docstring)."""

    def __init__(self, model, max_rows: int = 32):
        self.model, self.max_rows = model, max_rows
        self.block = model.cfg.block_size
        self.device = next(model.parameters()).device
        self.cache = None  # KVCache with room for `capacity` rows
        self.pad = None  # [capacity] left padding of each slot
        self.cols = 0  # columns filled in every row (real tokens + padding)
        self.rows: list[Sequence] = []  # in slot order
        self.overflow: list[Sequence] = []  # context past block_size: the last block_size tokens, recomputed

    @property
    def running(self) -> list[Sequence]:
        return self.rows + self.overflow

    def _ensure_capacity(self, n: int) -> None:
        capacity = 0 if self.cache is None else self.cache.k.shape[1]
        if n <= capacity:
            return
        new_capacity = max(n, min(max(2 * capacity, 4), self.max_rows))
        cache = self.model.new_cache(new_capacity)
        cache.k.zero_(), cache.v.zero_()  # masked-out padding still enters attention as 0 x value: never NaN
        pad = torch.zeros(new_capacity, dtype=torch.long, device=self.device)
        if self.cache is not None and self.rows:
            B, C = len(self.rows), self.cols
            cache.k[:, :B, :, :C] = self.cache.k[:, :B, :, :C]
            cache.v[:, :B, :, :C] = self.cache.v[:, :B, :, :C]
            pad[:B] = self.pad[:B]
        self.cache, self.pad = cache, pad

    def _shift(self, d: int) -> None:
        """Move every row's columns d to the right (d > 0: room for a longer prompt) or -d to the left."""
        B, C = len(self.rows), self.cols
        if B and d > 0:
            for t in (self.cache.k, self.cache.v):
                t[:, :B, :, d:C + d] = t[:, :B, :, :C].clone()
        elif B and d < 0:
            for t in (self.cache.k, self.cache.v):
                t[:, :B, :, :C + d] = t[:, :B, :, -d:C].clone()
        self.pad[:B] += d
        self.cols = C + d

    def _view(self):
        """A KVCache over the first len(rows) slots (a view: the model writes into the batch cache)."""
        from ..models.layers import KVCache

        B = len(self.rows)
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.length = self.cache.k[:, :B], self.cache.v[:, :B], self.cols
        return view

    def add(self, seqs: list[Sequence]) -> torch.Tensor:
        """Prefill the prompts of new sequences (each distinct prompt once) and give them slots."""
        unique: dict[tuple, int] = {}
        which = [unique.setdefault(tuple(s.history), len(unique)) for s in seqs]
        prompts = list(unique)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[p[0]] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long,
                           device=self.device)
        pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long, device=self.device)
        logprobs, cache = self.model.logprobs_next(ids, None, pad=pad if bool(pad.any()) else None)
        index = torch.tensor(which, device=self.device)
        B, n = len(self.rows), len(seqs)
        self._ensure_capacity(B + n)
        if not B:
            self.cols = 0
        if width > self.cols:
            self._shift(width - self.cols)
        C = self.cols
        for mine, theirs in ((self.cache.k, cache.k), (self.cache.v, cache.v)):
            mine[:, B:B + n, :, :C - width] = 0  # padding (masked, but 0 x garbage could be NaN)
            mine[:, B:B + n, :, C - width:C] = theirs[:, index, :, :width]
        self.pad[B:B + n] = pad[index] + (C - width)
        for j, s in enumerate(seqs):
            s.slot = B + j
        self.rows += seqs
        return logprobs[index]

    def step(self) -> tuple[list[Sequence], torch.Tensor]:
        """Run each running row's newest token: the next-token log-probabilities of every row."""
        longer = [s for s in self.rows if len(s.history) > self.block]
        if longer:
            self._release(longer)
            self.overflow += longer
        out, seqs = [], []
        if self.rows:
            B = len(self.rows)
            if self.cols + 1 > self.block:  # every row is shorter than block_size: some padding can go
                self._shift(-int(self.pad[:B].min()))
            tokens = torch.tensor([s.history[-1] for s in self.rows], dtype=torch.long, device=self.device)
            # logprobs_next runs only the columns after the cache's length: here the one new token per row.
            ids = tokens[:, None].expand(B, self.cols + 1)
            logprobs, view = self.model.logprobs_next(ids, self._view(), pad=self.pad[:B])
            self.cols = view.length
            out.append(logprobs)
            seqs += self.rows
        if self.overflow:
            ids = torch.tensor([s.history[-self.block:] for s in self.overflow], dtype=torch.long, device=self.device)
            out.append(self.model.logprobs_next(ids, None)[0])
            seqs += self.overflow
        return seqs, torch.cat(out) if len(out) > 1 else out[0]

    def _release(self, seqs: list[Sequence]) -> None:
        """Free the slots of these rows: the last row moves into each freed slot."""
        for s in seqs:
            last = len(self.rows) - 1
            if s.slot != last:
                moved = self.rows[last]
                C = self.cols
                self.cache.k[:, s.slot, :, :C] = self.cache.k[:, last, :, :C]
                self.cache.v[:, s.slot, :, :C] = self.cache.v[:, last, :, :C]
                self.pad[s.slot] = self.pad[last]
                self.rows[s.slot], moved.slot = moved, s.slot
            self.rows.pop()
            s.slot = -1
        if not self.rows:
            self.cols = 0

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self.overflow = [s for s in self.overflow if id(s) not in gone]
        self._release([s for s in seqs if s.slot >= 0])


def _stack(states, dim: int = 1):
    """Concatenate RNN hidden states (tensors, or LSTM (h, c) pairs) along the batch dimension."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim) for parts in zip(*states))
    return torch.cat(states, dim)


def _select(hidden, rows: torch.Tensor):
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, rows) for h in hidden)
    return hidden.index_select(1, rows)


class RNNBackend:
    """The running rows of an RNN / LSTM / GRU: their hidden states stacked; a step feeds one token per row."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self.hidden = None

    @property
    def running(self) -> list[Sequence]:
        return self.rows

    def add(self, seqs: list[Sequence]) -> torch.Tensor:
        """Prefill the new prompts, those of one length together (an RNN cannot skip padding)."""
        unique: dict[tuple, int] = {}
        which = [unique.setdefault(tuple(s.history), len(unique)) for s in seqs]
        by_length: dict[int, list[int]] = defaultdict(list)
        for u, p in enumerate(unique):
            by_length[len(p)].append(u)
        order, logprobs, hiddens = [], [], []
        prompts = list(unique)
        for members in by_length.values():
            ids = torch.tensor([prompts[u] for u in members], dtype=torch.long, device=self.device)
            lp, state = self.model.logprobs_next(ids, None)
            order += members
            logprobs.append(lp)
            hiddens.append(state.hidden)
        position = {u: i for i, u in enumerate(order)}
        index = torch.tensor([position[u] for u in which], device=self.device)
        hidden = _select(_stack(hiddens), index)
        self.hidden = hidden if self.hidden is None else _stack([self.hidden, hidden])
        self.rows += seqs
        return torch.cat(logprobs)[index]

    def step(self) -> tuple[list[Sequence], torch.Tensor]:
        from ..models.rnn import RNNState

        tokens = torch.tensor([[s.history[-1]] for s in self.rows], dtype=torch.long, device=self.device)
        logprobs, state = self.model.logprobs_next(tokens, RNNState(self.hidden, 0, None))
        self.hidden = state.hidden
        return list(self.rows), logprobs

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        keep = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        self.rows = [self.rows[i] for i in keep]
        self.hidden = _select(self.hidden, torch.tensor(keep, dtype=torch.long, device=self.device)) if keep else None


class HistoryBackend:
    """Models whose next-token call takes whole histories of any lengths at once (the n-gram): no state."""

    def __init__(self, model):
        self.model = model
        self.rows: list[Sequence] = []

    @property
    def running(self) -> list[Sequence]:
        return self.rows

    def add(self, seqs: list[Sequence]) -> torch.Tensor:
        self.rows += seqs
        return self.model.logprobs_next([s.history for s in seqs], None)[0]

    def step(self) -> tuple[list[Sequence], torch.Tensor]:
        return list(self.rows), self.model.logprobs_next([s.history for s in self.rows], None)[0]

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self.rows = [s for s in self.rows if id(s) not in gone]


class RowBackend:
    """Any other causal model: each row keeps its own state and runs alone (correct, not batched)."""

    def __init__(self, model):
        self.model = model
        self.device = _device(model)
        self.rows: list[Sequence] = []
        self.states: dict[int, object] = {}

    @property
    def running(self) -> list[Sequence]:
        return self.rows

    def _run(self, seqs: list[Sequence]) -> torch.Tensor:
        out = []
        for s in seqs:
            lp, self.states[id(s)] = self.model.logprobs_next(
                torch.tensor([s.history], dtype=torch.long, device=self.device), self.states.get(id(s)))
            out.append(lp)
        return torch.cat(out)

    def add(self, seqs: list[Sequence]) -> torch.Tensor:
        self.rows += seqs
        return self._run(seqs)

    def step(self) -> tuple[list[Sequence], torch.Tensor]:
        return list(self.rows), self._run(self.rows)

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self.rows = [s for s in self.rows if id(s) not in gone]
        for g in gone:
            self.states.pop(g, None)


def _device(model):
    return next(iter(model.parameters()), torch.empty(0)).device if hasattr(model, "parameters") else "cpu"


def make_backend(model, max_rows: int = 32):
    from ..models.gpt import GPT
    from ..models.rnn import RNNLM

    if isinstance(model, GPT):
        return GPTBackend(model, max_rows)
    if isinstance(model, RNNLM):
        return RNNBackend(model)
    if getattr(model, "family", None) == "ngram":
        return HistoryBackend(model)
    return RowBackend(model)


# --------------------------------------------------------------------------- the scheduler

class Engine:
    """The scheduler of one model: `submit(request)` from any thread; a daemon thread runs the batch."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_queue: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.backend = make_backend(model, max_batch)
        self.eot = getattr(tokenizer, "eot_id", None)
        self.queue: list[Request] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopped = False
        # counters read by /metrics and /health
        self.steps = 0  # decode steps (forward passes over the running batch)
        self.prefills = 0
        self.tokens = 0  # tokens generated
        self.batch_rows = 0  # rows summed over steps (mean batch = batch_rows / steps)
        self._running = 0  # rows in the batch as of the end of the last step (mid-step, the backend's lists change)

    # -- called from request handlers

    def start(self) -> None:
        with self.cond:
            if self.thread is None:
                self.stopped = False
                self.thread = threading.Thread(target=self._loop, name="lmlab-engine", daemon=True)
                self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None

    def submit(self, request: Request) -> bool:
        """Queue a request; False when the queue is full (the caller answers 503)."""
        self.start()
        with self.cond:
            if len(self.queue) >= self.max_queue:
                return False
            self.queue.append(request)
            self.cond.notify_all()
        return True

    def cancel(self, request: Request) -> None:
        """Stop a request's generation (client gone, timeout): its rows leave the batch before the next step."""
        request.cancelled = True
        with self.cond:
            self.cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def running(self) -> int:
        """Rows in the running batch as of the end of the last scheduler step (read from other threads)."""
        return self._running

    # -- the scheduler thread

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopped and not self.queue and not self.backend.running:
                    self.cond.wait()
                if self.stopped:
                    break
            try:
                with torch.inference_mode():
                    self.iteration()
            except Exception as e:  # a failed step fails the requests in it, never the server
                log.exception("decode step failed")
                self._fail_all(e)
        self._fail_all(RuntimeError("the server is shutting down"))

    def _fail_all(self, error: Exception) -> None:
        with self.cond:
            queued, self.queue = self.queue, []
        requests = {id(s.request): s.request for s in self.backend.running}
        for r in queued:
            requests[id(r)] = r
        self.backend = make_backend(self.model, self.max_batch)
        self._running = 0
        for r in requests.values():
            _call(r.on_done, error)

    def iteration(self) -> None:
        """One scheduler step: drop cancelled rows, one decode step for the running rows, admit queued requests."""
        events: dict[int, list[Event]] = defaultdict(list)
        requests: dict[int, Request] = {}
        cancelled = [s for s in self.backend.running if s.request.cancelled]
        if cancelled:
            self.backend.remove(cancelled)
            for r in {id(s.request): s.request for s in cancelled}.values():
                _call(r.on_done, None)
        if self.backend.running:
            seqs, logprobs = self.backend.step()
            self.steps += 1
            self.batch_rows += len(seqs)
            self._sample(seqs, logprobs, events, requests)
        admitted = self._admit(events, requests)
        if admitted:
            logprobs = self.backend.add(admitted)
            self.prefills += 1
            self._sample(admitted, logprobs, events, requests)
        finished = [s for s in self.backend.running if s.finish is not None]
        if finished:
            self.backend.remove(finished)
        self._running = len(self.backend.running)
        for key, evs in events.items():
            if not _call(requests[key].on_events, evs):
                requests[key].cancelled = True  # nobody listens any more: its rows leave at the next step
        for r in requests.values():
            if r.unfinished == 0:
                _call(r.on_done, None)

    def _admit(self, events, requests) -> list[Sequence]:
        """Pop queued requests while their rows fit in the batch (first come, first served)."""
        seqs: list[Sequence] = []
        with self.cond:
            for r in [r for r in self.queue if r.cancelled]:
                self.queue.remove(r)
                _call(r.on_done, None)
            room = self.max_batch - len(self.backend.running)
            while self.queue and self.queue[0].rows <= room:
                r = self.queue.pop(0)
                room -= r.rows
                requests[id(r)] = r
                r.unfinished = r.rows
                for p, prompt in enumerate(r.prompts):
                    prompt = crop_prompt(self.model, prompt, warn=False)
                    generators = make_generators(r.cfg, r.n)  # each prompt's sequence i draws from seed + i
                    for i in range(r.n):
                        s = Sequence(r, p * r.n + i, prompt, generators[i], self.tokenizer)
                        if s.limit <= 0:
                            self._finish(s, "length", events)
                        else:
                            seqs.append(s)
        return seqs

    def _finish(self, s: Sequence, reason: str, events, token=None, logprob=None, piece="", top=None) -> None:
        s.finish = reason
        s.request.unfinished -= 1
        events[id(s.request)].append(Event(s.index, token, logprob, piece + s.text.flush(), top, reason))

    def _sample(self, seqs: list[Sequence], logprobs: torch.Tensor, events, requests) -> None:
        """Choose each row's next token and turn it into events."""
        processed = logprobs
        history_rows = [i for i, s in enumerate(seqs) if s.request.needs_history]
        if history_rows:
            processed = logprobs.clone()
            for i in history_rows:
                s = seqs[i]
                ids = torch.tensor([s.history], dtype=torch.long, device=logprobs.device)
                processed[i:i + 1] = process_history(logprobs[i:i + 1], ids, s.request.cfg, s.request.bad_words)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(seqs):
            groups[s.request.sampling_key].append(i)
        if len(groups) == 1:
            s = seqs[0]
            next_ids = choose_next(processed, s.request.cfg, [q.generator for q in seqs])
        else:
            next_ids = torch.empty(len(seqs), dtype=torch.long, device=logprobs.device)
            for rows in groups.values():
                index = torch.tensor(rows, device=logprobs.device)
                next_ids[index] = choose_next(processed[index], seqs[rows[0]].request.cfg,
                                              [seqs[i].generator for i in rows])
        chosen = logprobs.gather(1, next_ids[:, None])[:, 0].tolist()
        top_k = max(s.request.top_logprobs for s in seqs)
        tops = None
        if top_k > 0:
            values, indices = logprobs.topk(min(top_k, logprobs.shape[1]), dim=-1)
            tops = (values.tolist(), indices.tolist())
        for i, (s, token, lp) in enumerate(zip(seqs, next_ids.tolist(), chosen)):
            requests[id(s.request)] = s.request
            k = s.request.top_logprobs
            top = list(zip(tops[1][i][:k], tops[0][i][:k])) if k and tops else None
            if token == self.eot:
                self._finish(s, "stop", events)
                continue
            s.history.append(token)
            s.count += 1
            self.tokens += 1
            piece = s.text.add(token)
            if s.text.stopped:
                self._finish(s, "stop", events, token, lp, piece, top)
            elif s.count >= s.limit:
                self._finish(s, "length", events, token, lp, piece, top)
            else:
                events[id(s.request)].append(Event(s.index, token, lp, piece, top))


def _call(callback, arg) -> bool:
    """Deliver to a request's callback; a failing one (its event loop closed) must not stop the scheduler."""
    try:
        callback(arg)
        return True
    except Exception:
        log.warning("a request's callback failed; dropping the request", exc_info=True)
        return False


def prompt_logprobs(model, ids: list[int], k: int = 0) -> tuple[list[float | None], list[list[tuple[int, float]] | None]]:
    """Each prompt token's log-probability given the tokens before it (None for the first, which nothing
    predicts) and, with k > 0, the k most likely tokens at each position: the API's `echo` with `logprobs`."""
    device = _device(model)
    lps: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    state = None
    with torch.inference_mode():
        for end in range(1, len(ids)):
            context = ids[:end]
            block = getattr(model, "block_size", None)
            if block is not None and len(context) > block:
                context, state = context[-block:], None
            x = context if getattr(model, "family", None) == "ngram" else torch.tensor([context], device=device)
            dist, state = model.logprobs_next(x, state)
            dist = dist[0]
            lps.append(float(dist[ids[end]]))
            if k:
                values, indices = dist.topk(min(k, dist.shape[0]))
                tops.append(list(zip(indices.tolist(), values.tolist())))
            else:
                tops.append(None)
    return lps, tops
