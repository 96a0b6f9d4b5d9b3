"""Pass 1 (lmplz's corpus_count, the reading half): the training text -> vocabulary + word ids per sentence.

Reads: a text file (or lines), cut into words by the model's token scheme (lmlab.splitting). Writes: the Vocab
(words numbered in order of first appearance, after <unk> <s> </s>), the word ids of the whole text and the number
of words of each line; then the sentence stream `<s> w1 .. wk </s>` of every line, which count.py reads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import LmlabError
from ... import files
from ...splitting import LINE_END, token_scheme
from .vocab import BOS_ID, EOS_ID, SPECIALS, Vocab


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The text of a file (empty allowed: the builder says the text has no words); a missing file or a bad byte
    is an LmlabError naming the file (and the line): lmlab.files.read_text."""
    return files.read_text(path, encoding, empty_ok=True, fix="convert the file to UTF-8 or pass --encoding")


def as_text(lines_or_path, encoding: str = "utf-8") -> tuple[str, str]:
    """The whole training text (newline-terminated lines) and a name for messages."""
    if isinstance(lines_or_path, (str, os.PathLike)):
        path = Path(lines_or_path)
        return read_text(path, encoding), str(path)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines_or_path), "the training text"


def text_chunks(text: str, size: int = 1 << 25) -> Iterable[str]:
    """Pieces of about `size` characters, cut after a newline (bounds the memory of the token lists)."""
    start = 0
    while start < len(text):
        end = text.find("\n", min(start + size, len(text) - 1))
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def encode_corpus(text: str, tokenizer, skip_symbols: bool, name: str):
    """Word ids of the whole text (vocabulary in order of first appearance) and the words per line.

    tokenizer: the model's token scheme, or what lmlab.splitting.token_scheme makes one of ("word", ...)."""
    scheme = token_scheme(tokenizer)
    if text and not text.endswith("\n"):
        text += "\n"
    index: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
    index[LINE_END] = -1
    next_id = len(SPECIALS)
    pieces = []
    for chunk in text_chunks(text):
        tokens = scheme.split_text(chunk)
        for w in dict.fromkeys(tokens):  # first-appearance order, one dict probe per distinct token
            if w not in index:
                index[w] = next_id
                next_id += 1
        pieces.append(np.fromiter(map(index.__getitem__, tokens), dtype=np.int64, count=len(tokens)))
        del tokens
    del index[LINE_END]
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    word_ids, lengths = line_words(ids, skip_symbols, name)
    return Vocab(list(index)), word_ids, lengths


def line_words(ids: np.ndarray, skip_symbols: bool, name: str, first_line: int = 1):
    """The word ids and the number of words of each line of a piece of text's ids (-1 at each line end): a special
    word (<s>, </s>, <unk>) in the text is an error naming its line, or skipped with skip_symbols (lmplz's rule)."""
    ends = np.flatnonzero(ids < 0)
    lengths = np.diff(np.concatenate(([-1], ends))) - 1
    word_ids = ids[ids >= 0]
    special = word_ids < len(SPECIALS)
    if special.any():
        if not skip_symbols:
            first = int(np.flatnonzero(special)[0])
            line_no = first_line + int(np.searchsorted(np.cumsum(lengths), first, side="right"))
            word = SPECIALS[word_ids[first]]
            raise LmlabError(f"{name}:{line_no}: the special word {word} appears in the text; remove it "
                             f"or pass --skip-symbols to treat <s>, </s> and <unk> as spaces (lmplz --skip_symbols).")
        line_of_word = np.repeat(np.arange(len(lengths)), lengths)
        lengths = lengths - np.bincount(line_of_word[special], minlength=len(lengths))
        word_ids = word_ids[~special]
    return word_ids, lengths

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
