"""`lmlab compare`: an n-gram, a GPT and an LSTM on the same text; bits per byte equal `lmlab eval`'s;
linear interpolation (weights 0 / 1 reproduce each model); curves; bad input is one clear sentence."""
import csv
import json

import numpy as np
import pytest

import lmlab
from lmlab.compare import best_weight, halves, mix_logprobs
from lmlab.models.ngram import NGramLM

from conftest import run_main
from test_cli import assert_user_error


@pytest.fixture(scope="module")
def texts(corpus, tmp_path_factory):
    """A short evaluation text (the corpus' last 3,000 characters: every character is in the char vocabulary)."""
    base = tmp_path_factory.mktemp("compare")
    text = corpus.read_text(encoding="utf-8")
    test = base / "test.txt"
    test.write_text(text[-3000:], encoding="utf-8")
    word_arpa, char_npz = base / "word3.arpa", base / "char3.npz"
    NGramLM.train(corpus, order=3, progress=False).save_arpa(word_arpa)
    NGramLM.train(corpus, order=3, tokenizer="char", progress=False).save(char_npz)
    return {"test": test, "arpa": word_arpa, "npz": char_npz, "base": base}


def read_csv(path):
    with open(path, newline="") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


def eval_json(model, data, capsys):
    code, out, err = run_main(["eval", model, "--data", data, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_compare_ngram_gpt_lstm_equals_eval(tiny_run, tiny_lstm_run, texts, tmp_path, capsys):
    gpt, lstm, arpa = tiny_run["run"], tiny_lstm_run["run"], texts["arpa"]
    code, out, err = run_main(["compare", gpt, lstm, arpa, "--data", texts["test"], "--out", tmp_path,
                               "--plot-curves"], capsys)
    assert code == 0, err
    assert "| model" in out and "bits/byte" in out and "word3" in out
    rows = read_csv(tmp_path / "compare.csv")
    assert [rows[n]["family"] for n in ("run", "word3")] == ["gpt", "ngram"]
    for path, name in ((gpt, "run"), (arpa, "word3")):
        expected = eval_json(path, texts["test"], capsys)
        assert float(rows[name]["bits_per_byte"]) == pytest.approx(expected["bits_per_byte"], rel=1e-9)
        assert int(rows[name]["tokens"]) == expected["tokens"]
    lstm_row = next(r for r in rows.values() if r["family"] == "rnn")
    assert float(lstm_row["bits_per_byte"]) == pytest.approx(eval_json(lstm, texts["test"], capsys)["bits_per_byte"],
                                                           rel=1e-9)
    assert float(lstm_row["train_seconds"]) > 0 and rows["word3"]["train_seconds"] == ""
    assert int(rows["run"]["parameters"]) == lmlab.load(gpt)[0].num_parameters()
    for name in ("compare.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_val_curve_is_converted_to_bits_per_byte(tiny_run):
    from lmlab.compare import val_curve_bits_per_byte
    from lmlab.data import read_meta
    from lmlab.report import read_metrics

    curve = val_curve_bits_per_byte(tiny_run["run"])
    meta = read_meta(tiny_run["data"])
    first_loss = read_metrics(tiny_run["run"] / "metrics.csv")["val_loss"][0][1]
    assert curve[0] == (0, pytest.approx(first_loss / np.log(2) * meta["val"]["tokens"] / meta["val"]["bytes"]))


def test_mixing_weights_zero_and_one_reproduce_each_model():
    rng = np.random.default_rng(0)
    a, b = np.log(rng.uniform(0.01, 1, 100)), np.log(rng.uniform(0.01, 1, 100))
    assert np.array_equal(mix_logprobs(a, b, 1.0), a) and np.array_equal(mix_logprobs(a, b, 0.0), b)
    np.testing.assert_allclose(mix_logprobs(a, b, 0.3), np.log(0.3 * np.exp(a) + 0.7 * np.exp(b)))
    assert best_weight(a, a - 5.0) == 1.0 and best_weight(a - 5.0, a) == 0.0  # one model is better everywhere
    lam = best_weight(a, b)
    grid = np.linspace(0, 1, 1001)
    assert -mix_logprobs(a, b, lam).sum() <= min(-mix_logprobs(a, b, g).sum() for g in grid) + 1e-6


def test_interpolate_a_char_ngram_and_an_lstm(tiny_lstm_run, texts, tmp_path, capsys):
    lstm, npz = tiny_lstm_run["run"], texts["npz"]
    code, out, err = run_main(["compare", lstm, npz, "--data", texts["test"], "--out", tmp_path,
                               "--interpolate", lstm, npz], capsys)
    assert code == 0, err
    with open(tmp_path / "interpolate.csv", newline="") as f:
        mix = next(csv.DictReader(f))
    assert "mix:" in out and 0 <= float(mix["weight_a"]) <= 1
    # Both models alone on the second half: the LSTM's number is exactly what evaluate_text gives on that half.
    model, tok = lmlab.load(lstm)
    half = halves(texts["test"].read_text(encoding="utf-8"))[1]
    assert float(mix["bits_per_byte_a"]) == pytest.approx(lmlab.evaluate_text(model, tok, half).bits_per_byte)
    assert float(mix["bits_per_byte_mix"]) <= max(float(mix["bits_per_byte_a"]), float(mix["bits_per_byte_b"]))


# ----------------------------------------------------------------------------------- bad input

def test_unknown_run_dir(texts, tmp_path, capsys):
    assert_user_error(*run_main(["compare", tmp_path / "nope", "--data", texts["test"]], capsys), "does not exist")


def test_text_the_tokenizer_cannot_encode_names_the_characters(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("Hello wörld €\n", encoding="utf-8")
    assert_user_error(*run_main(["compare", tiny_run["run"], "--data", bad, "--out", tmp_path], capsys),
                      str(tiny_run["run"]), "'ö'", "'€'")
    assert not (tmp_path / "compare.csv").exists()


def test_empty_data_file(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(*run_main(["compare", tiny_run["run"], "--data", empty], capsys), "is empty")


def test_interpolating_models_with_different_tokens(tiny_run, texts, tmp_path, capsys):
    assert_user_error(*run_main(["compare", tiny_run["run"], texts["arpa"], "--data", texts["test"], "--out", tmp_path,
                                 "--interpolate", tiny_run["run"], texts["arpa"]], capsys), "same tokens")
    assert not (tmp_path / "compare.csv").exists()


def test_eval_of_an_ngram_on_a_bin_split_says_use_text(texts, char_data, capsys):
    assert_user_error(*run_main(["eval", texts["arpa"], "--data", char_data / "val.bin"], capsys),
                      "n-gram model", "text file")


def test_ngram_over_a_runs_tokenizer_mixes_with_that_run(tiny_run, corpus, texts, tmp_path, capsys):
    """`ngram train --tokenizer RUN`: n-grams of the run's token ids, the tokenizer saved beside the ARPA, so
    eval/compare tokenize like the run and --interpolate accepts the pair."""
    run, arpa = tiny_run["run"], tmp_path / "run3.arpa"
    code, _, err = run_main(["ngram", "train", "-o", "3", "--data", corpus, "--out", arpa, "--tokenizer", run,
                             "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "run3.tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    model, model_as_tokenizer = lmlab.load(arpa)
    tok = lmlab.load(run)[1]
    assert model_as_tokenizer is model and model.tokenizer.to_str() == tok.to_str()
    text = texts["test"].read_text(encoding="utf-8")
    line = text.split("\n")[1]
    assert model.encode(line) == model.vocab.ids(str(i) for i in tok.encode(line))
    assert model.decode(model.encode(text)) == text
    code, out, err = run_main(["compare", run, arpa, "--data", texts["test"], "--out", tmp_path,
                               "--interpolate", run, arpa], capsys)
    assert code == 0, err
    with open(tmp_path / "interpolate.csv", newline="") as f:
        mix = next(csv.DictReader(f))
    assert float(mix["bits_per_byte_mix"]) <= min(float(mix["bits_per_byte_a"]), float(mix["bits_per_byte_b"])) + 1e-9
    # The ARPA words are the token ids, so KenLM scores the id text of a line exactly as we score the line.
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed")
    k = kenlm.Model(str(arpa))
    for line in text.split("\n")[:40]:
        ids = " ".join(str(i) for i in tok.encode(line))
        assert model.score(line) == pytest.approx(k.score(ids), abs=1e-4)
