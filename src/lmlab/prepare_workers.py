"""`prepare` with several worker processes: the text is cut into byte ranges that the workers read and encode.

The cuts are where the one-process `prepare` may cut a piece (just before a newline followed by a non-space
character, so BPE sees the same words) plus the train/val cut (the end of the line reaching the split point),
so the output is byte-identical to the one-process result. The main process plans the ranges (a few seeks per
range), keeps at most 2 x workers of them in flight and writes the ids in order: memory stays bounded
whatever the size of the text.
"""
from __future__ import annotations

import bisect
import multiprocessing
import os
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import LmlabError

RANGE_BYTES = 4 << 20  # bytes per work unit
LOOKAHEAD = 1 << 16  # bytes read at a time when looking for a cut


class Range:
    __slots__ = ("path", "start", "end", "split", "starts_doc")

    def __init__(self, path: Path, start: int, end: int, split: str, starts_doc: bool):
        self.path, self.start, self.end, self.split, self.starts_doc = path, start, end, split, starts_doc


# ------------------------------------------------------------------------------------------------ planning

def _next_cut(f, offset: int, end: int) -> int:
    """The first position >= offset (and < end) of a newline followed by a non-space character, else end."""
    f.seek(offset)
    pos = offset
    while pos < end:
        block = f.read(min(LOOKAHEAD, end - pos) + 4)  # + 4: the character after a newline at the block's end
        if not block:
            return end
        i = 0
        limit = min(len(block), end - pos)
        while True:
            i = block.find(b"\n", i, limit)
            if i < 0:
                break
            nxt = block[i + 1:i + 5]
            if nxt and not _starts_with_space(nxt):
                return pos + i
            i += 1
        pos += limit
    return end


def _starts_with_space(data: bytes) -> bool:
    """Whether the UTF-8 character at the start of `data` is whitespace (what str.isspace says)."""
    for n in (1, 2, 3, 4):
        try:
            return data[:n].decode("utf-8")[:1].isspace()
        except UnicodeDecodeError:
            continue
    return False  # not UTF-8: the worker reading this range reports it


