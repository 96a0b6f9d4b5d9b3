"""The bounded-memory build (`lmlab ngram train --memory 4G --temp-dir DIR [--workers N]`, lmplz's -S / -T):
the same Counts as corpus.py + count.py, counted out of core, the same estimation, so the ARPA file is byte for
byte the in-memory build's.

Reads: the training text file, in pieces of whole lines. Writes (in a scratch directory, external.py): the
sentence stream `<s> w1 .. wk </s>` as blocks of word ids cut at sentence starts; per order m >= 2 one sorted run
of (key, count, suffix row) per block, then their k-way merge, the Counts of order m; per block the index of each
position's m-gram among its run's keys, from which the next order's keys are made. Then the ARPA file
(write_bounded_arpa) or an NGramLM (train_bounded: for .npz / .lmbin files and the API).

Pass 1 (corpus_count's reading half) reads the text in pieces and numbers words in order of first appearance
(pieces in order, so the vocabulary is the in-memory build's). Counting order m (the counting half): per block,
keys = row of the (m-1)-gram before each position * V + its word (the in-memory packing, tables.py), sort + unique
+ count (count.unique_groups), spilled as a run; runs merged; the (m-1)-gram rows of a block come from a binary
search of its order m-1 run's keys in the merged order m-1 table, spread to the positions by the saved indexes. Blocks start at a sentence start, so no n-gram
crosses a block. With workers > 1, the tokenising of pieces and the counting of blocks run in that many
processes (the numbering of new words stays in this process, in order).

The highest order (write_bounded_arpa, MKN): its merge goes to a scratch file, and on the way the sums MKN needs
are gathered per context (its keys are sorted by context, so each piece's contexts are one range); the orders
below are estimated in memory as estimate_mkn does, then the highest order's probabilities are computed piece
by piece from the file and written straight into the ARPA file (its count is known by then).

What is bounded: reading, tokenising and counting (one piece / block per worker, one piece of each run while
merging) and, for ARPA output with MKN, the highest order, whatever the number of tokens. What is not: the
Counts and tables of the orders below the highest (about 50 bytes per n-gram), arrays of the size of the order
below the highest (per-context sums), the vocabulary; with another smoothing or a .npz / .lmbin output, the
highest order too (the estimation is the in-memory one).
"""
from __future__ import annotations

import codecs
import collections
import concurrent.futures
import multiprocessing
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import LmlabError
from ... import files
from ...files import atomic_open, atomic_write_text
from ...splitting import ARPA_DEFAULT, LINE_END, token_scheme
from . import arpa, corpus, discount, estimate
from .arpa import tokenizer_file
from .count import Counts, unique_groups
from .discount import discounts_of
from .external import (append_run_piece, load_array, merge_runs, parse_memory, read_run, save_array, scratch_dir,
                       write_run)
from .model import NGramLM, _progress_bar
from .prune import allowed_words, apply_pruning, keep_masks, prune_thresholds
from .tables import NGramTables
from .vocab import BOS_ID, EOS_ID, SPECIALS, Vocab

BYTES_PER_TOKEN = 160  # what counting one block costs per token (stream, distances, rows, keys, the sort's arrays)
BYTES_PER_CHAR = 40  # what tokenising a piece of text costs per character (the text, its copies, the token list)
MAX_PIECE_CHARS = 1 << 25  # as corpus.text_chunks
_STATE: dict = {}  # what the worker processes inherit (fork): the token scheme, the work dir, the order below's keys


