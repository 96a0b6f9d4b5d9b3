"""Tokenizers: round trips (property tests), save/load, errors, streaming decode."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.tokenizer import (
    EOT,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    StreamDecoder,
    load_tokenizer,
    train_tokenizer,
)

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(text) -> BPETokenizer:
    # Chunks of 10 lines: training streams from an iterator.
    lines = text[:50_000].splitlines(keepends=True)
    return train_tokenizer("bpe", ("".join(lines[i : i + 10]) for i in range(0, len(lines), 10)), vocab_size=400)


@pytest.fixture(scope="module")
def char(text) -> CharTokenizer:
    return train_tokenizer("char", [text])


def test_char_vocab_of_tiny_shakespeare_is_65(char):
    assert char.kind == "char" and char.vocab_size == 65 and char.eot_id is None
    assert char.vocab == sorted(char.vocab)
    assert char.encode("\n") == [0]


@given(st.text())
def test_byte_round_trips_any_text(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert len(ids) == len(s.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s


@settings(max_examples=200)
@given(st.text())
def test_bpe_round_trips_any_text(bpe, s):
    ids = bpe.encode(s)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == s


@given(st.text(alphabet="abc \n!é"))
def test_char_round_trips_text_over_its_alphabet(s):
    tok = train_tokenizer("char", ["abc \n!é"])
    assert tok.vocab_size == 7
    assert tok.decode(tok.encode(s)) == s


def test_bpe_learns_merges_and_eot(bpe, text):
    assert bpe.kind == "bpe" and bpe.vocab_size == 400
    assert bpe.eot_id is not None and bpe.decode([bpe.eot_id]) == EOT
    sample = text[60_000:61_000]
    assert len(bpe.encode(sample)) < 0.6 * len(sample.encode("utf-8"))  # merges compress


def test_decode_accepts_numpy_and_tensors(char, bpe):
    for tok in (char, ByteTokenizer(), bpe):
        ids = tok.encode("First Citizen:\n")
        assert tok.decode(np.array(ids, dtype=np.uint16)) == "First Citizen:\n"
        assert tok.decode(torch.tensor(ids)) == "First Citizen:\n"


@pytest.mark.parametrize("name", ["char", "byte", "bpe"])
def test_save_load_gives_identical_encodings(tmp_path, text, char, bpe, name):
    tok = {"char": char, "byte": ByteTokenizer(), "bpe": bpe}[name]
    tok.save(tmp_path)  # a directory: writes tmp_path/tokenizer.json
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok)
        assert (loaded.kind, loaded.vocab_size, loaded.eot_id) == (tok.kind, tok.vocab_size, tok.eot_id)
        sample = text[:5000]
        assert loaded.encode(sample) == tok.encode(sample)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp files left


def test_bpe_json_is_readable_by_hf_tokenizers(tmp_path, bpe):
    from tokenizers import Tokenizer as HFTokenizer

    bpe.save(tmp_path / "tok.json")
    hf = HFTokenizer.from_file(str(tmp_path / "tok.json"))
    assert hf.encode("To be, or not to be").ids == bpe.encode("To be, or not to be")


def test_unknown_char_error_names_the_characters(char):
    with pytest.raises(LmlabError) as e:
        char.encode("Hello, wörld — ok")
    msg = str(e.value)
    assert "'ö'" in msg and "'—'" in msg and "other text" in msg


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(LmlabError, match="No tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"something": "else"}')
    with pytest.raises(LmlabError, match="not a known tokenizer format"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        load_tokenizer(tmp_path)


def test_char_vocab_size_keeps_the_most_frequent_characters_and_u_fffd():
    tok = train_tokenizer("char", ["人民人民人民日报报，"], vocab_size=4)
    assert tok.vocab == ["人", "报", "民", "\ufffd"]  # 人 民 3 times, 报 twice; 日 and ， once: U+FFFD
    assert tok.decode(tok.encode("人民日报，新")) == "人民\ufffd报\ufffd\ufffd"
    full = train_tokenizer("char", ["人民日报"])
    with pytest.raises(LmlabError, match="not in this char tokenizer's vocabulary"):
        full.encode("新")


def test_bad_training_arguments():
    with pytest.raises(LmlabError, match="vocab_size >= 257"):
        train_tokenizer("bpe", ["some text"], vocab_size=256)
    with pytest.raises(LmlabError, match="no vocab_size"):
        train_tokenizer("bpe", ["some text"])
    with pytest.raises(LmlabError, match="Unknown tokenizer kind 'wordpiece'"):
        train_tokenizer("wordpiece", ["some text"])
    with pytest.raises(LmlabError, match="does not apply to the byte tokenizer"):
        train_tokenizer("byte", ["some text"], vocab_size=500)
    with pytest.raises(LmlabError, match="char tokenizer needs vocab_size >= 2"):
        train_tokenizer("char", ["some text"], vocab_size=1)
    with pytest.raises(LmlabError, match="no text"):
        train_tokenizer("char", [])


def _stream(tok, ids) -> list[str]:
    dec = StreamDecoder(tok)
    return [dec.add(i) for i in ids] + [dec.flush()]


def test_stream_decoder_holds_back_partial_utf8():
    tok = ByteTokenizer()
    text = "héllo → 世界 🙂!"
    pieces = _stream(tok, tok.encode(text))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "🙂" in pieces  # the 4 bytes of the emoji come out as one piece, on its last byte


@given(st.text())
def test_stream_decoder_equals_decode(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_stream_decoder_bpe_and_char(bpe, char, text):
    sample = text[:2000] + "naïve café 日本語 🙂"
    ids = bpe.encode(sample)
    assert "".join(_stream(bpe, ids)) == sample
    assert "".join(_stream(char, char.encode(text[:500]))) == text[:500]
    # A truncated multi-byte character is flushed at the end as U+FFFD, like decode().
    ids = ByteTokenizer().encode("ab🙂")[:-1]
    assert "".join(_stream(ByteTokenizer(), ids)) == "ab\ufffd"


# ----------------------------------------------------------------------------------- word

def test_word_tokenizer_round_trip_unk_and_max_vocab(tmp_path):
    from lmlab.tokenizer import WordTokenizer

    tok = train_tokenizer("word", ["the cat sat\n", "on the mat\nthe end"])
    assert isinstance(tok, WordTokenizer) and tok.vocab[:3] == ["<unk>", "\n", "the"]
    ids = tok.encode("the  cat\tsat\n\non a mat")
    assert ids.count(1) == 2 and ids[-2] == 0  # two newlines; "a" is unknown
    assert tok.decode(ids) == "the cat sat\n\non <unk> mat"  # whitespace normalised, unknown word shown as <unk>
    assert tok.decode(tok.encode("the cat\nsat")) == "the cat\nsat"
    small = train_tokenizer("word", ["a a a b b c\n"], vocab_size=4)
    assert small.vocab == ["<unk>", "\n", "a", "b"] and small.encode("c") == [0]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.vocab == tok.vocab and again.encode("the end") == tok.encode("the end")
    with pytest.raises(LmlabError, match="vocab_size >= 3"):
        train_tokenizer("word", ["a"], vocab_size=2)


def test_prepare_word_level_is_chunk_invariant(tmp_path):
    import lmlab

    src = tmp_path / "words.txt"
    src.write_text("= Title =\n\nthe cat sat\n on the mat .\n" * 200 + "the end\n", encoding="utf-8")
    a = lmlab.prepare(src, tmp_path / "a", tokenizer="word", progress=False)
    lmlab.prepare(src, tmp_path / "b", tokenizer="word", progress=False, chunk_chars=50)
    assert a["tokenizer"] == "word" and a["vocab_size"] == 11
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
