"""The .lmbin binary n-gram format and its compiled queries (models/ngram/binary.py, query_kernels.cpp), and the
streaming ARPA reader: a 5-gram of WikiText-2 valid scored on WikiText-2 test through ARPA, .lmbin, the NumPy
fallback and the kenlm module; damaged files; `lmlab ngram build-binary` end to end."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.models.ngram import NGramLM, arpa, binary, load_ngram

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"
pytestmark = pytest.mark.skipif(not (DATA / "valid.txt").is_file(), reason="../shared/data/wikitext-2 is missing")
needs_kernel = pytest.mark.skipif(binary.kernel() is None, reason="no C++ compiler (or LMLAB_KERNELS=0)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 5-gram of WikiText-2 valid as ARPA and .lmbin, and 1,500 lines of test (OOVs included)."""
    d = tmp_path_factory.mktemp("lmbin")
    lm = NGramLM.train(DATA / "valid.txt", order=5, skip_symbols=True, progress=False)
    lm.save_arpa(d / "wt5.arpa")
    binary.write(NGramLM.from_arpa(d / "wt5.arpa"), d / "wt5.lmbin")
    lines = (DATA / "test.txt").read_text(encoding="utf-8").split("\n")[:1500]
    return d, lines


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-gram of the first 4,000 lines of WikiText-2 valid, as ARPA (for the slower paths)."""
    path = tmp_path_factory.mktemp("small") / "wt3.arpa"
    lines = (DATA / "valid.txt").read_text(encoding="utf-8").split("\n")[:4000]
    NGramLM.train(lines, order=3, skip_symbols=True, progress=False).save_arpa(path)
    return path


def _same_result(a: dict, b: dict):
    for key in ("stream", "dist", "log10", "length"):
        assert np.array_equal(a[key], b[key]), key
    assert (a["tokens"], a["oov"], a["sentences"]) == (b["tokens"], b["oov"], b["sentences"])
    assert a["total"] == pytest.approx(b["total"], abs=1e-9)


def test_round_trip_same_tables_and_scores(files):
    d, lines = files
    from_arpa, from_bin = NGramLM.from_arpa(d / "wt5.arpa"), load_ngram(d / "wt5.lmbin")
    assert from_bin.vocab.words == from_arpa.vocab.words and from_bin.scheme.note() == from_arpa.scheme.note()
    assert from_bin.query_index.model.suffix_closed == 1  # lmplz-style: lookups stop at the first miss
    # The kernel probes the file's hash tables (slots), not a binary search in the keys: every order above 1.
    orders = from_bin.query_index.orders
    assert [bool(o.slots) for o in orders] == [False] + [True] * 4
    for n, o in enumerate(orders[1:], start=2):
        slots = from_bin.query_index.arrays[f"slots{n}"]
        assert o.slots == slots.ctypes.data and o.n_slots == len(slots) // (2 if n == 5 else 4) > o.count
    for a, b in zip(from_arpa.tables, from_bin.tables):
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("keys", "prob", "backoff"))
    with binary.disabled():  # the NumPy path on both
        expected = from_arpa.query_lines(lines)
        _same_result(expected, from_bin.query_lines(lines))
    got = from_bin.query_lines(lines)  # the kernel (when there is one)
    _same_result(expected, got)
    predicted = got["dist"] >= 1
    assert set(np.unique(got["length"][predicted])) == {1, 2, 3, 4, 5}  # every order is used
    assert got["oov"] > 100
    assert from_bin.score_text("\n".join(lines) + "\n")["total"] == pytest.approx(expected["total"], abs=1e-6)


@needs_kernel
@pytest.mark.parametrize("bos, eos", [(True, True), (False, True), (True, False), (False, False)])
def test_kernel_equals_numpy_on_ids(files, bos, eos):
    d, lines = files
    lm = load_ngram(d / "wt5.lmbin")
    sorted_index = binary.QueryIndex(lm, lookup="sorted")  # binary search instead of the hashes
    ids = np.array(lm.encode("\n".join(lines[:400])), dtype=np.int64)
    with binary.disabled():
        expected = lm.token_logprobs(ids)
    assert np.array_equal(expected, lm.token_logprobs(ids))
    for sentence in lines[1:40]:
        words = np.array(lm.vocab.ids(lm.scheme.split(sentence)), dtype=np.int64)
        with binary.disabled():
            want = lm.full_scores(words, bos, eos)
        got = lm.full_scores(words, bos, eos)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
        start = [1] if bos else [-1]
        tokens = np.array(start + words.tolist() + ([2] if eos else []), dtype=np.int64)
        logp, length = sorted_index.log10_stream(tokens, np.arange(len(tokens)))
        assert np.array_equal(logp[1:], want[0]) and np.array_equal(length[1:], want[1])


def test_scores_equal_kenlm_module(files):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module (requirements-dev.txt) compares the scores")
    d, lines = files
    ken, lm = kenlm.Model(str(d / "wt5.arpa")), load_ngram(d / "wt5.lmbin")
    r = lm.query_lines(lines)
    starts = np.flatnonzero(r["dist"] == 0)
    ends = np.append(starts[1:], len(r["stream"]))
    total = 0.0
    for line, lo, hi in zip(lines, starts, ends):
        theirs = list(ken.full_scores(line))
        assert [n for _, n, _ in theirs] == r["length"][lo + 1:hi].tolist()
        np.testing.assert_allclose([p for p, _, _ in theirs], r["log10"][lo + 1:hi], atol=2e-5)  # kenlm: float32
        assert [oov for _, _, oov in theirs] == (r["stream"][lo + 1:hi] == 0).tolist()
        total += ken.score(line)
    assert r["total"] == pytest.approx(total, rel=1e-7)  # kenlm sums each line in float32


def test_char_scheme_round_trip(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = text.split("\n")[:800]
    lines[3] += "\u00a0caf\u00e9\u3000\t end"  # Unicode blanks are characters, a tab a visible symbol
    lm = NGramLM.train(lines, order=4, tokenizer="char", progress=False)
    lm.save_arpa(tmp_path / "c.arpa")
    lm = load_ngram(tmp_path / "c.arpa")  # (the ARPA file's 6 decimals)
    assert lm.scheme.name == "char"
    binary.write(lm, tmp_path / "c.lmbin")
    back = load_ngram(tmp_path / "c.lmbin")
    assert back.scheme.name == "char" and back.vocab.words == lm.vocab.words
    heldout = text.split("\n")[800:1000]
    with binary.disabled():
        expected = lm.query_lines(heldout)
    _same_result(expected, back.query_lines(heldout))
    assert back.score(lines[3]) == pytest.approx(lm.score(lines[3]), abs=1e-9)
    assert back.decode(back.encode("ab c\n")) == "ab c\n"


def test_recognised_by_magic_not_suffix(files, tmp_path):
    from lmlab.checkpoint import is_ngram_file

    d, lines = files
    odd = tmp_path / "model.bin"
    odd.write_bytes((d / "wt5.lmbin").read_bytes())
    assert is_ngram_file(odd) and binary.is_lmbin(odd) and not binary.is_lmbin(d / "wt5.arpa")
    lm = load_ngram(odd, verify=True)
    assert lm.query_index is not None and lm.order == 5
    with binary.disabled():
        expected = load_ngram(d / "wt5.lmbin").perplexity(lines)
    assert lm.perplexity(lines) == pytest.approx(expected, rel=1e-12)


def _damaged(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(edit(data)))
    return dst


def _set(data: bytearray, offset: int, value: bytes) -> bytearray:
    data[offset:offset + len(value)] = value
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda b: b[:0], r"is not a usable \.lmbin n-gram model: the file is empty"),
    (lambda b: b"\\data\\\nngram 1=3\n", r"does not start with the \.lmbin magic bytes"),
    (lambda b: b[:40], r"the file is truncated"),
    (lambda b: b[:-1000], r"the file is [\d,]+ bytes but its header says [\d,]+ \(truncated\)"),
    (lambda b: b + b"\0" * 64, r"\(extra bytes at the end\)"),
    (lambda b: _set(b, 8, struct.pack("<I", 99)), r"is an \.lmbin file of format version 99, but this lmlab reads "
                                                  r"version 1; rebuild it"),
    (lambda b: _set(b, 24, struct.pack("<Q", 5)), r"the header's checksum does not match"),
    (lambda b: _set(b, 16, struct.pack("<I", 0)), r"the header is damaged"),
])
def test_bad_files_one_sentence(files, tmp_path, edit, message):
    d, _ = files
    bad = _damaged(d / "wt5.lmbin", tmp_path / "bad.lmbin", edit)
    with pytest.raises(LmlabError, match=message) as e:
        load_ngram(bad)
    text = str(e.value)
    assert text.startswith(f"{bad} ") and "\n" not in text and text.endswith(".") and text.count(". ") == 0


def test_bad_checksum_found_by_verify(files, tmp_path):
    d, _ = files
    size = (d / "wt5.lmbin").stat().st_size
    bad = _damaged(d / "wt5.lmbin", tmp_path / "flip.lmbin", lambda b: _set(b, size - 8, bytes([b[size - 8] ^ 1])))
    load_ngram(bad)  # loading checks the header only: milliseconds
    rng = np.random.default_rng(0)  # garbage in every array: wrong numbers, but the kernel stays in bounds
    noisy = _damaged(d / "wt5.lmbin", tmp_path / "noisy.lmbin", lambda b: b[:4096] + bytearray(
        rng.integers(0, 256, len(b) - 4096, dtype=np.uint8).tobytes()))
    load_ngram(noisy).score_text(b"the cat sat on the mat\n" * 50)
    with pytest.raises(LmlabError, match=r"flip\.lmbin is not a usable \.lmbin n-gram model: the checksum of its "
                                         r"arrays does not match"):
        load_ngram(bad, verify=True)
    with pytest.raises(LmlabError, match=r"missing\.lmbin does not exist"):
        load_ngram(tmp_path / "missing.lmbin")


def test_streaming_arpa_reader_chunks(small, monkeypatch, tmp_path):
    """Chunks of 1, 7 and 500 lines give the same model as the default chunks, and the same error lines."""
    whole = NGramLM.from_arpa(small)
    good = ("\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n0\t<s>\t-0.3\n-0.5\ta\t-0.2\n"
            "-0.6\t</s>\t0\n\n\\2-grams:\n-0.2\t<s> a\n-0.1\ta </s>\n\n\\end\\\n")
    bad = tmp_path / "bad.arpa"
    bad.write_text(good.replace("<s> a", "<s> b"), encoding="utf-8")
    short = tmp_path / "short.arpa"
    short.write_text(good.replace("ngram 2=2", "ngram 2=3"), encoding="utf-8")
    for chunk in (1, 7, 500):
        monkeypatch.setattr(arpa, "_CHUNK", chunk)
        if chunk == 500:
            chunked = NGramLM.from_arpa(small)
            for a, b in zip(whole.tables, chunked.tables):
                assert np.array_equal(a.keys, b.keys) and np.array_equal(a.prob, b.prob)
        with pytest.raises(LmlabError, match=r"bad\.arpa:12: the 2-gram '<s> b' uses a word missing"):
            NGramLM.from_arpa(bad)
        with pytest.raises(LmlabError, match=r"short\.arpa:11: the \\2-grams: section has 2 entries but the "
                                             r"\\data\\ header declares 3"):
            NGramLM.from_arpa(short)


def test_cli_build_binary_and_query(files, small, tmp_path):
    _, lines = files
    text = tmp_path / "test.txt"
    text.write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    out = tmp_path / "cli.lmbin"
    cmd = [sys.executable, "-m", "lmlab"]
    done = subprocess.run(cmd + ["ngram", "build-binary", str(small), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "wrote" in done.stderr and binary.is_lmbin(out)
    # the query verb does not import torch; same output from the ARPA file and the binary
    probe = ("import sys, runpy; sys.argv = ['lmlab', 'ngram', 'query', '--verify', sys.argv[1], '--data', sys.argv[2]]"
             "\ntry:\n    runpy.run_module('lmlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch imported'")
    from_bin = subprocess.run([sys.executable, "-c", probe, str(out), str(text)], capture_output=True, text=True,
                              timeout=120)
    assert from_bin.returncode == 0, from_bin.stderr
    from_arpa = subprocess.run(cmd + ["ngram", "query", str(small), "--data", str(text)],
                               capture_output=True, text=True, timeout=120)
    assert from_bin.stdout == from_arpa.stdout and from_bin.stdout.count("\n") == 300 + 4
    (tmp_path / "junk.lmbin").write_bytes(b"LMLABNGM" + b"\1" * 10)
    failed = subprocess.run(cmd + ["ngram", "query", str(tmp_path / "junk.lmbin")], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "junk.lmbin" in failed.stderr


def test_model_without_every_suffix(tmp_path):
    """A 3-gram "<s> a b" whose suffix "a b" is absent (legal ARPA): the kernel must still look past the missed
    bigram (it stops at the first miss only in suffix-closed models, as lmplz writes them)."""
    text = ("\\data\\\nngram 1=5\nngram 2=1\nngram 3=1\n\n\\1-grams:\n-1.0\t<unk>\n-99\t<s>\t-0.3\n-0.5\ta\t-0.2\n"
            "-0.6\tb\t-0.1\n-0.6\t</s>\n\n\\2-grams:\n-0.2\t<s> a\t-0.05\n\n\\3-grams:\n-0.1\t<s> a b\n\n\\end\\\n")
    (tmp_path / "m.arpa").write_text(text, encoding="utf-8")
    lm = load_ngram(tmp_path / "m.arpa")
    binary.write(lm, tmp_path / "m.lmbin")
    assert not binary.suffix_closed(lm.tables)
    expected = -0.2 + -0.1 + (-0.1 - 0.6)  # p(a|<s>), the 3-gram p(b|<s> a), bo(b) + p(</s>)
    for model in (lm, load_ngram(tmp_path / "m.lmbin")):
        assert model.score("a b") == pytest.approx(expected, abs=1e-12)
        assert model.query_lines(["a b"])["total"] == pytest.approx(expected, abs=1e-12)


def test_no_kernel_without_compiler_or_with_lmlab_kernels_0(monkeypatch):
    from lmlab import native

    monkeypatch.setenv("LMLAB_KERNELS", "0")
    assert native.compiler() is None and native.load_library(binary._SOURCE) is None
    monkeypatch.setenv("LMLAB_KERNELS", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert native.load_library(binary._SOURCE) is None
