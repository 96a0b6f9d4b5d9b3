"""N-gram language models: counting, smoothing (modified Kneser-Ney, Witten-Bell, add-k), ARPA I/O, scoring.

Everything is vectorised in NumPy. An n-gram of order n is stored as one int64 key,
``key = prefix_id * V + last_word``, where ``prefix_id`` is the row of its first n-1 words in the
order n-1 table (a trie flattened into sorted arrays, like KenLM's trie). Sorting keys therefore sorts
n-grams lexicographically, children of a context are one contiguous range, and lookups are
``np.searchsorted``.

Modified Kneser-Ney follows KenLM's ``lmplz`` exactly (Heafield et al. 2013, "Scalable modified
Kneser-Ney language model estimation"; Chen & Goodman 1998, "An empirical study of smoothing
techniques"):
- every line is a sentence ``<s> w1 .. wk </s>``; words split on space, tab, CR and NUL;
- the highest order keeps raw counts; a lower-order n-gram gets its *adjusted* (continuation) count,
  the number of distinct words seen to its left, except n-grams that begin with ``<s>``, which keep
  their raw count (nothing can precede ``<s>``);
- per order, discounts D1, D2, D3+ from counts-of-counts of those counts
  (Chen & Goodman eq. 26): Y = n1/(n1+2 n2), D_k = k - (k+1) Y n_{k+1}/n_k;
- interpolation: p(w|h) = (a(hw) - D(a(hw)))/sum_x a(hx) + gamma(h) p(w|h'),
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / sum_x a(hx); unigrams interpolate with the
  uniform 1/(|V|-1) (``<s>`` excluded), so ``<unk>`` gets gamma/(|V|-1);
- the ARPA backoff of a context h is log10 gamma(h); ``<s>`` gets log10 prob 0 (as lmplz writes it;
  SRILM writes -99; both are read and neither is ever used, ``<s>`` is never predicted).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import LmlabError
from ..files import atomic_open, atomic_write_text

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIALS = (UNK, BOS, EOS)
SPACE_SYMBOL = "\u2581"  # char tokenizer: a space inside a line is this visible symbol (ARPA words hold no blanks)
LN10 = math.log(10.0)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback defaults
SMOOTHINGS = ("mkn", "witten-bell", "add-k")
_WORD_DELIMITERS = str.maketrans({"\t": " ", "\r": " ", "\0": " "})  # lmplz splits on "\0\t\n\r "


# =========================================================================== input text

def _read_text(path: Path, encoding: str = "utf-8") -> str:
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; pass a text file with one sentence per line.")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LmlabError(f"{path}:{line}: not valid {encoding} text (bad byte at offset {e.start}); "
                         f"convert the file to UTF-8 or pass --encoding.") from None


def _as_text(lines_or_path, encoding: str = "utf-8") -> tuple[str, str]:
    """The whole training text (newline-terminated lines) and a name for messages."""
    if isinstance(lines_or_path, (str, os.PathLike)):
        path = Path(lines_or_path)
        return _read_text(path, encoding), str(path)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines_or_path), "the training text"


# A model's `tokenizer` is "word" (split on blanks, as lmplz), "char", or an lmlab Tokenizer (the one of a run:
# its token ids, written in decimal, are the model's words, so the n-gram predicts the same tokens as the run).

def resolve_tokenizer(tokenizer):
    """"word", "char", an lmlab Tokenizer, or a path to a tokenizer.json (or a run / data directory holding one)."""
    if tokenizer in ("word", "char") or hasattr(tokenizer, "encode_lines"):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)) and (Path(tokenizer).exists() or str(tokenizer).endswith(".json")):
        from ..tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    raise LmlabError(f"unknown n-gram tokenizer {str(tokenizer)!r}; choose word, char, or the path of a "
                     "tokenizer.json (or a run directory) to count n-grams of that tokenizer's tokens.")


def tokenizer_file(model_path) -> Path:
    """Where an ARPA model records a tokenizer other than "word", beside it: model.arpa -> model.tokenizer.json
    (a run's tokenizer.json, or {"lmlab_ngram_tokenizer": "char"}). ARPA itself has no place for it."""
    return Path(model_path).with_suffix(".tokenizer.json")


def _tokenizer_json(tokenizer) -> str:
    return tokenizer.to_str() if not isinstance(tokenizer, str) else json.dumps({"lmlab_ngram_tokenizer": tokenizer})


def _tokenizer_from_json(text: str, source: str):
    if '"lmlab_ngram_tokenizer"' in text[:100]:
        try:
            return resolve_tokenizer(json.loads(text)["lmlab_ngram_tokenizer"])
        except (ValueError, KeyError, TypeError):
            raise LmlabError(f"{source} is not a valid n-gram tokenizer note.") from None
    from ..tokenizer import tokenizer_from_str

    return tokenizer_from_str(text, source)


def _split_words(line: str, tokenizer) -> list[str]:
    """The tokens of one line: words split on space, tab, CR, NUL (as lmplz), characters, or token ids."""
    if not isinstance(tokenizer, str):
        return [str(i) for i in tokenizer.encode(line)]
    if tokenizer == "char":
        return [SPACE_SYMBOL if c == " " else c for c in line.rstrip("\r")]
    return [w for w in line.translate(_WORD_DELIMITERS).split(" ") if w]


def _text_tokens(text: str, tokenizer) -> list[str]:
    """All tokens of newline-terminated text, with "\0" marking each line end (C-speed str methods only)."""
    if not isinstance(tokenizer, str):
        tokens: list[str] = []
        for ids in tokenizer.encode_lines(text.split("\n")[:-1]):
            tokens.extend(map(str, ids))
            tokens.append("\0")
        return tokens
    if tokenizer == "char":
        return list(text.replace("\0", " ").replace("\r\n", "\n").replace(" ", SPACE_SYMBOL).replace("\n", "\0"))
    text = text.replace("\0", " ").replace("\t", " ").replace("\r", " ").replace("\n", " \0 ")
    return list(filter(None, text.split(" ")))


def _text_chunks(text: str, size: int = 1 << 25) -> Iterable[str]:
    """Pieces of about `size` characters, cut after a newline (bounds the memory of the token lists)."""
    start = 0
    while start < len(text):
        end = text.find("\n", min(start + size, len(text) - 1))
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


# =========================================================================== vocabulary

class Vocab:
    """Words <-> ids: <unk>=0, <s>=1, </s>=2, then words in order of first appearance (as lmplz numbers them)."""

    def __init__(self, words: Sequence[str] = SPECIALS):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, words: Iterable[str]) -> list[int]:
        get = self.index.get
        return [get(w, UNK_ID) for w in words]


def _encode_corpus(text: str, tokenizer, skip_symbols: bool, name: str):
    """Word ids of the whole text (vocabulary in order of first appearance) and the words per line."""
    if text and not text.endswith("\n"):
        text += "\n"
    index: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
    index["\0"] = -1  # line end
    next_id = len(SPECIALS)
    pieces = []
    for chunk in _text_chunks(text):
        tokens = _text_tokens(chunk, tokenizer)
        for w in dict.fromkeys(tokens):  # first-appearance order, one dict probe per distinct token
            if w not in index:
                index[w] = next_id
                next_id += 1
        pieces.append(np.fromiter(map(index.__getitem__, tokens), dtype=np.int64, count=len(tokens)))
        del tokens
    del index["\0"]
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    ends = np.flatnonzero(ids < 0)
    lengths = np.diff(np.concatenate(([-1], ends))) - 1
    word_ids = ids[ids >= 0]
    special = word_ids < len(SPECIALS)
    if special.any():
        if not skip_symbols:
            first = int(np.flatnonzero(special)[0])
            line_no = int(np.searchsorted(np.cumsum(lengths), first, side="right")) + 1
            word = SPECIALS[word_ids[first]]
            raise LmlabError(f"{name}:{line_no}: the special word {word} appears in the text; remove it "
                             f"or pass --skip-symbols to treat <s>, </s> and <unk> as spaces (lmplz --skip_symbols).")
        line_of_word = np.repeat(np.arange(len(lengths)), lengths)
        lengths = lengths - np.bincount(line_of_word[special], minlength=len(lengths))
        word_ids = word_ids[~special]
    return Vocab(list(index)), word_ids, lengths


