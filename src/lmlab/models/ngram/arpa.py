"""Pass 5 (lmplz's output) and its inverse: the model's tables <-> an ARPA text file (KenLM, SRILM, ours).

Write reads a Vocab and one NGramTables per order and writes standard ARPA: the \\data\\ counts, then one section
per order, lines "log10prob<TAB>w1 .. wn[<TAB>log10backoff]". Read parses any ARPA file (lmplz's, SRILM's, ours)
back into a Vocab and tables, streaming (a chunk of lines at a time: memory about the final arrays, not the file);
every malformation is an LmlabError naming the file and line.
"""
from __future__ import annotations

import bisect
import itertools
import math
import re
from pathlib import Path

import numpy as np

from ...errors import LmlabError
from ...files import atomic_open
from .count import unique_groups
from .tables import NGramTables, log10_stream, rows_of
from .vocab import BOS, BOS_ID, SPECIALS, Vocab


def tokenizer_file(model_path) -> Path:
    """Where lmlab notes the token scheme of an ARPA model (ARPA has no place for it), beside the file:
    model.arpa -> model.tokenizer.json (a run's tokenizer.json, or {"lmlab_ngram_tokenizer": "char"})."""
    return Path(model_path).with_suffix(".tokenizer.json")

_PAD = 0xFF  # never a byte of UTF-8 text: marks padding in the fixed-width line matrix
_SHORT_WORD = 24  # words up to this many bytes go through the fast path


