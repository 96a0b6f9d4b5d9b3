"""The Llama family (models/llama.py): the same logits as transformers' LlamaForCausalLM on the same weights, KV-cache
decoding through the CPU kernel equal to the torch blocks (GQA, q/k/v biases, left padding, cache growth, fp16
weights), and training from scratch on the one Trainer: its loss falls like the GPT's, and a run killed with
SIGKILL resumes exactly. (Conversion from and to Hugging Face and GGUF checkpoints: tests/test_llama_convert.py.)"""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmlab
from lmlab.models import kernels
from lmlab.models.llama import Llama, LlamaConfig

from conftest import TINY_TRAIN, cli, read_metrics
from test_cli import _start, _train_and_kill

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the decoding kernels need a C++ compiler")


def perturbed(cfg: LlamaConfig) -> Llama:
    """A Llama of `cfg` whose weights are moved off their init (so no weight is a trivial one)."""
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_same_logits_as_transformers_llama():
    transformers = pytest.importorskip("transformers")
    hc = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                                  rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hc).eval()
    model = Llama(LlamaConfig(vocab_size=101, n_embd=64, intermediate_size=96, n_layer=3, n_head=8, n_kv_head=2,
                              block_size=128, rope_theta=5000.0, rms_norm_eps=1e-6, tie_weights=False)).eval()
    missing, unexpected = model.load_state_dict({k.removeprefix("model."): v for k, v in hf.state_dict().items()},
                                                strict=False)
    assert not missing and not unexpected
    ids = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("kv_heads, bias", [(2, False), (8, True), (1, False)])