def _sentence_stream(word_ids: np.ndarray, lengths: np.ndarray):
    """Concatenate ``<s> w.. </s>`` per line; also each position's distance from its sentence's <s>."""
    sizes = lengths + 2
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    total = int(sizes.sum())
    stream = np.empty(total, dtype=np.int64)
    is_word = np.ones(total, dtype=bool)
    is_word[starts] = False
    is_word[starts + sizes - 1] = False
    stream[is_word] = word_ids
    stream[starts] = BOS_ID
    stream[starts + sizes - 1] = EOS_ID
    dist = np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)
    return stream, dist


# =========================================================================== counting

@dataclass
class Counts:
    """Unique n-grams of one order, sorted, with their raw counts and links into the order below."""
    keys: np.ndarray       # prefix_id * V + word, sorted (order 1: the word id itself)
    raw: np.ndarray        # occurrences in the padded text
    suffix: np.ndarray     # id of the n-gram without its first word (order n-1); -1 for order 1
    starts_bos: np.ndarray  # first word is <s>


def count_ngrams(stream: np.ndarray, dist: np.ndarray, order: int, V: int, progress=None) -> list[Counts]:
    """Count all n-grams up to `order` that do not cross a sentence start: sort/unique on packed keys."""
    counts = []
    # order 1: the ids are the vocabulary itself; <s> is in the table but never counted as predicted
    ids = stream  # id of the n-gram (current order) ending at each position
    raw1 = np.bincount(stream[dist >= 1], minlength=V).astype(np.int64)
    counts.append(Counts(np.arange(V, dtype=np.int64), raw1, np.full(V, -1, np.int64), np.arange(V) == BOS_ID))
    if progress:
        progress.update(1)
    for n in range(2, order + 1):
        pos = np.flatnonzero(dist >= n - 1)
        keys = ids[pos - 1] * V + stream[pos]
        uniq, inverse, raw, first = unique_groups(keys, len(counts[-1].keys) * V)
        del keys
        suffix = ids[pos[first]]
        starts_bos = counts[-1].starts_bos[uniq // V]
        new_ids = np.full(len(stream), -1, dtype=np.int64)
        new_ids[pos] = inverse
        del pos, inverse
        ids = new_ids
        counts.append(Counts(uniq, raw, suffix, starts_bos))
        if progress:
            progress.update(1)
    return counts


def unique_groups(keys: np.ndarray, key_bound: int):
    """np.unique(keys, return_inverse=True) plus group sizes and one index per group, about 3x faster.

    Each key is packed with its index into one int64 (key << index_bits | index), so a plain np.sort
    (no argsort) orders them and the low bits give the permutation. When key and index need more than
    63 bits together, keys are first split into buckets by their top bits (a stable 16-bit radix pass).
    """
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    index_bits = max(1, (n - 1).bit_length())
    key_bits = max(1, (max(int(key_bound), 2) - 1).bit_length())
    over = key_bits + index_bits - 63
    if over > 16:
        uniq, inverse, raw = np.unique(keys, return_inverse=True, return_counts=True)
        first = np.empty(len(uniq), np.int64)
        first[inverse[::-1]] = np.arange(n - 1, -1, -1)
        return uniq, inverse, raw, first
    if over <= 0:
        packed = np.sort((keys << index_bits) | np.arange(n, dtype=np.int64))
    else:  # buckets on the top `over` bits; each bucket's lower bits fit with the index
        low_bits = key_bits - over
        bucket = (keys >> low_bits).astype(np.uint16)
        by_bucket = np.argsort(bucket, kind="stable")
        edges = np.searchsorted(bucket[by_bucket], np.arange((1 << over) + 1))
        mask = (1 << low_bits) - 1
        packed = np.empty(n, np.int64)
        for b in range(1 << over):
            lo, hi = edges[b], edges[b + 1]
            if hi > lo:
                idx = by_bucket[lo:hi]
                packed[lo:hi] = np.sort(((keys[idx] & mask) << index_bits) | idx)
    perm = packed & ((1 << index_bits) - 1)
    sorted_keys = keys[perm]
    del packed
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    uniq = sorted_keys[starts]
    del sorted_keys
    raw = np.diff(np.append(starts, n))
    inverse = np.empty(n, np.int64)
    inverse[perm] = np.cumsum(new_group) - 1
    return uniq, inverse, raw, perm[starts]


def adjusted_counts(counts: list[Counts]) -> list[np.ndarray]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>; else N1+(. x)."""
    adjusted = []
    for n in range(len(counts)):
        if n == len(counts) - 1:
            adjusted.append(counts[n].raw.copy())
            continue
        left = np.bincount(counts[n + 1].suffix, minlength=len(counts[n].keys)).astype(np.int64)
        adjusted.append(np.where(counts[n].starts_bos, counts[n].raw, left))
    adjusted[0][BOS_ID] = 0  # lmplz: <s> has count 0 and is never predicted
    return adjusted


# =========================================================================== discounts

def mkn_discounts(adjusted: np.ndarray, order: int, fallback, name: str) -> np.ndarray:
    """[0, D1, D2, D3+] from counts-of-counts n1..n4 (Chen & Goodman 1998, eq. 26), or the fallback."""
    n = np.bincount(np.minimum(adjusted, 5), minlength=6)[:5]
    problem = None
    if (n[1:4] == 0).any():
        k = int(np.flatnonzero(n[1:4] == 0)[0]) + 1
        problem = (f"no {order}-grams have adjusted count {k}, so modified Kneser-Ney discounts cannot be "
                   f"estimated (is {name} tiny or duplicated?)")
    else:
        y = n[1] / (n[1] + 2.0 * n[2])
        d = np.array([0.0] + [k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3)])
        bad = [k for k in (1, 2, 3) if not 0.0 <= d[k] <= k]
        if not bad:
            return d
        problem = f"the {order}-gram discount D{bad[0]} = {d[bad[0]]:.4g} is out of range (0..{bad[0]})"
    if fallback is None:
        raise LmlabError(f"{problem}; pass --discount-fallback to use lmplz's fallback discounts "
                         f"0.5 1 1.5, or train on more text.")
    return np.array([0.0, *fallback], dtype=np.float64)


def _normalize_fallback(discount_fallback):
    if discount_fallback is None or discount_fallback is False:
        return None
    if discount_fallback is True:
        return FALLBACK_DISCOUNTS
    values = [float(x) for x in discount_fallback]
    if not 1 <= len(values) <= 3:
        raise LmlabError("--discount-fallback takes one to three discounts (for counts 1, 2 and 3+).")
    while len(values) < 3:  # lmplz repeats the last value
        values.append(values[-1])
    return tuple(values)


# =========================================================================== the model

@dataclass
class NGramTables:
    """One order of the model: sorted keys (prefix_id * V + word), log10 probs and log10 backoffs."""
    keys: np.ndarray
    prob: np.ndarray
    backoff: np.ndarray


class NGramLM:
    """A backoff n-gram language model (ARPA semantics) answering lmlab's causal-LM interface."""

    family = "ngram"
    eot_id = None  # </s> decodes to "\n", a real character of the text (counted in bits per char/byte)

    def __init__(self, vocab: Vocab, tables: list[NGramTables], tokenizer="word", info: dict | None = None):
        self.vocab = vocab
        self.tables = tables
        self.tokenizer = tokenizer
        self.info = info or {}
        self.order = len(tables)
        self.vocab_size = len(vocab)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n + 1}-grams {len(t.keys):,}" for n, t in enumerate(self.tables))
        return f"NGramLM(order={self.order}, vocab={self.vocab_size:,}, {sizes})"

    # ----------------------------------------------------------------------- training

    @classmethod
    def train(cls, lines_or_path, order: int = 5, smoothing: str = "mkn", discount_fallback=None,
              prune=None, limit_vocab=None, progress: bool = True, tokenizer="word",
              skip_symbols: bool = False, k: float = 1.0, encoding: str = "utf-8") -> "NGramLM":
        """Count and estimate an n-gram model like ``lmplz -o order`` (MKN), or with Witten-Bell / add-k.

        tokenizer: "word" (lmplz's words), "char", or a run's tokenizer (a Tokenizer or the path of its
        tokenizer.json / run directory): n-grams of its token ids, each line still a sentence.
        """
        if not isinstance(order, int) or order < 1:
            raise LmlabError(f"the n-gram order must be a whole number >= 1 (got {order!r}).")
        if smoothing not in SMOOTHINGS:
            raise LmlabError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(SMOOTHINGS)}.")
        tokenizer = resolve_tokenizer(tokenizer)
        thresholds = _prune_thresholds(prune, order)
        fallback = _normalize_fallback(discount_fallback)
        text, name = _as_text(lines_or_path, encoding)
        vocab, word_ids, lengths = _encode_corpus(text, tokenizer, skip_symbols, name)
        del text
        if len(word_ids) == 0:
            raise LmlabError(f"{name} is empty (no words); give it some text, one sentence per line.")
        bar = _progress(progress, order * 2, f"{order}-gram {smoothing}")
        stream, dist = _sentence_stream(word_ids, lengths)
        counts = count_ngrams(stream, dist, order, len(vocab), bar)
        del stream, dist
        keep = _keep_masks(counts, thresholds, _allowed_words(vocab, limit_vocab), len(vocab))
        if smoothing == "mkn":
            tables, info = _estimate_mkn(counts, len(vocab), fallback, name, bar, keep)
        else:
            if keep is not None:
                raise LmlabError("--prune and --limit-vocab-file work with --smoothing mkn only (as in lmplz).")
            tables, info = _estimate_simple(counts, len(vocab), smoothing, k, bar)
        if keep is not None:
            vocab, tables = _apply_pruning(vocab, tables, keep)
            info["counts"] = [len(t.keys) for t in tables]
        if bar:
            bar.close()
        info.update(smoothing=smoothing, tokens=int(len(word_ids)), sentences=len(lengths))
        return cls(vocab, tables, tokenizer, info)

    # ----------------------------------------------------------------------- encode / decode

    def encode(self, text: str) -> list[int]:
        """Words (or characters) -> ids; each newline ends a sentence (</s>); unknown words -> <unk>."""
        ids: list[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            ids.extend(self.vocab.ids(_split_words(line, self.tokenizer)))
            if i < len(lines) - 1:
                ids.append(EOS_ID)
        return ids

    def decode(self, ids) -> str:
        words = self.vocab.words
        out: list[str] = []
        line: list[str] = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            i = int(i)
            if i == EOS_ID:
                out.append(self._join_line(line) + "\n")
                line = []
            elif i != BOS_ID:
                line.append(words[i])
        out.append(self._join_line(line))
        return "".join(out)

    def _join_line(self, words: Sequence[str]) -> str:
        """The text of one line's tokens (the inverse of _split_words, up to blanks for "word")."""
        if self.tokenizer == "word":
            return " ".join(words)
        if self.tokenizer == "char":
            return "".join(" " if w == SPACE_SYMBOL else w for w in words)
        pieces, ids = [], []
        for w in words:  # token ids decode together (a character may span tokens); <unk> stays as it is
            if w.isdigit():
                ids.append(int(w))
            else:
                pieces += [self.tokenizer.decode(ids), w]
                ids = []
        return "".join(pieces) + self.tokenizer.decode(ids)

    # ----------------------------------------------------------------------- lookups

    def _lookup(self, n: int, prefix_ids: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Row of each n-gram (prefix row in order n-1, last word) in the order-n table; -1 if absent."""
        keys = self.tables[n - 1].keys
        if n == 1:
            return np.where((words >= 0) & (words < self.vocab_size), words, -1)
        query = prefix_ids * self.vocab_size + words
        row = np.searchsorted(keys, query)
        row_c = np.minimum(row, len(keys) - 1)
        found = (prefix_ids >= 0) & (len(keys) > 0) & (keys[row_c] == query)
        return np.where(found, row_c, -1)

    def _position_ids(self, stream: np.ndarray, dist: np.ndarray) -> list[np.ndarray]:
        """For each order n, the row of the n-gram ending at each position (-1: absent or crosses <s>)."""
        ids = [self._lookup(1, None, stream)]
        for n in range(2, self.order + 1):
            prev = np.concatenate(([-1], ids[-1][:-1]))
            cur = self._lookup(n, prev, stream)
            cur[dist < n - 1] = -1
            ids.append(cur)
        return ids

    def _log10_stream(self, stream: np.ndarray, dist: np.ndarray):
        """log10 p of every position with dist >= 1 (backoff semantics of ARPA), and the n-gram length used."""
        ids = self._position_ids(stream, dist)
        N = self.order
        logp = np.zeros(len(stream))
        length = np.zeros(len(stream), dtype=np.int64)
        for n in range(1, N + 1):  # longest match wins: later orders overwrite
            hit = ids[n - 1] >= 0
            logp[hit] = self.tables[n - 1].prob[ids[n - 1][hit]]
            length[hit] = n
        # add the backoffs of the contexts longer than the match: contexts of length j >= length
        for j in range(1, N):
            ctx = np.concatenate(([-1], ids[j - 1][:-1]))
            use = (ctx >= 0) & (length <= j) & (dist >= j)
            logp[use] += self.tables[j - 1].backoff[ctx[use]]
        return logp, length

    # ----------------------------------------------------------------------- causal-LM interface

    def token_logprobs(self, ids, **_unused) -> np.ndarray:
        """Natural-log probability of every id, each sentence's context starting at <s> (reset after </s>)."""
        ids = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids, dtype=np.int64).reshape(-1)
        stream, dist, keep = _stream_from_ids(ids)
        logp, _ = self._log10_stream(stream, dist)
        return logp[keep] * LN10

    block_size = None  # the context is the last order - 1 tokens of the sentence

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def logprobs_last(self, ids, state, n: int):
        from .base import logprobs_last_by_steps

        return logprobs_last_by_steps(self, ids, state, n)

    def logprobs_next(self, ids, state=None, pad=None):
        """Natural-log distribution [B, V] of the next token after each row's history; <s> is -inf.
        `pad` [B]: row b's history starts at column pad[b] (left padding)."""
        import torch

        rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        if pad is not None:
            rows = [row[p:] for row, p in zip(rows, pad.tolist())]
        out = np.empty((len(rows), self.vocab_size), dtype=np.float64)
        for b, row in enumerate(rows):
            out[b] = self.next_log10(_sentence_context(row, self.order - 1))
        out *= LN10
        out[:, BOS_ID] = -np.inf
        return torch.from_numpy(out.astype(np.float32)), state

    def over_tokenizer(self, tokenizer) -> "NGramOverTokens":
        """This model seen through a run's tokenizer: next-token distributions over *its* ids (a draft model
        for speculative decoding of that run)."""
        return NGramOverTokens(self, tokenizer)

    def next_log10(self, context: Sequence[int]) -> np.ndarray:
        """log10 p(w | context) for every w; context = ids, most recent last (begin it with <s> at a sentence start)."""
        context = list(context)[-(self.order - 1):] if self.order > 1 else []
        logp = self.tables[0].prob.astype(np.float64).copy()
        for j in range(1, len(context) + 1):
            row = self._context_row(context[-j:])
            if row < 0:
                continue  # suffix closure: no longer context can exist either, but stay safe
            logp += self.tables[j - 1].backoff[row]
            keys = self.tables[j].keys
            lo, hi = np.searchsorted(keys, [row * self.vocab_size, (row + 1) * self.vocab_size])
            logp[keys[lo:hi] - row * self.vocab_size] = self.tables[j].prob[lo:hi]
        logp[BOS_ID] = -np.inf
        return logp

    def _context_row(self, words: Sequence[int]) -> int:
        row = -1
        for n, w in enumerate(words, start=1):
            row = int(self._lookup(n, np.array([row]), np.array([w]))[0])
            if row < 0:
                return -1
        return row

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability of one sentence, like ``kenlm.Model.score``."""
        words = np.array(self.vocab.ids(_split_words(sentence, self.tokenizer)), dtype=np.int64)
        return float(self.full_scores(words, bos, eos)[0].sum())

    def full_scores(self, word_ids: np.ndarray, bos: bool = True, eos: bool = True):
        """Per-token (log10 prob, n-gram length) of one sentence's word ids (+ </s> when eos)."""
        start = BOS_ID if bos else -1  # -1 matches nothing: an empty context, like kenlm's NullContextState
        tokens = np.concatenate(([start], word_ids, [EOS_ID] if eos else [])).astype(np.int64)
        dist = np.arange(len(tokens), dtype=np.int64)
        logp, length = self._log10_stream(tokens, dist)
        return logp[1:], length[1:]

    def perplexity(self, lines) -> float:
        """Perplexity over sentences (each line + </s>), OOVs included, like KenLM's ``query``."""
        result = self.query_lines(lines.rstrip("\n").split("\n") if isinstance(lines, str) else lines)
        return result["perplexity"]

    def query_lines(self, lines: Iterable[str]) -> dict:
        """Score lines in one vectorised pass: totals like KenLM ``query`` plus per-token arrays."""
        lines = list(lines)
        word_ids, lengths = self._encode_lines(lines)
        stream, dist = _sentence_stream(word_ids, lengths)
        logp, length = self._log10_stream(stream, dist)
        predicted = dist >= 1
        oov = (stream == UNK_ID) & predicted
        total = float(logp[predicted].sum())
        n_tokens = int(predicted.sum())
        n_oov = int(oov.sum())
        excl = float(logp[predicted & ~oov].sum())
        return {
            "stream": stream, "dist": dist, "log10": logp, "length": length,
            "total": total, "tokens": n_tokens, "oov": n_oov, "sentences": len(lines),
            "perplexity": 10.0 ** (-total / max(n_tokens, 1)),
            "perplexity_excluding_oov": 10.0 ** (-excl / max(n_tokens - n_oov, 1)),
        }

    def _encode_lines(self, lines: list[str]):
        """Word ids of many lines (unknown -> <unk>) and words per line, with C-speed string methods."""
        if not lines:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        tokens = _text_tokens("\n".join(lines) + "\n", self.tokenizer)
        ids = np.fromiter(map(self._token_index().__getitem__, tokens), dtype=np.int64, count=len(tokens))
        ends = np.flatnonzero(ids < 0)
        return ids[ids >= 0], np.diff(np.concatenate(([-1], ends))) - 1

    def _token_index(self) -> dict:
        if getattr(self, "_index_cache", None) is None:
            self._index_cache = _UnkDict(self.vocab.index)
            self._index_cache["\0"] = -1  # line end marker of _text_tokens
        return self._index_cache

    # ----------------------------------------------------------------------- sampling

    def sample_text(self, n_tokens: int, seed: int = 0, batch: int = 65536, max_len: int = 400) -> Iterable[str]:
        """Sentences drawn from the model (exact backoff sampling, `batch` sentences at a time), as text lines,
        until about `n_tokens` words are produced. For synthetic corpora; `lmlab generate` uses logprobs_next."""
        sampler = _BatchSampler(self, np.random.default_rng(seed))
        words = np.array(self.vocab.words, dtype=object)
        produced = 0
        while produced < n_tokens:
            for sentence in sampler.sentences(batch, max_len):
                produced += len(sentence) + 1
                yield self._join_line(words[sentence]) + "\n"
                if produced >= n_tokens:
                    return

    # ----------------------------------------------------------------------- files

    def save_arpa(self, path) -> None:
        """The ARPA file; a model over a run's tokenizer also writes it beside the file (tokenizer_file)."""
        sidecar = tokenizer_file(path)
        if self.tokenizer == "word":
            sidecar.unlink(missing_ok=True)  # a stale one would make the reload use the wrong tokens
        else:
            atomic_write_text(sidecar, _tokenizer_json(self.tokenizer))
        write_arpa(self, path)

    @classmethod
    def from_arpa(cls, path, tokenizer=None) -> "NGramLM":
        return read_arpa(path, tokenizer)

    def save(self, path) -> None:
        """Our own binary (.npz): the arrays as they are in memory, reloads in a blink."""
        tokenizer = _tokenizer_json(self.tokenizer)
        arrays = {"vocab": np.array("\n".join(self.vocab.words)), "tokenizer": np.array(tokenizer)}
        for n, t in enumerate(self.tables, start=1):
            arrays[f"keys{n}"], arrays[f"prob{n}"], arrays[f"backoff{n}"] = t.keys, t.prob, t.backoff
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "NGramLM":
        path = Path(path)
        if not path.is_file():
            raise LmlabError(f"{path} does not exist.")
        try:
            z = np.load(path, allow_pickle=False)
            vocab = Vocab(str(z["vocab"]).split("\n"))
            order = sum(1 for k in z.files if k.startswith("keys"))
            tables = [NGramTables(z[f"keys{n}"], z[f"prob{n}"], z[f"backoff{n}"]) for n in range(1, order + 1)]
            tokenizer = str(z["tokenizer"])
        except (OSError, ValueError, KeyError) as e:
            raise LmlabError(f"{path} is not an lmlab n-gram .npz file ({e}).") from None
        if tokenizer.startswith("{"):  # older files hold just "word" or "char"
            tokenizer = _tokenizer_from_json(tokenizer, f"the tokenizer inside {path}")
        return cls(vocab, tables, resolve_tokenizer(tokenizer))


class _UnkDict(dict):
    """Word -> id, unknown words -> <unk> (without storing them)."""

    def __missing__(self, key):
        return UNK_ID


def _stream_from_ids(ids: np.ndarray):
    """Prepend <s> to each sentence of an id sequence (sentences end with </s>); mask of the original ids."""
    ids = ids[ids != BOS_ID]
    ends = np.flatnonzero(ids == EOS_ID)
    starts = np.concatenate(([0], ends + 1))
    starts = starts[starts <= len(ids)]
    stream = np.insert(ids, starts, BOS_ID)
    keep = np.ones(len(stream), dtype=bool)
    keep[starts + np.arange(len(starts))] = False
    bos_pos = np.flatnonzero(~keep)
    sizes = np.diff(np.concatenate((bos_pos, [len(stream)])))
    dist = np.arange(len(stream)) - np.repeat(bos_pos, sizes)
    return stream, dist, keep


def _sentence_context(row: list[int], keep: int) -> list[int]:
    """<s> + the ids after the last </s> (or <s>) of a history, the last `keep` of them."""
    start = 0
    for i in range(len(row) - 1, -1, -1):
        if row[i] in (EOS_ID, BOS_ID):
            start = i + 1
            break
    ctx = [BOS_ID] + list(row[start:])
    return ctx[-keep:] if keep > 0 else []


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="pass", file=sys.stderr, leave=False)


