"""Sampling: greedy, seeds, batching, top-k / top-p / temperature rules, prompt cropping, streaming."""
import math
from pathlib import Path

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import (GenerationConfig, StopText, apply_min_p, apply_repetition_penalty, apply_top_k,
                            apply_top_p, banned_bad_words, banned_continuations, choose_next, complete, complete_batch,
                            generate, generate_ids, make_generators, sample_steps, stream)


def greedy_by_hand(model, ids: list[int], n: int) -> list[int]:
    """Argmax chain from full forwards of the (cropped) context, no KV cache."""
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids[-model.block_size:]]))[0, -1]
        ids.append(int(logits.argmax()))
    return ids


def test_greedy_is_the_argmax_chain(tiny_model):
    model, tok = tiny_model
    prompt = "ROMEO:\nWhat"
    n = 2 * model.block_size  # goes past block_size: the context is cropped on the way
    want = greedy_by_hand(model, tok.encode(prompt), n)[len(prompt):]
    assert generate(model, tok, prompt, max_new_tokens=n, temperature=0)[0] == tok.decode(want)
    assert generate(model, tok, prompt, max_new_tokens=n, temperature=0.7, top_k=1, seed=5)[0] == tok.decode(want)


def test_same_seed_same_samples_other_seed_other_samples(tiny_model):
    model, tok = tiny_model
    cfg = dict(max_new_tokens=60, temperature=1.0, num_return_sequences=2)
    a = generate(model, tok, "KING", seed=11, **cfg)
    assert a == generate(model, tok, "KING", seed=11, **cfg)
    b = generate(model, tok, "KING", seed=12, **cfg)
    assert a != b and a[0] != a[1]
    assert all(len(s) == 60 for s in a + b)


def test_sample_i_is_the_same_alone_or_batched(tiny_model):
    model, tok = tiny_model
    cfg = GenerationConfig(max_new_tokens=40, temperature=0.9, top_k=20, top_p=0.9, num_return_sequences=3, seed=3)
    batched = generate(model, tok, "First Citizen:", cfg)
    for i in range(3):
        assert "".join(stream(model, tok, "First Citizen:", cfg, sequence=i)) == batched[i]
        ids = torch.stack(list(generate_ids(model, tok.encode("First Citizen:"), cfg, first_sequence=i, batch=1)))
        assert tok.decode(ids[:, 0].tolist()) == batched[i]


def test_long_prompt_is_cropped_to_its_last_block_size_tokens(tiny_model, capsys):
    model, tok = tiny_model
    text = "All the world's a stage, and all the men and women merely players."
    assert len(tok.encode(text)) > model.block_size
    tail = tok.decode(tok.encode(text)[-model.block_size:])
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.8, seed=2)
    assert generate(model, tok, text, cfg) == generate(model, tok, tail, cfg)
    streamed = "".join(stream(model, tok, text, cfg))
    assert streamed == generate(model, tok, tail, cfg)[0]
    err = capsys.readouterr().err
    assert f"only its last {model.block_size} tokens are used" in err


def test_zero_new_tokens_and_empty_prompt(tiny_model):
    model, tok = tiny_model
    assert generate(model, tok, "Hi", max_new_tokens=0) == [""]
    with pytest.raises(LmlabError, match="prompt is empty"):
        generate(model, tok, "", max_new_tokens=3)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.5, "temperature must be >= 0"),
    ("top_k", 0, "top_k must be >= 1"),
    ("top_p", 0.0, "top_p must be in"),
    ("top_p", 1.5, "top_p must be in"),
    ("max_new_tokens", -1, "max_new_tokens must be >= 0"),
    ("num_return_sequences", 0, "num_return_sequences must be >= 1"),
])
def test_generation_config_validation(tiny_model, field, value, message):
    model, tok = tiny_model
    with pytest.raises(LmlabError, match=message):
        generate(model, tok, "Hi", **{field: value})


# ----------------------------------------------------------------------------------- logits processors

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0)


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != -math.inf}


