"""Pass 1 (lmplz's corpus_count, the reading half): the training text -> vocabulary + word ids per sentence.

Reads: a text file (or lines) and the model's tokenizer. Writes: the Vocab (words numbered in order of first
appearance, after <unk> <s> </s>), the word ids of the whole text and the number of words of each line; then
the sentence stream `<s> w1 .. wk </s>` of every line that the counting pass reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import LmlabError
from .vocab import BOS_ID, EOS_ID, SPECIALS, Vocab

SPACE_SYMBOL = "\u2581"  # char tokenizer: a space inside a line is this visible symbol (ARPA words hold no blanks)
_WORD_DELIMITERS = str.maketrans({"\t": " ", "\r": " ", "\0": " "})  # lmplz splits on "\0\t\n\r "


def read_text(path: Path, encoding: str = "utf-8") -> str:
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; pass a text file with one sentence per line.")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LmlabError(f"{path}:{line}: not valid {encoding} text (bad byte at offset {e.start}); "
                         f"convert the file to UTF-8 or pass --encoding.") from None


def as_text(lines_or_path, encoding: str = "utf-8") -> tuple[str, str]:
    """The whole training text (newline-terminated lines) and a name for messages."""
    if isinstance(lines_or_path, (str, os.PathLike)):
        path = Path(lines_or_path)
        return read_text(path, encoding), str(path)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines_or_path), "the training text"


# A model's `tokenizer` is "word" (split on blanks, as lmplz), "char", or an lmlab Tokenizer (the one of a run:
# its token ids, written in decimal, are the model's words, so the n-gram predicts the same tokens as the run).

def resolve_tokenizer(tokenizer):
    """"word", "char", an lmlab Tokenizer, or a path to a tokenizer.json (or a run / data directory holding one)."""
    if tokenizer in ("word", "char") or hasattr(tokenizer, "encode_lines"):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)) and (Path(tokenizer).exists() or str(tokenizer).endswith(".json")):
        from ...tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    raise LmlabError(f"unknown n-gram tokenizer {str(tokenizer)!r}; choose word, char, or the path of a "
                     "tokenizer.json (or a run directory) to count n-grams of that tokenizer's tokens.")


def tokenizer_file(model_path) -> Path:
    """Where an ARPA model records a tokenizer other than "word", beside it: model.arpa -> model.tokenizer.json
    (a run's tokenizer.json, or {"lmlab_ngram_tokenizer": "char"}). ARPA itself has no place for it."""
    return Path(model_path).with_suffix(".tokenizer.json")


def tokenizer_json(tokenizer) -> str:
    return tokenizer.to_str() if not isinstance(tokenizer, str) else json.dumps({"lmlab_ngram_tokenizer": tokenizer})


def tokenizer_from_json(text: str, source: str):
    if '"lmlab_ngram_tokenizer"' in text[:100]:
        try:
            return resolve_tokenizer(json.loads(text)["lmlab_ngram_tokenizer"])
        except (ValueError, KeyError, TypeError):
            raise LmlabError(f"{source} is not a valid n-gram tokenizer note.") from None
    from ...tokenizer import tokenizer_from_str

    return tokenizer_from_str(text, source)


def split_words(line: str, tokenizer) -> list[str]:
    """The tokens of one line: words split on space, tab, CR, NUL (as lmplz), characters, or token ids."""
    if not isinstance(tokenizer, str):
        return [str(i) for i in tokenizer.encode(line)]
    if tokenizer == "char":
        return [SPACE_SYMBOL if c == " " else c for c in line.rstrip("\r")]
    return [w for w in line.translate(_WORD_DELIMITERS).split(" ") if w]


def text_tokens(text: str, tokenizer) -> list[str]:
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


def join_line(words, tokenizer) -> str:
    """The text of one line's tokens (the inverse of split_words, up to blanks for "word")."""
    if tokenizer == "word":
        return " ".join(words)
    if tokenizer == "char":
        return "".join(" " if w == SPACE_SYMBOL else w for w in words)
    pieces, ids = [], []
    for w in words:  # token ids decode together (a character may span tokens); <unk> stays as it is
        if w.isdigit():
            ids.append(int(w))
        else:
            pieces += [tokenizer.decode(ids), w]
            ids = []
    return "".join(pieces) + tokenizer.decode(ids)


def text_chunks(text: str, size: int = 1 << 25) -> Iterable[str]:
    """Pieces of about `size` characters, cut after a newline (bounds the memory of the token lists)."""
    start = 0
    while start < len(text):
        end = text.find("\n", min(start + size, len(text) - 1))
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def encode_corpus(text: str, tokenizer, skip_symbols: bool, name: str):
    """Word ids of the whole text (vocabulary in order of first appearance) and the words per line."""
    if text and not text.endswith("\n"):
        text += "\n"
    index: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
    index["\0"] = -1  # line end
    next_id = len(SPECIALS)
    pieces = []
    for chunk in text_chunks(text):
        tokens = text_tokens(chunk, tokenizer)
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


def sentence_stream(word_ids: np.ndarray, lengths: np.ndarray):
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