def write_arpa(path, vocab: Vocab, tables: list[NGramTables]) -> None:
    """Standard ARPA text (readable by KenLM, SRILM): \\data\\ counts, then one section per order.

    Each chunk of lines is laid out as a fixed-width uint8 matrix (numbers from digit tables, words from
    a padded vocabulary matrix) and the padding is squeezed out in one pass: no Python work per n-gram.
    Lines holding a very long word are written afterwards by plain Python (ARPA sections are unordered).
    """
    V = len(vocab)
    encoded = [w.encode("utf-8") for w in vocab.words]
    word_len = np.array([len(e) for e in encoded], dtype=np.int64)
    vocab_matrix = np.full((V, _SHORT_WORD), _PAD, dtype=np.uint8)
    for i, e in enumerate(encoded):
        if len(e) <= _SHORT_WORD:
            vocab_matrix[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        f.write(b"\\data\\\n")
        for n, t in enumerate(tables, start=1):
            f.write(f"ngram {n}={len(t.keys)}\n".encode())
        for n, t in enumerate(tables, start=1):
            f.write(f"\n\\{n}-grams:\n".encode())
            has_backoff = n < len(tables)
            long_rows = []
            for lo in range(0, len(t.keys), 1 << 18):
                hi = min(lo + (1 << 18), len(t.keys))
                ids = ngram_word_ids_range(tables, n, V, lo, hi)
                short = (word_len[ids] <= _SHORT_WORD).all(axis=1)
                long_rows.extend((lo + np.flatnonzero(~short)).tolist())
                rows = np.flatnonzero(short)
                backoff = t.backoff[lo:hi][rows] if has_backoff else None
                f.write(_format_lines(t.prob[lo:hi][rows], ids[rows], vocab_matrix, backoff))
            for row in long_rows:  # rare: a word longer than _SHORT_WORD bytes
                ids = ngram_word_ids_range(tables, n, V, row, row + 1)[0]
                text = " ".join(vocab.words[i] for i in ids)
                tail = f"\t{t.backoff[row]:.6f}" if has_backoff else ""
                f.write(f"{t.prob[row]:.6f}\t{text}{tail}\n".encode("utf-8"))
        f.write(b"\n\\end\\\n")


def _digit_table(width: int, strip_leading: bool) -> np.ndarray:
    """[10**width, width] ASCII digits of every number; leading zeros become padding if strip_leading."""
    values = np.arange(10 ** width)
    table = np.empty((10 ** width, width), dtype=np.uint8)
    for col in range(width):
        table[:, col] = values // 10 ** (width - 1 - col) % 10 + 48
    if strip_leading:
        for col in range(width - 1):
            table[values < 10 ** (width - 1 - col), col] = _PAD
    return table


_DIGITS3 = _digit_table(3, strip_leading=False)
_WHOLE3 = _digit_table(3, strip_leading=True)


def _number_matrix(x: np.ndarray) -> np.ndarray:
    """[len(x), 11] fixed-point text "-123.456789" (6 decimals), padded; |x| < 1000 (ARPA log10 values)."""
    x = np.asarray(x, dtype=np.float64)
    micro = np.rint(np.minimum(np.abs(x), 999.999999) * 1e6).astype(np.int64)
    whole, frac = np.divmod(micro, 1_000_000)
    out = np.empty((len(x), 11), dtype=np.uint8)
    out[:, 0] = np.where((x < 0) & (micro > 0), ord("-"), _PAD)
    out[:, 1:4] = _WHOLE3[whole]
    out[:, 4] = ord(".")
    out[:, 5:8] = _DIGITS3[frac // 1000]
    out[:, 8:11] = _DIGITS3[frac % 1000]
    return out


def _format_lines(prob, ids, vocab_matrix, backoff) -> bytes:
    """ARPA lines "prob<TAB>w1 w2 ..[<TAB>backoff]" for many n-grams at once."""
    count, n = ids.shape
    W = vocab_matrix.shape[1]
    parts = [_number_matrix(prob), np.full((count, 1), ord("\t"), np.uint8)]
    word_len = (vocab_matrix != _PAD).sum(axis=1)
    for c in range(n):
        width = int(word_len[ids[:, c]].max()) if count else 1  # only as wide as this chunk needs
        parts.append(vocab_matrix[ids[:, c], :width])
        sep = " " if c < n - 1 else ("\t" if backoff is not None else "\n")
        parts.append(np.full((count, 1), ord(sep), np.uint8))
    if backoff is not None:
        parts += [_number_matrix(backoff), np.full((count, 1), ord("\n"), np.uint8)]
    lines = np.concatenate(parts, axis=1)
    return lines[lines != _PAD].tobytes()


def ngram_word_ids_range(tables, n, V, lo, hi) -> np.ndarray:
    """[hi - lo, n] word ids of the rows lo..hi of the order-n table (following the prefix rows down)."""
    keys = tables[n - 1].keys[lo:hi]
    if n == 1:
        return keys[:, None]
    cols = [keys % V]
    row = keys // V
    for m in range(n - 1, 0, -1):
        k = tables[m - 1].keys[row]
        cols.append(k % V if m > 1 else k)
        row = k // V
    return np.stack(cols[::-1], axis=1)


_COUNT_LINE = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")
# Fields are separated by ASCII space and tab only, as KenLM reads them (lm/read_arpa.hh's kARPASpaces) and as
# lmplz splits words: U+00A0 (no-break space) and U+3000 (ideographic space) are characters of a word, never
# separators, so Python's Unicode-aware str.split() / strip() must not be used on ARPA lines. CR is a blank too
# (a file with CRLF line ends; no lmplz word holds one).
_BLANKS = " \t\r"


def _fields(text: str) -> list[str]:
    """The blank-separated fields of ARPA text (several lines at once, too; str.replace runs at C speed)."""
    return list(filter(None, text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split(" ")))


_CHUNK = 1 << 14  # lines parsed at a time: the reader holds one chunk of text, the arrays grow chunk by chunk


class _ArpaReader:
    """Streaming, line-numbered reader (one chunk of lines in memory at a time) that turns every malformation
    into 'FILE:LINE: what is wrong'. `i` counts the lines consumed; lines can be pushed back."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise LmlabError(f"{path} does not exist.")
        self.f = open(path, "rb")
        self.i = 0
        self.offset = 0  # bytes read from the file
        self.pushed: list[str] = []
        self.last_newline = True  # did the last line read end with a newline (then one more, empty, line follows)

    def close(self):
        self.f.close()

    @property
    def end_line(self) -> int:
        """The number of the last line (str.split("\n") counts an empty one after a final newline)."""
        return self.i + 1 if self.last_newline else self.i

    def take(self, k: int) -> list[str]:
        """Up to k more lines (fewer at the end of the file), without their newlines."""
        out, self.pushed = self.pushed[:k], self.pushed[k:]
        if len(out) < k:
            raw = list(itertools.islice(self.f, k - len(out)))
            if raw:
                data = b"".join(raw)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    line = self.i + len(out) + data.count(b"\n", 0, e.start) + 1
                    raise LmlabError(f"{self.path}:{line}: the ARPA file is not UTF-8 (bad byte at offset "
                                     f"{self.offset + e.start}).") from None
                self.offset += len(data)
                self.last_newline = text.endswith("\n")
                out += (text[:-1] if self.last_newline else text).split("\n")
        self.i += len(out)
        return out

    def push_back(self, lines: list[str]) -> None:
        self.pushed = list(lines) + self.pushed
        self.i -= len(lines)

    def error(self, message: str, line: int | None = None):
        line = self.i if line is None else line
        return LmlabError(f"{self.path}:{line}: {message}")

    def next_nonblank(self, what: str) -> str:
        while True:
            got = self.take(1)
            if not got:
                raise self.error(f"the file ends early (truncated?) while expecting {what}.", self.end_line)
            line = got[0].strip(_BLANKS)
            if line:
                return line


class _LineNumbers:
    """The file line of each entry of a section: runs of consecutive lines (bulk-parsed chunks) or explicit lists."""

    def __init__(self):
        self.entry_starts: list[int] = []
        self.runs: list = []  # (first line) or a list of lines
        self.total = 0

    def add_run(self, first_line: int, count: int) -> None:
        self.entry_starts.append(self.total)
        self.runs.append(first_line)
        self.total += count

    def add_list(self, lines: list[int]) -> None:
        if lines:
            self.entry_starts.append(self.total)
            self.runs.append(list(lines))
            self.total += len(lines)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> int:
        k = bisect.bisect_right(self.entry_starts, i) - 1
        run = self.runs[k]
        return run[i - self.entry_starts[k]] if isinstance(run, list) else run + i - self.entry_starts[k]


def read_arpa(path) -> tuple[Vocab, list[NGramTables]]:
    """Read an ARPA file (lmplz, SRILM, ours), streaming: memory is about the final arrays, not the file. Missing
    prefixes (pruned SRILM models) get blank entries."""
    r = _ArpaReader(Path(path))
    try:
        return _read(r)
    finally:
        r.close()


def _read(r: _ArpaReader) -> tuple[Vocab, list[NGramTables]]:
    while True:  # text before \data\ is allowed (SRILM and others write comments)
        got = r.take(1)
        if not got:
            raise r.error("no \\data\\ header; this is not an ARPA language model.", 1)
        if got[0].strip(_BLANKS) == "\\data\\":
            break
    declared: list[int] = []
    while True:
        line = r.next_nonblank("the ngram counts")
        m = _COUNT_LINE.match(line)
        if not m:
            if line.startswith("\\"):
                r.push_back([line])
                break
            raise r.error(f"expected 'ngram N=COUNT' in the \\data\\ header, found {line[:60]!r}.")
        if int(m.group(1)) != len(declared) + 1:
            raise r.error(f"ngram orders in the header must be 1, 2, 3, ... (found ngram {m.group(1)}).")
        declared.append(int(m.group(2)))
    if not declared:
        raise r.error("the \\data\\ header lists no 'ngram N=COUNT' lines.")
    order = len(declared)
    sections, index = [], None
    for n in range(1, order + 1):
        header = r.next_nonblank(f"the \\{n}-grams: section")
        if header != f"\\{n}-grams:":
            raise r.error(f"expected \\{n}-grams: but found {header[:60]!r}.")
        sections.append(_read_section(r, n, declared[n - 1], n == order, index))
        if n == 1:  # the vocabulary, numbered as _build_from_sections numbers it
            words = list(SPECIALS) + [w for w in sections[0][0] if w not in SPECIALS]
            index = _MissingMinusOne((w, i) for i, w in enumerate(words))
            if len(index) >= 2 ** 31:
                raise r.error("the \\1-grams: section holds 2**31 words or more.")
    end = r.next_nonblank("\\end\\")
    if end != "\\end\\":
        raise r.error(f"expected \\end\\ after the {order}-grams, found {end[:60]!r}.")
    return _build_from_sections(sections, r)


def _parse_chunk_fast(lines: list[str], n: int, last: bool, index: dict | None):
    """A chunk of well-formed entry lines parsed in bulk (one split, NumPy number parsing): (words or ids, probs,
    backoffs); None if anything looks off, and then the line-by-line parser names the problem."""
    text = "\n".join(lines)
    if text.startswith("\\") or "\n\\" in text:
        return None
    flat = _fields(text)
    count = len(lines)
    widths = (n + 1,) if last else (n + 2, n + 1)
    k = next((w for w in widths if len(flat) == count * w), None)
    if k is None:
        return None
    try:
        probs = np.array(flat[0::k], dtype=np.float64)
        backoffs = np.array(flat[k - 1::k], dtype=np.float64) if k == n + 2 else np.zeros(count)
    except ValueError:
        return None
    if np.isnan(probs).any() or np.isnan(backoffs).any():
        return None
    if index is None:  # the unigrams: their words
        return flat[1::k], probs, backoffs
    ids = np.empty((count, n), dtype=np.int32)
    for c in range(n):
        ids[:, c] = np.fromiter(map(index.__getitem__, flat[1 + c::k]), dtype=np.int64, count=count)
    if (ids < 0).any():
        return None
    return ids, probs, backoffs


class _MissingMinusOne(dict):
    def __missing__(self, key):
        return -1


def _parse_line(r: _ArpaReader, line: str, line_no: int, n: int, last: bool, index: dict | None):
    """(word or id row, prob, backoff) of one entry line, or an LmlabError naming what is wrong."""
    parts = _fields(line)
    if len(parts) == n + 1:
        bo = 0.0
    elif len(parts) == n + 2 and not last:
        bo = _number(r, parts[-1], "backoff", line_no)
    else:
        raise r.error(f"a {n}-gram line needs a log10 probability, {n} word(s)"
                      f"{'' if last else ' and an optional backoff'}; found {len(parts)} field(s).", line_no)
    prob = _number(r, parts[0], "log10 probability", line_no)
    words = parts[1:n + 1]
    if index is None:
        return words[0], prob, bo
    ids = [index[w] for w in words]
    if min(ids) < 0:
        raise r.error(f"the {n}-gram {' '.join(words)!r} uses a word missing from the \\1-grams: section.",
                      line_no)
    return ids, prob, bo


def _read_section(r: _ArpaReader, n: int, count: int, last: bool, index: dict | None = None):
    """(words (order 1) or word-id rows, prob, backoff, line numbers) of one section, read chunk by chunk; checks
    fields and the declared count."""
    section_line = r.i
    entries, probs, backoffs, line_nos = [], [], [], _LineNumbers()
    got, stop = 0, False
    while not stop:
        # up to the declared count, then line by line until a blank line or the next section (extra entries)
        lines = r.take(min(count - got, _CHUNK) if got < count else 1)
        if not lines:
            break
        first = r.i - len(lines) + 1
        fast = _parse_chunk_fast(lines, n, last, index) if got < count else None
        if fast is not None:
            entries.append(fast[0])
            probs.append(fast[1])
            backoffs.append(fast[2])
            line_nos.add_run(first, len(lines))
            got += len(lines)
            continue
        rows, p, b, nos = [], [], [], []
        for j, raw in enumerate(lines):
            line = raw.strip(_BLANKS)
            if not line:
                if got + len(rows) >= count:
                    r.push_back(lines[j + 1:])
                    stop = True
                    break
                continue
            if line.startswith("\\"):
                r.push_back(lines[j:])
                stop = True
                break
            row, prob, bo = _parse_line(r, line, first + j, n, last, index)
            rows.append(row)
            p.append(prob)
            b.append(bo)
            nos.append(first + j)
        if rows:
            entries.append(rows if index is None else np.array(rows, dtype=np.int32).reshape(-1, n))
            probs.append(np.array(p, dtype=np.float64))
            backoffs.append(np.array(b, dtype=np.float64))
            line_nos.add_list(nos)
            got += len(rows)
    if got != count:
        if not stop and got < count:
            raise r.error(f"the file ends after {got} of the {count} {n}-grams the header declares "
                          f"(truncated?).", r.end_line)
        raise r.error(f"the \\{n}-grams: section has {got} entries but the \\data\\ header declares "
                      f"{count}.", section_line)
    if index is None:
        words = [w for part in entries for w in part]
    else:
        words = np.concatenate(entries) if entries else np.zeros((0, n), dtype=np.int32)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
    return words, cat(probs), cat(backoffs), line_nos


def _number(r: _ArpaReader, text: str, what: str, line_no: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise r.error(f"the {what} {text[:40]!r} is not a number.", line_no) from None
    if math.isnan(value):
        raise r.error(f"the {what} is NaN.", line_no)
    return value


def _build_from_sections(sections, r: _ArpaReader) -> tuple[Vocab, list[NGramTables]]:
    uni_words = sections[0][0]
    vocab_words = list(SPECIALS) + [w for w in uni_words if w not in SPECIALS]
    vocab = Vocab(vocab_words)
    if len(set(uni_words)) != len(uni_words):
        raise r.error("a word appears twice in the \\1-grams: section.", sections[0][3][0])
    V = len(vocab)
    # unigram table indexed by vocab id; <unk> missing from the file gets -100 like KenLM assumes
    prob1 = np.full(V, -100.0)
    bo1 = np.zeros(V)
    ids = np.array(vocab.ids(uni_words), dtype=np.int64)
    prob1[ids], bo1[ids] = sections[0][1], sections[0][2]
    if BOS in vocab.index and BOS not in uni_words:
        prob1[BOS_ID] = 0.0
    tables = [NGramTables(np.arange(V, dtype=np.int64), prob1, bo1)]
    word_ids = [None] + [s[0] for s in sections[1:]]  # checked against the vocabulary while reading
    # every prefix of an n-gram must be an (n-1)-gram; when a (pruned SRILM) file lacks some, add blanks
    tables = (_assemble_tables(V, tables, word_ids, sections, r, None)
              or _assemble_tables(V, tables, word_ids, sections, r, _missing_prefixes(word_ids)))
    return vocab, tables


def _missing_prefixes(word_ids: list) -> list:
    """Per order, the word-id rows that are a prefix of a longer n-gram but absent from the file."""
    extra = [None] * len(word_ids)
    for n in range(len(word_ids) - 1, 1, -1):
        prefixes = word_ids[n][:, :-1]
        have = word_ids[n - 1] if extra[n - 1] is None else np.vstack([word_ids[n - 1], extra[n - 1]])
        missing = _rows_not_in(prefixes, have)
        if len(missing):
            extra[n - 1] = np.unique(missing, axis=0) if extra[n - 1] is None else \
                np.unique(np.vstack([extra[n - 1], missing]), axis=0)
    return extra


def _assemble_tables(V: int, unigram_tables, word_ids, sections, r, extra) -> list[NGramTables] | None:
    """Sorted tables order by order; None when a context is missing and no blanks (`extra`) were given."""
    tables = list(unigram_tables)
    for n in range(1, len(sections)):
        wids, probs, bos = word_ids[n], sections[n][1], sections[n][2]
        if extra is not None and extra[n] is not None:  # blanks: backed-off prob, backoff 0 (as KenLM does)
            blank_probs = np.array([_backoff_prob(tables, tuple(row)) for row in extra[n].tolist()])
            wids = np.vstack([wids, extra[n]])
            probs = np.concatenate([probs, blank_probs])
            bos = np.concatenate([bos, np.zeros(len(extra[n]))])
        prefix_rows = rows_of(tables, wids[:, :-1].astype(np.int64))
        if (prefix_rows < 0).any():
            if extra is None:
                return None
            bad = int(np.flatnonzero(prefix_rows < 0)[0])
            raise r.error(f"the {n + 1}-gram's context is not in the model.", sections[n][3][min(bad, len(sections[n][3]) - 1)])
        all_keys = prefix_rows * V + wids[:, -1]
        keys, _, copies, first = unique_groups(all_keys, len(tables[-1].keys) * V)
        if (copies > 1).any():  # name the line of the second occurrence
            dup = int(np.flatnonzero(all_keys == keys[np.flatnonzero(copies > 1)[0]])[1])
            raise r.error(f"this {n + 1}-gram appears twice in its section.", sections[n][3][min(dup, len(sections[n][3]) - 1)])
        tables.append(NGramTables(keys, probs[first], bos[first]))
    return tables


def _rows_not_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(rows).view([("", rows.dtype)] * rows.shape[1]).ravel()
    b = np.ascontiguousarray(table).view([("", table.dtype)] * table.shape[1]).ravel()
    return rows[~np.isin(a, b)]


def _backoff_prob(tables: list[NGramTables], words: tuple) -> float:
    """log10 p(w_n | w_1..w_{n-1}) by backing off, for a blank n-gram (`tables` holds orders 1..n-1 so far)."""
    tokens = np.array(words, dtype=np.int64)
    logp, _ = log10_stream(tables, tokens, np.arange(len(tokens)))  # contexts up to n-2 words
    context_row = rows_of(tables, tokens[None, :-1])[0]  # plus the backoff of the whole (n-1)-word context
    return float(logp[-1] + (tables[len(words) - 2].backoff[context_row] if context_row >= 0 else 0.0))
