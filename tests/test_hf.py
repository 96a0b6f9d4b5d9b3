"""Hugging Face GPT-2 interop (lmlab.convert, `lmlab convert`, `lmlab train --init`), with no download.

Every HF model here is a randomly initialised `transformers.GPT2LMHeadModel` built in the test and saved with
`save_pretrained`; its tokenizer is a byte-level BPE trained in the test on a slice of Tiny Shakespeare.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.checkpoint import save_model_config, save_weights
from lmlab.errors import LmlabError
from lmlab.generate import complete
from lmlab.convert import export_hf_gpt2, gpt2_to_lmlab, import_hf_gpt2, lmlab_to_gpt2
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.tokenizer import EOT, load_tokenizer, train_tokenizer

from conftest import SHAKESPEARE, read_metrics, run_main, write_config
from test_cli import assert_user_error

transformers = pytest.importorskip("transformers")
GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

TEXT = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
TOL = 1e-4


@pytest.fixture(scope="module")
def bpe():
    """A 400-token GPT-2-style byte-level BPE (<|endoftext|> is id 0)."""
    return train_tokenizer("bpe", [TEXT], vocab_size=400)


def hf_gpt2(vocab_size, eot, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=64, bos_token_id=eot,
                     eos_token_id=eot, initializer_range=0.1, **kw)  # wider than 0.02: logits that differ
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def hf_dir(bpe, tmp_path_factory):
    """A random GPT2LMHeadModel saved with save_pretrained, plus the BPE's tokenizer.json."""
    model = hf_gpt2(bpe.vocab_size, bpe.eot_id)
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(path)
    bpe.save(path)
    return path, model


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("imported") / "run"
    import_hf_gpt2(hf_dir[0], run)
    return run


def random_ids(vocab, batch=3, length=40, seed=1):
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_logit_diff(ours, hf, ids) -> float:
    with torch.no_grad():
        return (ours(ids) - hf(ids).logits).abs().max().item()


# ----------------------------------------------------------------------------------- HF -> lmlab

def test_import_gives_the_same_logits(hf_dir, imported, bpe):
    path, hf = hf_dir
    assert sorted(p.name for p in imported.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    model, tok = lmlab.load(imported)
    c = model.cfg
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 2, 32, 64, bpe.vocab_size)
    assert c.bias and c.tie_weights and c.activation == "gelu_tanh" and c.pos_encoding == "learned"
    assert max_logit_diff(model, hf, random_ids(c.vocab_size, length=64)) <= TOL
    assert tok.kind == "bpe" and tok.eot_id == bpe.eot_id and tok.encode(TEXT[:500]) == bpe.encode(TEXT[:500])


def test_greedy_generation_is_identical(hf_dir, imported):
    _, hf = hf_dir
    model, tok = lmlab.load(imported)
    prompt = "ROMEO:\nWhat say you"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                          pad_token_id=tok.eot_id)
    theirs = out[0, ids.shape[1]:].tolist()
    if theirs and theirs[-1] == tok.eot_id:  # HF keeps the end-of-text token; ours ends before it
        theirs = theirs[:-1]
    ours = complete(model, tok, prompt, max_new_tokens=30, temperature=0)[0]
    assert ours.token_ids == theirs and len(theirs) > 0


def test_original_gpt2_layout_bin_and_vocab_merges(bpe, tmp_path):
    """pytorch_model.bin without the "transformer." prefix and with attn.bias / masked_bias buffers (the layout of
    the original gpt2 upload), an untied head, and vocab.json + merges.txt instead of tokenizer.json."""
    hf = hf_gpt2(bpe.vocab_size, bpe.eot_id, seed=2, tie_word_embeddings=False, activation_function="gelu")
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    state = {k.removeprefix("transformer."): v for k, v in load_file(src / "model.safetensors").items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64, dtype=torch.bool))[None, None]
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    bpe.hf.model.save(str(src))  # vocab.json + merges.txt
    run = tmp_path / "run"
    import_hf_gpt2(src, run)
    model, tok = lmlab.load(run)
    assert not model.cfg.tie_weights and model.cfg.activation == "gelu"
    assert max_logit_diff(model, hf, random_ids(bpe.vocab_size)) <= TOL
    assert tok.eot_id == bpe.eot_id and tok.encode(f"{TEXT[:300]}{EOT}x") == bpe.encode(f"{TEXT[:300]}{EOT}x")
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)  # HF's own reading of vocab.json + merges.txt
    assert hf_tok(TEXT[:1000])["input_ids"] == tok.encode(TEXT[:1000]) and hf_tok.eos_token_id == tok.eot_id