@dataclass
class Build:
    """One bounded build's settings, checked as NGramLM.train checks them."""
    path: Path
    order: int
    smoothing: str
    fallback: tuple | None
    thresholds: list | None
    limit_vocab: object
    scheme: object
    skip_symbols: bool
    k: float
    encoding: str
    memory: str
    budget: int
    temp_dir: object
    workers: int
    progress: bool

    @classmethod
    def of(cls, path, order: int = 5, smoothing: str = "mkn", discount_fallback=None, prune=None, limit_vocab=None,
           progress: bool = True, tokenizer="word", skip_symbols: bool = False, k: float = 1.0,
           encoding: str = "utf-8", memory="1G", temp_dir=None, workers: int = 1) -> "Build":
        if not isinstance(order, int) or order < 1:
            raise LmlabError(f"the n-gram order must be a whole number >= 1 (got {order!r}).")
        if smoothing not in estimate.SMOOTHINGS:
            raise LmlabError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(estimate.SMOOTHINGS)}.")
        if not isinstance(workers, int) or workers < 1:
            raise LmlabError(f"--workers must be a whole number >= 1 (got {workers!r}).")
        return cls(Path(path), order, smoothing, discount.normalize_fallback(discount_fallback),
                   prune_thresholds(prune, order), limit_vocab, token_scheme(tokenizer), skip_symbols, k, encoding,
                   str(memory), parse_memory(memory), temp_dir, workers, progress)

    @property
    def name(self) -> str:
        return str(self.path)

    def count(self, work: Path, stats: dict, merge_top: bool = True):
        """Pass 1 and the counting: (vocab, Counts per order, progress bar); with merge_top=False the highest
        order is left as its sorted runs (the last item of the Counts list is their paths)."""
        block_tokens = max(256, self.budget // (self.workers * BYTES_PER_TOKEN))
        piece_chars = max(4096, min(MAX_PIECE_CHARS, self.budget // (self.workers * BYTES_PER_CHAR)))
        _STATE.clear()
        _STATE.update(scheme=self.scheme, work=work)
        with _pool(self.workers) as pool:
            vocab, blocks, raw1 = encode_to_blocks(self.path, self.encoding, self.scheme, self.skip_symbols,
                                                   self.name, work, block_tokens, piece_chars, pool, self.workers,
                                                   stats)
        if stats["tokens"] == 0:
            raise LmlabError(f"{self.name} is empty (no words); give it some text, one sentence per line.")
        stats["blocks"] = len(blocks)
        bar = _progress_bar(self.progress, self.order * 2, f"{self.order}-gram {self.smoothing} "
                            f"(--memory {self.memory})")
        counts = count_out_of_core(blocks, raw1, len(vocab), self.order, self.budget, work, self.workers, stats,
                                   bar, merge_top)
        return vocab, counts, bar

    def info(self, stats: dict) -> dict:
        return dict(smoothing=self.smoothing, tokens=stats["tokens"], sentences=stats["sentences"],
                    external={"memory": self.budget, "workers": self.workers, "blocks": stats["blocks"],
                              "spills": stats["spills"], "spilled_bytes": stats["spilled_bytes"],
                              "top_order_streamed": stats.get("top_order_streamed", False)})


def _new_stats() -> dict:
    return {"tokens": 0, "sentences": 0, "blocks": 0, "spills": 0, "spilled_bytes": 0}


def train_bounded(path, **options) -> NGramLM:
    """NGramLM.train of a text file (same options, plus memory: a size like "4G", external.parse_memory; temp_dir;
    workers) with the counting out of core; the estimation in memory. The model is the in-memory build's."""
    build = Build.of(path, **options)
    stats = _new_stats()
    with scratch_dir(build.temp_dir) as work:
        vocab, counts, bar = build.count(work, stats)
    keep = keep_masks(counts, build.thresholds, allowed_words(vocab, build.limit_vocab), len(vocab))
    tables, info = estimate.estimate(counts, len(vocab), build.smoothing, build.fallback, build.k, build.name, bar,
                                     keep)
    if keep is not None:
        vocab, tables = apply_pruning(vocab, tables, keep)
        info["counts"] = [len(t.keys) for t in tables]
    if bar:
        bar.close()
    info.update(build.info(stats))
    return NGramLM(vocab, tables, build.scheme, info)


@dataclass
class Written:
    """What write_bounded_arpa returns for the summary line (as an NGramLM would)."""
    vocab_size: int
    info: dict


def write_bounded_arpa(path, out, **options) -> Written:
    """train_bounded + save_arpa with the highest order never in memory: its merged counts go to a scratch file
    while their per-context sums are gathered (MKN's denominators, N1/N2/N3+, counts-of-counts, the left
    extensions that are the order below's adjusted counts); the orders below are estimated in memory, then the
    highest order's probabilities are computed and written block by block (its contexts' gammas and the order
    below's probabilities are arrays of the order below's size). MKN only; other smoothings take train_bounded."""
    build = Build.of(path, **options)
    if build.smoothing != "mkn" or build.order < 2:
        model = train_bounded(path, **options)
        model.save_arpa(out)
        return Written(model.vocab_size, model.info)
    stats = _new_stats()
    with scratch_dir(build.temp_dir) as work:
        vocab, counts, bar = build.count(work, stats, merge_top=False)
        top_runs = counts.pop()
        V = len(vocab)
        allowed = allowed_words(vocab, build.limit_vocab)
        keep = keep_masks(counts, build.thresholds, allowed, V)
        top = TopOrder(work / "top", counts, keep, build.thresholds, allowed, V)
        top.merge(top_runs, max(1 << 16, _STATE["piece"]))
        for p in top_runs:
            p.unlink()
        tables, lower_p, d_top, gamma_top, info = estimate_below_top(counts, top, V, build.fallback, build.name,
                                                                     bar, keep)
        word_map = row_map = None
        if keep is not None:
            word_map, row_map = np.cumsum(keep[0]) - 1, np.cumsum(keep[-1]) - 1
            vocab, tables = apply_pruning(vocab, tables, keep)
        info["counts"] = [len(t.keys) for t in tables] + [top.kept]
        with atomic_open(out, "wb") as f:
            writer = ArpaWriter(f, vocab)
            writer.header(info["counts"])
            for n, t in enumerate(tables, start=1):
                writer.section(n, tables, _table_chunks(t, n < build.order))
            chunks = top.probabilities(d_top, gamma_top, lower_p, word_map, row_map, V, len(vocab))
            writer.section(build.order, tables, chunks)
            writer.end()
            # the token scheme's note beside the file (NGramLM.save_arpa), once the file is complete, just
            # before it is renamed into place: an interrupted build leaves neither
            sidecar = tokenizer_file(out)
            if build.scheme.name == ARPA_DEFAULT:
                sidecar.unlink(missing_ok=True)
            else:
                atomic_write_text(sidecar, build.scheme.note())
        if bar:
            bar.update(1)
            bar.close()
    stats["top_order_streamed"] = True
    info.update(build.info(stats))
    return Written(len(vocab), info)


class TopOrder:
    """The highest order on disk: its merged counts in a scratch file, and what MKN needs of them, gathered while
    they are written (per context of the order below: sum of counts, N1, N2, N3+ of the kept ones, the kept sum;
    counts-of-counts; per n-gram of the order below: its left extensions)."""

    def __init__(self, path: Path, counts: list[Counts], keep, thresholds, allowed, V: int):
        self.path, self.keep, self.thresholds, self.allowed, self.V = path, keep, thresholds, allowed, V
        n_ctx = len(counts[-1].keys)
        self.coc = np.zeros(6, np.int64)
        # int32: at most V words follow a context, and an n-gram has at most V left extensions
        self.left = np.zeros(n_ctx, np.int32)
        self.denom = np.zeros(n_ctx, np.float64)
        self.kept_sum = None if keep is None else np.zeros(n_ctx, np.float64)
        self.n = [None] + [np.zeros(n_ctx, np.int32) for _ in range(3)]
        self.total = self.kept = 0

    def keep_mask(self, keys: np.ndarray, raw: np.ndarray):
        """prune.keep_masks for the highest order, block by block (None: nothing is pruned)."""
        if self.keep is None:
            return None
        k = np.ones(len(keys), dtype=bool)
        if self.thresholds is not None:
            k &= raw > self.thresholds[len(self.keep)]
        if self.allowed is not None:
            k &= self.allowed[keys % self.V]
            k &= self.keep[-1][keys // self.V]
        return k

    def merge(self, runs: list[Path], flush: int) -> None:
        """Merge the runs into the scratch file, in pieces of about `flush` records, gathering the sums."""
        pending, size = [], 0
        with open(self.path, "wb") as f:
            for piece in merge_runs(runs):
                pending.append(piece)
                size += len(piece[0])
                if size >= flush:
                    self._write(f, pending)
                    pending, size = [], 0
            if pending:
                self._write(f, pending)

    def _write(self, f, pending) -> None:
        keys, raw, suffix = (np.concatenate([p[c] for p in pending]) for c in range(3))
        if not len(keys):
            return
        append_run_piece(f, keys, raw, suffix)
        self.total += len(keys)
        self.coc += np.bincount(np.minimum(raw, 5), minlength=6)
        np.add.at(self.left, suffix, 1)
        prefix = keys // self.V
        lo = int(prefix[0])
        local = prefix - lo  # the keys are sorted, so their contexts are one range: bincount over it only
        span = int(local[-1]) + 1
        self.denom[lo:lo + span] += np.bincount(local, weights=raw, minlength=span)
        k = self.keep_mask(keys, raw)
        kept = raw if k is None else np.where(k, raw, 0)
        for c, sel in ((1, kept == 1), (2, kept == 2), (3, kept >= 3)):
            self.n[c][lo:lo + span] += np.bincount(local[sel], minlength=span)
        if k is not None:
            self.kept_sum[lo:lo + span] += np.bincount(local, weights=kept, minlength=span)
        self.kept += len(keys) if k is None else int(k.sum())

    def probabilities(self, d, gamma, lower_p, word_map, row_map, old_V: int, new_V: int):
        """(keys, log10 prob, None) of the highest order, block by block from the scratch file, as estimate_mkn
        computes them (and prune.apply_pruning renumbers them)."""
        for keys, a, suffix in read_run(self.path):
            prefix = keys // old_V
            with np.errstate(divide="ignore", invalid="ignore"):
                p = (a - d[np.minimum(a, 3)]) / self.denom[prefix]
            p += gamma[prefix] * lower_p[suffix]
            with np.errstate(divide="ignore"):
                prob = np.minimum(0.0, np.log10(p))
            k = self.keep_mask(keys, a)
            if k is not None:
                keys, prob = keys[k], prob[k]
                keys = row_map[keys // old_V] * new_V + word_map[keys % old_V]
            yield keys, prob, None


def estimate_below_top(counts: list[Counts], top: TopOrder, V: int, fallback, name: str, bar, keep):
    """estimate.estimate_mkn for every order below the highest (whose sums `top` gathered): the tables, the
    probabilities of the order below the highest, the highest order's discounts and its contexts' gammas, info."""
    N = len(counts) + 1
    adjusted = []  # discount.adjusted_counts; the left extensions of order N-1 come from the highest order's file
    for n in range(N - 1):
        left = top.left if n == N - 2 else np.bincount(counts[n + 1].suffix, minlength=len(counts[n].keys))
        adjusted.append(np.where(counts[n].starts_bos, counts[n].raw, left.astype(np.int64)))
    top.left = None  # the per-context arrays of the order below the highest are what stays alive: free them early
    adjusted[0][BOS_ID] = 0
    try:  # the highest order's gammas first, so that only they and the denominators stay alive
        d_top, late_error = discounts_of(top.coc[:5], N, fallback, name), None
        pruned_mass = top.denom - top.kept_sum if keep is not None else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma_top = np.where(top.denom > 0, (d_top[1] * top.n[1] + d_top[2] * top.n[2] + d_top[3] * top.n[3]
                                                 + pruned_mass) / top.denom, 0.0)
        del pruned_mass
    except LmlabError as e:  # said after the orders below, as estimate_mkn finds it
        late_error = e
    top.n = top.kept_sum = None
    tables, discounts, lower_p = estimate.mkn_orders(counts, adjusted, V, fallback, name, bar, keep)
    if late_error is not None:
        raise late_error
    discounts.append(d_top)
    tables[-1].backoff = estimate._log10_or_zero(gamma_top)
    info = {"discounts": [x[1:].tolist() for x in discounts]}
    return tables, lower_p, d_top, gamma_top, info


ARPA_ROWS = 1 << 16  # lines formatted at a time (arpa._format_lines holds ~500 bytes per 5-gram line meanwhile)


def _at_most(chunks, rows: int):
    """The (keys, prob, backoff) chunks cut into pieces of at most `rows` rows."""
    for keys, prob, backoff in chunks:
        for lo in range(0, len(keys), rows):
            yield keys[lo:lo + rows], prob[lo:lo + rows], None if backoff is None else backoff[lo:lo + rows]


def _table_chunks(t: NGramTables, has_backoff: bool, rows: int = ARPA_ROWS):
    for lo in range(0, len(t.keys), rows):
        yield t.keys[lo:lo + rows], t.prob[lo:lo + rows], t.backoff[lo:lo + rows] if has_backoff else None


class ArpaWriter:
    """arpa.write_arpa's bytes, section by section from blocks of (keys, prob, backoff or None) rows, so that the
    highest order can come from a file: words from a padded vocabulary matrix, numbers from digit tables
    (arpa._format_lines); lines holding a word longer than arpa._SHORT_WORD bytes at the end of their section."""

    def __init__(self, f, vocab: Vocab):
        self.f, self.words = f, vocab.words
        encoded = [w.encode("utf-8") for w in vocab.words]
        self.word_len = np.array([len(e) for e in encoded], dtype=np.int64)
        self.matrix = np.full((len(encoded), arpa._SHORT_WORD), arpa._PAD, dtype=np.uint8)
        for i, e in enumerate(encoded):
            if len(e) <= arpa._SHORT_WORD:
                self.matrix[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)

    def header(self, counts: list[int]) -> None:
        self.f.write(b"\\data\\\n")
        for n, c in enumerate(counts, start=1):
            self.f.write(f"ngram {n}={c}\n".encode())

    def section(self, n: int, tables: list[NGramTables], chunks) -> None:
        """The n-grams section; `tables` holds the orders below n (their keys spell out each row's words)."""
        self.f.write(f"\n\\{n}-grams:\n".encode())
        V, long_rows = len(self.words), []
        for keys, prob, backoff in _at_most(chunks, ARPA_ROWS):
            ids = arpa.ngram_word_ids_range([*tables[:n - 1], NGramTables(keys, prob, prob)], n, V, 0, len(keys))
            short = (self.word_len[ids] <= arpa._SHORT_WORD).all(axis=1)
            for r in np.flatnonzero(~short):  # rare: a word longer than _SHORT_WORD bytes
                long_rows.append((prob[r], ids[r], None if backoff is None else backoff[r]))
            rows = np.flatnonzero(short)
            self.f.write(arpa._format_lines(prob[rows], ids[rows], self.matrix,
                                            None if backoff is None else backoff[rows]))
        for p, ids, b in long_rows:
            text = " ".join(self.words[i] for i in ids)
            tail = "" if b is None else f"\t{b:.6f}"
            self.f.write(f"{p:.6f}\t{text}{tail}\n".encode("utf-8"))

    def end(self) -> None:
        self.f.write(b"\n\\end\\\n")


# --------------------------------------------------------------------------- pass 1: text -> vocab + id blocks

def text_pieces(path: Path, encoding: str, size: int):
    """The file's text in pieces of about `size` bytes, each ending with a newline (one is added at the end if
    missing, as corpus.encode_corpus does), decoded without newline translation, as files.read_text decodes;
    with the line number each piece starts on."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise LmlabError(f"{path} {what}; give a text file.")
    files.check_encoding(encoding)
    if "\n".encode(encoding, errors="ignore") != b"\n":
        raise LmlabError(f"--memory reads text in pieces of whole lines, which needs an encoding where a newline is "
                         f"the byte 0x0a ({encoding} is not one); convert the file to UTF-8.")
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, line, non_ascii = 0, 1, False
    with open(path, "rb") as f:
        while True:
            raw = f.read(size)
            raw += f.readline() if raw and not raw.endswith(b"\n") else b""
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                pos = min(e.start, max(len(raw) - 1, 0))
                raise files.not_text_error(path, raw or b"?", pos, offset + pos, line + raw.count(b"\n", 0, pos),
                                           encoding, "convert the file to UTF-8 or pass --encoding",
                                           True if non_ascii else None) from None
            if not raw:
                return
            if not text.endswith("\n"):
                text += "\n"
            yield text, line
            non_ascii = non_ascii or not raw.isascii()
            offset += len(raw)
            line += raw.count(b"\n")


def split_piece(text: str):
    """(in a worker) A piece's distinct words in order of first appearance and each token's index among them
    (-1: a line end), int32."""
    tokens = _STATE["scheme"].split_text(text)
    local = {LINE_END: -1}
    for w in dict.fromkeys(tokens):
        if w not in local:
            local[w] = len(local) - 1
    ids = np.fromiter(map(local.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    del local[LINE_END]
    return list(local), ids


def encode_to_blocks(path, encoding, scheme, skip_symbols, name, work, block_tokens, piece_chars, pool, workers,
                     stats: dict):
    """Pass 1: the Vocab, the stream's block files and the unigram raw counts; tokens, sentences into `stats`."""
    index: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
    writer = StreamBlocks(work / "stream", block_tokens)
    raw1 = np.zeros(0, np.int64)
    pieces = text_pieces(path, encoding, piece_chars)
    for (words, local_ids), first_line in _in_order(pool, split_piece, pieces, workers):
        for w in words:
            if w not in index:
                index[w] = len(index)
        to_global = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
        ids = np.where(local_ids < 0, -1, to_global[np.maximum(local_ids, 0)]) if len(words) else local_ids
        word_ids, lengths = corpus.line_words(ids, skip_symbols, name, first_line)
        counted = np.bincount(word_ids, minlength=len(index))
        counted[EOS_ID] += len(lengths)  # every line's </s> is predicted
        raw1 = np.concatenate((raw1, np.zeros(len(counted) - len(raw1), np.int64))) + counted
        stats["tokens"] += len(word_ids)
        stats["sentences"] += len(lengths)
        writer.add(corpus.sentence_stream(word_ids, lengths)[0])
    writer.close()
    stats["spilled_bytes"] += writer.bytes
    raw1 = np.concatenate((raw1, np.zeros(len(index) - len(raw1), np.int64)))
    return Vocab(list(index)), writer.paths, raw1


class StreamBlocks:
    """Writes the sentence stream as block files of about `block_tokens` ids, each starting at a sentence's <s>
    (a single sentence longer than that is one larger block)."""

    def __init__(self, directory: Path, block_tokens: int):
        directory.mkdir()
        self.directory, self.block_tokens = directory, block_tokens
        self.pending: list[np.ndarray] = []
        self.size = 0
        self.paths: list[Path] = []
        self.bytes = 0

    def add(self, stream: np.ndarray) -> None:
        self.pending.append(stream)
        self.size += len(stream)
        while self.size >= self.block_tokens:
            s = np.concatenate(self.pending)
            starts = np.flatnonzero(s[1:self.block_tokens + 1] == BOS_ID) + 1
            if len(starts):
                cut = int(starts[-1])
            else:  # one sentence longer than a block: up to the next sentence start
                later = np.flatnonzero(s[self.block_tokens:] == BOS_ID)
                cut = self.block_tokens + int(later[0]) if len(later) else len(s)
            self._write(s[:cut])
            self.pending, self.size = [s[cut:]], len(s) - cut

    def close(self) -> None:
        if self.size:
            self._write(np.concatenate(self.pending))
        self.pending, self.size = [], 0

    def _write(self, block: np.ndarray) -> None:
        path = self.directory / f"{len(self.paths):06d}"
        self.bytes += save_array(path, block)
        self.paths.append(path)


# --------------------------------------------------------------------------- counting: blocks -> Counts per order

def count_out_of_core(blocks, raw1, V: int, order: int, budget: int, work: Path, workers: int, stats, bar,
                      merge_top: bool = True):
    """The Counts of every order, as count.count_ngrams makes them, from the stream's block files; with
    merge_top=False the last item is the paths of the highest order's sorted runs, not merged."""
    counts = [Counts(np.arange(V, dtype=np.int64), raw1, np.full(V, -1, np.int64), np.arange(V) == BOS_ID)]
    if bar:
        bar.update(1)
    # a merge holds one piece of every run, a few times over (the pieces, their concatenation, the sort)
    piece = max(4096, budget // (8 * 48 * max(len(blocks), 1)))
    for m in range(2, order + 1):
        _STATE.update(V=V, m=m, order=order, piece=piece, below_keys=counts[m - 2].keys if m > 2 else None)
        (work / f"runs{m}").mkdir()
        if m < order:
            (work / f"inverse{m}").mkdir()
        with _pool(workers) as pool:
            results = [r for r, _ in _in_order(pool, count_block, ((i, None) for i in range(len(blocks))), workers)]
        stats["spills"] += len(results)
        stats["spilled_bytes"] += sum(nbytes for _, nbytes in results)
        if m > 2:  # order m-1's runs and inverses were kept to make its rows for this pass
            _remove_dir(work / f"inverse{m - 1}")
            _remove_dir(work / f"runs{m - 1}")
        runs = [p for p, _ in results]
        if m == order and not merge_top:
            counts.append(runs)
            break
        keys, raw, suffix = _concat(merge_runs(runs))
        if m == order:
            _remove_dir(work / f"runs{m}")
        counts.append(Counts(keys, raw, suffix, counts[-1].starts_bos[keys // V]))
        if bar:
            bar.update(1)
    return counts


def count_block(i: int):
    """(in a worker) Order m's sorted run of block i: keys (row of the (m-1)-gram before a position * V + its
    word), counts and suffix rows, and (for order m+1) each position's index among the run's keys. The block's
    (m-1)-gram rows come from order m-1's run and indexes: a binary search of the run's sorted keys in the merged
    table (sorted queries: fast), spread by the indexes. Returns the run's path and bytes."""
    work, V, m, name = _STATE["work"], _STATE["V"], _STATE["m"], f"{i:06d}"
    stream = load_array(work / "stream" / name)
    dist = _distances(stream)
    if m == 2:
        prev = stream
    else:
        rows = np.searchsorted(_STATE["below_keys"], np.concatenate([k for k, _, _ in read_run(
            work / f"runs{m - 1}" / name)] or [np.zeros(0, np.int64)]))
        prev = np.full(len(stream), -1, np.int64)
        prev[dist >= m - 2] = rows[load_array(work / f"inverse{m - 1}" / name)]
        del rows
    pos = np.flatnonzero(dist >= m - 1)
    del dist
    keys = prev[pos - 1] * V + stream[pos]
    bound = (int(prev.max()) + 1) * V if len(prev) else V
    uniq, inverse, raw, first = unique_groups(keys, bound)
    del keys
    if m < _STATE["order"]:
        save_array(work / f"inverse{m}" / name, inverse)
    del inverse
    suffix = prev[pos[first]]
    path = work / f"runs{m}" / f"{i:06d}"
    return path, write_run(path, uniq, raw, suffix, _STATE["piece"])


def _distances(stream: np.ndarray) -> np.ndarray:
    """Each position's distance from its sentence's <s> (a block starts with <s>; <s> is nowhere else)."""
    starts = np.flatnonzero(stream == BOS_ID)
    sizes = np.diff(np.append(starts, len(stream)))
    return np.arange(len(stream), dtype=np.int64) - np.repeat(starts, sizes)


def _concat(pieces):
    """One (keys, counts, suffix) from the merge's pieces."""
    parts = list(pieces)
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), empty.copy()
    return tuple(np.concatenate([p[c] for p in parts]) for c in range(3))


def _remove_dir(directory: Path) -> None:
    for p in directory.iterdir():
        p.unlink()
    directory.rmdir()


# --------------------------------------------------------------------------- worker processes

class _Inline:
    """The pool of workers=1: everything in this process."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pool(workers: int):
    """A process pool of `workers` forked processes that ignore SIGINT (Ctrl-C stops this process, which waits
    for them before removing the scratch directory), or nothing for workers=1."""
    if workers == 1:
        return _Inline()
    context = multiprocessing.get_context("fork")  # the workers inherit _STATE instead of unpickling it
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=signal.signal,
                                                  initargs=(signal.SIGINT, signal.SIG_IGN))


def _in_order(pool, function, items, workers: int):
    """function(item[0]) for each (item, tag) in order, as (result, tag); with a pool, at most 2 * workers
    submitted ahead (bounded memory). On any error or Ctrl-C the queued calls are cancelled and the running
    ones awaited."""
    if pool is None:
        for item, tag in items:
            yield function(item), tag
        return
    window = collections.deque()
    try:
        for item, tag in items:
            window.append((pool.submit(function, item), tag))
            if len(window) >= 2 * workers:
                future, t = window.popleft()
                yield future.result(), t
        while window:
            future, t = window.popleft()
            yield future.result(), t
    except BaseException:
        for future, _ in window:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
