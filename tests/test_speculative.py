"""Speculative decoding: a draft (n-gram or small GPT) proposes, the target verifies; the output is the target's.

Greedy: the tokens are exactly those of plain greedy decoding. Sampling: a chi-square test on a tiny vocabulary
checks that the sampled two-token sequences follow the target's distribution (and that the test can tell the
draft's distribution apart, so it has the power to catch a wrong acceptance rule).
"""
import itertools

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import (GenerationConfig, SpeculativeStats, complete, load_draft, speculative_steps, stream,
                            warped_probs)
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.ngram import NGramLM
from lmlab.tokenizer import CharTokenizer

from conftest import run_main

CHI2_DF15_P001 = 37.697  # chi-square critical value, 15 degrees of freedom, p = 0.001


@pytest.fixture(scope="module")
def ngram_draft(tiny_model, corpus):
    model, tok = tiny_model
    return NGramLM.train(corpus, order=4, tokenizer=tok, progress=False)


def test_greedy_output_is_the_targets_with_an_ngram_draft(tiny_model, ngram_draft):
    model, tok = tiny_model
    cfg = GenerationConfig(max_new_tokens=80, temperature=0, num_draft_tokens=4)
    plain = complete(model, tok, "ROMEO:\nWhat", cfg)[0]
    stats = SpeculativeStats()
    fast = complete(model, tok, "ROMEO:\nWhat", cfg, draft=ngram_draft.over_tokenizer(tok), stats=stats)[0]
    assert fast.token_ids == plain.token_ids and fast.text == plain.text
    assert fast.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
    assert stats.tokens == 80 and stats.accepted > 0
    assert stats.target_calls < 80  # several tokens per target pass
    assert 0 < stats.acceptance_rate <= 1


def test_greedy_output_is_the_targets_with_a_gpt_draft_and_a_char_ngram(tiny_model, corpus):
    model, tok = tiny_model
    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=model.cfg.vocab_size, n_layer=1, n_head=1, n_embd=16, block_size=32)).eval()
    char_ngram = NGramLM.train(corpus, order=3, tokenizer="char", progress=False).over_tokenizer(tok)
    cfg = GenerationConfig(max_new_tokens=50, temperature=0, num_draft_tokens=3)  # runs past block_size 32
    plain = complete(model, tok, "KING", cfg)[0].token_ids
    for draft in (small, char_ngram):
        assert complete(model, tok, "KING", cfg, draft=draft)[0].token_ids == plain
    assert "".join(stream(model, tok, "KING", cfg, draft=char_ngram)) == tok.decode(plain)


def peaked_gpt(seed: int) -> GPT:
    """A 1-layer GPT over 4 tokens whose next-token distributions are far from uniform."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=4, n_layer=1, n_head=1, n_embd=8, block_size=8)).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 0.3)
    return model


def joint_probabilities(model, prompt, cfg) -> torch.Tensor:
    """P(a, b | prompt) over the 16 two-token continuations, under cfg's warped distribution."""
    first = warped_probs(model.logprobs_next(torch.tensor([prompt]))[0][0], cfg)
    rows = [first[a] * warped_probs(model.logprobs_next(torch.tensor([prompt + [a]]))[0][0], cfg) for a in range(4)]
    return torch.stack(rows).flatten().double()


def chi_square(samples: list[tuple[int, int]], probs: torch.Tensor) -> float:
    counts = torch.zeros(16, dtype=torch.float64)
    for a, b in samples:
        counts[4 * a + b] += 1
    expected = probs * len(samples)
    keep = expected > 0
    if counts[~keep].sum() > 0:  # a continuation of probability 0 was sampled
        return float("inf")
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize("warpers", [dict(temperature=1.0), dict(temperature=0.7, top_k=3)])
def test_sampled_sequences_follow_the_target_distribution(warpers):
    target, draft = peaked_gpt(1), peaked_gpt(2)
    cfg = GenerationConfig(max_new_tokens=2, num_draft_tokens=2, seed=7, num_return_sequences=3000, **warpers)
    prompt = [0, 3]
    steps = list(speculative_steps(target, draft, prompt, cfg))
    samples = list(zip(steps[0][0].tolist(), steps[1][0].tolist()))
    want = joint_probabilities(target, prompt, cfg)
    assert chi_square(samples, want) < CHI2_DF15_P001
    # Power: the draft's own distribution is rejected by the same test on the same samples.
    assert chi_square(samples, joint_probabilities(draft, prompt, cfg)) > 10 * CHI2_DF15_P001