def _line_end(path: Path, offset: int) -> int:
    """The position just after the newline ending the line that holds byte `offset` (or the file's size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        while pos < size:
            block = f.read(LOOKAHEAD)
            i = block.find(b"\n")
            if i >= 0:
                return pos + i + 1
            pos += len(block)
    return size


def plan(files: list[Path], split_at: int, range_bytes: int | None = None) -> list[Range]:
    """Work units in corpus order: each file cut about every `range_bytes` at allowed cuts and at the train/val cut
    (the end of the line whose last byte takes the byte count to `split_at`, as the one-process prepare does)."""
    range_bytes = range_bytes or RANGE_BYTES
    sizes = [f.stat().st_size for f in files]
    starts = np.cumsum([0] + sizes).tolist()
    total = starts[-1]
    k = bisect.bisect_right(starts, split_at - 1) - 1  # the file holding byte split_at - 1
    k = min(max(k, 0), len(files) - 1)
    val_from = starts[k] + _line_end(files[k], split_at - 1 - starts[k]) if split_at <= total else total
    ranges = []
    for path, size, base in zip(files, sizes, starts):
        cuts = {0, size}
        if base < val_from < base + size:
            cuts.add(val_from - base)
        with open(path, "rb") as f:
            offset = range_bytes
            while offset < size:
                cut = _next_cut(f, offset, size)
                if cut >= size:
                    break
                cuts.add(cut)
                offset = cut + range_bytes
        cuts = sorted(cuts)
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            ranges.append(Range(path, a, b, "train" if base + a < val_from else "val", i == 0))
    return ranges


# ------------------------------------------------------------------------------------------------ workers

_tok = None


def _init(tokenizer_json: str | None) -> None:
    global _tok
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    if tokenizer_json is not None:
        from .tokenizer import tokenizer_from_str

        _tok = tokenizer_from_str(tokenizer_json)


def _read(r: Range) -> str:
    with open(r.path, "rb") as f:
        f.seek(r.start)
        raw = f.read(r.end - r.start)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = r.start + e.start
        lineno = _count_newlines(r.path, offset) + 1  # as the one-process reader reports it
        raise LmlabError(
            f"{r.path} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at byte offset {offset}, line {lineno}); "
            "convert it to UTF-8 (e.g. `iconv -t UTF-8`) or move it out of the source.") from None


def _count_newlines(path: Path, end: int) -> int:
    n, pos = 0, 0
    with open(path, "rb") as f:
        while pos < end:
            block = f.read(min(1 << 20, end - pos))
            if not block:
                break
            n += block.count(b"\n")
            pos += len(block)
    return n


def _pieces(text: str, chunk_chars: int) -> Iterator[str]:
    """The text in pieces of about chunk_chars characters, cut just before a newline followed by a non-space."""
    pos = 0
    while len(text) - pos > chunk_chars:
        i = text.find("\n", pos + max(chunk_chars, 1))
        while i >= 0 and (i + 1 >= len(text) or text[i + 1].isspace()):
            i = text.find("\n", i + 1)
        if i < 0:
            break
        yield text[pos:i]
        pos = i
    yield text[pos:]


def _vocab(args) -> tuple[str, object]:
    """First pass of a char or word tokenizer over one range: its characters, or its word counts."""
    r, kind = args
    text = _read(r)
    if kind == "char":
        return kind, set(text)
    from .tokenizer import split_words

    return kind, Counter(split_words(text.replace("\n", " ")))


def _encode(args) -> tuple[np.ndarray, int, int]:
    """Ids of one range (end-of-text first if it starts a document after the first), its chars and bytes."""
    r, first_doc, chunk_chars, dtype = args
    text = _read(r)
    parts = []
    if r.starts_doc and _tok.eot_id is not None and not first_doc:
        parts.append(np.asarray([_tok.eot_id], dtype=dtype))
    for piece in _pieces(text, chunk_chars):
        parts.append(np.asarray(_tok.encode(piece), dtype=dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return ids, len(text), r.end - r.start


# ------------------------------------------------------------------------------------------------ running

def _ordered(pool, fn: Callable, tasks: list, window: int) -> Iterator:
    """fn over tasks in `pool`, results in task order, at most `window` tasks submitted and not yet consumed."""
    pending: deque = deque()
    it = iter(tasks)
    for task in it:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().get()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.apply_async(fn, (nxt,)))
        yield result


def _pool(workers: int, tokenizer_json: str | None):
    # fork on Linux: no re-import of the caller's __main__ (scripts need no `if __name__ == "__main__"` guard)
    # and no interpreter start-up per worker; spawn elsewhere.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=_init, initargs=(tokenizer_json,))


def train_vocab(kind: str, ranges: list[Range], workers: int, vocab_size, bar):
    """A char or word tokenizer built by `workers` processes (the same one the one-process first pass builds)."""
    from .tokenizer import CharTokenizer, WordTokenizer, train_tokenizer

    with _pool(workers, None) as pool:
        if kind == "char":
            seen: set[str] = set()
            for r, (_, chars) in zip(ranges, _ordered(pool, _vocab, [(r, kind) for r in ranges], 2 * workers)):
                seen |= chars
                bar.update(r.end - r.start)
            if not seen:
                return train_tokenizer("char", [], None)  # its error for an empty text
            return CharTokenizer(sorted(seen))
        counts: Counter = Counter()
        for r, (_, c) in zip(ranges, _ordered(pool, _vocab, [(r, kind) for r in ranges], 2 * workers)):
            counts.update(c)
            bar.update(r.end - r.start)
    counts.pop(WordTokenizer.UNK, None)
    if not counts:
        return train_tokenizer("word", [], vocab_size)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if vocab_size is not None:
        words = words[:int(vocab_size) - 2]
    return WordTokenizer([WordTokenizer.UNK, WordTokenizer.NEWLINE, *words])


def encode(tok, ranges: list[Range], outs: dict, counts: dict, chunk_chars: int, dtype, workers: int, bar) -> None:
    """Encode every range with `workers` processes, appending ids to outs[split] in corpus order."""
    tasks = [(r, i == 0, chunk_chars, dtype) for i, r in enumerate(ranges)]
    with _pool(workers, tok.to_str()) as pool:
        for r, (ids, chars, nbytes) in zip(ranges, _ordered(pool, _encode, tasks, 2 * workers)):
            ids.tofile(outs[r.split])
            c = counts[r.split]
            c["tokens"] += len(ids)
            c["chars"] += chars
            c["bytes"] += nbytes
            bar.update(nbytes)
