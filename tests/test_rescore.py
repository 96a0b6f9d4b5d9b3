"""`lmlab rescore`: n-best lists re-ranked with an n-gram, a neural run and their mixtures; lambda / beta tuned on a
dev list (BLEU, WER); `seq2seq translate --n-best` writes a list that parses back; bad input is one sentence.

Real data: the English side of data/multi30k-mini (500 captions). The n-best lists are made from its sentences:
each id has the true sentence, a scrambled copy and a cut one, with given scores that prefer the wrong ones.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

import lmlab
from lmlab.metrics import score_text
from lmlab.models.ngram import NGramLM
from lmlab.rescore import CorpusMetric, official_score, parse_nbest, rescore
from lmlab.tasks.pairs import read_lines

from conftest import ROOT, run_main
from test_cli import assert_user_error

MINI = ROOT / "data" / "multi30k-mini"


def scrambled(sentence: str, rng) -> str:
    words = sentence.split()
    order = rng.permutation(len(words))
    if (order == np.arange(len(words))).all():
        order = order[::-1]
    return " ".join(words[i] for i in order)


def write_nbest(path, sentences, seed=0, scores=(-2.0, -1.0, -1.5)) -> None:
    """Per sentence: the sentence itself, a scrambled copy, the first half; the given scores rank them 3rd, 1st, 2nd
    (the scrambled copy first in the file: the 'system' ranked it best)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, s in enumerate(sentences):
        hyps = [(scrambled(s, rng), scores[1]), (s, scores[0]), (" ".join(s.split()[:len(s.split()) // 2]), scores[2])]
        lines += [f"s{i}\t{h}\t{v}\n" for h, v in hyps]
    path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """A word 3-gram and a char 5-gram of the mini English captions (lines 100-499), a tiny char LSTM run on them;
    dev and test lists from 20 + 20 of the first 100 lines."""
    base = tmp_path_factory.mktemp("rescore")
    lines = read_lines(MINI / "train.en")
    train = base / "train.en"
    train.write_text("\n".join(lines[100:]) + "\n", encoding="utf-8")
    known = set("".join(lines[100:]))
    held_out = [line for line in lines[:100] if set(line) <= known][:40]  # every character known to the char LMs
    word, char = base / "en3.arpa", base / "char5.npz"
    NGramLM.train(train, order=3, progress=False).save_arpa(word)
    NGramLM.train(train, order=5, tokenizer="char", progress=False).save(char)
    data = base / "char-data"
    lmlab.prepare(train, data, tokenizer="char", val_fraction=0.1, progress=False)
    cfg = {"model": {"family": "rnn", "cell": "lstm", "n_layer": 1, "n_embd": 32, "n_hidden": 64, "block_size": 32,
                     "dropout": 0.0},
           "data": {"dir": str(data)},
           "train": {"max_iters": 80, "batch_size": 16, "learning_rate": 1e-2, "min_lr": 1e-3, "warmup_iters": 5,
                     "eval_interval": 40, "eval_iters": 2, "log_interval": 20, "seed": 3, "tensorboard": False}}
    (base / "lstm.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    lmlab.train(lmlab.load_config(base / "lstm.yaml"), base / "lstm", progress=False)
    dev, test = held_out[:20], held_out[20:]
    for name, sentences, seed in (("dev", dev, 1), ("test", test, 2)):
        write_nbest(base / f"{name}.tsv", sentences, seed)
        (base / f"{name}.ref").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return {"word": word, "char": char, "lstm": base / "lstm", "base": base, "dev": dev, "test": test}


def test_the_lm_flips_the_choice(lms, tmp_path, capsys):
    nbest = tmp_path / "nb.tsv"
    nbest.write_text("1\tman A a in hat orange .\t-1.0\n1\tA man in an orange hat .\t-1.3\n"
                     "2\ttwo Dogs the grass in play .\t-0.5\n2\tTwo dogs play in the grass .\t-0.9\n", encoding="utf-8")
    code, out, err = run_main(["rescore", nbest, "--lm", lms["word"], "--lm-weight", "0.5"], capsys)
    assert code == 0, err
    assert out == "A man in an orange hat .\nTwo dogs play in the grass .\n"
    assert "lambda 0.5" in err
    code, out, _ = run_main(["rescore", nbest, "--lm", lms["word"], "--lm-weight", "0"], capsys)
    assert out.splitlines() == ["man A a in hat orange .", "two Dogs the grass in play ."]  # lambda 0: the scores


def test_ngram_column_is_kenlm_score_times_ln10(lms):
    from lmlab.rescore import load_lms, token_logprobs

    entry = load_lms([lms["word"]])[0]
    model = NGramLM.from_arpa(lms["word"])
    texts = lms["test"][:5] + ["", "zzz qqq"]
    for text, lp in zip(texts, token_logprobs(entry, texts)):
        assert lp.sum() == pytest.approx(model.score(text) * math.log(10), abs=1e-9)
        assert len(lp) == len(text.split()) + 1


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_neural_column_is_compares_score(lms, tiny_run, family):
    """The batched scores (rows of different lengths, stepped through logprobs_next) equal compare's scoring of each
    hypothesis alone; for the GPT also a batch of one and a row past its block_size (through compare itself)."""
    from lmlab.compare import score
    from lmlab.rescore import load_lms, neural_logprobs

    run = lms["lstm"] if family == "lstm" else tiny_run["run"]
    entry = load_lms([run])[0]
    texts = lms["test"][:6] + ["A man.", "A dog runs.", "Two men sit on a bench.", "Two dogs play by the red house. " * 3]
    for batch in (64, 1):
        for text, lp in zip(texts, neural_logprobs(entry, texts, batch_size=batch)):
            assert len(lp) == len(text) + 1  # every character and the end of line, none of the leading newline
            alone = score(entry, "\n" + text + "\n")[0]
            np.testing.assert_allclose(lp, alone[-len(lp):], atol=1e-5)
            assert lp.sum() == pytest.approx(-score_text(entry.model, entry.tokenizer, "\n" + text + "\n")[1].nll,
                                             abs=1e-4)


def test_tuning_improves_dev_bleu_and_is_reported(lms, tmp_path, capsys):
    b = lms["base"]
    out_file = tmp_path / "best.en"
    code, out, err = run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--dev", b / "dev.tsv", "--refs",
                               b / "dev.ref", "--test-refs", b / "test.ref", "--out", out_file], capsys)
    assert code == 0, err
    r = rescore(b / "test.tsv", [lms["word"]], dev=b / "dev.tsv", refs=b / "dev.ref", test_refs=b / "test.ref")
    assert r["params"].lm_weights[0] > 0
    assert r["dev"]["after"] > r["dev"]["before"] + 10 and r["test"]["after"] > r["test"]["before"] + 10
    assert f"lambda {r['params'].lm_weights[0]:g}" in out and "BLEU on" in out and "rescored" in out
    assert out_file.read_text(encoding="utf-8") == "".join(line + "\n" for line in r["best"])
    assert len(r["best"]) == len(lms["test"])


def test_wer_tuning_and_the_metric_from_statistics(lms):
    b = lms["base"]
    r = rescore(b / "test.tsv", [lms["word"]], dev=b / "dev.tsv", refs=b / "dev.ref", test_refs=b / "test.ref",
                metric="wer")
    assert r["dev"]["after"] < r["dev"]["before"] and r["test"]["after"] < r["test"]["before"]
    nbest = parse_nbest(b / "dev.tsv")
    refs = read_lines(b / "dev.ref")
    chosen = np.array([3 * i + i % 3 for i in range(len(refs))])  # scrambled, true and cut sentences in turn
    for name in ("wer", "cer", "bleu", "chrf"):
        metric = CorpusMetric(name, nbest.texts, [refs[g] for g in nbest.groups])
        official = official_score(name, [nbest.texts[i] for i in chosen], refs)
        assert metric.value(chosen) == pytest.approx(official, abs=1e-9) and 0 < official < 100


def test_neural_and_mixtures(lms):
    b = lms["base"]
    kw = dict(dev=b / "dev.tsv", refs=b / "dev.ref", test_refs=b / "test.ref")
    neural = rescore(b / "test.tsv", [lms["lstm"]], **kw)
    assert neural["mix"] == "single" and neural["test"]["after"] >= neural["test"]["before"]
    linear = rescore(b / "test.tsv", [lms["lstm"], lms["char"]], **kw)  # both read characters: linear, EM weights
    assert linear["mix"] == "linear" and linear["mixture_weights"].sum() == pytest.approx(1.0)
    assert 0 < linear["mixture_weights"][0] < 1
    assert linear["test"]["after"] > linear["test"]["before"]
    loglinear = rescore(b / "test.tsv", [lms["lstm"], lms["word"]], **kw)  # characters vs words: log-linear
    assert loglinear["mix"] == "log-linear" and len(loglinear["params"].lm_weights) == 2
    assert "log-linear mixture" in loglinear["report"]
    cache = {}  # the scores kept across calls give the same result
    cached = [rescore(b / "test.tsv", [lms["lstm"], lms["word"]], **kw, cache=cache) for _ in range(2)]
    assert len(cache) == 2 and all(r["best"] == loglinear["best"] and r["test"] == loglinear["test"] for r in cached)
    fixed = rescore(b / "test.tsv", [lms["lstm"], lms["word"]], weights=[1, 3], lm_weight=0.5, length_bonus=0.0)
    assert list(fixed["mixture_weights"]) == [0.25, 0.75] and "given / defaults" in fixed["report"]
    with pytest.raises(lmlab.LmlabError, match="same tokens"):
        rescore(b / "test.tsv", [lms["lstm"], lms["word"]], mix="linear")


def test_translate_n_best_parses_back(tmp_path, capsys):
    import torch

    from lmlab.generate import GenerationConfig, beam_search
    from lmlab.tasks.batching import pad_rows
    from lmlab.tasks.pairs import prepare_pairs
    from lmlab.tasks.translate import encode_sources, load_seq2seq, translate_nbest

    data = tmp_path / "pairs"
    prepare_pairs(MINI / "train.de", MINI / "train.en", data, val_src=MINI / "val.de", val_tgt=MINI / "val.en",
                  vocab_size=600, progress=False)
    cfg = {"model": {"family": "seq2seq", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 40, "dropout": 0.0},
           "data": {"dir": str(data)},
           "train": {"max_iters": 30, "batch_size": 32, "learning_rate": 3e-3, "warmup_iters": 5, "eval_interval": 30,
                     "eval_iters": 1, "log_interval": 10, "tensorboard": False, "seed": 1}}
    (tmp_path / "s2s.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    lmlab.train(lmlab.load_config(tmp_path / "s2s.yaml"), tmp_path / "run", progress=False)
    src = tmp_path / "src.de"
    src.write_text("\n".join(read_lines(MINI / "val.de")[:4]) + "\n\n", encoding="utf-8")  # a last empty line
    tsv = tmp_path / "nbest.tsv"
    args = ["seq2seq", "translate", tmp_path / "run", "--input", src, "--num-beams", 4, "--max-new-tokens", 20]
    code, _, err = run_main([*args, "--n-best", 3, "--out", tsv], capsys)
    assert code == 0, err
    nbest = parse_nbest(tsv)
    assert nbest.ids == ["1", "2", "3", "4", "5"]
    sizes = np.diff(np.append(nbest.starts, len(nbest.texts)))
    assert list(sizes[:4]) == [3] * 4 and sizes[4] == 1 and nbest.texts[-1] == "" and nbest.scores[-1, 0] == 0
    assert (nbest.scores[:-1, 0] < 0).all() and nbest.scores.shape[1] == 1
    code, out, _ = run_main(args, capsys)  # plain beam search: its output is each id's first hypothesis
    assert out.splitlines() == [nbest.texts[s] for s in nbest.starts]
    assert_user_error(*run_main([*args[:5], "--n-best", 5, "--num-beams", 2], capsys), "--num-beams")
    # Each score is the model's log p of the hypothesis' tokens and of the token that ended it. This barely trained
    # model never says <eos>, so the third token of its own best hypothesis is made an end token.
    model, tok = load_seq2seq(tmp_path / "run")
    eos = model.cfg.eos_id
    bound = model.bind(pad_rows(encode_sources(model, tok, read_lines(src)[:1]), model.cfg.pad_id))
    cfg = GenerationConfig(temperature=0.0, num_beams=4, max_new_tokens=20, num_return_sequences=4)
    end = beam_search(bound, tok, [eos], cfg)[0].token_ids[2]
    cfg = GenerationConfig(temperature=0.0, num_beams=4, max_new_tokens=20, num_return_sequences=4,
                           stop_token_ids=[end])
    [hyps] = translate_nbest(model, tok, read_lines(src)[:1], cfg, 4)
    completions = beam_search(bound, tok, [eos], cfg)
    assert any(c.finish_reason == "stop" and c.end_logprob < 0 for c in completions)
    for c, (text, logp) in zip(completions, hyps, strict=True):
        target = [eos, *c.token_ids] + ([end] if c.finish_reason == "stop" else [])
        with torch.no_grad():
            teacher = sum(float(bound.logprobs_next(torch.tensor([target[:t]]))[0][0, target[t]])
                          for t in range(1, len(target)))
        assert c.text.strip() == text and logp == pytest.approx(teacher, abs=1e-4)


# ----------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, needles", [
    ("1\ta b\t-1\n1\tc d\tx\n", ["line 2", "not a number"]),
    ("1\ta b\t-1\n2\n", ["line 2", "'2'", "no hypothesis"]),
    ("1\ta b\t-inf\n", ["line 1", "finite"]),
    ("1\ta b\t-1\n2\tc d\n", ["line 2", "no score"]),
    ("1\ta b\t-1\n\n2\tc\t-1\t-2\n", ["line 3", "score"]),
    ("1\ta\t-1\n2\tb\t-1\n1\tc\t-1\n", ["line 3", "together"]),
    ("\n\n", ["no hypotheses"]),
])
def test_malformed_nbest(lms, tmp_path, capsys, content, needles):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content, encoding="utf-8")
    assert_user_error(*run_main(["rescore", bad, "--lm", lms["word"]], capsys), *needles)


def test_bad_refs_metric_model_options(lms, tmp_path, capsys):
    b = lms["base"]
    short = tmp_path / "short.ref"
    short.write_text("one line\n", encoding="utf-8")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--test-refs", short], capsys),
                      "1 reference lines", "20 ids")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--dev", b / "dev.tsv", "--refs",
                                 short], capsys), "reference lines")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--metric", "meteor"], capsys),
                      "unknown metric 'meteor'")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", tmp_path / "nope.arpa"], capsys),
                      "does not exist")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--dev", b / "dev.tsv"], capsys),
                      "--refs")
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--lm", lms["char"], "--weights",
                                 "1"], capsys), "one weight per model")
    assert_user_error(*run_main(["rescore", tmp_path / "none.tsv", "--lm", lms["word"]], capsys), "none.tsv")
    out = tmp_path / "out.txt"
    assert_user_error(*run_main(["rescore", b / "test.tsv", "--lm", lms["word"], "--score-weights", "1", "2",
                                 "--out", out], capsys), "--score-weights")
    assert not out.exists()
