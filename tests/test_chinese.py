"""Chinese text in every layer that touches text: jieba words (tokenizer and n-gram scheme), characters and
byte-level BPE, the ARPA files' blanks (ASCII space and tab only, as KenLM), streaming that never breaks a character,
text in GB18030, and `classify` on Chinese reviews. Real text: data/zh (People's Daily 1998, review sentiment)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.models.ngram import NGramLM
from lmlab.tokenizer import StreamDecoder, jieba_cut, load_tokenizer, train_tokenizer

from conftest import ROOT, run_main

ZH = ROOT / "data" / "zh"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return (ZH / "peoples-daily-1998.txt").read_text(encoding="utf-8").splitlines()


# ----------------------------------------------------------------------------------- jieba

def test_jieba_cut_keeps_every_character_and_finds_words(lines):
    for line in lines[:200]:
        assert "".join(jieba_cut(line)) == line
    words = jieba_cut("在１９９８年来临之际，我十分高兴地通过中央人民广播电台")
    assert {"来临", "之际", "十分高兴", "通过", "中央人民广播电台"} <= set(words)


cjk_ascii = st.text(st.one_of(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                              st.sampled_from(list("abcXYZ019 ,.!?\t\u3000\u00a0，。、")),
                              st.just("\n")), max_size=60)


@settings(max_examples=150, deadline=None)
@given(cjk_ascii)
def test_jieba_tokenizer_round_trips_text_whose_words_it_knows(text):
    # Lossless for text whose words are in the vocabulary (blanks are tokens): built from the text itself, it is.
    # (A word outside the vocabulary decodes as <unk>: test_jieba_tokenizer_unknown_words_and_save_load.)
    assume(text.replace("\n", ""))
    tok = train_tokenizer("jieba", [text])
    assert tok.decode(tok.encode(text)) == text


def test_jieba_tokenizer_unknown_words_and_save_load(lines, tmp_path):
    tok = train_tokenizer("jieba", ["\n".join(lines[:500]) + "\n"], vocab_size=2000)
    assert tok.kind == "jieba" and tok.vocab_size == 2000 and tok.vocab[:2] == ["<unk>", "\n"]
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path)
    assert again.kind == "jieba" and again.encode(lines[600]) == tok.encode(lines[600])
    ids = tok.encode("中国人民银行行长")
    assert tok.decode(ids).replace("<unk>", "") in "中国人民银行行长"


def test_prepare_jieba_with_two_workers_equals_one(tmp_path, capsys):
    text = tmp_path / "pd.txt"
    text.write_text("\n".join((ZH / "peoples-daily-1998.txt").read_text(encoding="utf-8").splitlines()[:1500]) + "\n",
                    encoding="utf-8")
    outs = []
    for workers in (1, 2):
        code, out, err = run_main(["prepare", text, "--tokenizer", "jieba", "--workers", workers, "--quiet", "--out",
                                   tmp_path / f"w{workers}"], capsys)
        assert code == 0, err
        outs.append(tmp_path / f"w{workers}")
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    meta = json.loads((outs[0] / "meta.json").read_text())
    assert meta["tokenizer"] == "jieba" and meta["train"]["bytes"] > 2.5 * meta["train"]["chars"]  # 3-byte CJK


def test_jieba_missing_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rjieba", None)  # as if the package were not installed
    code, out, err = run_main(["prepare", ZH / "peoples-daily-1998.txt", "--tokenizer", "jieba", "--quiet", "--out",
                               tmp_path / "d"], capsys)
    assert code == 2 and "pip install rjieba==" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d" / "meta.json").exists()


# ----------------------------------------------------------------------------------- n-grams

def test_word_ngram_over_jieba_equals_word_ngram_over_the_segmented_text(lines, tmp_path):
    raw = lines[:800]
    segmented = [" ".join(w for piece in jieba_cut(line) for w in piece.split(" ") if w) for line in raw]
    ours = NGramLM.train(raw, order=3, tokenizer="jieba", progress=False)
    ref = NGramLM.train(segmented, order=3, progress=False)
    ours.save_arpa(tmp_path / "jieba.arpa")
    ref.save_arpa(tmp_path / "segmented.arpa")
    assert (tmp_path / "jieba.arpa").read_bytes() == (tmp_path / "segmented.arpa").read_bytes()
    held = lines[900:950]
    assert ours.perplexity(held) == pytest.approx(ref.perplexity([ref.scheme.join(ours.scheme.split(s))
                                                                  for s in held]), rel=1e-12)
    reloaded = NGramLM.from_arpa(tmp_path / "jieba.arpa")
    assert reloaded.scheme.name == "jieba" and reloaded.perplexity(held) == pytest.approx(ours.perplexity(held))


# Blanks that Python's str.split() and str.strip() treat as whitespace but KenLM does not: they are characters of
# words. One test per class: no-break space, ideographic space, thin space, en quad, narrow no-break space, vertical
# tab / form feed (ASCII, not KenLM blanks either), and the line-breaking U+0085 / U+2028 (not "\n").
UNICODE_BLANKS = ["\u00a0", "\u3000", "\u2009", "\u2000", "\u202f", "\x0b\x0c", "\u0085", "\u2028"]


@pytest.mark.parametrize("blank", UNICODE_BLANKS, ids=[f"U+{ord(b[0]):04X}" for b in UNICODE_BLANKS])
@pytest.mark.parametrize("scheme", ["char", "word"])
def test_arpa_round_trip_with_unicode_blanks_inside_words(lines, tmp_path, blank, scheme):
    text = [f"{line[:40]}{blank}{line[40:80]}" if i % 3 == 0 else line[:80] for i, line in enumerate(lines[:300])]
    if scheme == "word":  # words of a segmented text, the blank at the start, inside and at the end of words
        text = [" ".join(jieba_cut(line)).replace(f" {blank} ", f" a{blank}b {blank} ") + f" {blank}" for line in text]
    model = NGramLM.train(text, order=3, tokenizer=scheme, progress=False)
    assert any(blank[0] in w for w in model.vocab.words)
    model.save_arpa(tmp_path / "m.arpa")
    back = NGramLM.from_arpa(tmp_path / "m.arpa")
    assert sorted(back.vocab.words) == sorted(model.vocab.words)
    held = text[::7]
    assert back.perplexity(held) == pytest.approx(model.perplexity(held), rel=1e-6)  # ARPA keeps 6 decimals
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (pip install kenlm)")
    k = kenlm.Model(str(tmp_path / "m.arpa"))
    for line in held[:20]:  # word by word through KenLM's state API: its Python score() splits on Unicode blanks
        words = model.scheme.split(line)
        state, total = kenlm.State(), 0.0
        k.BeginSentenceWrite(state)
        for w in words + ["</s>"]:
            out = kenlm.State()
            total += k.BaseScore(state, w, out)
            state = out
        assert total == pytest.approx(model.score(line), abs=1e-4)


def test_char_scheme_keeps_tabs_and_crs_out_of_arpa_fields(tmp_path):
    text = ["中文\t制表符 和空格", "回车\r在中间", "全角　空格"]
    model = NGramLM.train(text, order=2, tokenizer="char", discount_fallback=True, progress=False)
    assert {"\u2409", "\u240d", "\u3000"} <= set(model.vocab.words)
    model.save_arpa(tmp_path / "m.arpa")
    back = NGramLM.from_arpa(tmp_path / "m.arpa")
    assert back.perplexity(text) == pytest.approx(model.perplexity(text), rel=1e-6)
    assert [model.scheme.join(model.scheme.split(t)) for t in text] == text


def test_char_five_gram_with_discount_fallback(lines):
    with pytest.raises(LmlabError, match="discount"):  # a tiny char text breaks the closed-form discounts
        NGramLM.train(["中文中文", "文中"], order=5, tokenizer="char", progress=False)
    model = NGramLM.train(["中文中文", "文中"], order=5, tokenizer="char", discount_fallback=True, progress=False)
    assert np.isfinite(model.perplexity(["中文"]))


# ----------------------------------------------------------------------------------- BPE, streaming

def test_byte_bpe_streams_chinese_without_broken_characters(lines):
    text = "\n".join(lines[:300])
    bpe = train_tokenizer("bpe", [text], vocab_size=600)
    sample = lines[400][:120]
    ids = bpe.encode(sample)
    assert any("\ufffd" in bpe.decode([i]) for i in ids)  # some tokens are pieces of a character
    stream = StreamDecoder(bpe)
    pieces = [stream.add(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == sample and not any("\ufffd" in p for p in pieces)


def test_char_bpe_tokens_are_whole_characters_and_fewer_than_bytes(lines, tmp_path):
    train = "\n".join(lines[:600]) + "\n"
    chars = train_tokenizer("char-bpe", [train], vocab_size=3000)
    byte = train_tokenizer("bpe", [train], vocab_size=3000)
    held = "\n".join(lines[700:760])
    ids = chars.encode(held)
    assert all("\ufffd" not in chars.decode([i]) for i in ids)  # no token is a piece of a character
    assert len(ids) < len(byte.encode(held))  # its 3,000 entries cover Chinese better than bytes + merges do
    mixed = "新华社 北京 1 月 1 日电  GPU ok\n第二行"
    assert chars.decode(chars.encode(mixed)) == mixed  # blanks and newlines kept
    assert chars.decode(chars.encode("龘")) == "<unk>"  # a character outside its alphabet
    chars.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path).encode(held) == ids


def test_stream_decoder_splits_every_character_at_every_byte_boundary():
    byte = train_tokenizer("byte", [])
    text = "人民日报，１９９８年。𠀀中文 ok"  # 3-byte CJK, full-width digits, a 4-byte CJK extension B character
    data = text.encode("utf-8")
    for cut in range(1, len(data)):  # two tokens of the stream meet at byte `cut`
        stream = StreamDecoder(byte)
        pieces = [stream.add(b) for b in data[:cut]] + [stream.add(b) for b in data[cut:]] + [stream.flush()]
        assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_sse_stream_of_byte_level_tokens_sends_whole_characters(lines):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from lmlab.serve import Limits, ServerThread, create_app

    bpe = train_tokenizer("bpe", ["\n".join(lines[:300])], vocab_size=300)  # few merges: a character is 2-3 tokens
    model = NGramLM.train(lines[:300], order=8, tokenizer=bpe, discount_fallback=True, progress=False)  # BPE ids
    body = {"model": "zh", "prompt": "新华社", "max_tokens": 80, "temperature": 0}  # greedy: valid UTF-8 out
    with ServerThread(create_app({"zh": (model, model)}, Limits(max_tokens=128))) as url:
        whole = httpx.post(url + "/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            chunks = [json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(chunks) == whole and sum(1 for c in whole if "\u4e00" <= c <= "\u9fff") > 10
    # Held back until whole: no chunk shows half a character (the last may end in one: max_tokens cut it)
    assert not any("\ufffd" in c for c in chunks[:-1]) and "\ufffd" not in whole[:-1]


# ----------------------------------------------------------------------------------- encodings

def test_gb18030_text_says_so_and_works_with_its_encoding(tmp_path, capsys):
    text = "\n".join((ZH / "peoples-daily-1998.txt").read_text(encoding="utf-8").splitlines()[:200]) + "\n"
    (tmp_path / "gbk.txt").write_bytes(text.encode("gb18030"))
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    code, out, err = run_main(["prepare", tmp_path / "gbk.txt", "--quiet", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "GB18030" in err and "--encoding gb18030" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "meta.json").exists()
    for name, extra in (("gbk", ["--encoding", "gb18030"]), ("utf8", [])):
        code, out, err = run_main(["prepare", tmp_path / f"{name}.txt", *extra, "--quiet", "--out", tmp_path / name],
                                  capsys)
        assert code == 0, err
    assert (tmp_path / "gbk" / "tokenizer.json").read_bytes() == (tmp_path / "utf8" / "tokenizer.json").read_bytes()
    ids = {name: np.concatenate([np.fromfile(tmp_path / name / f"{s}.bin", np.uint16) for s in ("train", "val")])
           for name in ("gbk", "utf8")}  # the same ids (the val cut differs: it is a fraction of the file's bytes)
    assert np.array_equal(ids["gbk"], ids["utf8"])
    meta = json.loads((tmp_path / "gbk" / "meta.json").read_text())
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == len(text.encode("utf-8"))  # bits per byte: UTF-8 bytes
    code, out, err = run_main(["ngram", "train", "-o", "3", "--tokenizer", "char", "--data", tmp_path / "gbk.txt",
                               "--out", tmp_path / "m.arpa", "--quiet"], capsys)
    assert code == 2 and "--encoding gb18030" in err and not (tmp_path / "m.arpa").exists()


def test_mixed_encodings_name_the_line(tmp_path, capsys):
    lines = (ZH / "peoples-daily-1998.txt").read_text(encoding="utf-8").splitlines()[:20]
    data = b"".join((line.encode("gb18030") if i == 12 else line.encode("utf-8")) + b"\n"
                    for i, line in enumerate(lines))
    (tmp_path / "mixed.txt").write_bytes(data)
    code, out, err = run_main(["prepare", tmp_path / "mixed.txt", "--quiet", "--out", tmp_path / "d"], capsys)
    assert code == 2 and "line 13" in err and "mixes encodings" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------- classify

def test_classify_chinese_reviews_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(["classify", "train", "--train", ZH / "reviews-train.tsv",
                               "--val", ZH / "reviews-test.tsv",
                               "--model", "lstm", "--tokenizer", "char", "--epochs", "4", "--batch-size", "32",
                               "--lr", "1e-2",
                               "--model.n_embd", "32", "--model.n_hidden", "32", "--train.tensorboard", "false",
                               "--quiet", "--out", run], capsys)
    assert code == 0, err
    code, out, err = run_main(["classify", "eval", run, "--data", ZH / "reviews-test.tsv", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["examples"] == 300 and result["accuracy"] > 0.65  # chance: 0.52 (155 of 300 are neg)
    code, out, err = run_main(["classify", "predict", run, "质量很好，非常满意，还会再来买",
                               "垃圾，差评，再也不买了"], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["pos", "neg"]