@pytest.mark.parametrize("p, nucleus", [
    (0.3, {1}), (0.5, {1}), (0.51, {1, 3}), (0.79, {1, 3}), (0.81, {1, 3, 2}), (0.94, {1, 3, 2}),
    (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_the_minimal_nucleus(p, nucleus):
    logits = PROBS.log()[None]
    out = apply_top_p(logits, p)
    assert kept(out[0]) == nucleus
    assert torch.equal(out[0, list(nucleus)], logits[0, list(nucleus)])  # kept logits are unchanged
    # Rows are independent: a second, reversed row gets its own nucleus.
    both = apply_top_p(torch.cat([logits, logits.flip(-1)]), p)
    assert kept(both[1]) == {3 - i for i in nucleus}


def test_top_k_keeps_the_k_largest():
    logits = PROBS.log()[None]
    assert kept(apply_top_k(logits, 1)[0]) == {1}
    assert kept(apply_top_k(logits, 2)[0]) == {1, 3}
    assert kept(apply_top_k(logits, 3)[0]) == {1, 2, 3}
    assert kept(apply_top_k(logits, 10)[0]) == {0, 1, 2, 3}


def test_sampling_frequencies_follow_the_processed_distribution():
    n = 4000
    logprobs = PROBS.log()[None].expand(n, -1)
    gens = make_generators(GenerationConfig(seed=0), n)
    def freq(cfg):
        draws = choose_next(logprobs, cfg, gens)
        return torch.bincount(draws, minlength=4).double() / n
    # Plain sampling: the model's probabilities (4000 draws: standard error < 0.008).
    torch.testing.assert_close(freq(GenerationConfig(temperature=1.0)), PROBS.double(), rtol=0, atol=0.03)
    # top_p 0.79 keeps {1, 3}, renormalized to 0.625 / 0.375.
    torch.testing.assert_close(freq(GenerationConfig(temperature=1.0, top_p=0.79)),
                               torch.tensor([0, 0.625, 0, 0.375], dtype=torch.float64), rtol=0, atol=0.03)
    # temperature 2 flattens: p^(1/2), renormalized.
    flat = PROBS.double().sqrt() / PROBS.double().sqrt().sum()
    torch.testing.assert_close(freq(GenerationConfig(temperature=2.0)), flat, rtol=0, atol=0.03)
    # temperature 0 is greedy; top_k 1 too, whatever the temperature.
    assert set(choose_next(logprobs, GenerationConfig(temperature=0), gens).tolist()) == {1}
    assert set(choose_next(logprobs, GenerationConfig(temperature=5.0, top_k=1), gens).tolist()) == {1}


def test_unseeded_sampling_leaves_the_global_rng_alone(tiny_model):
    model, tok = tiny_model
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    a = generate(model, tok, "KING", max_new_tokens=40, temperature=1.0)  # no seed
    assert torch.equal(torch.rand(3), want)  # e.g. a training loop's dropout stream is not reseeded
    b = generate(model, tok, "KING", max_new_tokens=40, temperature=1.0)
    assert a != b  # and unseeded samples still differ from call to call


# ----------------------------------------------------------------------------------- processors, stop strings, beams

def test_min_p_and_repetition_penalty():
    logits = PROBS.log()[None]
    assert kept(apply_min_p(logits, 0.5)[0]) == {1, 3}  # 0.3 >= 0.5 x 0.5, 0.15 < 0.25
    assert kept(apply_min_p(logits, 0.0)[0]) == {0, 1, 2, 3}
    penalised = apply_repetition_penalty(logits, torch.tensor([[1, 1]]), 2.0)
    assert penalised[0, 1] == pytest.approx(2 * math.log(0.5)) and torch.equal(penalised[0, [0, 2, 3]], logits[0, [0, 2, 3]])


def test_banned_ngram_continuations_and_bad_words():
    assert banned_continuations([5, 6, 7, 5, 6], 3) == {7}
    assert banned_continuations([5, 6, 7, 5, 6], 1) == {5, 6, 7}
    assert banned_bad_words([1, 2, 3], [[9], [3, 4], [2, 4]]) == {9, 4}


def test_no_repeat_ngram_and_bad_words_hold_in_generated_text(tiny_model):
    model, tok = tiny_model
    prompt = tok.encode("ROMEO:")
    cfg = GenerationConfig(max_new_tokens=80, temperature=0, no_repeat_ngram_size=3)
    ids = prompt + [int(t[0]) for t in generate_ids(model, prompt, cfg, batch=1)]
    trigrams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    assert len(trigrams) == len(set(trigrams))
    text = generate(model, tok, "ROMEO:", max_new_tokens=200, temperature=1.0, seed=0, bad_words=["e", "th"])[0]
    assert "e" not in text and "th" not in text and len(text) == 200


def test_stop_string_across_tokens_streams_exactly_up_to_it(tiny_model):
    model, tok = tiny_model
    full = generate(model, tok, "KING:", max_new_tokens=120, temperature=0.8, seed=4)[0]
    stop = full[50:53]  # three characters = three char tokens: found only across token boundaries
    want = full[:full.index(stop)]
    cfg = GenerationConfig(max_new_tokens=120, temperature=0.8, seed=4, stop=["never-there", stop])
    (c,) = complete(model, tok, "KING:", cfg)
    assert c.text == want and c.finish_reason == "stop" and tok.decode(c.token_ids).startswith(want)
    pieces = list(stream(model, tok, "KING:", cfg))
    assert "".join(pieces) == want and not any(stop in p for p in pieces)
    text = StopText(tok, ["ab"])
    assert [text.add(i) for i in tok.encode("xaay")] == ["x", "", "a", "ay"]  # "a" is held until "y" decides


def test_logprobs_are_the_models_own_and_max_length_counts_the_prompt(tiny_model):
    model, tok = tiny_model
    prompt = tok.encode("First Citizen:")
    n = model.block_size - len(prompt)  # within one context: token_logprobs sees the same history
    (c,) = complete(model, tok, "First Citizen:", max_new_tokens=n, temperature=1.0, top_k=5, seed=1)
    expected = model.token_logprobs(prompt + c.token_ids)[len(prompt) - 1:]
    assert c.logprobs == pytest.approx(expected.tolist(), abs=1e-4) and c.finish_reason == "length"
    assert len(complete(model, tok, "First Citizen:", max_new_tokens=n, max_length=20)[0].token_ids) == 20 - len(prompt)


def test_beam_search_finds_the_best_two_token_continuation(tiny_model):
    """With one beam per vocabulary entry, two steps of beam search are exhaustive."""
    model, tok = tiny_model
    prompt = tok.encode("ROMEO:")
    V = model.cfg.vocab_size
    first, _ = model.logprobs_next(torch.tensor([prompt]))
    second, _ = model.logprobs_next(torch.tensor([prompt + [t] for t in range(V)]))
    best = (first[0][:, None] + second).flatten().max().item()
    c = complete(model, tok, "ROMEO:", max_new_tokens=2, num_beams=V, num_return_sequences=3)
    assert sum(c[0].logprobs) == pytest.approx(best, abs=1e-4)
    assert sum(c[0].logprobs) >= sum(c[1].logprobs) >= sum(c[2].logprobs)


@pytest.mark.parametrize("family", ["gpt", "rnn"])
def test_beam_search_cache_reordering_matches_recomputing(family, tiny_model, tiny_lstm_run, monkeypatch):
    import importlib

    import lmlab

    decoding = importlib.import_module("lmlab.decoding")
    model, tok = tiny_model if family == "gpt" else lmlab.load(tiny_lstm_run["run"])
    cfg = GenerationConfig(max_new_tokens=25, num_beams=4, num_return_sequences=4, length_penalty=0.5)
    cached = complete(model, tok, "KING:", cfg)
    monkeypatch.setattr(decoding, "_select", lambda state, rows: None)  # recompute every step from scratch
    assert [c.token_ids for c in complete(model, tok, "KING:", cfg)] == [c.token_ids for c in cached]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=2, num_return_sequences=3), "num_beams (2) must be >= num_return_sequences (3)"),
    (dict(stop=["x", ""]), "a stop string is empty"),
    (dict(min_p=1.5), "min_p must be in"),
    (dict(max_length=0), "max_length must be >= 1"),
])
def test_more_generation_config_errors(tiny_model, kwargs, message):
    model, tok = tiny_model
    with pytest.raises(LmlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(model, tok, "Hi", **kwargs)


def test_held_back_text_is_returned_once_when_no_stop_string_follows(tiny_model):
    model, tok = tiny_model
    plain = generate(model, tok, "KING:", max_new_tokens=40, temperature=0.8, seed=9)[0]
    # A stop string that starts like the text's end but never completes: the held tail must come back once.
    cfg = GenerationConfig(max_new_tokens=40, temperature=0.8, seed=9, stop=[plain[-1] + "\x00"])
    (c,) = complete(model, tok, "KING:", cfg)
    assert c.text == plain and c.finish_reason == "length"
    assert "".join(stream(model, tok, "KING:", cfg)) == plain
    beams = complete(model, tok, "KING:", max_new_tokens=10, num_beams=2, stop=["\x00"])
    assert beams[0].text == tok.decode(beams[0].token_ids)


# ----------------------------------------------------------------------------------- prompts of different lengths

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we", "K", "All the world's a stage, and all the men and"]


def test_batched_prompts_decode_as_each_alone_gpt(tiny_model):
    """Left padding + key mask + per-row positions: each row of the batch computes what its prompt gives alone,
    also past block_size (the longest prompt is cropped to it, then the context is cropped on the way)."""
    model, tok = tiny_model
    greedy = GenerationConfig(max_new_tokens=40, temperature=0)
    batched = complete_batch(model, tok, PROMPTS, greedy)
    for prompt, (c,) in zip(PROMPTS, batched):
        (alone,) = complete(model, tok, prompt, greedy)
        assert c.token_ids == alone.token_ids
        assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    # The whole next-token distribution of every row, through the cache, step after step.
    rows = [tok.encode(p)[-model.block_size:] for p in PROMPTS[:3]]
    steps = list(sample_steps(model, rows, GenerationConfig(max_new_tokens=8, temperature=0)))
    for row, ids in enumerate(rows):
        ids = ids + [int(t[row]) for t, _ in steps]
        want = model.token_logprobs(ids)[len(rows[row]) - 1:]
        assert [float(lp[row]) for _, lp in steps] == pytest.approx(want.tolist(), abs=1e-5)
    # Sampling, two sequences per prompt: sequence i of every prompt draws from seed + i, batched or alone.
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.9, top_k=20, num_return_sequences=2, seed=7)
    assert generate(model, tok, PROMPTS, cfg) == [generate(model, tok, p, cfg) for p in PROMPTS]


