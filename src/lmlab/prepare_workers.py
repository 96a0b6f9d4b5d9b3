"""`prepare` with several worker processes: the text is cut into byte ranges that the workers read and encode.

The cuts are where the one-process `prepare` may cut a piece (just before a newline followed by a non-space
character, so BPE sees the same words), or, where those are rare, at a space between two letters, plus the
train/val cut (the end of the line reaching the split point), so the output is byte-identical to the one-process
result. The main process plans the ranges (a few seeks per
range), keeps at most 2 x workers of them in flight and writes the ids in order: memory stays bounded
whatever the size of the text.
"""
from __future__ import annotations

import bisect
import codecs
import multiprocessing
import os
import re
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .files import not_text_error

RANGE_BYTES = 4 << 20  # bytes per work unit
LOOKAHEAD = 1 << 16  # bytes read at a time when looking for a cut


class Range:
    __slots__ = ("path", "start", "end", "split", "starts_doc")

    def __init__(self, path: Path, start: int, end: int, split: str, starts_doc: bool):
        self.path, self.start, self.end, self.split, self.starts_doc = path, start, end, split, starts_doc


# ------------------------------------------------------------------------------------------------ planning

# Where the text may be cut without changing any tokenizer's output (char, byte and word tokenizers, and BPE with
# GPT-2's pre-tokenizer, which never joins the two sides into one pre-token):
#  (a) just before a newline followed by a non-space character (the only cut of the one-process prepare);
#  (b) at a space between two letters: the word on the left ends a pre-token, " word" on the right starts one.
# (b) is the fallback where (a) is rare, as in WikiText, whose every line starts with a space: without it such a
# text would be encoded as one piece, and `tokenizers` needs ~200 bytes per character while it encodes one.
NEWLINE_CUT = re.compile(r"\n(?=\S)")
SPACE_CUT = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])")
NEWLINE_CUT_BYTES = re.compile(rb"\n[^\s]")
SPACE_CUT_BYTES = re.compile(rb"(?<=[A-Za-z]) (?=[A-Za-z])")  # ASCII letters: enough for a fallback
FALLBACK_AFTER = 1 << 18  # characters (or bytes) searched for a cut (a) before a cut (b) is taken


def _text_cut(text: str, start: int) -> int:
    """The first allowed cut at or after `start` (a cut (a) if one comes within FALLBACK_AFTER), or -1."""
    window = start + FALLBACK_AFTER
    m = NEWLINE_CUT.search(text, start, window)
    if m:
        return m.start()
    for m in SPACE_CUT.finditer(text, start):
        i = m.start()
        if text[i - 1].isalpha() and text[i + 1].isalpha():  # [^\W\d_] also lets a few numerals through
            later = NEWLINE_CUT.search(text, window, i) if i > window else None
            return later.start() if later else i
    m = NEWLINE_CUT.search(text, window)
    return m.start() if m else -1


def _block_cut(block: bytes, n: int, prefer_newline: bool) -> int:
    """An allowed cut in block[:n] (block holds 4 more bytes to see the character after it), or -1."""
    a = -1
    for m in NEWLINE_CUT_BYTES.finditer(block):
        if m.start() >= n:
            break
        if not _starts_with_space(block[m.start() + 1:m.start() + 5]):
            a = m.start()
            break
    m = SPACE_CUT_BYTES.search(block, 0, n + 1)
    b = m.start() if m and m.start() < n else -1
    if a >= 0 and (prefer_newline or b < 0 or a < b):
        return a
    return b


def _next_cut(f, offset: int, end: int) -> int:
    """The first allowed cut at or after `offset` (and before `end`) in the open file, else `end`."""
    pos, first = offset, True
    while pos < end:
        f.seek(pos)
        n = min(FALLBACK_AFTER, end - pos)
        block = f.read(n + 4)
        if not block:
            break
        cut = _block_cut(block, n, prefer_newline=first)
        if cut >= 0:
            return pos + cut
        pos, first = pos + n, False
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
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    if tokenizer_json is not None:
        from .tokenizer import tokenizer_from_str

        _tok = tokenizer_from_str(tokenizer_json)


def _read(r: Range, encoding: str) -> str:
    with open(r.path, "rb") as f:
        f.seek(r.start)
        raw = f.read(r.end - r.start)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        offset = r.start + e.start
        lineno = _count_newlines(r.path, offset) + 1  # as the one-process reader reports it
        from .data import NOT_TEXT_FIX

        raise not_text_error(r.path, raw, e.start, offset, lineno, encoding, NOT_TEXT_FIX) from None


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
    """The text in pieces of about chunk_chars characters, cut where _text_cut allows."""
    pos = 0
    while len(text) - pos > chunk_chars:
        i = _text_cut(text, pos + max(chunk_chars, 1))
        if i < 0:
            break
        yield text[pos:i]
        pos = i
    yield text[pos:]


def _vocab(args) -> tuple[str, object]:
    """First pass of a char or word tokenizer over one range: its characters, or its word counts."""
    r, kind, encoding = args
    text = _read(r, encoding)
    if kind == "char":
        return kind, Counter(text)
    from .tokenizer import WORD_TOKENIZERS

    return kind, Counter(WORD_TOKENIZERS[kind].text_words(text))


def _encode(args) -> tuple[np.ndarray, int, int]:
    """Ids of one range (end-of-text first if it starts a document after the first), its chars and bytes."""
    r, first_doc, chunk_chars, dtype, encoding = args
    text = _read(r, encoding)
    parts = []
    if r.starts_doc and _tok.eot_id is not None and not first_doc:
        parts.append(np.asarray([_tok.eot_id], dtype=dtype))
    for piece in _pieces(text, chunk_chars):
        parts.append(np.asarray(_tok.encode(piece), dtype=dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    utf8_bytes = r.end - r.start if codecs.lookup(encoding).name == "utf-8" else len(text.encode("utf-8"))
    return ids, len(text), utf8_bytes


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
    # Workers encode one string at a time: no `tokenizers` thread pool in them (and, set before the fork, no
    # warning from that library about forking after its threads ran in this process).
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context(method).Pool(workers, initializer=_init, initargs=(tokenizer_json,))
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def train_vocab(kind: str, ranges: list[Range], workers: int, vocab_size, bar, encoding: str = "utf-8"):
    """A char or word-level tokenizer built by `workers` processes (the one the one-process first pass builds)."""
    from .tokenizer import char_tokenizer, word_tokenizer

    tasks = [(r, kind, encoding) for r in ranges]
    counts: Counter = Counter()
    with _pool(workers, None) as pool:
        for r, (_, c) in zip(ranges, _ordered(pool, _vocab, tasks, 2 * workers)):
            counts.update(c)
            bar.update(r.end - r.start)
    return char_tokenizer(counts, vocab_size) if kind == "char" else word_tokenizer(kind, counts, vocab_size)


def encode(tok, ranges: list[Range], outs: dict, counts: dict, chunk_chars: int, dtype, workers: int, bar,
           encoding: str = "utf-8") -> None:
    """Encode every range with `workers` processes, appending ids to outs[split] in corpus order."""
    tasks = [(r, i == 0, chunk_chars, dtype, encoding) for i, r in enumerate(ranges)]
    with _pool(workers, tok.to_str()) as pool:
        for r, (ids, chars, nbytes) in zip(ranges, _ordered(pool, _encode, tasks, 2 * workers)):
            ids.tofile(outs[r.split])
            c = counts[r.split]
            c["tokens"] += len(ids)
            c["chars"] += chars
            c["bytes"] += nbytes
            bar.update(r.end - r.start)
