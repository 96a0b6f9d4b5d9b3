"""The n-gram vocabulary: words <-> ids, with the special words <unk>, <s>, </s> at ids 0, 1, 2; and text <-> ids.

Reads: words (strings); for NGramTokenizer, text and the model's token scheme. Writes: their ids. Every pass, the
ARPA reader and the model number words through a Vocab; NGramTokenizer is the model's text tokenizer.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ...splitting import LINE_END, TokenScheme
from ...tokenizer import Tokenizer

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIALS = (UNK, BOS, EOS)


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


class UnkDict(dict):
    """Word -> id, unknown words -> <unk> (without storing them)."""

    def __missing__(self, key):
        return UNK_ID


class NGramTokenizer(Tokenizer):
    """An n-gram model's text <-> word ids as an lmlab Tokenizer: its Vocab and its token scheme (lmlab.splitting).

    encode: the scheme's words of each line -> ids (unknown words -> <unk>), each newline -> </s>; decode: the
    inverse, each line's words joined by the scheme (<s> dropped). No end-of-text id: </s> is the newline, a real
    character of the text (counted in bits per char / byte).
    """

    kind = "ngram"
    eot_id = None

    def __init__(self, vocab: Vocab, scheme: TokenScheme):
        self.vocab, self.scheme = vocab, scheme
        self.vocab_size = len(vocab)
        self._index: UnkDict | None = None

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            ids.extend(self.vocab.ids(self.scheme.split(line)))
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
                out.append(self.scheme.join(line) + "\n")
                line = []
            elif i != BOS_ID:
                line.append(words[i])
        out.append(self.scheme.join(line))
        return "".join(out)

    def line_ids(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of many lines (unknown -> <unk>) and the number of words of each, in one bulk split."""
        if not lines:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self._index is None:
            self._index = UnkDict(self.vocab.index)
            self._index[LINE_END] = -1
        tokens = self.scheme.split_text("\n".join(lines) + "\n")
        ids = np.fromiter(map(self._index.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        ends = np.flatnonzero(ids < 0)
        return ids[ids >= 0], np.diff(np.concatenate(([-1], ends))) - 1