@pytest.mark.parametrize("change, needle", [
    ({"n_inner": 100}, "n_inner 100"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ({"activation_function": "relu"}, "'relu'"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "a llama model (LlamaForCausalLM)"),
])
def test_configs_we_cannot_represent_are_refused(change, needle):
    cfg = {**GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8).to_dict(), **change}
    with pytest.raises(LmlabError, match="^the checkpoint ") as e:
        gpt2_to_lmlab(cfg, {})
    assert needle in str(e.value) and str(e.value).count(". ") == 0


def test_weights_that_do_not_fit_the_config_are_refused(hf_dir):
    path, hf = hf_dir
    cfg = json.loads((path / "config.json").read_text())
    state = dict(hf.state_dict())
    with pytest.raises(LmlabError, match="shape"):
        gpt2_to_lmlab({**cfg, "n_positions": 32}, state)
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(LmlabError, match="lacks h.1.mlp.c_fc.bias"):
        gpt2_to_lmlab(cfg, state)


# ----------------------------------------------------------------------------------- lmlab -> HF

def _save_run(model, tok, run):
    save_model_config(model.cfg, run)
    save_weights(model, run / "model.safetensors", 0)
    tok.save(run)


@pytest.mark.parametrize("variant", [
    dict(bias=False, activation="gelu", tie_weights=True, pos_encoding="learned"),
    dict(bias=True, activation="gelu_tanh", tie_weights=False, pos_encoding="sinusoidal"),
])
def test_export_gives_the_same_logits(bpe, tmp_path, variant):
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=48, n_layer=2, n_head=4, n_embd=32, **variant)).eval()
    for p in model.parameters():  # nonzero biases and gains, so a mix-up of any tensor shows
        torch.nn.init.normal_(p, std=0.1)
    run, out = tmp_path / "run", tmp_path / "hf"
    _save_run(model, bpe, run)
    export_hf_gpt2(run, out)
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["eos_token_id"] == cfg["bos_token_id"] == bpe.eot_id
    assert hf.config.tie_word_embeddings == variant["tie_weights"] and hf.config.n_positions == 48
    assert max_logit_diff(model, hf, random_ids(bpe.vocab_size, length=48)) <= TOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT[:500])["input_ids"] == bpe.encode(TEXT[:500]) and hf_tok.eos_token_id == bpe.eot_id
    # ... and back: the re-imported run computes the same logits
    back = tmp_path / "back"
    import_hf_gpt2(out, back)
    again, _ = lmlab.load(back)
    with torch.no_grad():
        ids = random_ids(bpe.vocab_size, length=48, seed=4)
        assert (again(ids) - model(ids)).abs().max().item() <= TOL


def test_export_of_a_trained_char_run(tiny_run, tmp_path):
    out = tmp_path / "hf"
    export_hf_gpt2(tiny_run["run"], out)
    model, tok = lmlab.load(tiny_run["run"])
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([tok.encode(TEXT[:32]), tok.encode(TEXT[100:132])])
    assert max_logit_diff(model, hf, ids) <= TOL
    assert load_tokenizer(out).encode("ROMEO") == tok.encode("ROMEO")  # lmlab's char format, kept as is
    assert hf.config.eos_token_id is None and not (out / "tokenizer_config.json").exists()


def test_lmlab_to_gpt2_refuses_other_families(tiny_lstm_run):
    model, _ = lmlab.load(tiny_lstm_run["run"])
    with pytest.raises(LmlabError, match="only GPT models"):
        lmlab_to_gpt2(model)


# ----------------------------------------------------------------------------------- the command