def test_batched_prompts_decode_as_each_alone_rnn_and_ngram(tiny_lstm_run):
    import lmlab
    from lmlab.models.ngram import NGramLM

    lstm, tok = lmlab.load(tiny_lstm_run["run"])
    cfg = GenerationConfig(max_new_tokens=30, temperature=0, no_repeat_ngram_size=4)
    for prompt, (c,) in zip(PROMPTS, complete_batch(lstm, tok, PROMPTS, cfg)):
        (alone,) = complete(lstm, tok, prompt, cfg)
        assert c.token_ids == alone.token_ids and c.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    lines = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text().split("\n")[:500]
    ngram = NGramLM.train(lines, order=3, tokenizer="char", progress=False)
    rows = [ngram.encode(p) for p in ("KING", "To be, or not")]
    for sampling in (GenerationConfig(max_new_tokens=20, temperature=0),
                     GenerationConfig(max_new_tokens=20, temperature=1.0, seed=3, repetition_penalty=1.3)):
        batched = list(sample_steps(ngram, rows, sampling))
        for row, ids in enumerate(rows):
            alone = list(sample_steps(ngram, ids, sampling))
            assert [int(t[row]) for t, _ in batched] == [int(t[0]) for t, _ in alone]
            assert [float(lp[row]) for _, lp in batched] == pytest.approx([float(lp[0]) for _, lp in alone], abs=1e-6)


