"""Token schemes: how an n-gram model cuts text into the words it counts (lmplz's words, characters, a run's tokens).

Every scheme is a TokenScheme:
- `spec`: what `NGramLM.train(tokenizer=...)` takes to make it again ("word", "char", or the run's Tokenizer);
- `split(line)`: the words of one line (a line holds no newline);
- `split_text(text)`: all words of newline-terminated text with LINE_END after each line, in C-speed str methods
  (the path of the builder and of bulk scoring);
- `join(words)`: the text of one line's words (split's inverse, up to blanks for "word");
- `note()`: the JSON a model file keeps so that it reloads with the same scheme (`scheme_from_note` reads it);
- `run_words(tokenizer)`: the word of each id of a run's tokenizer (an n-gram drafting for that run).
A new scheme is one more subclass, registered in SCHEMES under its name (JiebaSplit is one).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import LmlabError
from .tokenizer import Tokenizer, jieba_cut, load_tokenizer, split_words, tokenizer_from_str

LINE_END = "\0"  # marks each line end in split_text's output (no scheme makes it a word)
SPACE_SYMBOL = "\u2581"  # char scheme: a space inside a line is this visible symbol (ARPA words hold no blanks)
TAB_SYMBOL = "\u2409"  # char scheme: a tab is U+2409 SYMBOL FOR HORIZONTAL TABULATION (a tab separates ARPA fields)
CR_SYMBOL = "\u240d"  # char scheme: a carriage return inside a line is U+240D SYMBOL FOR CARRIAGE RETURN
ARPA_DEFAULT = "word"  # the scheme of an ARPA file with no note beside it (lmplz's words)
NOTE_KEY = "lmlab_ngram_tokenizer"


class TokenScheme:
    """Base class: text <-> the words of an n-gram model (see the module header for the calls)."""

    name: str

    @property
    def spec(self):
        return self.name

    def split(self, line: str) -> list[str]:
        raise NotImplementedError

    def split_text(self, text: str) -> list[str]:
        raise NotImplementedError

    def join(self, words) -> str:
        raise NotImplementedError

    def note(self) -> str:
        return json.dumps({NOTE_KEY: self.name})

    def run_word(self, piece: str, token: int) -> str:
        """The word of one token of a run's tokenizer that decodes to `piece`."""
        raise NotImplementedError

    def run_words(self, tokenizer: Tokenizer) -> list[str]:
        """The word of each id of `tokenizer`; "\\n" for a token that is a newline (the n-gram's </s>)."""
        pieces = [tokenizer.decode([t]) for t in range(tokenizer.vocab_size)]
        return ["\n" if piece == "\n" else self.run_word(piece, t) for t, piece in enumerate(pieces)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WordSplit(TokenScheme):
    """lmplz's words: split on space, tab, CR and NUL; joined by single spaces."""

    name = "word"

    def split(self, line: str) -> list[str]:
        return split_words(line)

    def split_text(self, text: str) -> list[str]:
        text = text.replace("\0", " ").replace("\t", " ").replace("\r", " ").replace("\n", f" {LINE_END} ")
        return list(filter(None, text.split(" ")))

    def join(self, words) -> str:
        return " ".join(words)

    def run_word(self, piece: str, token: int) -> str:
        return piece.strip(" \t\r\0")


class CharSplit(TokenScheme):
    """Characters; a space inside a line is SPACE_SYMBOL, a tab TAB_SYMBOL, a CR CR_SYMBOL (the blanks that separate
    ARPA fields), a line's trailing CR is dropped. Every other character, U+00A0 and U+3000 included, is a word."""

    name = "char"
    _VISIBLE = {" ": SPACE_SYMBOL, "\t": TAB_SYMBOL, "\r": CR_SYMBOL}
    _BLANK = {v: k for k, v in _VISIBLE.items()}

    def split(self, line: str) -> list[str]:
        return [self._VISIBLE.get(c, c) for c in line.rstrip("\r")]

    def split_text(self, text: str) -> list[str]:
        text = text.replace("\0", " ").replace("\r\n", "\n")
        for blank, symbol in self._VISIBLE.items():
            text = text.replace(blank, symbol)
        return list(text.replace("\n", LINE_END))

    def join(self, words) -> str:
        return "".join(self._BLANK.get(w, w) for w in words)

    def run_word(self, piece: str, token: int) -> str:
        return self._VISIBLE.get(piece, piece)


class JiebaSplit(TokenScheme):
    """Chinese words cut by jieba (lmlab.tokenizer.jieba_cut); blanks separate words and are dropped, as lmplz
    drops them from pre-segmented text, so this is the word scheme over the text jieba segmented with spaces.
    join() puts the words back together without blanks, except one space between two ASCII letters or digits
    (English words and numbers in Chinese text)."""

    name = "jieba"

    def split(self, line: str) -> list[str]:
        return [w for piece in jieba_cut(line) for w in split_words(piece)] if line else []

    def split_text(self, text: str) -> list[str]:
        words: list[str] = []
        for line in text.split("\n")[:-1]:
            words.extend(self.split(line))
            words.append(LINE_END)
        return words

    def join(self, words) -> str:
        out: list[str] = []
        for w in words:
            if out and _ascii_alnum(out[-1][-1]) and _ascii_alnum(w[0]):
                out.append(" ")
            out.append(w)
        return "".join(out)

    def run_word(self, piece: str, token: int) -> str:
        return piece.strip(" \t\r")


def _ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


class TokenIds(TokenScheme):
    """The tokens of a run's Tokenizer, each word its id in decimal (the n-gram predicts the run's tokens)."""

    name = "tokens"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @property
    def spec(self) -> Tokenizer:
        return self.tokenizer

    def split(self, line: str) -> list[str]:
        return [str(i) for i in self.tokenizer.encode(line)]

    def split_text(self, text: str) -> list[str]:
        words: list[str] = []
        for ids in self.tokenizer.encode_lines(text.split("\n")[:-1]):
            words.extend(map(str, ids))
            words.append(LINE_END)
        return words

    def join(self, words) -> str:
        pieces, ids = [], []
        for w in words:  # token ids decode together (a character may span tokens); <unk> stays as it is
            if w.isdigit():
                ids.append(int(w))
            else:
                pieces += [self.tokenizer.decode(ids), w]
                ids = []
        return "".join(pieces) + self.tokenizer.decode(ids)

    def note(self) -> str:
        return self.tokenizer.to_str()

    def run_word(self, piece: str, token: int) -> str:
        return str(token)

    def run_words(self, tokenizer: Tokenizer) -> list[str]:
        if self.tokenizer.to_str() != tokenizer.to_str():
            raise LmlabError("the n-gram model was counted with another tokenizer than the run's; count it with "
                             "`lmlab ngram train --tokenizer RUN` to use it with that run.")
        return super().run_words(tokenizer)

    def __repr__(self) -> str:
        return f"TokenIds({self.tokenizer!r})"


SCHEMES: dict[str, type[TokenScheme]] = {"word": WordSplit, "char": CharSplit, "jieba": JiebaSplit}


def token_scheme(spec) -> TokenScheme:
    """A scheme from "word", "char", a TokenScheme, an lmlab Tokenizer, or the path of a tokenizer.json (or of a
    run / data directory holding one)."""
    if isinstance(spec, TokenScheme):
        return spec
    if isinstance(spec, str) and spec in SCHEMES:
        return SCHEMES[spec]()
    if isinstance(spec, Tokenizer):
        return TokenIds(spec)
    if isinstance(spec, (str, os.PathLike)) and (Path(spec).exists() or str(spec).endswith(".json")):
        return TokenIds(load_tokenizer(spec))
    raise LmlabError(f"unknown n-gram tokenizer {str(spec)!r}; choose {', '.join(SCHEMES)}, or the path of a "
                     "tokenizer.json (or a run directory) to count n-grams of that tokenizer's tokens.")


def scheme_from_note(text: str, source: str) -> TokenScheme:
    """The scheme a model file noted (TokenScheme.note); `source` names the note in error messages."""
    if f'"{NOTE_KEY}"' in text[:100]:
        try:
            return token_scheme(json.loads(text)[NOTE_KEY])
        except (ValueError, KeyError, TypeError):
            raise LmlabError(f"{source} is not a valid n-gram tokenizer note.") from None
    return TokenIds(tokenizer_from_str(text, source))
