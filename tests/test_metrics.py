"""Metrics: cross-entropy, perplexity, bits per token/char/byte, and `lmlab eval` against a hand computation."""
import json
import math

import numpy as np
import pytest
import torch

from lmlab.data import load_split
from lmlab.errors import LmlabError
from lmlab.metrics import EvalResult, evaluate_ids, evaluate_text
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.tokenizer import CharTokenizer

from conftest import run_main


def test_result_formulas():
    r = EvalResult(tokens=100, chars=120, bytes=150, nll=200.0)
    assert r.cross_entropy == 2.0
    assert r.perplexity == pytest.approx(math.exp(2.0))
    assert r.bits_per_token == pytest.approx(2.0 / math.log(2))
    assert r.bits_per_char == pytest.approx(200 / math.log(2) / 120)
    assert r.bits_per_byte == pytest.approx(200 / math.log(2) / 150)
    d = r.as_dict()
    assert d["perplexity"] == r.perplexity and d["bits_per_byte"] == r.bits_per_byte and d["tokens"] == 100


def test_char_model_on_ascii_text(tiny_model, corpus):
    model, tok = tiny_model
    text = corpus.read_text()[-3000:]
    assert text.isascii()
    r = evaluate_text(model, tok, text, stride=model.block_size // 2)
    lp = model.token_logprobs(tok.encode(text), stride=model.block_size // 2)
    assert r.tokens == len(text) - 1 == r.chars == r.bytes  # the first character is context, not predicted
    assert r.nll == pytest.approx(-lp.sum(), rel=1e-12)
    assert r.cross_entropy == pytest.approx(-lp.mean())
    assert r.perplexity == pytest.approx(math.exp(-lp.mean()))
    assert r.bits_per_byte == pytest.approx(r.bits_per_char) == pytest.approx(r.bits_per_token)
    assert r.bits_per_byte == pytest.approx(-lp.sum() / math.log(2) / (len(text) - 1))
    assert 1 < r.perplexity < len(tok.vocab)  # trained: better than uniform


def test_bits_per_byte_counts_utf8_bytes():
    text = "café naïve über — 🙂 ok\n" * 3
    tok = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    r = evaluate_text(model, tok, text)
    predicted = text[1:]
    assert (r.tokens, r.chars, r.bytes) == (len(text) - 1, len(predicted), len(predicted.encode("utf-8")))
    assert r.bytes > r.chars
    assert r.bits_per_byte == pytest.approx(r.nll / math.log(2) / len(predicted.encode("utf-8")))
    assert r.bits_per_byte < r.bits_per_char
    from_ids = evaluate_ids(model, tok, tok.encode(text))  # the text decoded from the ids: same counts
    assert (from_ids.tokens, from_ids.chars, from_ids.bytes) == (r.tokens, r.chars, r.bytes)
    assert from_ids.nll == pytest.approx(r.nll, rel=1e-12)


def test_too_short_or_empty_text(tiny_model):
    model, tok = tiny_model
    with pytest.raises(LmlabError, match="at least two tokens"):
        evaluate_text(model, tok, "A")
    with pytest.raises(LmlabError, match="empty"):
        evaluate_text(model, tok, "")


def hand_metrics(model, ids, text):
    lp = model.token_logprobs(np.asarray(ids), stride=model.block_size // 2)  # eval's default stride
    nll, predicted = -lp.sum(), text[1:]
    return {"tokens": len(ids) - 1, "cross_entropy": nll / (len(ids) - 1), "perplexity": math.exp(nll / (len(ids) - 1)),
            "bits_per_token": nll / (len(ids) - 1) / math.log(2),
            "bits_per_char": nll / math.log(2) / len(predicted),
            "bits_per_byte": nll / math.log(2) / len(predicted.encode("utf-8"))}


def check(result: dict, want: dict):
    assert result["tokens"] == want["tokens"]
    for k in ("cross_entropy", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte"):
        assert result[k] == pytest.approx(want[k], rel=1e-9), k


def test_eval_command_on_text_file_and_val_bin(tiny_run, tiny_model, tmp_path, capsys):
    model, tok = tiny_model
    val_ids = np.asarray(load_split(tiny_run["data"], "val"))
    val_text = tok.decode(val_ids)
    want = hand_metrics(model, val_ids, val_text)

    code, out, err = run_main(["eval", tiny_run["run"], "--data", tiny_run["data"] / "val.bin", "--json"], capsys)
    assert (code, err) == (0, "")
    check(json.loads(out), want)

    text_file = tmp_path / "val.txt"
    text_file.write_text(val_text, encoding="utf-8")
    code, out, err = run_main(["eval", tiny_run["run"], "--data", text_file, "--json"], capsys)
    assert (code, err) == (0, "")
    check(json.loads(out), want)

    code, out, _ = run_main(["eval", tiny_run["run"], "--data", text_file, "--stride", "32"], capsys)
    assert code == 0
    r32 = evaluate_text(model, tok, val_text, stride=32)
    assert f"{r32.perplexity:.4f}" in out and f"{r32.bits_per_byte:.4f}" in out
    assert r32.nll > evaluate_text(model, tok, val_text).nll  # less context per token: worse


@pytest.mark.parametrize("stride", ["0", "-3"])
def test_eval_rejects_a_stride_below_one(tiny_run, stride, capsys):
    code, out, err = run_main(["eval", tiny_run["run"], "--data", tiny_run["data"] / "val.bin",
                               "--stride", stride], capsys)
    assert code == 2 and out == "" and "stride" in err and err.count("\n") == 1


def test_ids_outside_the_vocabulary_are_an_error(tiny_model):
    model, tok = tiny_model
    with pytest.raises(LmlabError, match="vocabulary"):
        evaluate_ids(model, tok, [1, 2, tok.vocab_size + 3, 4])