def test_convert_both_ways_through_the_command(hf_dir, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "hf"
    code, stdout, err = run_main(["convert", "--from", "hf-gpt2", hf_dir[0], "--out", run], capsys)
    assert code == 0, err
    assert f"wrote {run}: GPT-2 2x32" in stdout and "end-of-text id 0" in stdout
    code, stdout, err = run_main(["convert", run, "--to", "hf-gpt2", out], capsys)
    assert code == 0, err
    assert GPT2LMHeadModel.from_pretrained(out).config.n_embd == 32
    assert_eval_and_generate_work(run, tmp_path, capsys)


def assert_eval_and_generate_work(run, tmp_path, capsys):
    """`lmlab eval` and `lmlab generate` run on an imported run."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:2000])
    code, stdout, err = run_main(["eval", run, "--data", text, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["tokens"] > 0, err
    code, stdout, err = run_main(["generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "5",
                                  "--temperature", "0"], capsys)
    assert code == 0 and stdout.startswith("ROMEO:"), err


def _llama_dir(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return d


def _no_weights_dir(tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(GPT2Config(n_layer=1, n_embd=8, n_head=2).to_dict()))
    (d / "tokenizer.json").write_text(train_tokenizer("byte", []).to_str())
    return d


@pytest.mark.parametrize("make, needles", [
    (lambda t: t / "missing", ["missing is not a directory"]),
    (lambda t: t, ["has no config.json"]),
    (_llama_dir, ["holds a llama model (LlamaForCausalLM)", "reads GPT-2 checkpoints only"]),
    (_no_weights_dir, ["has no model.safetensors or pytorch_model.bin"]),
])
def test_bad_hf_directories(make, needles, tmp_path, capsys):
    src = make(tmp_path)
    out = tmp_path / "out"
    assert_user_error(*run_main(["convert", "--from", "hf-gpt2", src, "--out", out], capsys), *needles)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("argv, needle", [
    (["convert", "X", "--from", "onnx", "--out", "Y"], "unknown format 'onnx'"),
    (["convert", "X", "--out", "Y"], "needs either --from"),
    (["convert", "X", "--to", "hf-gpt2"], "needs an output directory"),
])
def test_bad_convert_arguments(argv, needle, capsys):
    assert_user_error(*run_main(argv, capsys), needle)


def test_convert_never_overwrites(hf_dir, imported, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert_user_error(*run_main(["convert", "--from", "hf-gpt2", hf_dir[0], "--out", busy], capsys),
                      "already exists and is not empty")
    assert_user_error(*run_main(["convert", imported, "--to", "hf-gpt2", busy], capsys), "already exists")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------------- fine-tuning an import

def test_train_init_fine_tunes_an_imported_model(imported, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "ft"
    code, _, err = run_main(["prepare", text, "--tokenizer", imported, "--out", data, "--quiet"], capsys)
    assert code == 0, err
    assert (data / "tokenizer.json").read_text() == (imported / "tokenizer.json").read_text()
    # The tiny config's model section agrees with the import (2 x 32, 2 heads) and asks for block_size 32 < 64.
    cfg = write_config(tmp_path / "ft.yaml", data,
                       train={"max_iters": 12, "batch_size": 8, "eval_interval": 6, "save_interval": 6,
                              "warmup_iters": 0, "learning_rate": 3e-3, "tensorboard": False})
    code, stdout, err = run_main(["train", "--init", imported, "--config", cfg, "--out", run, "--quiet",
                                  "--model.dropout", "0"], capsys)
    assert code == 0, err
    model, _ = lmlab.load(run, which="last")
    c = model.cfg
    assert (c.n_layer, c.n_embd, c.block_size, c.bias, c.activation, c.dropout) == (2, 32, 32, True, "gelu_tanh", 0)
    start, end = load_file(imported / "model.safetensors"), load_file(run / "model.safetensors")
    moved = (end["wte.weight"] - start["wte.weight"]).abs().max().item()
    assert 0 < moved < 0.1  # fine-tuned from the import (init std 0.1), not from a fresh random model
    assert end["wpe.weight"].shape == (32, 32) and start["wpe.weight"].shape == (64, 32)  # positions cropped
    rows = [r for r in read_metrics(run / "metrics.csv") if r["val_loss"]]
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_train_init_refusals(imported, tiny_run, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_run["data"], train={"max_iters": 2})
    bad = write_config(tmp_path / "bad.yaml", tiny_run["data"], model={"n_layer": 4})
    assert_user_error(*run_main(["train", "--init", imported, "--config", bad, "--out", tmp_path / "r"], capsys),
                      "model.n_layer 4 conflicts with", "n_layer 2")
    assert_user_error(*run_main(["train", "--init", imported, "--config", cfg, "--out", tmp_path / "r",
                                 "--model.bias", "false"], capsys), "model.bias false conflicts", "bias true")
    # char data is not the import's BPE tokens
    assert_user_error(*run_main(["train", "--init", imported, "--config", cfg, "--out", tmp_path / "r"], capsys),
                      "prepared with another tokenizer", "--tokenizer")
    assert_user_error(*run_main(["train", "--init", tmp_path, "--config", cfg, "--out", tmp_path / "r"], capsys),
                      "is not a run directory")
    assert_user_error(*run_main(["train", "--init", imported, "--resume", tiny_run["run"]], capsys),
                      "give only one of them")
    assert not (tmp_path / "r").exists()


def test_prepare_tokenizer_path_errors(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello\nworld\n")
    assert_user_error(*run_main(["prepare", text, "--tokenizer", tmp_path / "nope.json", "--out", tmp_path / "d"],
                                capsys), "neither char, byte, word, jieba, bpe, char-bpe nor an existing")
    train_tokenizer("byte", []).save(tmp_path / "tok.json")
    assert_user_error(*run_main(["prepare", text, "--tokenizer", tmp_path / "tok.json", "--vocab-size", "300",
                                 "--out", tmp_path / "d"], capsys), "--vocab-size")
