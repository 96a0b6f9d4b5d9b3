"""The n-gram vocabulary: words <-> ids, with the special words <unk>, <s>, </s> at ids 0, 1, 2.

Reads: words (strings). Writes: their ids. Every pass, the ARPA reader and the model number words through a Vocab.
"""
from __future__ import annotations

from typing import Iterable, Sequence

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