def test_kernel_decoding_equals_the_torch_blocks(kv_heads, bias, monkeypatch):
    """50 cached steps of 3 left-padded rows through the kernel, across the cache's growth from 256 columns, equal
    a full forward of the torch blocks at every step."""
    cfg = LlamaConfig(vocab_size=101, n_embd=64, intermediate_size=96, n_layer=3, n_head=8, n_kv_head=kv_heads,
                      block_size=600, rope_theta=5000.0, rms_norm_eps=1e-6, tie_weights=False, qkv_bias=bias)
    model = perturbed(cfg)
    ids = torch.randint(0, 101, (3, 300))
    pad = torch.tensor([7, 0, 3])
    for row, p in enumerate(pad.tolist()):
        ids[row, :p] = ids[row, p]
    calls = []
    apply = kernels.llama_blocks_apply
    monkeypatch.setattr(kernels, "llama_blocks_apply", lambda *a: calls.append(1) or apply(*a))
    with torch.inference_mode():
        logprobs, state = model.logprobs_next(ids[:, :250], None, pad)
        for t in range(250, 300):
            logprobs, state = model.logprobs_next(ids[:, :t + 1], state, pad)
            with kernels.disabled():
                reference, _ = model.logprobs_next(ids[:, :t + 1], None, pad)
            torch.testing.assert_close(logprobs, reference, rtol=0, atol=2e-5)
    assert state.k.shape[3] == 512 and state.kernel_table is not None and len(calls) >= 50


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_rounded_weights_through_the_kernel_compute_what_the_torch_blocks_compute(dtype):
    from lmlab.generate import decoding_model

    model = decoding_model(perturbed(LlamaConfig(vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_kv_head=2,
                                                 block_size=64)), dtype)
    ids = torch.randint(0, 101, (2, 20))
    with torch.inference_mode():
        _, state = model.logprobs_next(ids[:, :19])
        got, state = model.logprobs_next(ids, state)
        with kernels.disabled():
            want, _ = model.logprobs_next(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    packed = {"fp16": torch.float16 if kernels._load().lmlab_half_weights() else torch.float32, "int8": torch.int8}
    assert state.kernel_table[2][0].dtype == packed[dtype]  # half / a quarter of the bytes


def test_config_checks():
    with pytest.raises(lmlab.LmlabError, match="must be a multiple of model.n_kv_head"):
        LlamaConfig(n_head=6, n_kv_head=4).validate()
    with pytest.raises(lmlab.LmlabError, match="must be even for rotary positions"):
        LlamaConfig(n_embd=30, n_head=6).validate()
    assert LlamaConfig(n_embd=128).mlp_width == 384 and LlamaConfig(n_embd=128, intermediate_size=344).mlp_width == 344


TINY_LLAMA = {"family": "llama", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "intermediate_size": 88}


def write(path, data_dir, model, **train):
    path.write_text(yaml.safe_dump({"model": model, "data": {"dir": str(data_dir)},
                                    "train": {**TINY_TRAIN, "tensorboard": False, **train}}), encoding="utf-8")
    return path


def test_trains_from_scratch_like_the_gpt(char_data, tmp_path):
    """The same data, steps and schedule: the Llama's loss falls as far as the GPT's (same size, within 0.15)."""
    from conftest import TINY_MODEL

    summaries = {}
    for name, model in (("llama", TINY_LLAMA), ("gpt", {**TINY_MODEL, "dropout": 0.0})):
        cfg = lmlab.load_config(write(tmp_path / f"{name}.yaml", char_data, model, max_iters=120))
        summaries[name] = lmlab.train(cfg, tmp_path / name, progress=False)
    first = float(read_metrics(tmp_path / "llama" / "metrics.csv")[0]["val_loss"])
    assert summaries["llama"]["best_val_loss"] < first - 1.0
    assert summaries["llama"]["best_val_loss"] < summaries["gpt"]["best_val_loss"] + 0.15
    ratio = summaries["llama"]["parameters"] / summaries["gpt"]["parameters"]
    assert 0.9 < ratio < 1.1, ratio
    model, tok = lmlab.load(tmp_path / "llama")
    assert isinstance(model, Llama) and lmlab.generate(model, tok, "ROMEO:", max_new_tokens=10, temperature=0)[0]


def test_a_killed_run_resumes_exactly(char_data, tmp_path):
    max_iters = 150
    cfg = write(tmp_path / "llama.yaml", char_data, TINY_LLAMA, max_iters=max_iters, save_interval=5,
                eval_interval=10, eval_iters=2)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a = _start(["train", "--config", cfg, "--out", run_a, "--quiet"])
    killed_at = _train_and_kill(cfg, run_b)
    assert killed_at < max_iters
    _, err = proc_a.communicate(timeout=120)
    assert proc_a.returncode == 0, err
    r = cli("train", "--resume", run_b, "--quiet")
    assert r.returncode == 0, r.stderr
    rows_a, rows_b = read_metrics(run_a / "metrics.csv"), read_metrics(run_b / "metrics.csv")
    assert [(x["step"], x["train_loss"], x["val_loss"]) for x in rows_a] == \
           [(x["step"], x["train_loss"], x["val_loss"]) for x in rows_b]
    wa, wb = load_file(run_a / "model.safetensors"), load_file(run_b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_windows_of_at_most_context_tokens():
    """`context` caps a windowed model's windows (eval / compare --context): with stride 8, window k reads ids
    8k .. 8k+7 and predicts ids 8k+1 .. 8k+8, from nothing before it."""
    model = perturbed(LlamaConfig(vocab_size=101, n_embd=32, n_layer=2, n_head=4, block_size=64))
    ids = torch.randint(0, 101, (41,))
    got = model.token_logprobs(ids.tolist(), stride=8, context=8)
    with torch.no_grad():
        want = torch.cat([torch.log_softmax(model(ids[None, s:s + 8]), -1)[0].gather(1, ids[s + 1:s + 9, None])[:, 0]
                          for s in range(0, 40, 8)])
    assert got.shape == (40,) and abs(got - want.double().numpy()).max() < 1e-5
    assert abs(got - model.token_logprobs(ids.tolist())).max() > 1e-3  # (windows of 64: other numbers)