def test_batched_prompts_bad_input(tiny_model):
    model, tok = tiny_model
    with pytest.raises(LmlabError, match="prompt 2 of 3 is empty after tokenization"):
        complete_batch(model, tok, ["Hi", "", "Ho"], max_new_tokens=3)
    with pytest.raises(LmlabError, match="non-empty list of prompt strings"):
        complete_batch(model, tok, [], max_new_tokens=3)
    with pytest.raises(LmlabError, match="non-empty list of prompt strings"):
        complete_batch(model, tok, "Hi", max_new_tokens=3)
    with pytest.raises(LmlabError, match="prompt 1 of 1 is a int, not a string"):
        complete_batch(model, tok, [5], max_new_tokens=3)
    with pytest.raises(LmlabError, match="every row needs a real token"):
        model.logprobs_next(torch.tensor([[1, 2], [3, 4]]), None, pad=torch.tensor([0, 2]))


# ----------------------------------------------------------------------------------- decoding speed paths

def test_packed_decoding_linear_matches_and_follows_weight_updates():
    from lmlab.models.layers import linear

    layer = torch.nn.Linear(16, 32)
    x = torch.randn(4, 1, 16)  # one position of 4 sequences: the packed path
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=0, atol=1e-5)
        odd = torch.randn(5, 1, 16)  # padded to 8 rows (the packed weight's bucket)
        torch.testing.assert_close(linear(layer, odd), layer(odd), rtol=0, atol=1e-5)
    with torch.no_grad():
        layer.weight.mul_(2)  # e.g. an optimizer step between two generations
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(linear(layer, x[:, 0]), layer(x[:, 0]), rtol=0, atol=1e-5)