class _BatchSampler:
    """Draw from the backoff distribution of many sentences at once (Katz-style backoff sampling).

    p(w|h) is p*(hw) for the explicit children of h, else bo(h) p(w|h'). So: with probability
    S(h) = sum of the children's p*, pick a child in proportion to p*; otherwise draw from p(.|h') and
    redraw while the word is a child of h (exact rejection sampling; suffix closure makes one check enough).
    """

    def __init__(self, model: NGramLM, rng):
        self.m, self.rng = model, rng
        self.cum = []  # per order: cumulative sum of 10**prob over the sorted table (children are ranges)
        for n, t in enumerate(model.tables):
            p = 10.0 ** t.prob
            if n == 0:
                p[BOS_ID] = 0.0
            self.cum.append(np.concatenate(([0.0], np.cumsum(p))))

    def _children(self, level: int, rows: np.ndarray):
        """[lo, hi) of the children of context rows of `level` words, in the order level+1 table."""
        if level == 0:
            return np.zeros(len(rows), np.int64), np.full(len(rows), self.m.vocab_size, np.int64)
        keys = self.m.tables[level].keys
        V = self.m.vocab_size
        return np.searchsorted(keys, rows * V), np.searchsorted(keys, (rows + 1) * V)

    def step(self, ctx: np.ndarray) -> np.ndarray:
        """One next word per row; ctx[:, j] = row of the last j+1 words in the order j+1 table (-1: none)."""
        B, N1 = ctx.shape
        top = np.full(B, 0, np.int64)
        for j in range(N1):
            top = np.where(ctx[:, j] >= 0, j + 1, top)
        level = top.copy()
        out = np.full(B, -1, np.int64)
        todo = np.arange(B)
        while len(todo):
            L = level[todo]
            word = np.full(len(todo), -1, np.int64)
            for lv in np.unique(L):
                sel = np.flatnonzero(L == lv)
                rows = todo[sel]
                ctx_rows = ctx[rows, lv - 1] if lv > 0 else np.zeros(len(rows), np.int64)
                lo, hi = self._children(lv, ctx_rows)
                cum = self.cum[lv]
                mass = cum[hi] - cum[lo]
                u = self.rng.random(len(rows))
                take = (u < mass) | (lv == 0)
                t = cum[lo] + self.rng.random(len(rows)) * mass
                idx = np.clip(np.searchsorted(cum, t, side="right") - 1, lo, np.maximum(hi - 1, lo))
                keys = self.m.tables[lv].keys
                picked = keys[idx] % self.m.vocab_size if lv > 0 else idx
                word[sel[take]] = picked[take]
                level[rows[~take]] -= 1  # back off
                if lv < top[rows].max():  # a word drawn below the top must not be a child of the level above
                    above = take & (lv < top[rows])
                    if above.any():
                        r = rows[above]
                        child = self.m._lookup(lv + 2, ctx[r, lv], picked[above]) >= 0
                        word[sel[above][child]] = -1  # rejected: redraw at this level
            done = word >= 0
            out[todo[done]] = word[done]
            todo = todo[~done]
        return out

    def sentences(self, batch: int, max_len: int) -> list[np.ndarray]:
        N1 = max(self.m.order - 1, 1)
        ctx = np.full((batch, N1), -1, np.int64)
        ctx[:, 0] = BOS_ID if self.m.order > 1 else -1
        history = np.full((batch, max_len), -1, np.int64)
        length = np.zeros(batch, np.int64)
        alive = np.ones(batch, bool)
        for t in range(max_len):
            rows = np.flatnonzero(alive)
            if not len(rows):
                break
            w = self.step(ctx[rows]) if self.m.order > 1 else self.step(np.full((len(rows), 1), -1, np.int64))
            ended = w == EOS_ID
            history[rows[~ended], t] = w[~ended]
            length[rows[~ended]] += 1
            alive[rows[ended]] = False
            if self.m.order > 1:  # new context rows: the (j+1)-word row extends the old j-word row by w
                old = ctx[rows]
                new = np.full_like(old, -1)
                new[:, 0] = w
                for j in range(1, N1):
                    new[:, j] = self.m._lookup(j + 1, old[:, j - 1], w)
                ctx[rows] = new
        return [history[b, :length[b]] for b in range(batch)]


