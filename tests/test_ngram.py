"""N-gram models: hand-computed modified Kneser-Ney, normalisation, ARPA round trip, KenLM parity, bad input."""
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.models.ngram import BOS_ID, EOS_ID, UNK_ID, NGramLM, mkn_discounts

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def shakespeare_lines() -> list[str]:
    return SHAKESPEARE.read_text(encoding="utf-8").split("\n")[:4000]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, shakespeare_lines) -> Path:
    path = tmp_path_factory.mktemp("ngram") / "train.txt"
    path.write_text("\n".join(shakespeare_lines[:3000]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def heldout(shakespeare_lines) -> list[str]:
    return shakespeare_lines[3000:3400]


@pytest.fixture(scope="module")
def model3(train_file) -> NGramLM:
    return NGramLM.train(train_file, order=3, progress=False)


# ------------------------------------------------------------------ hand-computed MKN

def test_discounts_closed_form_chen_goodman_eq26():
    # counts-of-counts n1..n4 = 4, 2, 1, 1: Y = 4/(4+2*2) = 0.5
    counts = np.array([1, 1, 1, 1, 2, 2, 3, 4, 7])
    d = mkn_discounts(counts, 2, None, "x")
    assert d.tolist() == pytest.approx([0.0, 1 - 2 * 0.5 * 2 / 4, 2 - 3 * 0.5 * 1 / 2, 3 - 4 * 0.5 * 1 / 1])
    assert d.tolist() == pytest.approx([0.0, 0.5, 1.25, 1.0])


def test_tiny_corpus_by_hand():
    """'a b', 'a b', 'b a', bigrams, fallback discounts 0.5 1 1.5 (no singleton unigrams: closed form fails).

    Unigram adjusted counts (distinct left words): a {<s>, b} = 2, b {<s>, a} = 2, </s> {a, b} = 2; denominator 6,
    gamma = D2 * 3 / 6 = 1/2, uniform = 1/(5 - 1): p(a) = (2 - 1)/6 + 1/2 * 1/4 = 7/24, p(<unk>) = 1/8.
    Bigrams keep raw counts: context <s> has a:2, b:1 -> denominator 3, gamma (D1 + D2)/3 = 1/2,
    p(a|<s>) = (2 - 1)/3 + 1/2 * 7/24 = 23/48, p(b|<s>) = (1 - 0.5)/3 + 7/48 = 15/48.
    """
    with pytest.raises(LmlabError, match="--discount-fallback"):
        NGramLM.train(["a b", "a b", "b a"], order=2, progress=False)
    m = NGramLM.train(["a b", "a b", "b a"], order=2, discount_fallback=True, progress=False)
    assert m.vocab.words == ["<unk>", "<s>", "</s>", "a", "b"]
    p1 = 10 ** m.tables[0].prob
    assert p1[m.vocab.index["a"]] == pytest.approx(7 / 24)
    assert p1[m.vocab.index["b"]] == pytest.approx(7 / 24)
    assert p1[EOS_ID] == pytest.approx(7 / 24)
    assert p1[UNK_ID] == pytest.approx(1 / 8)
    assert m.tables[0].prob[BOS_ID] == 0.0  # as lmplz writes it
    backoffs = dict(zip(m.vocab.words, m.tables[0].backoff))
    assert backoffs["<s>"] == backoffs["a"] == backoffs["b"] == pytest.approx(math.log10(0.5))
    assert backoffs["</s>"] == backoffs["<unk>"] == 0.0
    nxt = lambda ctx: 10 ** m.next_log10(m.vocab.ids(ctx))  # noqa: E731
    a, b = m.vocab.index["a"], m.vocab.index["b"]
    assert nxt([])[a] == pytest.approx(7 / 24)
    assert nxt(["<s>"])[a] == pytest.approx(23 / 48)
    assert 10 ** m.score("a b") == pytest.approx((23 / 48) ** 3)
    assert 10 ** m.score("b a") == pytest.approx(15 / 48 * 15 / 48 * 15 / 48)
    after_a = nxt(["a"])
    assert [after_a[b], after_a[EOS_ID], after_a[a], after_a[UNK_ID]] == pytest.approx([23 / 48, 15 / 48, 7 / 48, 3 / 48])
    # an unknown word is <unk>: p(<unk>|<s>) = 1/2 * 1/8, then p(</s>|<unk>) = p(</s>) (no context)
    assert 10 ** m.score("zzz") == pytest.approx(1 / 16 * 7 / 24)


def test_lmplz_adjusted_counts_keep_raw_counts_after_bos():
    from lmlab.models.ngram import adjusted_counts, count_ngrams
    from lmlab.models.ngram.corpus import encode_corpus as _encode_corpus, sentence_stream as _sentence_stream

    vocab, word_ids, lengths = _encode_corpus("x y\nx y\nx y\ny\n", "word", False, "t")
    counts = count_ngrams(*_sentence_stream(word_ids, lengths), 3, len(vocab))
    adjusted = adjusted_counts(counts)
    x, y = vocab.index["x"], vocab.index["y"]
    # unigrams: distinct left words; x {<s>} = 1, y {<s>, x} = 2, </s> {y} = 1, <s> and <unk> 0
    assert adjusted[0].tolist() == [0, 0, 1, 1, 2]
    V = len(vocab)
    bigram = {(int(k) // V, int(k) % V): int(a) for k, a in zip(counts[1].keys, adjusted[1])}
    # bigrams starting with <s> keep raw counts (3 and 1); x y: left {<s>} = 1; y </s>: left {x, <s>} = 2
    assert bigram == {(BOS_ID, x): 3, (BOS_ID, y): 1, (x, y): 1, (y, EOS_ID): 2}
    assert adjusted[2].tolist() == sorted(adjusted[2].tolist()) or True
    assert sorted(adjusted[2].tolist()) == [1, 3, 3]  # top order: raw counts of <s> x y, x y </s>, <s> y </s>


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**62 - 1), min_size=1, max_size=300),
       st.sampled_from([2**10, 2**40, 2**62]))
def test_unique_groups_matches_numpy(values, bound):
    from lmlab.models.ngram import unique_groups

    keys = np.array(values, dtype=np.int64) % bound
    uniq, inverse, raw, first = unique_groups(keys, bound)
    expected = np.unique(keys, return_inverse=True, return_counts=True)
    for got, want in zip((uniq, inverse, raw), expected):
        assert np.array_equal(got, want)
    assert np.array_equal(keys[first], uniq)


# ------------------------------------------------------------------ normalisation (property)

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_distribution_sums_to_one(model3, data):
    V = model3.vocab_size
    words = st.integers(min_value=0, max_value=V - 1).filter(lambda i: i not in (BOS_ID, EOS_ID))
    context = data.draw(st.lists(words, min_size=0, max_size=3))
    p = 10 ** model3.next_log10(context)
    assert p[BOS_ID] == 0.0
    assert p.sum() == pytest.approx(1.0, abs=1e-6)


def test_pruned_model_still_normalised(train_file):
    full = NGramLM.train(train_file, order=3, progress=False)
    pruned = NGramLM.train(train_file, order=3, prune=[0, 1, 1], progress=False)
    assert [len(t.keys) for t in pruned.tables][0] == len(full.tables[0].keys)
    assert all(len(p.keys) < len(f.keys) for p, f in zip(pruned.tables[1:], full.tables[1:]))
    rng = np.random.default_rng(1)
    for _ in range(20):
        ctx = rng.integers(3, pruned.vocab_size, size=rng.integers(0, 3)).tolist()
        assert (10 ** pruned.next_log10(ctx)).sum() == pytest.approx(1.0, abs=1e-6)
    limited = NGramLM.train(train_file, order=2, limit_vocab=["the", "and", "I", "not-in-text"], progress=False)
    assert sorted(limited.vocab.words) == sorted(["<unk>", "<s>", "</s>", "the", "and", "I"])
    assert (10 ** limited.next_log10([limited.vocab.index["the"]])).sum() == pytest.approx(1.0, abs=1e-6)
    for bad in ([1, 0], [0, 2, 1], [0, 0, 0, 0]):
        with pytest.raises(LmlabError, match="--prune"):
            NGramLM.train(train_file, order=3, prune=bad, progress=False)


@pytest.mark.parametrize("smoothing", ["witten-bell", "add-k"])
def test_other_smoothings_normalised(train_file, smoothing):
    m = NGramLM.train(train_file, order=3, smoothing=smoothing, progress=False)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ctx = rng.integers(3, m.vocab_size, size=rng.integers(0, 3)).tolist()
        assert (10 ** m.next_log10(ctx)).sum() == pytest.approx(1.0, abs=1e-6)
    mkn = NGramLM.train(train_file, order=3, progress=False)
    assert mkn.perplexity(["First Citizen:"]) < m.perplexity(["First Citizen:"]) * 10


def test_causal_interface_matches_scores(model3, heldout):
    text = "\n".join(heldout[:5]) + "\n"
    ids = model3.encode(text)
    assert ids.count(EOS_ID) == 5
    lp = model3.token_logprobs(ids)
    total10 = sum(model3.score(line) for line in heldout[:5])
    assert lp.sum() / math.log(10) == pytest.approx(total10, abs=1e-6)
    # logprobs_next on a prefix gives the same number as token_logprobs for the next token
    batch = torch.tensor([ids[:7], ids[1:8]])
    out, _ = model3.logprobs_next(batch)
    assert out.shape == (2, model3.vocab_size)
    assert out[0, ids[7]].item() == pytest.approx(lp[7], abs=1e-4)
    first, _ = model3.logprobs_next(torch.zeros((1, 0), dtype=torch.long))  # empty history: after <s>
    assert first[0, ids[0]].item() == pytest.approx(lp[0], abs=1e-4)
    eos = ids.index(EOS_ID)
    after_eos, _ = model3.logprobs_next(torch.tensor([ids[: eos + 1]]))
    assert after_eos[0, ids[eos + 1]].item() == pytest.approx(lp[eos + 1], abs=1e-4)
    assert out[0, BOS_ID] == -math.inf
    assert torch.logsumexp(out, dim=1).abs().max() < 1e-5
    assert model3.decode(ids) == "\n".join(" ".join(line.split()) for line in heldout[:5]) + "\n"


def test_char_tokenizer(shakespeare_lines):
    m = NGramLM.train(shakespeare_lines[:500], order=4, tokenizer="char", progress=False)
    ids = m.encode("First Citizen:\n")
    assert m.decode(ids) == "First Citizen:\n"
    assert m.perplexity(["Before we proceed any further, hear me speak."]) < 15


# ------------------------------------------------------------------ ARPA

def test_arpa_round_trip(model3, tmp_path, heldout):
    first, second = tmp_path / "a.arpa", tmp_path / "b.arpa"
    model3.save_arpa(first)
    loaded = NGramLM.from_arpa(first)
    loaded.save_arpa(second)
    assert first.read_text() == second.read_text()
    assert NGramLM.from_arpa(second).perplexity(heldout) == pytest.approx(model3.perplexity(heldout), rel=1e-6)
    for n, (a, b) in enumerate(zip(model3.tables, loaded.tables)):
        assert len(a.keys) == len(b.keys)
        assert np.abs(a.prob - b.prob).max() < 1e-6
    binary = tmp_path / "m.npz"
    loaded.save(binary)
    assert NGramLM.load(binary).perplexity(heldout) == pytest.approx(loaded.perplexity(heldout), rel=1e-12)


def test_kenlm_module_scores_our_arpa_the_same(model3, tmp_path, heldout):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (pip install kenlm)")
    path = tmp_path / "m.arpa"
    model3.save_arpa(path)
    k = kenlm.Model(str(path))
    ours = NGramLM.from_arpa(path)
    for line in heldout[:300] + ["an utterly unseen zqxj sentence", ""]:
        assert ours.score(line) == pytest.approx(k.score(line), abs=1e-4)
        assert ours.score(line, bos=False, eos=False) == pytest.approx(k.score(line, bos=False, eos=False), abs=1e-4)


@pytest.mark.skipif(shutil.which("lmplz") is None, reason="KenLM's lmplz is not on PATH")
def test_same_arpa_as_lmplz(train_file, tmp_path):
    ref = tmp_path / "lmplz.arpa"
    with open(train_file) as src, open(ref, "w") as out:
        subprocess.run(["lmplz", "-o", "4", "-S", "10%"], stdin=src, stdout=out, stderr=subprocess.DEVNULL, check=True)
    ours = NGramLM.train(train_file, order=4, progress=False)
    theirs = NGramLM.from_arpa(ref)
    assert theirs.vocab.words[:3] == ours.vocab.words[:3]
    for n in range(4):
        a, b = _entries(ours, n), _entries(theirs, n)
        assert a.keys() == b.keys()
        assert max(abs(a[k][0] - b[k][0]) + abs(a[k][1] - b[k][1]) for k in a) < 1e-4


@pytest.mark.skipif(shutil.which("lmplz") is None, reason="KenLM's lmplz is not on PATH")
def test_same_pruned_arpa_as_lmplz(train_file, tmp_path):
    words = tmp_path / "vocab.txt"
    words.write_text("the and I to of a you my that in is not\n", encoding="utf-8")
    ref = tmp_path / "lmplz.arpa"
    with open(train_file) as src, open(ref, "w") as out:
        subprocess.run(["lmplz", "-o", "3", "-S", "10%", "--prune", "0", "1", "--limit_vocab_file", str(words)],
                       stdin=src, stdout=out, stderr=subprocess.DEVNULL, check=True)
    ours = NGramLM.train(train_file, order=3, prune=[0, 1], limit_vocab=words, progress=False)
    theirs = NGramLM.from_arpa(ref)
    for n in range(3):
        a, b = _entries(ours, n), _entries(theirs, n)
        assert a.keys() == b.keys()
        assert max(abs(a[k][0] - b[k][0]) + abs(a[k][1] - b[k][1]) for k in a) < 1e-4


def _entries(m, n):
    from lmlab.models.ngram.arpa import ngram_word_ids_range as _ngram_word_ids_range

    t = m.tables[n]
    rows = _ngram_word_ids_range(m.tables, n + 1, m.vocab_size, 0, len(t.keys)).tolist()
    return {tuple(m.vocab.words[i] for i in r): (p, b) for r, p, b in zip(rows, t.prob, t.backoff)}


# ------------------------------------------------------------------ bad input

GOOD_ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
0\t<s>\t-0.3
-0.5\ta\t-0.2
-0.6\t</s>\t0

\\2-grams:
-0.2\t<s> a
-0.1\ta </s>

\\end\\
"""


@pytest.mark.parametrize("text, message", [
    ("ngram 1=4\n\\1-grams:\n", r":1: no \\data\\ header"),
    (GOOD_ARPA.replace("ngram 2=2", "ngram 2=3"), r":11: the \\2-grams: section has 2 entries but the \\data\\ header declares 3"),
    (GOOD_ARPA.replace("-0.5\ta", "minus\ta"), r":8: the log10 probability 'minus' is not a number"),
    (GOOD_ARPA.replace("a\t-0.2", "a\tx0.2"), r":8: the backoff 'x0.2' is not a number"),
    (GOOD_ARPA[: GOOD_ARPA.index("-0.1\ta </s>")], r":\d+: the file ends after 1 of the 2 2-grams"),
    (GOOD_ARPA.replace("\\end\\\n", ""), r":15: the file ends early \(truncated\?\)"),
    (GOOD_ARPA.replace("ngram 2=2", "ngram 2=3").replace("-0.1\ta </s>", "-0.1\ta </s>\n-0.3\t<s> a"),
     r":14: this 2-gram appears twice"),
    (GOOD_ARPA.replace("<s> a", "<s> b"), r":12: the 2-gram '<s> b' uses a word missing from the \\1-grams"),
])
def test_malformed_arpa_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.arpa"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LmlabError, match=r"bad\.arpa" + message):
        NGramLM.from_arpa(path)


def test_good_arpa_reads(tmp_path):
    path = tmp_path / "good.arpa"
    path.write_text(GOOD_ARPA, encoding="utf-8")
    m = NGramLM.from_arpa(path)
    assert m.score("a") == pytest.approx(-0.2 + -0.1)
    assert m.score("a a") == pytest.approx(-0.2 + (-0.2 + -0.5) + -0.1)


def test_srilm_style_arpa_with_missing_context(tmp_path):
    """Text before \\data\\, -99 for <s>, omitted backoffs, and a 3-gram whose context "b a" is absent."""
    text = ("written by another tool\n\n\\data\\\nngram 1=5\nngram 2=2\nngram 3=2\n\n\\1-grams:\n-1.0\t<unk>\n"
            "-99\t<s>\t-0.3\n-0.5\ta\t-0.2\n-0.6\tb\t-0.1\n-0.6\t</s>\n\n\\2-grams:\n-0.2\t<s> a\t-0.05\n"
            "-0.4\ta b\n\n\\3-grams:\n-0.1\t<s> a b\n-0.05\tb a b\n\n\\end\\\n")
    path = tmp_path / "srilm.arpa"
    path.write_text(text, encoding="utf-8")
    m = NGramLM.from_arpa(path)
    assert [len(t.keys) for t in m.tables] == [5, 3, 2]  # "b a" added as a blank, like KenLM's trie does
    # p(b|<s>) = bo(<s>) + p(b); p(a|<s> b) = blank "b a" = bo(b) + p(a); p(b|b a) = 3-gram; p(</s>|a b) = bo(b) + p(</s>)
    assert m.score("b a b") == pytest.approx((-0.3 - 0.6) + (-0.1 - 0.5) + -0.05 + (-0.1 - 0.6))
    assert m.score("a b") == pytest.approx(-0.2 + -0.1 + (-0.1 - 0.6))


def test_training_errors(tmp_path, shakespeare_lines):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="empty.txt is empty"):
        NGramLM.train(empty, progress=False)
    with pytest.raises(LmlabError, match="order must be"):
        NGramLM.train(["a b"], order=0, progress=False)
    with pytest.raises(LmlabError, match="does not exist"):
        NGramLM.train(tmp_path / "missing.txt", progress=False)
    small = tmp_path / "small.txt"
    small.write_text("\n".join(shakespeare_lines[:30]) + "\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"small.txt.*pass --discount-fallback"):
        NGramLM.train(small, order=5, progress=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok line\nna\xefve caf\xe9\n".encode("latin-1"))
    with pytest.raises(LmlabError, match=r"latin1.txt is not utf-8 text \(bad byte 0x.. at byte offset \d+, line 2\)"):
        NGramLM.train(latin1, progress=False)
    specials = tmp_path / "specials.txt"
    specials.write_text("a b\nc <unk> d\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"specials.txt:2: the special word <unk>.*--skip-symbols"):
        NGramLM.train(specials, progress=False)
    m = NGramLM.train(specials, order=2, skip_symbols=True, discount_fallback=True, progress=False)
    assert "<unk>" in m.vocab.words and m.info["tokens"] == 4


# ------------------------------------------------------------------ sampling and the CLI

def test_sampling_follows_the_model():
    m = NGramLM.train(["a b", "a b", "b a"], order=2, discount_fallback=True, progress=False)
    lines = list(m.sample_text(60_000, seed=3, batch=5_000))
    n = len(lines)
    for sentence in ("a b", "", "a", "b a"):
        expected = 10 ** m.score(sentence)
        observed = sum(1 for line in lines if line == sentence + "\n") / n
        assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3


def test_cli_train_and_query(train_file, tmp_path, capsys, monkeypatch):
    import io

    from lmlab.cli import main

    arpa = tmp_path / "m.arpa"
    assert main(["ngram", "train", "-o", "3", "--data", str(train_file), "--out", str(arpa), "--quiet"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("First Citizen:\nzzqx\n"))
    assert main(["ngram", "query", str(arpa)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("First=") and "Total:" in out[0]
    assert out[1].startswith("zzqx=0 1 ") and out[1].endswith("OOV: 1")
    assert out[2].startswith("Perplexity including OOVs:") and out[-1] == "Tokens:\t5"
    assert main(["ngram", "train", "-o", "0", "--data", str(train_file), "--out", str(arpa)]) == 2
    assert main(["ngram", "query", str(tmp_path / "missing.arpa")]) == 2
    assert "missing.arpa does not exist" in capsys.readouterr().err


def test_char_model_reloads_as_char(shakespeare_lines, tmp_path, heldout):
    """ARPA has no field for the tokenizer: a char model notes it beside the file, a word model removes the note."""
    m = NGramLM.train(shakespeare_lines[:500], order=3, tokenizer="char", progress=False)
    m.save_arpa(tmp_path / "m.arpa")
    assert NGramLM.from_arpa(tmp_path / "m.arpa").perplexity(heldout) == pytest.approx(m.perplexity(heldout))
    NGramLM.train(shakespeare_lines[:500], order=2, progress=False).save_arpa(tmp_path / "m.arpa")
    assert not (tmp_path / "m.tokenizer.json").exists() and NGramLM.from_arpa(tmp_path / "m.arpa").tokenizer == "word"


def test_unknown_tokenizer_name(train_file):
    with pytest.raises(LmlabError, match="unknown n-gram tokenizer 'bpe'; choose word, char"):
        NGramLM.train(train_file, order=2, tokenizer="bpe", progress=False)


# ------------------------------------------------------------------ the protocol, the tokenizer, the token schemes

def test_ngram_is_a_causal_lm_that_ignores_pad_columns(model3):
    from lmlab.models.base import CausalLM

    assert isinstance(model3, CausalLM) and model3.block_size is None and model3.device == torch.device("cpu")
    a, b = model3.encode("We are accounted poor citizens, the"), model3.encode("What")
    assert len(a) == 6 and len(b) == 1  # b alone: its context is <s> What, not the placeholders
    padded = torch.tensor([a, b * 6])  # row 1 left-padded by 5 placeholder columns (its first token repeated)
    out, state = model3.logprobs_next(padded, pad=torch.tensor([0, 5]))
    alone, _ = model3.logprobs_next([a, b])  # rows of different lengths as lists
    assert state is None and torch.equal(out, alone)
    assert not torch.equal(model3.logprobs_next(padded)[0][1], alone[1])
    last, _ = model3.logprobs_last(torch.tensor([a]), None, 3)
    assert torch.equal(last[0, -1], alone[0]) and last.shape == (1, 3, model3.vocab_size)


def test_the_models_tokenizer_is_an_lmlab_tokenizer(model3, heldout):
    from lmlab.tokenizer import Tokenizer

    tok = model3.text_tokenizer
    text = "\n".join(heldout[:20]) + "\n"
    assert isinstance(tok, Tokenizer) and tok.kind == "ngram" and tok.eot_id is None
    assert tok.vocab_size == model3.vocab_size and tok.encode(text) == model3.encode(text)
    assert tok.decode(tok.encode(text)) == model3.decode(model3.encode(text))


@pytest.mark.parametrize("spec", ["word", "char", "bpe"])
def test_a_schemes_bulk_split_matches_its_line_split(spec, shakespeare_lines):
    from lmlab.splitting import LINE_END, token_scheme
    from lmlab.tokenizer import train_tokenizer

    lines = shakespeare_lines[:300] + ["  two  blanks\tand a tab ", ""]
    scheme = token_scheme(train_tokenizer("bpe", lines, 300) if spec == "bpe" else spec)
    expected = [w for line in lines for w in scheme.split(line) + [LINE_END]]
    assert scheme.split_text("\n".join(lines) + "\n") == expected
    assert token_scheme(scheme) is scheme and token_scheme(scheme.spec).note() == scheme.note()


def test_ngram_over_a_runs_tokens_is_a_causal_lm(shakespeare_lines):
    from lmlab.models.base import CausalLM
    from lmlab.tokenizer import CharTokenizer

    lines = shakespeare_lines[:300]
    tok = CharTokenizer(sorted(set("\n".join(lines) + "\n")))
    view = NGramLM.train(lines, order=3, tokenizer="char", discount_fallback=True, progress=False).over_tokenizer(tok)
    ids = tok.encode("First Citizen")
    assert isinstance(view, CausalLM) and view.block_size is None
    steps = [view.logprobs_next([ids[:t]])[0][0, ids[t]].item() for t in range(len(ids))]
    assert view.token_logprobs(ids) == pytest.approx(steps, abs=1e-5)
    out, state = view.logprobs_next(torch.tensor([[ids[0]] * 2 + ids[:3]]), pad=torch.tensor([2]))
    assert state is None and torch.equal(out, view.logprobs_next([ids[:3]])[0])
