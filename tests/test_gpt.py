"""GPT: causality, KV cache, cropping past block_size, sliding-window scoring, weight tying, save/load."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.checkpoint import load_weights, save_weights
from lmlab.models import build_model
from lmlab.models.gpt import GPT, GPTConfig

VOCAB, BLOCK = 23, 16


def make_gpt(pos_encoding="learned", seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                    pos_encoding=pos_encoding, **kw)
    model = GPT(cfg).eval()
    # Random init gives near-uniform outputs; larger weights make the checks below discriminating.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0) if p.dim() >= 2 else p.add_(0.3 * torch.randn_like(p))
    return model


def ids(n, seed=1, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, n) if batch else (n,)
    return torch.randint(VOCAB, shape, generator=g)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_causal_future_tokens_do_not_change_earlier_logits(pos):
    model = make_gpt(pos)
    x = ids(BLOCK, batch=2)
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 5) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-2  # ...while later positions do change


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_kv_cache_incremental_equals_full_forward(pos):
    model = make_gpt(pos)
    x = ids(BLOCK, seed=3, batch=3)
    state = None
    for t in range(4, BLOCK + 1):  # a 4-token prompt, then one token at a time
        got, state = model.logprobs_next(x[:, :t], state)
        with torch.no_grad():
            want = F.log_softmax(model(x[:, :t])[:, -1], dim=-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert state.length == t
    # Several new tokens at once through the cache (the T > 1 masked path).
    _, state = model.logprobs_next(x[:, :5], None)
    got, state = model.logprobs_next(x[:, :12], state)
    with torch.no_grad():
        want = F.log_softmax(model(x[:, :12])[:, -1], dim=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_past_block_size_the_context_is_cropped(pos):
    model = make_gpt(pos)
    x = ids(3 * BLOCK, seed=4, batch=2)
    state = None
    for t in range(BLOCK - 2, 2 * BLOCK + 3):
        got, state = model.logprobs_next(x[:, :t], state)
        with torch.no_grad():
            want = F.log_softmax(model(x[:, max(0, t - BLOCK):t])[:, -1], dim=-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_forward_longer_than_block_size_is_an_error():
    from lmlab.errors import LmlabError

    with pytest.raises(LmlabError, match="block_size"):
        make_gpt()(ids(BLOCK + 1, batch=1))


def manual_token_logprobs(model, x: torch.Tensor, context_start) -> np.ndarray:
    """log p(x[j] | x[context_start(j):j]) for j = 1..n-1, one prefix at a time through logprobs_next."""
    out = []
    for j in range(1, len(x)):
        lp, _ = model.logprobs_next(x[None, context_start(j):j])
        out.append(float(lp[0, x[j]]))
    return np.array(out)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_token_logprobs_disjoint_windows(pos):
    model = make_gpt(pos)
    n = 3 * BLOCK + 7
    x = ids(n, seed=5)
    # stride = block: target j is predicted from the start of its window; the last (partial) window
    # reaches back so that it still has up to block_size tokens of context.
    last_start = max(0, n - 1 - BLOCK)
    def start(j):
        window_first = 1 + ((j - 1) // BLOCK) * BLOCK
        if window_first + BLOCK > n:  # the partial last window
            return last_start
        return window_first - 1
    got = model.token_logprobs(x.numpy(), stride=BLOCK)
    np.testing.assert_allclose(got, manual_token_logprobs(model, x, start), rtol=0, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 4, BLOCK // 2])
def test_token_logprobs_sliding_windows(stride):
    model = make_gpt()
    n = 2 * BLOCK + 5
    x = ids(n, seed=6)
    got = model.token_logprobs(x.tolist(), stride=stride)
    # Target j sits in the window of targets [first, end) with end - first = stride; the inputs of that
    # window are the block_size tokens ending at end - 1 (fewer at the start of the text).
    def start(j):
        first = 1 + ((j - 1) // stride) * stride
        end = min(first + stride, n)
        return max(0, end - 1 - BLOCK)
    want = manual_token_logprobs(model, x, start)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if stride == 1:  # every token with its full (up to block_size) left context
        np.testing.assert_allclose(got, manual_token_logprobs(model, x, lambda j: max(0, j - BLOCK)), atol=1e-5)
    assert got.shape == (n - 1,)
    assert model.score(x.tolist()) == pytest.approx(float(model.token_logprobs(x.tolist()).sum()))


def test_token_logprobs_short_text_and_batching_invariance():
    model = make_gpt()
    x = ids(5, seed=7)
    np.testing.assert_allclose(model.token_logprobs(x), manual_token_logprobs(model, x, lambda j: 0), atol=1e-5)
    long = ids(6 * BLOCK, seed=8)
    np.testing.assert_allclose(model.token_logprobs(long, stride=BLOCK, batch_size=1),
                               model.token_logprobs(long, stride=BLOCK, batch_size=8), rtol=0, atol=1e-6)


def test_weight_tying_and_safetensors_round_trip(tmp_path):
    model = make_gpt(seed=2)
    assert model.lm_head.weight is model.wte.weight
    n_unique = sum(p.numel() for p in model.parameters())  # parameters() lists a shared tensor once
    assert n_unique == model.num_parameters()
    assert n_unique < sum(t.numel() for t in model.state_dict().values())
    save_weights(model, tmp_path / "m.safetensors", step=7)
    other = make_gpt(seed=99)
    assert load_weights(other, tmp_path / "m.safetensors") == 7
    assert other.lm_head.weight is other.wte.weight  # still tied after loading
    x = ids(BLOCK, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))

    untied = build_model(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16,
                                   tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight
    one_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert untied.num_parameters() == n_unique - one_block + VOCAB * 16  # one layer fewer, one more matrix


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    x = ids(BLOCK, batch=2)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_loss_is_mean_cross_entropy():
    model = make_gpt()
    x = ids(BLOCK + 1, seed=9, batch=3)
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())
    with torch.no_grad():
        lp = torch.log_softmax(model(batch[0]), -1).gather(-1, batch[1][..., None])
        assert float(model.loss(batch)) == pytest.approx(float(-lp.mean()), rel=1e-5)


def test_loss_accepts_sliced_targets():
    model = make_gpt()
    x = ids(BLOCK + 1, seed=9, batch=3)
    with torch.no_grad():
        assert torch.isfinite(model.loss((x[:, :-1], x[:, 1:])))