def test_lower_precision_decoding_is_an_opt_in_copy(tiny_model):
    from lmlab.generate import decoding_model

    model, tok = tiny_model
    ids = torch.tensor([tok.encode("ROMEO:\nWhat say")])
    want, _ = model.logprobs_next(ids)
    for dtype, tolerance in (("fp16", 0.005), ("bf16", 0.05), ("int8", 0.1)):  # measured: 0.0003, 0.011, 0.035
        low = decoding_model(model, dtype)
        got, _ = low.logprobs_next(ids)
        assert got.dtype == torch.float32 and (got - want).abs().max() < tolerance
        text = generate(low, tok, "ROMEO:", max_new_tokens=20, temperature=0)[0]
        assert len(text) == 20
    assert model.wte.weight.dtype == torch.float32 and type(model.lm_head) is torch.nn.Linear  # untouched
    assert decoding_model(model, "fp32") is model
    with pytest.raises(LmlabError, match="dtype must be one of fp32, fp16, bf16, int8"):
        decoding_model(model, "fp8")


def test_cli_generate_dtype(tiny_run, capsys):
    from conftest import run_main

    argv = ["generate", tiny_run["run"], "--prompt", "KING", "--max-new-tokens", "12", "--temperature", "0"]
    code, fp32, _ = run_main(argv, capsys)
    code8, int8, _ = run_main(argv + ["--dtype", "int8"], capsys)
    assert code == code8 == 0 and fp32.startswith("KING") and int8.startswith("KING") and len(int8) == len(fp32)
    code16, fp16, _ = run_main(argv + ["--dtype", "fp16"], capsys)
    assert code16 == 0 and fp16 == fp32  # (fp16 moves this model's log-probabilities by 3e-4: the same argmax)
    code, _, err = run_main(argv + ["--dtype", "fp8"], capsys)
    assert code == 2 and "invalid choice: 'fp8'" in err


def test_a_word_level_continuation_starts_with_the_space_that_joins_it(corpus):
    from lmlab.models.ngram import NGramLM

    words = NGramLM.train(corpus, order=3, progress=False)  # lmplz's words, joined by spaces
    prompt = "I will"
    cfg = GenerationConfig(max_new_tokens=4, temperature=0)
    text = generate(words, words, prompt, cfg)[0]
    ids = complete(words, words, prompt, cfg)[0].token_ids
    assert text.startswith(" ") and prompt + text == words.decode(words.encode(prompt) + ids)
    assert "".join(stream(words, words, prompt, cfg)) == text
    beam = complete(words, words, prompt, GenerationConfig(max_new_tokens=4, num_beams=2))[0]
    assert prompt + beam.text == words.decode(words.encode(prompt) + beam.token_ids)