# =========================================================================== estimation

def _context_stats(prefix: np.ndarray, counts: np.ndarray, n_contexts: int):
    """Per context: sum of counts, and the number of words following it with count 1, 2 and 3+."""
    denom = np.bincount(prefix, weights=counts, minlength=n_contexts)
    n1 = np.bincount(prefix[counts == 1], minlength=n_contexts)
    n2 = np.bincount(prefix[counts == 2], minlength=n_contexts)
    n3 = np.bincount(prefix[counts >= 3], minlength=n_contexts)
    return denom, n1, n2, n3


def _interpolate(counts: list[Counts], uninterp: list[np.ndarray], gammas: list[np.ndarray], V: int,
                 unigrams: int | None = None):
    """p_n(hw) = uninterp(hw) + gamma(h) p_{n-1}(h'w); unigrams back off to uniform 1/(|V|-1), <s> excluded."""
    probs = []
    for n, c in enumerate(counts):
        if n == 0:
            p = uninterp[0] + gammas[0][0] / ((unigrams or V) - 1)
            p[BOS_ID] = 1.0  # log10 0, as lmplz writes <s>; never used for prediction
        else:
            p = uninterp[n] + gammas[n][c.keys // V] * probs[n - 1][c.suffix]
        probs.append(p)
    return probs


def _to_tables(counts: list[Counts], probs: list[np.ndarray], gammas: list[np.ndarray]) -> list[NGramTables]:
    """log10 probs (clamped at 0 like lmplz) and log10 backoffs (0 for n-grams that are no context)."""
    tables = []
    for n, c in enumerate(counts):
        with np.errstate(divide="ignore"):
            prob = np.minimum(0.0, np.log10(probs[n]))
        if n + 1 < len(counts):
            g = gammas[n + 1]
            backoff = np.zeros(len(c.keys))
            has = g > 0
            backoff[has] = np.log10(g[has])
        else:
            backoff = np.zeros(len(c.keys))
        tables.append(NGramTables(c.keys, prob, backoff))
    return tables


def _estimate_mkn(counts: list[Counts], V: int, fallback, name: str, bar, keep=None):
    """Interpolated modified Kneser-Ney, one order at a time (only p of the order below is kept alive).

    With pruning (`keep` masks), discounts still come from all counts; a context's pruned children give
    their whole count to its gamma (lmplz's "normalizer"), so the distribution still sums to 1.
    """
    adjusted = adjusted_counts(counts)
    unigrams = V if keep is None else int(keep[0].sum())
    tables, discounts, lower_p = [], [], None
    for n, c in enumerate(counts):
        a = adjusted[n]
        adjusted[n] = None
        d = mkn_discounts(a, n + 1, fallback, name)
        discounts.append(d)
        kept = a if keep is None else np.where(keep[n], a, 0)
        prefix = np.zeros(len(a), dtype=np.int64) if n == 0 else c.keys // V
        n_ctx = 1 if n == 0 else len(counts[n - 1].keys)
        denom = np.bincount(prefix, weights=a, minlength=n_ctx)
        _, n1, n2, n3 = _context_stats(prefix, kept, n_ctx)
        pruned_mass = denom - np.bincount(prefix, weights=kept, minlength=n_ctx) if keep is not None else 0.0
        del kept
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = np.where(denom > 0, (d[1] * n1 + d[2] * n2 + d[3] * n3 + pruned_mass) / denom, 0.0)
            p = (a - d[np.minimum(a, 3)]) / denom[prefix]
        del a, denom, n1, n2, n3
        if n == 0:  # unigrams interpolate with the uniform distribution; <s> gets log10 prob 0 like lmplz
            p += gamma[0] / (unigrams - 1)
            p[BOS_ID] = 1.0
        else:  # p(w|h) = uninterp + gamma(h) p(w|h'); the backoff of each context h is log10 gamma(h)
            p += gamma[prefix] * lower_p[c.suffix]
            tables[n - 1].backoff = _log10_or_zero(gamma)
        del prefix, gamma
        with np.errstate(divide="ignore"):
            tables.append(NGramTables(c.keys, np.minimum(0.0, np.log10(p)), np.zeros(0)))
        lower_p = p
        c.raw = c.suffix = None  # no longer needed: free memory before the next order
        if bar:
            bar.update(1)
    tables[-1].backoff = np.zeros(len(tables[-1].keys))
    info = {"discounts": [d[1:].tolist() for d in discounts], "counts": [len(c.keys) for c in counts]}
    return tables, info


def _log10_or_zero(gamma: np.ndarray) -> np.ndarray:
    """log10 of each context's gamma; 0 where a row is no context (gamma 0)."""
    out = np.zeros(len(gamma))
    has = gamma > 0
    out[has] = np.log10(gamma[has])
    return out


def _estimate_simple(counts: list[Counts], V: int, smoothing: str, k: float, bar):
    """Interpolated Witten-Bell (Witten & Bell 1991) or add-k with the lower order as prior, on raw counts.

    Witten-Bell: p(w|h) = (c(hw) + N1+(h.) p(w|h')) / (c(h) + N1+(h.)).
    add-k:       p(w|h) = (c(hw) + k |V| p(w|h')) / (c(h) + k |V|)  (plain add-k at order 1, where p = 1/|V|).
    Both are interpolated models, so they write to ARPA exactly like MKN.
    """
    uninterp, gammas = [], []
    V_pred = V - 1  # <s> is never predicted
    for n, c in enumerate(counts):
        raw = c.raw.copy()
        if n == 0:
            raw[BOS_ID] = 0
        prefix = np.zeros(len(raw), dtype=np.int64) if n == 0 else c.keys // V
        n_ctx = 1 if n == 0 else len(counts[n - 1].keys)
        denom = np.bincount(prefix, weights=raw, minlength=n_ctx)
        extra = np.bincount(prefix, weights=raw > 0, minlength=n_ctx) if smoothing == "witten-bell" \
            else np.full(n_ctx, k * V_pred)
        total = denom + extra
        with np.errstate(divide="ignore", invalid="ignore"):
            uninterp.append(raw / total[prefix])
            gammas.append(np.where(total > 0, extra / total, 0.0))
        if bar:
            bar.update(1)
    probs = _interpolate(counts, uninterp, gammas, V)
    return _to_tables(counts, probs, gammas), {"counts": [len(c.keys) for c in counts]}


# =========================================================================== pruning (lmplz --prune, --limit_vocab_file)

def _prune_thresholds(prune, order: int) -> list[int] | None:
    """lmplz's rules: one threshold per order, the last repeated; non-decreasing; unigrams are not pruned."""
    if prune is None or len(prune) == 0:
        return None
    values = [int(x) for x in prune]
    if len(values) > order:
        raise LmlabError(f"--prune gives {len(values)} thresholds but the model has order {order}.")
    if any(v < 0 for v in values) or values[0] != 0:
        raise LmlabError("--prune thresholds must be >= 0 and the first (unigrams) must be 0, e.g. --prune 0 0 1.")
    if any(b < a for a, b in zip(values, values[1:])):
        raise LmlabError("--prune thresholds must not decrease (else a kept n-gram could lose its context).")
    values += [values[-1]] * (order - len(values))
    return values if any(values) else None


def _allowed_words(vocab: Vocab, limit_vocab) -> np.ndarray | None:
    """Mask of words allowed by --limit-vocab-file (a path, or an iterable of words); specials always allowed."""
    if limit_vocab is None:
        return None
    if isinstance(limit_vocab, (str, os.PathLike)):
        words = _read_text(Path(limit_vocab)).translate(_WORD_DELIMITERS).split()
    else:
        words = list(limit_vocab)
    allowed = np.zeros(len(vocab), dtype=bool)
    allowed[[vocab.index[w] for w in words if w in vocab.index]] = True
    allowed[[UNK_ID, BOS_ID, EOS_ID]] = True
    return allowed


def _keep_masks(counts: list[Counts], thresholds, allowed, V: int) -> list[np.ndarray] | None:
    """Which n-grams survive: raw count above the order's threshold and only allowed words (lmplz marks)."""
    if thresholds is None and allowed is None:
        return None
    keep = []
    for n, c in enumerate(counts):
        k = np.ones(len(c.keys), dtype=bool)
        if thresholds is not None and n > 0:
            k &= c.raw > thresholds[n]
        if allowed is not None:
            k &= allowed[c.keys % V if n > 0 else c.keys]
            if n > 0:
                k &= keep[n - 1][c.keys // V]
        keep.append(k)
    return keep


def _apply_pruning(vocab: Vocab, tables: list[NGramTables], keep: list[np.ndarray]):
    """Drop pruned rows and renumber (monotonically, so keys stay sorted); prefixes of kept rows are kept."""
    old_V = len(vocab)
    word_map = np.cumsum(keep[0]) - 1
    new_vocab = Vocab([w for w, k in zip(vocab.words, keep[0]) if k])
    V = len(new_vocab)
    out = [NGramTables(np.arange(V, dtype=np.int64), tables[0].prob[keep[0]], tables[0].backoff[keep[0]])]
    row_map = word_map
    for n in range(1, len(tables)):
        t, k = tables[n], keep[n]
        keys = t.keys[k]
        new_keys = row_map[keys // old_V] * V + word_map[keys % old_V]
        out.append(NGramTables(new_keys, t.prob[k], t.backoff[k]))
        row_map = np.cumsum(k) - 1
    return new_vocab, out


# =========================================================================== ARPA

_PAD = 0xFF  # never a byte of UTF-8 text: marks padding in the fixed-width line matrix
_SHORT_WORD = 24  # words up to this many bytes go through the fast path


def write_arpa(model: NGramLM, path) -> None:
    """Standard ARPA text (readable by KenLM, SRILM): \\data\\ counts, then one section per order.

    Each chunk of lines is laid out as a fixed-width uint8 matrix (numbers from digit tables, words from
    a padded vocabulary matrix) and the padding is squeezed out in one pass: no Python work per n-gram.
    Lines holding a very long word are written afterwards by plain Python (ARPA sections are unordered).
    """
    V = model.vocab_size
    encoded = [w.encode("utf-8") for w in model.vocab.words]
    word_len = np.array([len(e) for e in encoded], dtype=np.int64)
    vocab_matrix = np.full((V, _SHORT_WORD), _PAD, dtype=np.uint8)
    for i, e in enumerate(encoded):
        if len(e) <= _SHORT_WORD:
            vocab_matrix[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        f.write(b"\\data\\\n")
        for n, t in enumerate(model.tables, start=1):
            f.write(f"ngram {n}={len(t.keys)}\n".encode())
        for n, t in enumerate(model.tables, start=1):
            f.write(f"\n\\{n}-grams:\n".encode())
            has_backoff = n < model.order
            long_rows = []
            for lo in range(0, len(t.keys), 1 << 18):
                hi = min(lo + (1 << 18), len(t.keys))
                ids = _ngram_word_ids_range(model.tables, n, V, lo, hi)
                short = (word_len[ids] <= _SHORT_WORD).all(axis=1)
                long_rows.extend((lo + np.flatnonzero(~short)).tolist())
                rows = np.flatnonzero(short)
                backoff = t.backoff[lo:hi][rows] if has_backoff else None
                f.write(_format_lines(t.prob[lo:hi][rows], ids[rows], vocab_matrix, backoff))
            for row in long_rows:  # rare: a word longer than _SHORT_WORD bytes
                ids = _ngram_word_ids_range(model.tables, n, V, row, row + 1)[0]
                text = " ".join(model.vocab.words[i] for i in ids)
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


def _ngram_word_ids_range(tables, n, V, lo, hi) -> np.ndarray:
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


class _ArpaReader:
    """Line-numbered reader that turns every malformation into 'FILE:LINE: what is wrong'."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise LmlabError(f"{path} does not exist.")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise LmlabError(f"{path}:{line}: the ARPA file is not UTF-8 (bad byte at offset {e.start}).") from None
        self.lines = text.split("\n")
        self.i = 0

    def error(self, message: str, line: int | None = None):
        line = self.i if line is None else line
        return LmlabError(f"{self.path}:{line}: {message}")

    def next_nonblank(self, what: str) -> str:
        while self.i < len(self.lines):
            line = self.lines[self.i].strip()
            self.i += 1
            if line:
                return line
        raise self.error(f"the file ends early (truncated?) while expecting {what}.", len(self.lines))


def read_arpa(path, tokenizer=None) -> NGramLM:
    """Read an ARPA file (lmplz, SRILM, ours). Missing prefixes (pruned SRILM models) get blank entries.

    tokenizer None: the run tokenizer saved beside the file (tokenizer_file) if there is one, else "word".
    """
    r = _ArpaReader(Path(path))
    if tokenizer is None:
        sidecar = tokenizer_file(path)
        tokenizer = _tokenizer_from_json(sidecar.read_text(encoding="utf-8"), str(sidecar)) if sidecar.is_file() else "word"
    tokenizer = resolve_tokenizer(tokenizer)
    while True:  # text before \data\ is allowed (SRILM and others write comments)
        if r.i >= len(r.lines):
            raise r.error("no \\data\\ header; this is not an ARPA language model.", 1)
        line = r.lines[r.i].strip()
        r.i += 1
        if line == "\\data\\":
            break
    declared: list[int] = []
    while True:
        line = r.next_nonblank("the ngram counts")
        m = _COUNT_LINE.match(line)
        if not m:
            if line.startswith("\\"):
                r.i -= 1
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
            words = list(SPECIALS) + [w[0] for w in sections[0][0] if w[0] not in SPECIALS]
            index = _MissingMinusOne((w, i) for i, w in enumerate(words))
    end = r.next_nonblank("\\end\\")
    if end != "\\end\\":
        raise r.error(f"expected \\end\\ after the {order}-grams, found {end[:60]!r}.")
    return _build_from_sections(sections, tokenizer, r)


def _read_section_fast(r: _ArpaReader, n: int, count: int, last: bool, index: dict | None):
    """A well-formed section parsed in bulk (one split, NumPy number parsing); None if anything looks off,
    and then the line-by-line reader below finds and names the problem."""
    start = r.i
    if index is None or n < 2 or start + count > len(r.lines):
        return None
    following = r.lines[start + count].strip() if start + count < len(r.lines) else ""
    if following and not following.startswith("\\"):
        return None
    flat = "\n".join(r.lines[start:start + count]).split()
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
    ids = np.empty((count, n), dtype=np.int64)
    for c in range(n):
        ids[:, c] = np.fromiter(map(index.__getitem__, flat[1 + c::k]), dtype=np.int64, count=count)
    if (ids < 0).any():
        return None
    r.i = start + count
    return ids, probs, backoffs, np.arange(start + 1, start + count + 1)


class _MissingMinusOne(dict):
    def __missing__(self, key):
        return -1


def _read_section(r: _ArpaReader, n: int, count: int, last: bool, index: dict | None = None):
    """(words, prob, backoff, line numbers) of one section, checking fields and the declared count."""
    fast = _read_section_fast(r, n, count, last, index)
    if fast is not None:
        return fast
    words, probs, backoffs, line_nos = [], [], [], []
    section_line = r.i
    while r.i < len(r.lines):
        raw = r.lines[r.i]
        line = raw.strip()
        if not line:
            r.i += 1
            if len(words) >= count:
                break
            continue
        if line.startswith("\\"):
            break
        r.i += 1
        parts = line.split()
        if len(parts) == n + 1:
            bo = 0.0
        elif len(parts) == n + 2 and not last:
            bo = _number(r, parts[-1], "backoff")
        else:
            raise r.error(f"a {n}-gram line needs a log10 probability, {n} word(s)"
                          f"{'' if last else ' and an optional backoff'}; found {len(parts)} field(s).")
        probs.append(_number(r, parts[0], "log10 probability"))
        backoffs.append(bo)
        words.append(tuple(parts[1:n + 1]))
        line_nos.append(r.i)
    if len(words) != count:
        if r.i >= len(r.lines) and len(words) < count:
            raise r.error(f"the file ends after {len(words)} of the {count} {n}-grams the header declares "
                          f"(truncated?).", len(r.lines))
        raise r.error(f"the \\{n}-grams: section has {len(words)} entries but the \\data\\ header declares "
                      f"{count}.", section_line)
    return words, np.array(probs, dtype=np.float64), np.array(backoffs, dtype=np.float64), line_nos


def _number(r: _ArpaReader, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise r.error(f"the {what} {text[:40]!r} is not a number.") from None
    if math.isnan(value):
        raise r.error(f"the {what} is NaN.")
    return value


def _build_from_sections(sections, tokenizer, r: _ArpaReader) -> NGramLM:
    uni_words = [w[0] for w in sections[0][0]]
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
    word_ids = [None] + [s[0] if isinstance(s[0], np.ndarray) else _words_to_ids(vocab, s[0], n + 1, r, s[3])
                         for n, s in enumerate(sections[1:], start=1)]
    # every prefix of an n-gram must be an (n-1)-gram; when a (pruned SRILM) file lacks some, add blanks
    return (_assemble_tables(vocab, tables, word_ids, sections, tokenizer, r, None)
            or _assemble_tables(vocab, tables, word_ids, sections, tokenizer, r, _missing_prefixes(word_ids)))


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


def _assemble_tables(vocab, unigram_tables, word_ids, sections, tokenizer, r, extra) -> NGramLM | None:
    """Sorted tables order by order; None when a context is missing and no blanks (`extra`) were given."""
    V = len(vocab)
    tables = list(unigram_tables)
    model = NGramLM(vocab, tables, tokenizer)
    for n in range(1, len(sections)):
        wids, probs, bos = word_ids[n], sections[n][1], sections[n][2]
        if extra is not None and extra[n] is not None:  # blanks: backed-off prob, backoff 0 (as KenLM does)
            blank_probs = np.array([_backoff_prob(model, tuple(row)) for row in extra[n].tolist()])
            wids = np.vstack([wids, extra[n]])
            probs = np.concatenate([probs, blank_probs])
            bos = np.concatenate([bos, np.zeros(len(extra[n]))])
        prefix_rows = _rows_of(model, wids[:, :-1])
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
        model = NGramLM(vocab, tables, tokenizer)
    return model


def _words_to_ids(vocab: Vocab, words: list[tuple], n: int, r: _ArpaReader, line_nos) -> np.ndarray:
    flat = [w for t in words for w in t]
    ids = np.array([vocab.index.get(w, -1) for w in flat], dtype=np.int64).reshape(-1, n)
    if (ids < 0).any():
        bad = int(np.flatnonzero((ids < 0).any(axis=1))[0])
        raise r.error(f"the {n}-gram {' '.join(words[bad])!r} uses a word missing from the \\1-grams: section.",
                      line_nos[bad])
    return ids


def _rows_not_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(rows).view([("", rows.dtype)] * rows.shape[1]).ravel()
    b = np.ascontiguousarray(table).view([("", table.dtype)] * table.shape[1]).ravel()
    return rows[~np.isin(a, b)]


def _rows_of(model: NGramLM, rows: np.ndarray) -> np.ndarray:
    """Row in the table of order rows.shape[1] of each word-id row (-1 if absent)."""
    cur = None
    for n in range(1, rows.shape[1] + 1):
        cur = model._lookup(n, cur, rows[:, n - 1])
        if n > 1:
            cur = np.where(prev_ok, cur, -1)
        prev_ok = cur >= 0
    return cur


def _backoff_prob(model: NGramLM, words: tuple) -> float:
    """log10 p(w_n | w_1..w_{n-1}) by backing off, for a blank n-gram (model holds orders 1..n-1 so far)."""
    tokens = np.array(words, dtype=np.int64)
    logp, _ = model._log10_stream(tokens, np.arange(len(tokens)))  # contexts up to n-2 words
    context_row = _rows_of(model, tokens[None, :-1])[0]  # plus the backoff of the whole (n-1)-word context
    return float(logp[-1] + (model.tables[len(words) - 2].backoff[context_row] if context_row >= 0 else 0.0))


# =========================================================================== seen through a run's tokenizer

class NGramOverTokens:
    """An n-gram model answering `logprobs_next` over another tokenizer's ids (a run's), so it can draft for
    that run. Each run token maps to the n-gram's word for it: its id in decimal (an n-gram counted with the
    run's tokenizer), its character (a char n-gram), or its text (a word n-gram); a token that decodes to a
    newline is </s>; run tokens the n-gram has no word for share <unk>'s probability equally."""

    def __init__(self, model: NGramLM, tokenizer):
        if not isinstance(model.tokenizer, str) and model.tokenizer.to_str() != tokenizer.to_str():
            raise LmlabError("the n-gram model was counted with another tokenizer than the run's; count it with "
                             "`lmlab ngram train --tokenizer RUN` to use it with that run.")
        self.model, self.vocab_size = model, tokenizer.vocab_size
        words = [self._word(tokenizer, t) for t in range(tokenizer.vocab_size)]
        self.to_ngram = np.array([EOS_ID if w == "\n" else model.vocab.index.get(w, UNK_ID) for w in words])
        unknown = self.to_ngram == UNK_ID
        self.unk_share = np.where(unknown, -math.log(max(int(unknown.sum()), 1)), 0.0)

    def _word(self, tokenizer, token: int) -> str:
        if not isinstance(self.model.tokenizer, str):
            return "\n" if tokenizer.decode([token]) == "\n" else str(token)
        text = tokenizer.decode([token])
        if text == "\n":
            return text
        if self.model.tokenizer == "char":
            return SPACE_SYMBOL if text == " " else text
        return text.strip()

    block_size = None
    family = "ngram"
    device = NGramLM.device
    logprobs_last = NGramLM.logprobs_last

    def logprobs_next(self, ids, state=None, pad=None):
        """Natural-log distribution [B, V_run] of the next run token after each row of run ids [B, T]."""
        import torch

        keep = self.model.order - 1
        rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
        if pad is not None:
            rows = [row[p:] for row, p in zip(rows, pad.tolist())]
        out = np.empty((len(rows), self.vocab_size), dtype=np.float64)
        for b, row in enumerate(rows):
            tail = self.to_ngram[row[-keep:]].tolist() if keep > 0 else []
            out[b] = self.model.next_log10(_sentence_context(tail, keep))[self.to_ngram] * LN10 + self.unk_share
        out -= np.logaddexp.reduce(out, axis=1, keepdims=True)  # renormalise (</s>, <unk> mass, unseen tokens)
        return torch.from_numpy(out.astype(np.float32)), state


# =========================================================================== CLI helpers

def load_ngram(path, tokenizer=None) -> NGramLM:
    """An n-gram model from an ARPA file or our .npz binary."""
    return NGramLM.load(path) if Path(path).suffix == ".npz" else NGramLM.from_arpa(path, tokenizer)


def query_report(model: NGramLM, text: str, summary: bool = False) -> Iterable[str]:
    """Lines like KenLM's ``query``: ``word=id length log10prob`` per token, ``Total: .. OOV: ..``, then totals."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    r = model.query_lines(lines)
    stream, dist, logp, length = r["stream"], r["dist"], r["log10"], r["length"]
    if not summary:
        words = model.vocab.words
        starts = np.flatnonzero(dist == 0)
        ends = np.append(starts[1:], len(stream))
        for line, lo, hi in zip(lines, starts, ends):
            pieces = _split_words(line, model.tokenizer) + [EOS]
            ids, lens, probs = stream[lo + 1:hi].tolist(), length[lo + 1:hi].tolist(), logp[lo + 1:hi].tolist()
            oov = sum(1 for i in ids if i == UNK_ID)
            cells = [f"{w}={i} {n} {p:.6g}" for w, i, n, p in zip(pieces, ids, lens, probs)]
            yield "\t".join(cells) + f"\tTotal: {sum(probs):.6g} OOV: {oov}\n"
    yield f"Perplexity including OOVs:\t{r['perplexity']:.6g}\n"
    yield f"Perplexity excluding OOVs:\t{r['perplexity_excluding_oov']:.6g}\n"
    yield f"OOVs:\t{r['oov']}\n"
    yield f"Tokens:\t{r['tokens']}\n"
