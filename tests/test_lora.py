"""LoRA adapters (lmlab.lora) against PEFT, with no download.

The oracle is peft (pinned in requirements-dev.txt) on random Hugging Face models built in the test: a LlamaForCausalLM
and a Qwen2ForCausalLM (q/k/v biases, tied head) from test_llama_convert's helpers, imported into lmlab with
`lmlab convert --from hf-llama`'s importer, and a GPT2LMHeadModel (Conv1D layers) from test_hf's. An adapter goes
both ways: written by save_adapter and read by peft.PeftModel.from_pretrained, and written by PEFT's save_pretrained
and read by load_adapter, each giving the other's logits.
"""
import copy
import json

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRALinear, adapter_state_dict, apply_lora,
                        base_weights_hash, load_adapter, lora_layers, merge_lora, save_adapter)
from lmlab.tokenizer import train_tokenizer

peft = pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402

from test_hf import hf_gpt2, random_ids  # noqa: E402
from test_llama_convert import TEXT, hf_model, save_hf_dir  # noqa: E402

KINDS = ("llama", "qwen2")
VOCAB = 300
TOL = 1e-5
LLAMA_LAYERS = ("q_proj (q), k_proj (k), v_proj (v), o_proj (o), gate_proj (gate), up_proj (up), down_proj (down), "
                "lm_head")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations


@pytest.fixture(scope="module")
def bpe():
    """A 300-token byte-level BPE (the HF directories need a tokenizer.json)."""
    return train_tokenizer("bpe", [TEXT], vocab_size=VOCAB)


@pytest.fixture(scope="module")
def runs(bpe, tmp_path_factory):
    """kind -> an lmlab run imported from a random HF model of that kind (hf_model(kind, VOCAB) rebuilds it)."""
    from lmlab.convert import import_hf_llama

    base = tmp_path_factory.mktemp("lora")
    out = {}
    for kind in KINDS:
        out[kind] = base / f"{kind}-run"
        import_hf_llama(save_hf_dir(hf_model(kind, VOCAB), bpe, base / kind), out[kind])
    return out


def fresh(runs, kind="llama"):
    return lmlab.load(runs[kind])[0].eval()


