"""Hugging Face Llama / Qwen2 / Mistral <-> lmlab Llama (`lmlab convert --from hf-llama`, `--to hf-llama`), no download.

Every HF model here is a random LlamaForCausalLM, Qwen2ForCausalLM or MistralForCausalLM built in the test (all
with grouped-query attention; Qwen2 with q/k/v biases and a tied head, Llama untied with its own rope theta,
Mistral with a head size other than hidden / heads) and saved with save_pretrained; its tokenizer is a byte-level
BPE trained in the test on Tiny Shakespeare, with a chat template in tokenizer_config.json (Llama:
chat_template.jinja, as transformers 5 saves it).
"""
import json

import pytest
import torch

import lmlab
from lmlab.convert import hf_llama_to_lmlab, import_hf_llama
from lmlab.errors import LmlabError
from lmlab.generate import GenerationConfig, generate_ids
from lmlab.tokenizer import EOT, train_tokenizer

from conftest import SHAKESPEARE, run_main, tree
from test_cli import assert_user_error
from test_hf import assert_eval_and_generate_work, max_logit_diff, random_ids

transformers = pytest.importorskip("transformers")

TEXT = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
SAMPLE = TEXT[:400] + " In 1623, 42 plays; 3.14159 x 1000!"  # digits: Qwen2's split differs from GPT-2's
TOL = 1e-4
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
             max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1)  # 0.1: logits that differ
VARIANTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(tie_word_embeddings=False, rope_parameters={"rope_theta": 5000.0, "rope_type": "default"})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, sliding_window=None,
                                                            head_dim=16)),
}


@pytest.fixture(scope="module")
def bpe():
    """A 300-token byte-level BPE (<|endoftext|> is id 0)."""
    return train_tokenizer("bpe", [TEXT], vocab_size=300)


def hf_model(kind, vocab_size, seed=0, **overrides):
    config_class, model_class, extra = VARIANTS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0,
                                                 **{**SHAPE, **extra, **overrides})
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # nonzero biases and norm gains, so a mix-up of any tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


