"""NGramLM: the trained model and its queries (lmlab's causal-LM calls, the kenlm.Model API, files).

Reads: a Vocab, one NGramTables per order and the token scheme the words were cut with (lmlab.splitting), from
the passes, an ARPA file, an .npz or an .lmbin (binary.py, whose compiled kernel scores when it can). Writes: scores,
next-token distributions, samples, ARPA / .npz files.
`NGramLM.train` runs the builder's passes in lmplz's order: corpus -> count -> discount -> estimate (-> prune).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...errors import LmlabError
from ...files import atomic_open, atomic_write_text
from ...splitting import ARPA_DEFAULT, scheme_from_note, token_scheme
from . import arpa, binary, corpus, count, discount, estimate, tables as tbl
from .prune import allowed_words, apply_pruning, keep_masks, prune_thresholds
from .sample import BatchSampler
from .tables import LN10, NGramTables
from .vocab import BOS_ID, EOS_ID, UNK_ID, NGramTokenizer, Vocab


class NGramLM:
    """A backoff n-gram language model (ARPA semantics) answering lmlab's causal-LM interface."""

    family = "ngram"
    block_size = None  # no context limit in tokens (each prediction looks at the last order-1 of a sentence)
    eot_id = None  # as its text_tokenizer's: </s> decodes to "\n", a real character of the text

    def __init__(self, vocab: Vocab, tables: list[NGramTables], tokenizer="word", info: dict | None = None):
        self.vocab = vocab
        self.tables = tables
        self.scheme = token_scheme(tokenizer)
        self.text_tokenizer = NGramTokenizer(vocab, self.scheme)  # text <-> ids, an lmlab Tokenizer
        self.info = info or {}
        self.order = len(tables)
        self.vocab_size = len(vocab)
        self.query_index = None  # binary.QueryIndex: the arrays the compiled queries read (binary.index_of)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n + 1}-grams {len(t.keys):,}" for n, t in enumerate(self.tables))
        return f"NGramLM(order={self.order}, vocab={self.vocab_size:,}, {sizes})"

    def num_parameters(self) -> int:
        """What a n-gram model stores instead of weights: its n-gram entries (every order)."""
        return sum(len(t.keys) for t in self.tables)

    @property
    def tokenizer(self):
        """What train(tokenizer=...) took: "word", "char", or the run's Tokenizer (self.scheme.spec)."""
        return self.scheme.spec

    # ----------------------------------------------------------------------- training: the passes

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
        if smoothing not in estimate.SMOOTHINGS:
            raise LmlabError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(estimate.SMOOTHINGS)}.")
        scheme = token_scheme(tokenizer)
        thresholds = prune_thresholds(prune, order)
        fallback = discount.normalize_fallback(discount_fallback)
        text, name = corpus.as_text(lines_or_path, encoding)
        vocab, word_ids, lengths = corpus.encode_corpus(text, scheme, skip_symbols, name)
        del text
        if len(word_ids) == 0:
            raise LmlabError(f"{name} is empty (no words); give it some text, one sentence per line.")
        bar = _progress_bar(progress, order * 2, f"{order}-gram {smoothing}")
        stream, dist = corpus.sentence_stream(word_ids, lengths)
        counts = count.count_ngrams(stream, dist, order, len(vocab), bar)
        del stream, dist
        keep = keep_masks(counts, thresholds, allowed_words(vocab, limit_vocab), len(vocab))
        tables, info = estimate.estimate(counts, len(vocab), smoothing, fallback, k, name, bar, keep)
        if keep is not None:
            vocab, tables = apply_pruning(vocab, tables, keep)
            info["counts"] = [len(t.keys) for t in tables]
        if bar:
            bar.close()
        info.update(smoothing=smoothing, tokens=int(len(word_ids)), sentences=len(lengths))
        return cls(vocab, tables, scheme, info)

    # ----------------------------------------------------------------------- encode / decode

    def encode(self, text: str) -> list[int]:
        """Words (or characters, or a run's tokens) -> ids; each newline ends a sentence (</s>); unknown -> <unk>."""
        return self.text_tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.text_tokenizer.decode(ids)

    # ----------------------------------------------------------------------- causal-LM interface (natural log)

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def token_logprobs(self, ids, **_unused) -> np.ndarray:
        """Natural-log probability of every id, each sentence's context starting at <s> (reset after </s>)."""
        ids = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids, dtype=np.int64).reshape(-1)
        stream, dist, keep = _stream_from_ids(ids)
        logp, _ = self.log10_stream(stream, dist)
        return logp[keep] * LN10

    def logprobs_next(self, ids, state=None, pad=None):
        """Natural-log distributions [B, V] (float32) of the token after each row of ids [B, T] (rows may also be
        lists of different lengths); row b's real tokens start at column pad[b]. <s> is -inf. No state: (lp, None)."""
        import torch

        rows = tbl.history_rows(ids, pad)
        out = np.empty((len(rows), self.vocab_size), dtype=np.float64)
        for b, row in enumerate(rows):
            out[b] = self.next_log10(tbl.sentence_context(row, self.order - 1))
        out *= LN10
        out[:, BOS_ID] = -np.inf
        return torch.from_numpy(out.astype(np.float32)), None

    def logprobs_last(self, ids, state, n: int):
        from ..base import logprobs_last_by_steps

        return logprobs_last_by_steps(self, ids, state, n)

    def over_tokenizer(self, tokenizer):
        """This model seen through a run's tokenizer: next-token distributions over *its* ids (a draft model
        for speculative decoding of that run)."""
        from .tokens import NGramOverTokens

        return NGramOverTokens(self, tokenizer)

    def next_log10(self, context: Sequence[int]) -> np.ndarray:
        """log10 p(w | context) for every w; context = ids, most recent last (begin it with <s> at a sentence start)."""
        return tbl.next_log10(self.tables, context)

    # ----------------------------------------------------------------------- the kenlm.Model API (log10)

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability of one sentence: the kenlm.Model API (log10), like ``kenlm.Model.score``."""
        words = np.array(self.vocab.ids(self.scheme.split(sentence)), dtype=np.int64)
        return float(self.full_scores(words, bos, eos)[0].sum())

    def full_scores(self, word_ids: np.ndarray, bos: bool = True, eos: bool = True):
        """Per-token (log10 prob, n-gram length) of one sentence's word ids (+ </s> when eos): the kenlm.Model API
        (log10), like ``kenlm.Model.full_scores``."""
        start = BOS_ID if bos else -1  # -1 matches nothing: an empty context, like kenlm's NullContextState
        tokens = np.concatenate(([start], word_ids, [EOS_ID] if eos else [])).astype(np.int64)
        dist = np.arange(len(tokens), dtype=np.int64)
        logp, length = self.log10_stream(tokens, dist)
        return logp[1:], length[1:]

    def perplexity(self, lines) -> float:
        """Perplexity over sentences (each line + </s>), OOVs included: the kenlm.Model API (log10 based), like
        KenLM's ``query``."""
        result = self.query_lines(lines.rstrip("\n").split("\n") if isinstance(lines, str) else lines,
                                  per_token=False)
        return result["perplexity"]

    def score_text(self, text) -> dict:
        """Totals of a text (str, or UTF-8 bytes), each line a sentence, like KenLM ``query``'s summary: "total"
        (log10), "tokens", "oov", "perplexity", "perplexity_excluding_oov". The fast path from text to numbers."""
        index = binary.index_of(self) if self.scheme.name == "word" else None
        if index is None:
            text = text.decode("utf-8") if isinstance(text, bytes) else text
            return self.query_lines(text.rstrip("\n").split("\n") if text else [], per_token=False)
        r = index.score_text(text if isinstance(text, bytes) else text.encode("utf-8"), per_token=False)
        r["perplexity"] = 10.0 ** (-r["total"] / max(r["tokens"], 1))
        r["perplexity_excluding_oov"] = 10.0 ** (-r.pop("excl") / max(r["tokens"] - r["oov"], 1))
        return r

    def log10_stream(self, stream: np.ndarray, dist: np.ndarray):
        """tables.log10_stream: in the compiled kernel (binary.py) where it is available, else in NumPy."""
        index = binary.index_of(self)
        return index.log10_stream(stream, dist) if index else tbl.log10_stream(self.tables, stream, dist)

    def query_lines(self, lines: Iterable[str], per_token: bool = True) -> dict:
        """Score lines in one pass: totals like KenLM ``query`` plus per-token arrays (log10; not with
        per_token=False). The word scheme goes from the text's bytes to the totals in the compiled kernel."""
        lines = list(lines)
        index = binary.index_of(self) if self.scheme.name == "word" else None
        if index is not None:
            r = index.score_text(("\n".join(lines) + "\n").encode("utf-8") if lines else b"", per_token)
            total, n_tokens, n_oov, excl = r["total"], r["tokens"], r["oov"], r["excl"]
            if per_token:
                stream, logp, length = r["stream"], r["log10"], r["length"]
                dist = corpus.sentence_stream(np.zeros(int(r["line_words"].sum()), np.int64), r["line_words"])[1]
        else:
            word_ids, lengths = self.text_tokenizer.line_ids(lines)
            stream, dist = corpus.sentence_stream(word_ids, lengths)
            logp, length = self.log10_stream(stream, dist)
            predicted = dist >= 1
            oov = (stream == UNK_ID) & predicted
            total = float(logp[predicted].sum())
            n_tokens = int(predicted.sum())
            n_oov = int(oov.sum())
            excl = float(logp[predicted & ~oov].sum())
        if not per_token:
            stream = dist = logp = length = None
        return {
            "stream": stream, "dist": dist, "log10": logp, "length": length,
            "total": total, "tokens": n_tokens, "oov": n_oov, "sentences": len(lines),
            "perplexity": 10.0 ** (-total / max(n_tokens, 1)),
            "perplexity_excluding_oov": 10.0 ** (-excl / max(n_tokens - n_oov, 1)),
        }

    # ----------------------------------------------------------------------- sampling

    def sample_text(self, n_tokens: int, seed: int = 0, batch: int = 65536, max_len: int = 400) -> Iterable[str]:
        """Sentences drawn from the model (exact backoff sampling, `batch` sentences at a time), as text lines,
        until about `n_tokens` words are produced. For synthetic corpora; `lmlab generate` uses logprobs_next."""
        sampler = BatchSampler(self.tables, np.random.default_rng(seed))
        words = np.array(self.vocab.words, dtype=object)
        produced = 0
        while produced < n_tokens:
            for sentence in sampler.sentences(batch, max_len):
                produced += len(sentence) + 1
                yield self.scheme.join(words[sentence]) + "\n"
                if produced >= n_tokens:
                    return

    # ----------------------------------------------------------------------- files

    def save_arpa(self, path) -> None:
        """The ARPA file, and beside it the note of the token scheme unless it is ARPA's default (tokenizer_file)."""
        sidecar = arpa.tokenizer_file(path)
        if self.scheme.name == ARPA_DEFAULT:
            sidecar.unlink(missing_ok=True)  # a stale one would make the reload use the wrong tokens
        else:
            atomic_write_text(sidecar, self.scheme.note())
        arpa.write_arpa(path, self.vocab, self.tables)

    @classmethod
    def from_arpa(cls, path, tokenizer=None) -> "NGramLM":
        """Read an ARPA file. tokenizer None: the scheme noted beside the file (tokenizer_file) if any, else words."""
        vocab, tables = arpa.read_arpa(path)
        if tokenizer is None:
            sidecar = arpa.tokenizer_file(path)
            tokenizer = scheme_from_note(sidecar.read_text(encoding="utf-8"), str(sidecar)) \
                if sidecar.is_file() else ARPA_DEFAULT
        return cls(vocab, tables, tokenizer)

    def save(self, path) -> None:
        """Our own binary (.npz): the arrays as they are in memory, reloads in a blink."""
        arrays = {"vocab": np.array("\n".join(self.vocab.words)), "tokenizer": np.array(self.scheme.note())}
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
            note = str(z["tokenizer"])
        except (OSError, ValueError, KeyError) as e:
            raise LmlabError(f"{path} is not an lmlab n-gram .npz file ({e}).") from None
        old_style = not note.startswith("{")  # older files hold just "word" or "char"
        return cls(vocab, tables, note if old_style else scheme_from_note(note, f"the tokenizer inside {path}"))


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


def _progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar over the passes on stderr, or None (disabled, or tqdm missing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="pass", file=sys.stderr, leave=False)
