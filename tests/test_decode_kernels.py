"""The CPU decoding kernels (lmlab.models.kernels): the small-batch matrix product and a GPT's blocks for one
new position compute what torch computes, follow weight updates, and give way to torch ops where they cannot run."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from lmlab.generate import GenerationConfig, complete_batch, generate, generate_ids
from lmlab.models import kernels
from lmlab.models.gpt import GPT, GPTConfig

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler to build the decoding kernels")


def test_the_kernels_build_where_a_compiler_exists():
    if shutil.which("c++") or shutil.which("g++"):
        assert kernels.available()


@needs_kernels
@pytest.mark.parametrize("k_in, n_out", [(50, 70), (384, 1152), (96, 48)])
def test_small_gemm_is_the_linear_layer(k_in, n_out):
    torch.manual_seed(0)
    layer = torch.nn.Linear(k_in, n_out)
    for rows in list(range(1, 18)) + [33]:
        x = torch.randn(rows, k_in)
        for bias in (layer.bias, None):
            got = kernels.small_gemm(x, kernels.packed_weight(layer), n_out, bias)
            torch.testing.assert_close(got, F.linear(x, layer.weight, bias), rtol=0, atol=1e-5)


def perturbed_gpt(**overrides) -> GPT:
    """A random GPT whose biases and LayerNorm weights are not their initial 0 / 1 (so each one matters)."""
    cfg = dict(vocab_size=70, block_size=64, n_layer=3, n_head=6, n_embd=96, bias=True)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@needs_kernels
@pytest.mark.parametrize("overrides", [dict(activation="gelu_tanh"), dict(bias=False, activation="gelu"),
                                       dict(n_embd=36, n_head=4, pos_encoding="sinusoidal")])  # head size 9
def test_gpt_blocks_kernel_is_the_torch_blocks(overrides):
    torch.manual_seed(1)
    model = perturbed_gpt(**overrides)
    for batch in (1, 3, 9):
        ids = torch.randint(0, 70, (batch, 20))
        pad = torch.tensor([0, 3, 7, 1, 0, 2, 5, 0, 4][:batch]) if batch > 1 else None  # left padding
        with torch.inference_mode():
            fast, slow = model.new_cache(batch), model.new_cache(batch)
            model.hidden(ids[:, :12], fast, pad)
            model.hidden(ids[:, :12], slow, pad)
            for t in range(12, 20):  # one new position per row: the kernel's case
                got = model.hidden(ids[:, t:t + 1], fast, pad)
                with kernels.disabled():
                    want = model.hidden(ids[:, t:t + 1], slow, pad)
                torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
            assert fast.kernel_table is not None and fast.kernel_table[1] is not None  # the kernel did run
            assert slow.kernel_table is None
            torch.testing.assert_close(fast.k[:, :, :, :20], slow.k[:, :, :, :20], rtol=0, atol=2e-5)
            torch.testing.assert_close(fast.v[:, :, :, :20], slow.v[:, :, :, :20], rtol=0, atol=2e-5)


@needs_kernels
def test_trained_model_decodes_the_same_with_and_without_kernels(tiny_model):
    model, tok = tiny_model
    prompts = ["ROMEO:\nWhat", "KING", "First Citizen:\nBefore we proceed"]
    fast = complete_batch(model, tok, prompts, max_new_tokens=40, temperature=0)
    with kernels.disabled():
        slow = complete_batch(model, tok, prompts, max_new_tokens=40, temperature=0)
    for [a], [b] in zip(fast, slow):
        assert a.text == b.text and a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    beams = GenerationConfig(max_new_tokens=20, num_beams=3, num_return_sequences=2)  # reorders the cache
    with kernels.disabled():
        want = generate(model, tok, "KING", beams)
    assert generate(model, tok, "KING", beams) == want


@needs_kernels
def test_decoding_follows_weight_updates():
    torch.manual_seed(2)
    model = perturbed_gpt()
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    prompt = [[5, 6, 7, 8], [9, 10, 11, 12]]

    def tokens():
        return torch.stack(list(generate_ids(model, prompt, cfg)), dim=1).tolist()

    before = tokens()
    with torch.no_grad():
        for block in model.blocks:  # an optimizer step between two generations, say
            block.mlp.fc.weight.mul_(-3)
            block.ln_1.bias.add_(1)
    after = tokens()
    with kernels.disabled():
        assert after == tokens()
    assert after != before


def test_decoding_without_a_compiler_uses_torch_ops(tiny_model, monkeypatch, tmp_path):
    model, tok = tiny_model
    with kernels.disabled():
        want = generate(model, tok, "ROMEO:", max_new_tokens=30, temperature=0)
    monkeypatch.setattr(kernels, "_lib", None)  # not loaded yet, and no cached build to find
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", shutil.which("false") or "false")  # a compiler that fails
    assert not kernels.available()
    assert generate(model, tok, "ROMEO:", max_new_tokens=30, temperature=0) == want
    assert not list(tmp_path.rglob("*.so*"))  # no half-written library left behind


@needs_kernels
def test_gpt_blocks_kernel_writes_into_a_view_of_a_larger_cache():
    """serve.batching decodes its running rows through a view of the first rows of its batch cache."""
    from lmlab.models.layers import KVCache

    torch.manual_seed(3)
    model = perturbed_gpt()
    ids = torch.randint(0, 70, (3, 10))
    with torch.inference_mode():
        big = model.new_cache(5)
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.length = big.k[:, :3], big.v[:, :3], 0
        alone = model.new_cache(3)
        model.hidden(ids[:, :9], view)
        model.hidden(ids[:, :9], alone)
        got = model.hidden(ids[:, 9:], view)
        assert view.kernel_table is not None and not view.k.is_contiguous()
        with kernels.disabled():
            want = model.hidden(ids[:, 9:], alone)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    torch.testing.assert_close(big.k[:, :3, :, :10], alone.k[:, :, :, :10], rtol=0, atol=2e-5)


@needs_kernels
def test_fp16_decoding_reads_float16_weights_and_computes_what_torch_computes():
    from lmlab.generate import decoding_model

    torch.manual_seed(4)
    model = perturbed_gpt()
    half = decoding_model(model, "fp16")
    qkv = half.blocks[0].attn.qkv
    assert torch.equal(qkv.weight, qkv.weight.half().float()) and half.lm_head.weight is half.wte.weight
    assert not torch.equal(model.blocks[0].attn.qkv.weight, qkv.weight)  # the model itself is left as it is
    ids = torch.randint(0, 70, (2, 12))
    with torch.inference_mode():
        fast, slow = half.new_cache(2), half.new_cache(2)
        half.hidden(ids[:, :11], fast)
        half.hidden(ids[:, :11], slow)
        got = half.hidden(ids[:, 11:], fast)
        with kernels.disabled():
            want = half.hidden(ids[:, 11:], slow)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        half_ok = bool(kernels._load().lmlab_half_weights())  # (x86 with F16C or AVX-512)
        assert fast.kernel_table[2][0].dtype == (torch.float16 if half_ok else torch.float32)  # half the bytes
        head = half.lm_head
        h = torch.randn(3, 96)
        torch.testing.assert_close(kernels.small_gemm(h, kernels.packed_weight(head), 70, None), head(h),
                                   rtol=0, atol=1e-5)
        assert kernels.packed_weight(head).dtype == (torch.float16 if half_ok else torch.float32)


@needs_kernels
def test_int8_decoding_reads_int8_weights_and_computes_what_torch_computes():
    """Weight-only int8: the kernels read q and one scale per output channel, torch the same values q * scale."""
    from lmlab.generate import decoding_model

    torch.manual_seed(5)
    model = perturbed_gpt()
    rounded = decoding_model(model, "int8")
    w = rounded.blocks[0].mlp.fc.weight
    q, scale = kernels.int8_rows(w)
    assert torch.equal(q.float() * scale[:, None], w) and q.abs().max() == 127  # already on the int8 grid
    err = (w - model.blocks[0].mlp.fc.weight).abs()
    assert 0 < err.max() <= scale.max() / 2 + 1e-7  # rounding to the nearest step, and only that
    ids = torch.randint(0, 70, (3, 12))
    with torch.inference_mode():
        fast, slow = rounded.new_cache(3), rounded.new_cache(3)
        rounded.hidden(ids[:, :11], fast)
        rounded.hidden(ids[:, :11], slow)
        got = rounded.hidden(ids[:, 11:], fast)
        with kernels.disabled():
            want = rounded.hidden(ids[:, 11:], slow)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        assert fast.kernel_table[2][0].dtype == torch.int8
        head, h = rounded.lm_head, torch.randn(5, 96)
        assert kernels.packed_weight(head).dtype == torch.int8
        torch.testing.assert_close(kernels.small_gemm(h, kernels.packed_weight(head), 70, None), head(h),
                                   rtol=0, atol=1e-5)