def save_hf_dir(model, tok, path, **save_kw):
    model.save_pretrained(path, **save_kw)
    tok.save(path)
    settings = {"bos_token": EOT, "eos_token": {"content": EOT, "special": True, "__type": "AddedToken"}}
    if model.config.model_type == "llama":
        (path / "chat_template.jinja").write_text(CHAT, encoding="utf-8")
    else:
        settings["chat_template"] = CHAT
    (path / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hf_dirs(bpe, tmp_path_factory):
    """kind -> (directory, HF model) of each variant."""
    base = tmp_path_factory.mktemp("hf-llama")
    return {kind: (save_hf_dir(model, bpe, base / kind), model)
            for kind in VARIANTS for model in [hf_model(kind, bpe.vocab_size)]}


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    """kind -> the run `lmlab convert --from hf-llama` made of it."""
    base = tmp_path_factory.mktemp("imported")
    runs = {}
    for kind, (path, _) in hf_dirs.items():
        runs[kind] = base / kind
        import_hf_llama(path, runs[kind])
    return runs


# ----------------------------------------------------------------------------------- HF -> lmlab

@pytest.mark.parametrize("kind", VARIANTS)
def test_import_gives_the_same_logits(kind, hf_dirs, imported, bpe):
    _, hf = hf_dirs[kind]
    run = imported[kind]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    model, tok = lmlab.load(run)
    c = model.cfg
    assert (c.family, c.n_layer, c.n_embd, c.n_head, c.block_size, c.vocab_size) == ("llama", 2, 64, 8, 128, 300)
    assert c.kv_heads == hf.config.num_key_value_heads < c.n_head
    assert (c.qkv_bias, c.tie_weights) == {"llama": (False, False), "qwen2": (True, True),
                                           "mistral": (False, False)}[kind]
    assert c.dim_per_head == (16 if kind == "mistral" else 8) and c.rope_theta == (5000.0 if kind == "llama" else 1e4)
    assert max_logit_diff(model, hf, random_ids(c.vocab_size, length=c.block_size)) <= TOL
    assert tok.kind == "bpe" and tok.encode(SAMPLE) == bpe.encode(SAMPLE)
    settings = json.loads((run / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == CHAT and settings["bos_token"] == settings["eos_token"] == EOT


@pytest.mark.parametrize("kind", VARIANTS)
def test_greedy_continuations_are_identical(kind, hf_dirs, imported):
    _, hf = hf_dirs[kind]
    model, _ = lmlab.load(imported[kind])
    prompt = random_ids(model.cfg.vocab_size, batch=1, length=12, seed=5)
    ours = torch.stack(list(generate_ids(model, prompt[0].tolist(), GenerationConfig(max_new_tokens=20,
                                                                                      temperature=0))))[:, 0]
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=20, min_new_tokens=20, eos_token_id=None,
                                           pad_token_id=0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)[0, 12:]
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("kind", VARIANTS)
def test_cached_decoding_equals_a_full_forward_pass(kind, imported):
    model, _ = lmlab.load(imported[kind])
    ids = random_ids(model.cfg.vocab_size, batch=2, length=48, seed=6)
    with torch.no_grad():
        full = torch.log_softmax(model(ids).float(), dim=-1)
    lp, state = model.logprobs_next(ids[:, :16])
    worst = (lp - full[:, 15]).abs().max().item()
    for t in range(17, 49):
        lp, state = model.logprobs_next(ids[:, :t], state)
        worst = max(worst, (lp - full[:, t - 1]).abs().max().item())
    assert worst <= 1e-5


def test_a_sharded_checkpoint_imports(bpe, tmp_path):
    hf = hf_model("llama", bpe.vocab_size, seed=2)
    path = save_hf_dir(hf, bpe, tmp_path / "sharded", max_shard_size="60KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (path / "model.safetensors").exists()
    import_hf_llama(path, tmp_path / "run")
    model, _ = lmlab.load(tmp_path / "run")
    assert max_logit_diff(model, hf, random_ids(bpe.vocab_size)) <= TOL


# ----------------------------------------------------------------------------------- lmlab -> HF

@pytest.mark.parametrize("kind", VARIANTS)
def test_export_loads_in_transformers_with_the_same_logits(kind, imported, bpe, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = run_main(["convert", imported[kind], "--to", "hf-llama", out], capsys)
    arch = "Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM"  # q/k/v biases: Qwen2
    assert code == 0 and stdout.strip().endswith(f"tokenizer_config.json for {arch}"), err
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch
    model, tok = lmlab.load(imported[kind])
    assert hf.config.tie_word_embeddings == model.cfg.tie_weights and hf.config.eos_token_id == 0
    assert max_logit_diff(model, hf, random_ids(bpe.vocab_size, seed=7)) <= TOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)
    assert hf_tok.chat_template == CHAT and hf_tok.eos_token == EOT
    back = tmp_path / "back"  # ... and back again: the same weights
    import_hf_llama(out, back)
    again, _ = lmlab.load(back)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_export_refuses_other_families(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert_user_error(*run_main(["convert", tiny_run["run"], "--to", "hf-llama", out], capsys),
                      "only Llama models can be exported to hf-llama, not a gpt model")
    assert not out.exists()


# ----------------------------------------------------------------------------------- the command, bad input

def test_convert_through_the_command_then_eval_and_generate(hf_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    code, stdout, err = run_main(["convert", "--from", "hf-llama", hf_dirs["qwen2"][0], "--out", run], capsys)
    assert code == 0, err
    assert stdout.strip() == (f"wrote {run}: qwen2 2x64, 8 heads (4 key/value), SwiGLU 96, context 128, vocab 300, "
                              "q/k/v biases, tied head, 81,216 parameters, bpe tokenizer, chat template kept")
    assert_eval_and_generate_work(run, tmp_path, capsys)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _copy(hf_dirs, tmp_path, kind="llama"):
    import shutil

    return shutil.copytree(hf_dirs[kind][0], tmp_path / "src")


@pytest.mark.parametrize("kind, changes, needle", [
    ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "cannot be converted exactly: its rope scaling is 'linear', which lmlab's Llama does not implement"),
    ("llama", dict(rope_parameters=None, rope_theta=1e4, rope_scaling={"type": "dynamic", "factor": 2.0}),
     "its rope scaling is 'dynamic'"),
    ("mistral", dict(sliding_window=32), "its sliding window of 32 tokens is shorter than its context of 128"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=64, max_window_layers=1, layer_types=None),
     "its sliding window of 64 tokens"),
    ("llama", dict(hidden_act="gelu"), "its MLP activation is 'gelu', not silu"),
    ("llama", dict(attention_bias=True), "it sets attention_bias (biases on q, k, v and o_proj)"),
    ("llama", dict(mlp_bias=True), "it sets mlp_bias"),
    ("llama", dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"]),
     "holds a gpt_neox model (GPTNeoXForCausalLM); --from hf-llama reads Llama, Qwen2 and Mistral checkpoints only"),
    ("llama", dict(intermediate_size=128), "has a tensor of shape (64, 96) where its config.json implies (64, 128)"),
    ("llama", dict(num_hidden_layers=3), "lacks layers.2."),
    ("llama", dict(num_attention_heads=5), "describes no model lmlab can build: model.n_head (5) must be a multiple"),
    ("llama", dict(hidden_size=None), "config.json has no hidden_size"),
])
def test_what_lmlab_cannot_compute_is_refused(kind, changes, needle, hf_dirs, tmp_path, capsys):
    src, out = _copy(hf_dirs, tmp_path, kind), tmp_path / "out"
    _edit_config(src, **changes)
    assert_user_error(*run_main(["convert", "--from", "hf-llama", src, "--out", out], capsys), needle)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("remove, needle", [
    ("config.json", "has no config.json, so it is not a Hugging Face checkpoint directory"),
    ("model.safetensors", "has no model.safetensors or pytorch_model.bin; the checkpoint has no weights"),
    ("tokenizer.json", "has no tokenizer.json; --from hf-llama reads the model's tokenizer from it"),
])
def test_incomplete_directories_are_refused(remove, needle, hf_dirs, tmp_path, capsys):
    src, out = _copy(hf_dirs, tmp_path), tmp_path / "out"
    (src / remove).unlink()
    before = tree(src)
    assert_user_error(*run_main(["convert", "--from", "hf-llama", src, "--out", out], capsys), needle)
    assert not out.exists() and tree(src) == before


def test_hf_llama_to_lmlab_refuses_unknown_tensors(hf_dirs):
    _, hf = hf_dirs["llama"]
    state = {**hf.state_dict(), "model.layers.0.mlp.extra.weight": torch.zeros(2)}
    with pytest.raises(LmlabError, match="has unknown tensors layers.0.mlp.extra.weight"):
        hf_llama_to_lmlab(hf.config.to_dict(), state)


def test_export_never_overwrites(imported, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert_user_error(*run_main(["convert", imported["llama"], "--to", "hf-llama", busy], capsys), "already exists")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------------- the tokenizer settings travel

def test_the_chat_template_and_eos_survive_prepare_and_train_init(imported, tmp_path, capsys):
    import yaml

    source = imported["qwen2"]
    settings = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["eos_token"] = "e"  # a token of the 300-token vocabulary other than <|endoftext|> (id 0)
    run = tmp_path / "qwen2"
    import shutil

    shutil.copytree(source, run)
    (run / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    tok = lmlab.load(run)[1]
    assert tok.eot_id == tok.hf.token_to_id("e") != 0 and tok.settings["chat_template"] == CHAT

    text, data, tuned = tmp_path / "text.txt", tmp_path / "data", tmp_path / "tuned"
    text.write_text(TEXT, encoding="utf-8")
    code, _, err = run_main(["prepare", text, "--tokenizer", run, "--out", data, "--quiet"], capsys)
    assert code == 0, err
    assert (data / "tokenizer_config.json").read_bytes() == (run / "tokenizer_config.json").read_bytes()
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dir": str(data)}, "train": {
        "max_iters": 2, "batch_size": 2, "eval_interval": 2, "eval_iters": 1, "tensorboard": False,
        "device": "cpu"}}), encoding="utf-8")
    code, _, err = run_main(["train", "--init", run, "--config", cfg, "--out", tuned, "--quiet",
                             "--model.block_size", "32"], capsys)
    assert code == 0, err
    assert (tuned / "tokenizer_config.json").read_bytes() == (run / "tokenizer_config.json").read_bytes()
    assert lmlab.load(tuned)[1].eot_id == tok.eot_id

    (run / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    assert_user_error(*run_main(["eval", run, "--data", text], capsys), "tokenizer_config.json is not valid JSON")


def test_convert_with_a_chat_template_of_ones_own(hf_dirs, tmp_path, capsys):
    from lmlab.chat import load_template
    from lmlab.tokenizer import load_tokenizer

    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    (tmp_path / "t.jinja").write_text(template, encoding="utf-8")
    run = tmp_path / "run"
    code, _, err = run_main(["convert", "--from", "hf-llama", hf_dirs["llama"][0], "--out", run,
                             "--chat-template", tmp_path / "t.jinja"], capsys)
    assert code == 0, err
    tok = load_tokenizer(run)
    assert load_template(tok).render([{"role": "user", "content": "hi"}]) == "[user] hi\n[assistant] "
    assert tok.settings["eos_token"]  # the other keys of tokenizer_config.json are kept
    (tmp_path / "bad.jinja").write_text("{% for %}", encoding="utf-8")
    code, _, err = run_main(["convert", "--from", "hf-llama", hf_dirs["llama"][0], "--out", tmp_path / "run2",
                             "--chat-template", tmp_path / "bad.jinja"], capsys)
    assert code == 2 and "is not valid Jinja" in err and not (tmp_path / "run2").exists()
