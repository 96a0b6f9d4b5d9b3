"""Tokenizers behind one interface: characters, UTF-8 bytes, words (whitespace or jieba's Chinese words), byte-level
BPE, character-alphabet BPE and WordPiece (HF `tokenizers`).

Every tokenizer has `kind`, `vocab_size`, `eot_id`, `encode(text) -> list[int]`, `decode(ids) -> str`
and `save(path)`, and is stored as one `tokenizer.json`:
- char, byte, word and jieba: our own small JSON, `{"lmlab_tokenizer": "char", "vocab": [...]}`;
- bpe (and char-bpe, built from a text by `train_tokenizer`): the Hugging Face `tokenizers` JSON itself, so HF tools
  read it and any HF tokenizer.json (GPT-2's, for instance) loads here as a `BPETokenizer`;
- wordpiece: a HF WordPiece tokenizer.json (BERT's), loaded as a `WordPieceTokenizer`.

`path` arguments name either the JSON file (ending in ".json") or a directory holding tokenizer.json. A
Hugging Face model's tokenizer_config.json beside it (its chat template and special tokens) travels with the
tokenizer: `load_tokenizer` reads it (its eos_token becomes `eot_id`, the id generation stops at) and `save` writes
it back, so a run made by `lmlab convert` keeps it through `prepare --tokenizer RUN` and `train --init RUN`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .errors import LmlabError
from .files import atomic_write_text

EOT = "<|endoftext|>"
FILENAME = "tokenizer.json"
SETTINGS_FILE = "tokenizer_config.json"
MIN_BPE_VOCAB = 257  # 256 byte symbols + <|endoftext|>
TOKENIZER_KINDS = ("char", "byte", "word", "jieba", "bpe", "char-bpe")  # what `prepare --tokenizer` builds


def _json_path(path) -> Path:
    """tokenizer.json inside `path`, unless `path` already names a .json file."""
    path = Path(path)
    return path if path.suffix == ".json" else path / FILENAME


def _json_text(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _id_list(ids) -> list[int]:
    """Accept a list, a NumPy array or a 1-D tensor of ids."""
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


class Tokenizer:
    """Base class: text <-> token ids."""

    kind: str
    vocab_size: int
    eot_id: int | None = None
    settings_text: str | None = None  # the tokenizer_config.json read beside tokenizer.json, kept verbatim

    @property
    def settings(self) -> dict:
        """tokenizer_config.json's keys (chat_template, eos_token, ...); {} without one."""
        return json.loads(self.settings_text) if self.settings_text is not None else {}

    def use_settings(self, settings: dict) -> None:
        """Take what tokenizer_config.json says about this tokenizer (BPE: the end-of-sequence token)."""

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def to_str(self) -> str:
        """The tokenizer.json text."""
        raise NotImplementedError

    def save(self, path) -> None:
        file = _json_path(path)
        atomic_write_text(file, self.to_str())
        if self.settings_text is not None:
            atomic_write_text(file.with_name(SETTINGS_FILE), self.settings_text)

    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        """Ids of each line (no newline inside); BPE overrides it with the library's parallel batch encoder."""
        return [self.encode(line) for line in lines]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per character; the vocabulary is the sorted set of characters seen (nanoGPT shakespeare_char).

    Built with a vocab_size (Chinese text has thousands of characters, many seen once), it keeps the most frequent
    vocab_size - 1 characters and UNK_CHAR (U+FFFD REPLACEMENT CHARACTER), which then stands for every character
    outside the vocabulary. Without UNK_CHAR in its vocabulary, an unknown character is an error."""

    kind = "char"
    UNK_CHAR = "\ufffd"

    def __init__(self, vocab: Iterable[str]):
        self.vocab = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.unk_id = self.stoi.get(self.UNK_CHAR)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        if self.unk_id is not None:
            return [stoi.get(c, self.unk_id) for c in text]
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise LmlabError(
                f"The text has {len(unknown)} character(s) not in this char tokenizer's vocabulary ({shown}): "
                "the tokenizer was built from other text, so rebuild it from this text or use a byte or bpe tokenizer."
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in _id_list(ids))

    def to_str(self) -> str:
        return _json_text({"lmlab_tokenizer": "char", "vocab": self.vocab})


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes of the text: 256 ids, nothing to train, every text encodes."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(_id_list(ids)).decode("utf-8", errors="replace")

    def to_str(self) -> str:
        return _json_text({"lmlab_tokenizer": "byte"})


_WORD_DELIMITERS = str.maketrans({"\t": " ", "\r": " ", "\0": " "})


def split_words(text: str) -> list[str]:
    """Words of a text without newlines: split on space, tab, CR and NUL (lmplz's delimiters)."""
    return [w for w in text.translate(_WORD_DELIMITERS).split(" ") if w]


class WordTokenizer(Tokenizer):
    """Whitespace-separated words plus a newline token (word-level LMs: Penn Treebank / WikiText style).

    Words are split on space, tab, CR and NUL, as KenLM's lmplz (and lmlab's n-gram models) split them, so a
    word-level neural LM and an n-gram model see the same tokens and can be interpolated.

    The vocabulary is `<unk>`, the newline, then the words of the text it was built from, most frequent
    first (ties alphabetical), optionally cut to a maximum size; any other word encodes as `<unk>`.
    decode(encode(text)) normalises whitespace: words are joined by single spaces.
    A subclass changes how a line is cut (`words`) and how a line's words are joined (`SEPARATOR`).
    """

    kind = "word"
    UNK, NEWLINE = "<unk>", "\n"
    SEPARATOR = " "

    def __init__(self, vocab: Iterable[str]):
        self.vocab = list(vocab)
        if self.vocab[:2] != [self.UNK, self.NEWLINE]:
            raise LmlabError(f"a {self.kind} tokenizer's vocabulary must start with '<unk>' and the newline; "
                             f"rebuild it with `lmlab prepare --tokenizer {self.kind}`.")
        self.stoi = {w: i for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)

    @staticmethod
    def words(line: str) -> list[str]:
        """The words of one line (no newline in it)."""
        return split_words(line)

    @classmethod
    def text_words(cls, text: str) -> list[str]:
        """The words of every line of `text` (what the vocabulary is counted from)."""
        return split_words(text.replace("\n", " "))

    def encode(self, text: str) -> list[int]:
        get, ids = self.stoi.get, []
        for i, line in enumerate(text.split("\n")):
            if i:
                ids.append(1)
            ids.extend(get(w, 0) for w in self.words(line))
        return ids

    def decode(self, ids) -> str:
        lines, line = [], []
        for i in _id_list(ids):
            if i == 1:
                lines.append(self.SEPARATOR.join(line))
                line = []
            else:
                line.append(self.vocab[i])
        lines.append(self.SEPARATOR.join(line))
        return "\n".join(lines)

    def to_str(self) -> str:
        return _json_text({"lmlab_tokenizer": self.kind, "vocab": self.vocab})


JIEBA_PACKAGE = "rjieba==0.2.2"


def jieba_cut(line: str) -> list[str]:
    """jieba's words of a line (accurate mode with the HMM for unseen words), every character kept: the pieces
    join back to the line. Through rjieba (jieba-rs, its dictionary compiled in): on People's Daily 1998 train it
    gives jieba 0.42.1's words on all 17,534 lines at ~8x its speed (2.1 M vs 0.26 M characters/s here); it keeps
    an ASCII hyphenated token ("GPU-2") whole where jieba cuts it in three."""
    return _rjieba().cut(line)


def _rjieba():
    try:
        import rjieba
    except ImportError:
        raise LmlabError(f"the jieba tokenizer needs the rjieba package: pip install {JIEBA_PACKAGE}") from None
    return rjieba


class JiebaTokenizer(WordTokenizer):
    """Chinese words cut by jieba (jieba_cut), plus the newline. Blanks are tokens too, so for text whose words are
    all in the vocabulary decode(encode(text)) == text; a word outside it decodes as `<unk>`."""

    kind = "jieba"
    SEPARATOR = ""

    @staticmethod
    def words(line: str) -> list[str]:
        return jieba_cut(line) if line else []

    @classmethod
    def text_words(cls, text: str) -> list[str]:
        return [w for line in text.split("\n") if line for w in jieba_cut(line)]


WORD_TOKENIZERS: dict[str, type[WordTokenizer]] = {"word": WordTokenizer, "jieba": JiebaTokenizer}


class BPETokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`: ours is byte-level BPE, but any HF tokenizer.json loads here."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        # Largest id + 1, so embeddings cover added tokens even when the ids have holes.
        self.vocab_size = max(hf_tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self.eot_id = hf_tokenizer.token_to_id(EOT)

    def use_settings(self, settings: dict) -> None:
        eos = settings.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos  # transformers also writes AddedToken objects
        if isinstance(eos, str) and self.hf.token_to_id(eos) is not None:
            self.eot_id = self.hf.token_to_id(eos)  # e.g. SmolLM2-Instruct's <|im_end|>, Llama 3's <|eot_id|>

    def encode(self, text: str) -> list[int]:
        # No BOS/CLS/SEP: ids are exactly the text (a literal "<|endoftext|>" becomes eot_id).
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.hf.decode(_id_list(ids), skip_special_tokens=False)

    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(lines, add_special_tokens=False)]

    def to_str(self) -> str:
        return self.hf.to_str(pretty=True)


class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece through HF `tokenizers` (lower-casing / accents / splitting as its tokenizer.json says).

    `encode` gives the ids of the text alone, like every lmlab tokenizer; `encode_special` wraps them as BERT
    reads a sentence: [CLS] text [SEP]. The special tokens [PAD] [UNK] [CLS] [SEP] [MASK] must be in the
    vocabulary; [SEP] doubles as the end-of-text id, so `prepare` separates documents with it (for MLM data).
    Any padding or truncation stored in the JSON is switched off: batching pads on its own.
    """

    kind = "wordpiece"
    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, hf_tokenizer, source="the tokenizer"):
        hf_tokenizer.no_padding()
        hf_tokenizer.no_truncation()
        self.hf = hf_tokenizer
        self.vocab_size = max(hf_tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        missing = [t for t in self.SPECIALS if hf_tokenizer.token_to_id(t) is None]
        if missing:
            raise LmlabError(f"{source} is a WordPiece tokenizer without {', '.join(missing)}; "
                             "a BERT vocabulary needs [PAD] [UNK] [CLS] [SEP] [MASK].")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            hf_tokenizer.token_to_id(t) for t in self.SPECIALS)
        self.eot_id = self.sep_id

    @property
    def special_ids(self) -> list[int]:
        return [self.pad_id, self.cls_id, self.sep_id, self.mask_id]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_lines(self, lines: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(lines, add_special_tokens=False)]

    def encode_special(self, texts: list[str], max_length: int) -> list[list[int]]:
        """[CLS] ids [SEP] of each text, the text's ids cut to max_length - 2."""
        keep = max(0, max_length - 2)
        return [[self.cls_id, *ids[:keep], self.sep_id] for ids in self.encode_lines(texts)]

    def decode(self, ids) -> str:
        return self.hf.decode(_id_list(ids), skip_special_tokens=False)

    def to_str(self) -> str:
        return self.hf.to_str(pretty=True)


def _bert_pipeline(hf, lowercase: bool) -> None:
    """BERT's normalizer, pre-tokenizer, decoder and [CLS] A [SEP] template on a WordPiece HF tokenizer."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    cls, sep = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        hf.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def load_wordpiece(path) -> WordPieceTokenizer:
    """A WordPiece tokenizer from a HF directory (tokenizer.json, else vocab.txt), a tokenizer.json or a vocab.txt.

    A bare vocab.txt gets BERT's pipeline, lower-casing unless the directory's tokenizer_config.json says
    do_lower_case: false.
    """
    path = Path(path)
    if path.is_dir() and (path / FILENAME).is_file():
        path = path / FILENAME
    elif path.is_dir() and (path / "vocab.txt").is_file():
        path = path / "vocab.txt"
    if not path.is_file():
        raise LmlabError(f"No WordPiece tokenizer at {path}; give a tokenizer.json, a vocab.txt or a directory "
                         "holding one.")
    if path.suffix == ".json":
        tok = load_tokenizer(path)
        if not isinstance(tok, WordPieceTokenizer):
            raise LmlabError(f"{path} is a {tok.kind} tokenizer, not WordPiece; give a BERT tokenizer.json or vocab.txt.")
        return tok
    from tokenizers import Tokenizer as HFTokenizer, models

    lowercase = True
    config = path.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            lowercase = bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True))
        except json.JSONDecodeError:
            pass
    try:
        hf = HFTokenizer(models.WordPiece.from_file(str(path), unk_token="[UNK]"))
    except Exception as e:
        raise LmlabError(f"{path} is not a WordPiece vocabulary (one token per line): {e}.") from None
    _bert_pipeline(hf, lowercase)
    return WordPieceTokenizer(hf, path)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> WordPieceTokenizer:
    """A BERT-style WordPiece vocabulary learned from `texts` (for an encoder trained from scratch)."""
    from tokenizers import Tokenizer as HFTokenizer, models, trainers

    if vocab_size < len(WordPieceTokenizer.SPECIALS) + 1:
        raise LmlabError(f"a WordPiece vocabulary needs vocab_size > 5 (the special tokens and a word), got {vocab_size}.")
    hf = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    from tokenizers import normalizers, pre_tokenizers

    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), special_tokens=list(WordPieceTokenizer.SPECIALS),
                                        show_progress=False)
    hf.train_from_iterator(texts, trainer)
    _bert_pipeline(hf, lowercase)
    return WordPieceTokenizer(hf)


def load_tokenizer(path) -> Tokenizer:
    """Read tokenizer.json (a file, or a directory holding one): ours (char/byte/word) or any HF tokenizer."""
    file = _json_path(path)
    if not file.is_file():
        raise LmlabError(f"No tokenizer found at {file}; pass a tokenizer.json or a directory made by `lmlab prepare`.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{file} is not valid JSON ({e}); regenerate it with `lmlab prepare`.") from None
    tokenizer = tokenizer_from_str(text, file)
    settings = file.with_name(SETTINGS_FILE)
    if settings.is_file():
        _attach_settings(tokenizer, settings)
    return tokenizer


def _attach_settings(tokenizer: Tokenizer, path: Path) -> None:
    """Keep the tokenizer_config.json at `path` with `tokenizer` and apply what it says."""
    try:
        text = path.read_text(encoding="utf-8")
        settings = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path} is not valid JSON ({e}); fix it or remove it.") from None
    if not isinstance(settings, dict):
        raise LmlabError(f"{path} is not a JSON object; it is not a Hugging Face tokenizer config.")
    tokenizer.settings_text = text
    tokenizer.use_settings(settings)


def tokenizer_from_str(text: str, source="the tokenizer") -> Tokenizer:
    """A tokenizer from tokenizer.json text; `source` names it in error messages."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{source} is not valid JSON ({e}); regenerate it with `lmlab prepare`.") from None
    kind = obj.get("lmlab_tokenizer") if isinstance(obj, dict) else None
    if kind == "char" and isinstance(obj.get("vocab"), list):
        return CharTokenizer(obj["vocab"])
    if kind == "byte":
        return ByteTokenizer()
    if kind in WORD_TOKENIZERS and isinstance(obj.get("vocab"), list):
        return WORD_TOKENIZERS[kind](obj["vocab"])
    if kind is None and isinstance(obj, dict) and "model" in obj:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_str(text)
            if obj["model"].get("type") == "WordPiece":
                return WordPieceTokenizer(hf, source)
            return BPETokenizer(hf)
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise LmlabError(f"{source} is not a tokenizer the `tokenizers` library can read ({e}).") from None
    raise LmlabError(
        f"{source} is not a known tokenizer format; expected an lmlab char/byte/word tokenizer or a Hugging Face "
        "tokenizer.json."
    )


def train_tokenizer(kind: str, chunks: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
    """Build a tokenizer of `kind` ("char", "byte", "word", "jieba" or "bpe") from an iterable of text chunks (streamed
    once). For "word" and "jieba", vocab_size is an optional maximum (the most frequent words are kept, <unk> and
    newline included).
    """
    check_tokenizer_args(kind, vocab_size)
    if kind == "char":
        from collections import Counter

        counts: Counter = Counter()
        for chunk in chunks:
            counts.update(chunk)
        return char_tokenizer(counts, vocab_size)
    if kind == "byte":
        return ByteTokenizer()
    if kind in WORD_TOKENIZERS:
        from collections import Counter

        cls, counts = WORD_TOKENIZERS[kind], Counter()
        for chunk in chunks:  # prepare cuts chunks between lines, so no word is split across two
            counts.update(cls.text_words(chunk))
        return word_tokenizer(kind, counts, vocab_size)
    if kind == "char-bpe":
        return _train_char_bpe(chunks, vocab_size)
    return _train_bpe(chunks, vocab_size)


def char_tokenizer(counts, vocab_size: int | None) -> CharTokenizer:
    """The char tokenizer of character counts: every character, or the vocab_size - 1 most frequent (ties by code
    point) and CharTokenizer.UNK_CHAR for the others."""
    if not counts:
        raise LmlabError("There is no text to build the char tokenizer from; give it a non-empty text.")
    if vocab_size is None:
        return CharTokenizer(sorted(counts))
    counts.pop(CharTokenizer.UNK_CHAR, None)
    kept = sorted(counts, key=lambda c: (-counts[c], c))[:int(vocab_size) - 1]
    return CharTokenizer(sorted(kept) + [CharTokenizer.UNK_CHAR])


def word_tokenizer(kind: str, counts, max_vocab: int | None) -> WordTokenizer:
    """The word-level tokenizer of `kind` for word counts: the most frequent words first (ties alphabetical)."""
    cls = WORD_TOKENIZERS[kind]
    counts.pop(cls.UNK, None)
    counts.pop(cls.NEWLINE, None)
    if not counts:
        raise LmlabError(f"There is no word in the text to build the {kind} tokenizer from; give it a non-empty "
                         "text.")
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        words = words[:int(max_vocab) - 2]
    return cls([cls.UNK, cls.NEWLINE, *words])


def check_tokenizer_args(kind: str, vocab_size: int | None) -> None:
    """Raise LmlabError for an unknown kind or a vocab_size that does not fit it."""
    if kind not in TOKENIZER_KINDS:
        raise LmlabError(f"Unknown tokenizer kind {kind!r}; use {', '.join(map(repr, TOKENIZER_KINDS))}.")
    if kind == "byte" and vocab_size is not None:
        raise LmlabError("vocab_size does not apply to the byte tokenizer (always 256 bytes); leave it unset.")
    if kind == "char" and vocab_size is not None and int(vocab_size) < 2:
        raise LmlabError(f"a char tokenizer needs vocab_size >= 2 (a character and U+FFFD), got {vocab_size}.")
    if kind in WORD_TOKENIZERS and vocab_size is not None and int(vocab_size) < 3:
        raise LmlabError(f"a {kind} tokenizer needs vocab_size >= 3 (<unk>, newline and a word), got {vocab_size}.")
    if kind == "jieba":
        _rjieba()  # missing: one sentence saying how to install it
    if kind == "char-bpe" and (vocab_size is None or int(vocab_size) < MIN_BPE_VOCAB):
        raise LmlabError(f"a char-bpe tokenizer needs a vocab_size (characters + merges, e.g. 8000 for Chinese), "
                         f"at least {MIN_BPE_VOCAB}.")
    if kind == "bpe" and (vocab_size is None or int(vocab_size) < MIN_BPE_VOCAB):
        got = "no vocab_size" if vocab_size is None else f"vocab_size {vocab_size}"
        raise LmlabError(
            f"A bpe tokenizer needs vocab_size >= {MIN_BPE_VOCAB} (256 bytes + {EOT}), got {got}; "
            "pass a larger vocab_size (e.g. 512 for a small corpus)."
        )


def _train_bpe(chunks: Iterable[str], vocab_size: int) -> BPETokenizer:
    """GPT-2 style byte-level BPE: every byte is in the alphabet, so every text encodes and round-trips."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(chunks, trainer)  # streams: HF pulls the chunks in batches
    return BPETokenizer(hf)


UNK = "<unk>"


def _train_char_bpe(chunks: Iterable[str], vocab_size: int) -> BPETokenizer:
    """BPE whose alphabet is characters, not bytes (as SentencePiece's BPE without byte fallback): merges start
    from the characters of the text (printable ASCII always in), a space is "▁" (Metaspace) and a newline its own
    piece; a character not in the alphabet is `<unk>`. Chinese text needs no byte pieces, so every token decodes to
    whole characters (byte-level BPE splits a character into 2-3 tokens until merges join them)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                pre_tokenizers.Metaspace(prepend_scheme="never")])
    hf.decoder = decoders.Metaspace(prepend_scheme="never")
    alphabet = [chr(c) for c in range(32, 127)] + ["\u2581", "\n", "\t"]
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[EOT, UNK], initial_alphabet=alphabet,
                                  show_progress=False)
    hf.train_from_iterator(chunks, trainer)
    return BPETokenizer(hf)


class StreamDecoder:
    """Decode ids one at a time for streaming output: `add(id)` returns the newly completed text.

    Text that would end in U+FFFD (an incomplete UTF-8 sequence from byte/BPE tokens) is held back
    until more ids arrive; `flush()` returns whatever is left. The pieces joined equal `decode(all ids)`.
    Like HF text-generation-inference, it decodes a short window with one token of left context, so
    tokenizers whose decoders depend on neighbours (WordPiece "##", SentencePiece spaces) stream correctly.
    `context`: ids already shown (a prompt's last token), so the first piece carries what joins it to them
    (the space between two words of a word-level tokenizer).
    """

    def __init__(self, tokenizer: Tokenizer, context=()):
        self.tokenizer = tokenizer
        self.ids: list[int] = [int(i) for i in context]
        self.prefix = 0  # ids[prefix:read] were already emitted; they give context to the next piece
        self.read = len(self.ids)

    def add(self, token_id) -> str:
        self.ids.append(int(token_id))
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""  # wait for more ids
        # Drop ids no longer needed as context, keeping memory constant on long streams.
        self.ids = self.ids[self.read :]
        self.prefix, self.read = 0, len(self.ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Everything not yet returned (possibly ending in U+FFFD); the decoder is then empty."""
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.ids, self.prefix, self.read = [], 0, 0
        return text[len(done) :]