def test_sampling_with_a_draft_is_reproducible_and_reports_the_targets_logprobs(tiny_model, ngram_draft):
    model, tok = tiny_model
    draft = ngram_draft.over_tokenizer(tok)
    cfg = GenerationConfig(max_new_tokens=40, temperature=0.9, top_p=0.95, seed=4, num_return_sequences=2)
    a = complete(model, tok, "First Citizen:", cfg, draft=draft)
    assert [c.text for c in a] == [c.text for c in complete(model, tok, "First Citizen:", cfg, draft=draft)]
    ids = tok.encode("First Citizen:") + a[0].token_ids
    want = [float(model.logprobs_next(torch.tensor([ids[:i]]))[0][0, ids[i]])
            for i in range(len(ids) - len(a[0].token_ids), len(ids))]
    assert a[0].logprobs == pytest.approx(want, abs=1e-4)


def test_ngram_over_tokenizer_is_a_distribution_over_the_runs_tokens(tiny_model, corpus):
    model, tok = tiny_model
    for ngram in (NGramLM.train(corpus, order=3, tokenizer=tok, progress=False),
                  NGramLM.train(corpus, order=3, tokenizer="char", progress=False)):
        view = ngram.over_tokenizer(tok)
        for prompt in ("", "ROMEO", "the k", "end.\n"):
            lp = view.logprobs_next(torch.tensor([tok.encode(prompt) or [0]]))[0][0].double()
            assert lp.shape == (tok.vocab_size,)
            assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-5)
        # after "ROMEO" the n-gram's own choice and the view's agree
        ctx = tok.encode("ROMEO")
        best = tok.decode([int(view.logprobs_next(torch.tensor([ctx]))[0][0].argmax())])
        own = ngram.logprobs_next(torch.tensor([ngram.encode("ROMEO")]))[0][0]
        assert best == ngram.decode([int(own.argmax())]).replace("\u2581", " ")


def test_bad_speculative_settings_are_clear_errors(tiny_model, ngram_draft):
    model, tok = tiny_model
    draft = ngram_draft.over_tokenizer(tok)
    for bad, words in ((dict(num_beams=2), "beam search"), (dict(repetition_penalty=1.2), "repetition penalty"),
                       (dict(num_draft_tokens=0), "num_draft_tokens")):
        with pytest.raises(LmlabError, match=words):
            complete(model, tok, "KING", GenerationConfig(max_new_tokens=5, **bad), draft=draft)
    lines = ["abc cab", "bca"]
    counted_otherwise = NGramLM.train(lines, order=2, tokenizer=CharTokenizer("abc "), smoothing="witten-bell",
                                      progress=False)
    with pytest.raises(LmlabError, match="another tokenizer"):
        counted_otherwise.over_tokenizer(tok)
    other = GPT(GPTConfig(vocab_size=7, n_layer=1, n_head=1, n_embd=8, block_size=8)).eval()
    with pytest.raises(LmlabError, match="tokens"):
        complete(model, tok, "KING", GenerationConfig(max_new_tokens=5, temperature=0), draft=other)


def test_cli_generate_with_a_draft(tiny_run, tiny_model, corpus, tmp_path, capsys):
    model, tok = tiny_model
    arpa = tmp_path / "draft.arpa"
    code, _, err = run_main(["ngram", "train", "-o", "4", "--data", corpus, "--tokenizer", tiny_run["run"],
                             "--out", arpa, "--quiet"], capsys)
    assert code == 0, err
    args = ["generate", tiny_run["run"], "--prompt", "KING", "--max-new-tokens", "60", "--temperature", "0"]
    code, plain, _ = run_main(args, capsys)
    assert code == 0
    code, fast, err = run_main(args + ["--draft", arpa, "--num-draft-tokens", "5"], capsys)
    assert code == 0, err
    assert fast == plain
    assert "accepted" in err and "draft tokens" in err
    code, _, err = run_main(args + ["--draft", arpa, "--num-beams", "2"], capsys)
    assert code == 2 and "beam search" in err and "Traceback" not in err
    code, _, err = run_main(args + ["--draft", tmp_path / "nothing.arpa"], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("length", [20, 31, 33, 36, 60])
def test_logprobs_last_equals_one_call_per_prefix(tiny_model, length):
    """The verification pass, with a cache, without one, and across block_size (32) where windows are cropped."""
    model, tok = tiny_model
    ids = torch.tensor([tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")[:length]])
    for n in (1, 3, 6):
        want = torch.stack([model.logprobs_next(ids[:, :end])[0] for end in range(length - n + 1, length + 1)], 1)
        cache = model.logprobs_next(ids[:, :length - n - 2])[1] if length - n - 2 <= 32 else None
        for state in (None, cache):
            got, _ = model.logprobs_last(ids, state, n)
            assert torch.allclose(got, want, atol=1e-5)