def randomize(model, seed=0, scale=0.2):
    """Random lora_B weights (lora_A is random from the start), ours or PEFT's, so an adapter changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


IDS = random_ids(VOCAB, batch=2, length=24)


# ----------------------------------------------------------------------------------- the layer

class _One(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def test_a_lora_linear_equals_peft_s_layer_output_and_gradients():
    """Training (lmlab's fused autograd node) and evaluation, against peft's LoRA layer with the same weights."""
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    ours = LoRALinear(copy.deepcopy(base), rank=4, alpha=8, dropout=0.0)
    randomize(ours)
    theirs = peft.get_peft_model(_One(copy.deepcopy(base)), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["lin"])).base_model.model.lin
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(ours.lora_B.weight)
    x, g = torch.randn(3, 5, 16, requires_grad=True), torch.randn(3, 5, 12)
    for train in (True, False):
        ours.train(train), theirs.train(train)
        outputs, input_grads = [], []
        for layer in (ours, theirs):
            y = layer(x)
            (y * g).sum().backward()
            outputs.append(y.detach())
            input_grads.append(x.grad)
            x.grad = None
        assert (outputs[0] - outputs[1]).abs().max() <= 1e-6
        assert (input_grads[0] - input_grads[1]).abs().max() <= 1e-6
        for mine, peft_s in ((ours.lora_A, theirs.lora_A["default"]), (ours.lora_B, theirs.lora_B["default"])):
            assert (mine.weight.grad - peft_s.weight.grad).abs().max() <= 1e-6 and mine.weight.grad.abs().sum() > 0
            mine.weight.grad = peft_s.weight.grad = None
    assert ours.base.weight.grad is None and ours.scaling == 2.0


def test_dropout_in_the_fused_layer_is_the_lora_formula_with_its_mask():
    """With dropout, the fused node's output and gradients are those of base(x) + s B A (x * mask / (1 - p)) under
    plain autograd, with the mask keep_mask draws from the same seed; the mask keeps 1 - p of the entries."""
    from lmlab.lora import keep_mask

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 12), rank=4, alpha=8, dropout=0.25).train()
    randomize(layer)
    x, g = torch.randn(3, 5, 16, requires_grad=True), torch.randn(3, 5, 12)
    torch.manual_seed(7)
    y = layer(x)
    (y * g).sum().backward()
    got = [y.detach(), x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    x.grad = layer.lora_A.weight.grad = layer.lora_B.weight.grad = None
    torch.manual_seed(7)
    mask = keep_mask(x, 0.25)
    want_y = layer.base(x) + layer.lora_B(layer.lora_A(x * mask / 0.75)) * layer.scaling
    (want_y * g).sum().backward()
    want = [want_y.detach(), x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    for a, b in zip(got, want):  # (float32 rounding: the sums run in another order)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert 0.0 < float((mask == 0).float().mean()) < 1.0
    rate = float(keep_mask(torch.empty(1000, 1000), 0.05).float().mean())
    assert abs(rate - 0.95) < 0.002  # (5 sigma of 1e6 draws is 0.0011)


def test_a_fresh_lora_linear_starts_as_peft_does():
    base = torch.nn.Linear(64, 32)
    layer = LoRALinear(base, rank=8, alpha=16)
    assert torch.equal(layer.lora_B.weight, torch.zeros(32, 8))  # B = 0 (Hu et al. 2021, 4.1)
    a = layer.lora_A.weight  # kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert a.shape == (8, 64) and 0.1 < a.abs().max() <= 64 ** -0.5 and a.std() > 0.05
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), base(x)) and not base.weight.requires_grad


# ----------------------------------------------------------------------------------- lmlab <-> PEFT

@pytest.mark.parametrize("kind", KINDS)
def test_an_lmlab_adapter_loads_in_peft_with_the_same_logits(kind, runs, tmp_path):
    model = fresh(runs, kind)
    base_logits, base_hash = logits(model, IDS), base_weights_hash(model)
    names = apply_lora(model, ["q", "v", "down"], rank=4, alpha=8)
    assert names == [f"layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj",
                                                                   "mlp.down_proj")]
    randomize(model)
    ours = logits(model, IDS)
    assert (ours - base_logits).abs().max() > 0.05  # the adapter does something
    save_adapter(model, tmp_path / "ours", base_hash, {"note": "test"})
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]

    # the same tensor names, shapes and config keys as PEFT's save_pretrained for the same layers
    reference = peft.get_peft_model(hf_model(kind, VOCAB), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
    reference.save_pretrained(tmp_path / "peft")
    mine, theirs = load_file(tmp_path / "ours" / ADAPTER_WEIGHTS), load_file(tmp_path / "peft" / ADAPTER_WEIGHTS)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in mine
    assert all(torch.equal(mine[k], v) for k, v in adapter_state_dict(model).items())
    config, peft_config = (json.loads((tmp_path / d / ADAPTER_CONFIG).read_text()) for d in ("ours", "peft"))
    assert config.keys() - peft_config.keys() == {"lmlab_base_sha256", "lmlab_info"}
    assert sorted(config.pop("target_modules")) == sorted(peft_config.pop("target_modules"))
    assert {k: config[k] for k in peft_config} == peft_config
    assert config["lmlab_base_sha256"] == base_hash and config["lmlab_info"] == {"note": "test"}

    with pytest.warns(UserWarning, match="lmlab_base_sha256"):  # PEFT ignores our keys, saying so
        hf = peft.PeftModel.from_pretrained(hf_model(kind, VOCAB), tmp_path / "ours").eval()
    assert (logits(hf, IDS) - ours).abs().max() <= TOL
    again = fresh(runs, kind)  # and lmlab reads its own file back
    assert load_adapter(again, tmp_path / "ours") == names
    assert torch.equal(logits(again, IDS), ours)


@pytest.mark.parametrize("kind, targets, n_layers", [
    ("llama", ["k_proj", "o_proj", "gate_proj", "up_proj"], 8),
    ("qwen2", ["k_proj", "o_proj", "gate_proj", "up_proj"], 8),
    ("llama", "all-linear", 14),  # every Linear but lm_head
    ("qwen2", r".*\.layers\.1\..*_proj", 7),  # a regex: layer 1 only
])
def test_a_peft_adapter_loads_in_lmlab_with_the_same_logits(kind, targets, n_layers, runs, tmp_path):
    hf = peft.get_peft_model(hf_model(kind, VOCAB), peft.LoraConfig(
        r=6, lora_alpha=12, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM"))
    randomize(hf, seed=3)
    hf.save_pretrained(tmp_path / "peft")
    model = fresh(runs, kind)
    base = logits(model, IDS)
    names = load_adapter(model, tmp_path / "peft")
    assert len(names) == n_layers and all(lora_layers(model)[n].scaling == 2.0 for n in names)
    ours = logits(model, IDS)
    assert (ours - base).abs().max() > 0.05
    assert (ours - logits(hf.eval(), IDS)).abs().max() <= TOL
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}  # ready to train on


def test_gpt2_adapters_go_both_ways(tmp_path):
    from lmlab.checkpoint import load_state_into
    from lmlab.convert import gpt2_to_lmlab
    from lmlab.models.gpt import GPT

    def ours():
        cfg, state = gpt2_to_lmlab(hf_gpt2(VOCAB, 0).config.to_dict(), hf_gpt2(VOCAB, 0).state_dict())
        model = GPT(cfg).eval()
        load_state_into(model, state, "gpt2")
        return model

    model = ours()
    apply_lora(model, ["qkv", "attn.proj", "fc"], rank=4, alpha=4)  # attn.proj: not the MLP's proj
    randomize(model)
    save_adapter(model, tmp_path / "ours", base_weights_hash(model))
    config = json.loads((tmp_path / "ours" / ADAPTER_CONFIG).read_text())
    assert config["fan_in_fan_out"]  # GPT-2's Conv1D; "c_proj" alone would pick the MLP's too
    assert config["target_modules"] == ["c_attn", "c_fc", "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    saved = load_file(tmp_path / "ours" / ADAPTER_WEIGHTS)
    assert saved["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (96, 4)
    with pytest.warns(UserWarning):
        hf = peft.PeftModel.from_pretrained(hf_gpt2(VOCAB, 0), tmp_path / "ours").eval()
    assert (logits(hf, IDS) - logits(model, IDS)).abs().max() <= TOL

    theirs = peft.get_peft_model(hf_gpt2(VOCAB, 0), peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_proj"],
                                                                    fan_in_fan_out=True, task_type="CAUSAL_LM"))
    randomize(theirs, seed=4)
    theirs.save_pretrained(tmp_path / "peft")
    model = ours()
    assert load_adapter(model, tmp_path / "peft") == ["blocks.0.attn.proj", "blocks.0.mlp.proj",
                                                       "blocks.1.attn.proj", "blocks.1.mlp.proj"]
    assert (logits(theirs.eval(), IDS) - logits(model, IDS)).abs().max() <= TOL


# ----------------------------------------------------------------------------------- merging, freezing, storage

def test_merged_equals_unmerged_and_gives_plain_linears(runs):
    model = fresh(runs)  # the llama run: untied, so lm_head can take an adapter too
    names = apply_lora(model, ["q", "k", "v", "o", "gate", "up", "down", "lm_head"], rank=4, alpha=8)
    assert len(names) == 15 and names[-1] == "lm_head"
    randomize(model, scale=0.1)
    before, base_hash = logits(model, IDS), base_weights_hash(model)
    assert (before - logits(fresh(runs), IDS)).abs().max() > 0.5
    assert merge_lora(model) == names and not lora_layers(model)
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in names)
    assert (logits(model, IDS) - before).abs().max() <= TOL
    assert base_weights_hash(model) != base_hash  # the merged weights are another base


def test_a_fresh_adapter_changes_nothing_and_only_adapters_train(runs):
    model = fresh(runs, "qwen2")
    base, base_hash = logits(model, IDS), base_weights_hash(model)
    names = apply_lora(model, ["q", "o", "up"], rank=8, alpha=16, dropout=0.1)
    assert torch.equal(logits(model, IDS), base) and base_weights_hash(model) == base_hash
    adapters = {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = model(IDS[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, VOCAB), IDS[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert grads == adapters
        optimizer.step()
    assert all(lora_layers(model)[n].lora_B.weight.abs().sum() > 0 for n in names)
    assert base_weights_hash(model) == base_hash  # the base did not move
    assert (logits(model.eval(), IDS) - base).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_cached_decoding_with_adapters_equals_a_full_pass(family, runs):
    """The decoding kernels run only plain Linear layers; adapted blocks take the ordinary path."""
    from lmlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = fresh(runs, "qwen2") if family == "llama" else GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2,
                                                                        n_head=2, n_embd=32)).eval()
    apply_lora(model, ["q", "v", "down"] if family == "llama" else ["qkv", "fc"], rank=4)
    randomize(model)
    ids = IDS[:, :20]
    with torch.no_grad():
        full = torch.log_softmax(model(ids).float(), dim=-1)
        lp, state = model.logprobs_next(ids[:, :8])
        worst = (lp - full[:, 7]).abs().max().item()
        for t in range(9, 21):
            lp, state = model.logprobs_next(ids[:, :t], state)
            worst = max(worst, (lp - full[:, t - 1]).abs().max().item())
    assert worst <= TOL


@pytest.mark.parametrize("base_dtype, dtype, close", [("bf16", torch.bfloat16, 0.05), ("fp16", torch.float16, 0.01),
                                                      ("int8", torch.int8, 0.2)])
def test_a_narrow_base_is_stored_narrow_and_round_trips(base_dtype, dtype, close, runs, tmp_path):
    model = fresh(runs)
    full, base_hash = logits(model, IDS), base_weights_hash(model)
    w = model.layers[0].mlp.up_proj.weight.detach().clone()
    names = apply_lora(model, ["q", "k", "v", "o", "gate", "up", "down"], rank=4, base_dtype=base_dtype)
    layer = model.layers[0].mlp.up_proj
    assert layer.base.weight.dtype == dtype and layer.lora_A.weight.dtype == torch.float32
    if base_dtype == "int8":  # one scale per row, absmax / 127: each weight within half a step
        assert torch.allclose(layer.weight_scale, w.abs().amax(dim=1) / 127)
        assert ((layer.base_weight() - w).abs() <= layer.weight_scale[:, None] / 2 + 1e-7).all()
    else:
        assert layer.weight_scale is None and torch.equal(layer.base_weight(), w.to(dtype).float())
    assert 0 < (logits(model, IDS) - full).abs().max() <= close  # the rounded base, fresh adapter
    assert base_weights_hash(model) == base_hash  # the hash of the weights before they were rounded
    randomize(model, scale=0.1)
    adapted = logits(model, IDS)
    save_adapter(model, tmp_path / "a", base_weights_hash(model))
    again = fresh(runs)
    load_adapter(again, tmp_path / "a", base_dtype=base_dtype)
    assert torch.equal(logits(again, IDS), adapted)
    merge_lora(model)
    assert model.get_submodule(names[0]).weight.dtype == torch.float32
    assert (logits(model, IDS) - adapted).abs().max() <= TOL


def test_gpt_names_and_a_tied_head():
    from lmlab.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))  # tied head
    assert apply_lora(copy.deepcopy(model), ["qkv", "fc"], rank=2) == [
        "blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.1.attn.qkv", "blocks.1.mlp.fc"]
    assert len(apply_lora(copy.deepcopy(model), ["proj"], rank=2)) == 4  # attn.proj and mlp.proj
    with pytest.raises(LmlabError, match="its Linear layers are qkv, proj, fc, lm_head"):
        apply_lora(model, ["q"], rank=2)
    with pytest.raises(LmlabError, match=r"^lm_head shares its weight with wte \(tied weights\)"):
        apply_lora(model, ["lm_head"], rank=2)


# ----------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, needle", [
    (dict(targets=["q", "wq", "attn"]), f"no Linear layer of this llama model is named 'wq', 'attn'; its Linear "
                                        f"layers are {LLAMA_LAYERS}."),
    (dict(targets=[]), "give the layers to adapt as a list of short names"),
    (dict(rank=17), "rank 17 is larger than layers.0.self_attn.k_proj (64 in, 16 out); give a rank of at most 16."),
    (dict(rank=0), "the LoRA rank must be a positive integer, got 0."),
    (dict(alpha=0), "the LoRA alpha must be a number > 0"),
    (dict(dropout=1.0), "the LoRA dropout must be in [0, 1)"),
    (dict(base_dtype="int4"), "base_dtype must be one of bf16, fp16, int8 or None, got 'int4'."),
])
def test_bad_settings_are_refused_and_change_nothing(kwargs, needle, runs):
    model = fresh(runs)
    settings = {"targets": ["q", "k"], "rank": 4, "alpha": 8, "dropout": 0.0, **kwargs}
    with pytest.raises(LmlabError) as e:
        apply_lora(model, **settings)
    assert needle in str(e.value)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_adapting_twice_and_saving_without_adapters_are_refused(runs, tmp_path):
    model = fresh(runs)
    with pytest.raises(LmlabError, match="the model has no LoRA layers; apply_lora"):
        save_adapter(model, tmp_path / "a", base_weights_hash(model))
    apply_lora(model, ["q"], rank=2)
    with pytest.raises(LmlabError, match="layers.0.self_attn.q_proj already has a LoRA adapter"):
        apply_lora(model, ["q_proj"], rank=2)
    with pytest.raises(LmlabError, match="base_hash must be a SHA-256 hex digest"):
        save_adapter(model, tmp_path / "a", "abc")
    with pytest.raises(LmlabError, match="the adapter's info must be JSON data"):
        save_adapter(model, tmp_path / "a", base_weights_hash(model), {"x": object()})
    seq = torch.nn.Sequential(torch.nn.Linear(8, 8))
    apply_lora(seq, ["0"], rank=2)
    with pytest.raises(LmlabError, match="lmlab knows for llama and gpt models only"):
        save_adapter(seq, tmp_path / "seq", "0" * 64)


@pytest.fixture(scope="module")
def saved(runs, tmp_path_factory):
    """An adapter saved by save_adapter on the llama run."""
    model = fresh(runs)
    base_hash = base_weights_hash(model)
    apply_lora(model, ["q", "v"], rank=4, alpha=8)
    randomize(model)
    path = tmp_path_factory.mktemp("saved") / "adapter"
    save_adapter(model, path, base_hash)
    save_adapter(model, path, base_hash)  # overwriting leaves no temporary files
    assert sorted(p.name for p in path.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    return path


def _edit_config(path, **changes):
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    config.update(changes)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))


def _edit_weights(path, edit):
    tensors = load_file(path / ADAPTER_WEIGHTS)
    edit(tensors)
    save_file(tensors, path / ADAPTER_WEIGHTS)


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
BROKEN = {
    "no directory": (lambda p: __import__("shutil").rmtree(p), "is not a directory"),
    "no config": (lambda p: (p / ADAPTER_CONFIG).unlink(), "adapter_config.json does not exist"),
    "bad JSON": (lambda p: (p / ADAPTER_CONFIG).write_text("{r: 4"), "adapter_config.json is not valid JSON"),
    "not LoRA": (lambda p: _edit_config(p, peft_type="IA3"), "is not a LoRA adapter config (peft_type 'IA3'"),
    "no rank": (lambda p: _edit_config(p, r=None), "has no valid r, lora_alpha and lora_dropout"),
    "DoRA": (lambda p: _edit_config(p, use_dora=True), "sets use_dora = true, which is not plain LoRA"),
    "no targets": (lambda p: _edit_config(p, target_modules=None), "has no target_modules list"),
    "unknown targets": (lambda p: _edit_config(p, target_modules=["wq"]),
                        "target_modules ['wq'] name no Linear layer of this model"),
    "too wide": (lambda p: _edit_config(p, r=100), "adapter_config.json: rank 100 is larger than"),
    "no weights": (lambda p: (p / ADAPTER_WEIGHTS).unlink(), "has no adapter_model.safetensors"),
    "truncated": (lambda p: (p / ADAPTER_WEIGHTS).write_bytes((p / ADAPTER_WEIGHTS).read_bytes()[:300]),
                  "adapter_model.safetensors is corrupt or truncated"),
    "missing key": (lambda p: _edit_weights(p, lambda t: t.pop(f"{Q0}.lora_B.weight")),
                    f"missing ['{Q0}.lora_B.weight'], unexpected []"),
    "unexpected key": (lambda p: _edit_weights(p, lambda t: t.update({f"{Q0}.lora_C.weight": torch.zeros(1)})),
                       f"missing [], unexpected ['{Q0}.lora_C.weight']"),
    "other shape": (lambda p: _edit_config(p, r=5), f"holds {Q0}.lora_A.weight of shape (4, 64) where the model and "
                                                    "its adapter_config.json imply (5, 64)"),
    "other base": (lambda p: _edit_config(p, lmlab_base_sha256="0" * 64),
                   "was made for other base weights (lmlab_base_sha256 000000000000..."),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_adapter_is_refused_naming_the_file(case, saved, runs, tmp_path):
    import shutil

    path = shutil.copytree(saved, tmp_path / "adapter")
    breaks, needle = BROKEN[case]
    breaks(path)
    model = fresh(runs)
    with pytest.raises(LmlabError) as e:
        load_adapter(model, path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # untouched


def test_an_adapter_of_another_base_is_refused(saved, runs):
    model = fresh(runs)
    with torch.no_grad():
        model.norm.weight[0] += 1e-3  # any change of any base tensor
    with pytest.raises(LmlabError, match="made for other base weights .*; load it onto the model it was trained on"):
        load_adapter(model, saved)
    model = fresh(runs)
    load_adapter(model, saved)
    with pytest.raises(LmlabError, match="the model already has LoRA layers"):
        load_adapter(model, saved)
