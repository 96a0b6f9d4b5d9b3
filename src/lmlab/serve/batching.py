"""Continuous batching: one scheduler thread owns a model and decodes every running sequence together.

Between two decode steps the scheduler drops the sequences that finished or whose request was cancelled and
admits queued requests: their prompts are prefilled in one batched pass and their first token is chosen, so a
request joins the running batch as soon as it arrives and leaves it as soon as it is done. Each step is one
forward pass over all running sequences.

The batch is the one decoding driver's (lmlab.decoding.Batch: left padding, the model's state with rows joining
and leaving, the context limit), and so are the choice of each token (`advance`: the request's Sampling chain,
sequence i of a request drawing from seed + i, as in `complete`) and the rule that ends a sequence
(`Row.accept`: end-of-text, a stop string across token boundaries, max_tokens). Nothing here knows a family.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from ..decoding import Batch, Row, StopText, advance, end_ids
from ..generate import GenerationConfig, crop_prompt
from ..sampling import Sampling, make_generators

log = logging.getLogger("lmlab.serve")


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
        self.sampling = Sampling.from_config(cfg, list(bad_words))
        self.cancelled = False
        self.unfinished = 0
        self.submitted = time.perf_counter()


class Sequence(Row):
    """One generated row of a request: the choice `index` within it."""

    def __init__(self, request: Request, index: int, prompt: list[int], generator: torch.Generator, tokenizer):
        super().__init__(prompt, request.sampling, generator, request.cfg.new_tokens(len(prompt)),
                         StopText(tokenizer, request.cfg.stop, prompt[-1:]), end_ids(tokenizer, request.cfg))
        self.request, self.index = request, index


class Engine:
    """The scheduler of one model: `submit(request)` from any thread; a daemon thread runs the batch."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_queue: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.batch = Batch(model)
        self.queue: list[Request] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopped = False
        # counters read by /metrics and /health
        self.steps = 0  # decode steps (forward passes over the running batch)
        self.prefills = 0
        self.tokens = 0  # tokens generated
        self.batch_rows = 0  # rows summed over steps (mean batch = batch_rows / steps)
        self._running = 0  # rows in the batch as of the end of the last step (mid-step, the batch changes)

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
                while not self.stopped and not self.queue and not self.batch.rows:
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
        requests = {id(s.request): s.request for s in self.batch.rows}
        for r in queued:
            requests[id(r)] = r
        self.batch = Batch(self.model)
        self._running = 0
        for r in requests.values():
            _call(r.on_done, error)

    def iteration(self) -> None:
        """One scheduler step: drop cancelled rows, one decode step for the running rows, admit queued requests."""
        events: dict[int, list[Event]] = defaultdict(list)
        requests: dict[int, Request] = {}
        cancelled = [s for s in self.batch.rows if s.request.cancelled]
        if cancelled:
            self.batch.remove(cancelled)
            for r in {id(s.request): s.request for s in cancelled}.values():
                _call(r.on_done, None)
        if self.batch.rows:
            rows = list(self.batch.rows)
            logprobs = self.batch.step()
            self.steps += 1
            self.batch_rows += len(rows)
            self._choose(rows, logprobs, events, requests)
        admitted = self._admit(events, requests)
        if admitted:
            logprobs = self.batch.add(admitted)
            self.prefills += 1
            self._choose(admitted, logprobs, events, requests)
        finished = [s for s in self.batch.rows if s.finish is not None]
        if finished:
            self.batch.remove(finished)
        self._running = len(self.batch.rows)
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
            room = self.max_batch - len(self.batch.rows)
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
                        if s.finish is not None:  # nothing to generate (max_tokens 0)
                            r.unfinished -= 1
                            events[id(r)].append(Event(s.index, None, None, "", None, s.finish))
                        else:
                            seqs.append(s)
        return seqs

    def _choose(self, seqs: list[Sequence], logprobs: torch.Tensor, events, requests) -> None:
        """Choose each row's next token and turn it into events."""
        step = advance(seqs, logprobs, top=max(s.request.top_logprobs for s in seqs))
        for i, (s, token, lp) in enumerate(zip(seqs, step.tokens.tolist(), step.logprobs.tolist())):
            requests[id(s.request)] = s.request
            k = s.request.top_logprobs
            if token in s.ends:  # ended without a token
                events[id(s.request)].append(Event(s.index, None, None, step.texts[i], None, s.finish))
            else:
                self.tokens += 1
                top = step.tops[i][:k] if k else None
                events[id(s.request)].append(Event(s.index, token, lp, step.texts[i], top, s.finish))
            if s.finish is not None:
                s.request.unfinished -= 1


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
    predicts) and, with k > 0, the k most likely tokens at each position: the API's `echo` with `logprobs`.
    The prompt runs through a Batch one token at a time (its context limit included)."""
    lps: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    if len(ids) < 2:
        return lps, tops
    row = Row(ids[:1], None, None, len(ids))
    batch = Batch(model)
    dist = batch.add([row])
    for end in range(1, len(ids)):
        d = dist[0]
        lps.append(float(d[ids[end]]))
        values, indices = d.topk(min(k, d.shape[0])) if k else (None, None)
        tops.append(list(zip(indices.tolist(), values.tolist())) if k else None)
        row.history.append(ids[end])
        if end + 1 < len(ids):
            dist = batch.step()
    return lps, tops
