"""Hugging Face GPT-2 <-> lmlab GPT (`lmlab convert --from hf-gpt2 DIR --out RUN`, `RUN --to hf-gpt2 DIR`).

`gpt2_to_lmlab` / `lmlab_to_gpt2` map a `GPT2LMHeadModel` config + state dict to and from our GPTConfig + state
dict (in memory, exact: logits match to float rounding); `import_hf_gpt2` / `export_hf_gpt2` read and write whole
directories. transformers is not needed for any of it.

Layout of GPT2LMHeadModel: transformer.{wte,wpe,h.N.*,ln_f} + lm_head. Its Conv1D layers store weights as
[in, out] (the transpose of nn.Linear); c_attn packs q, k, v along the output dim like our fused qkv Linear.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from ..errors import LmlabError
from .hf_files import (check_free, check_model_type, check_shapes, output_dir, read_hf_bpe_tokenizer,
                       read_hf_config, read_hf_weights, save_safetensors)

GPT2_FROM = "--from hf-gpt2"
# HF activation_function -> our GPTConfig.activation (gelu_new / gelu_fast / gelu_pytorch_tanh are one formula).
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu": "gelu", "gelu_python": "gelu"}
GPT2_EXPORT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# GPT2Config's defaults, for keys a config.json leaves out.
GPT2_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
                 "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                 "resid_pdrop": 0.1, "tie_word_embeddings": True, "scale_attn_weights": True,
                 "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                 "add_cross_attention": False}
# Per block: our name -> (HF name under h.N., stored transposed by Conv1D)
_GPT2_BLOCK = {"ln_1.weight": ("ln_1.weight", False), "ln_1.bias": ("ln_1.bias", False),
               "attn.qkv.weight": ("attn.c_attn.weight", True), "attn.qkv.bias": ("attn.c_attn.bias", False),
               "attn.proj.weight": ("attn.c_proj.weight", True), "attn.proj.bias": ("attn.c_proj.bias", False),
               "ln_2.weight": ("ln_2.weight", False), "ln_2.bias": ("ln_2.bias", False),
               "mlp.fc.weight": ("mlp.c_fc.weight", True), "mlp.fc.bias": ("mlp.c_fc.bias", False),
               "mlp.proj.weight": ("mlp.c_proj.weight", True), "mlp.proj.bias": ("mlp.c_proj.bias", False)}
_GPT2_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers older checkpoints saved


def _gpt2_name_map(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our state-dict name -> (HF name without the "transformer." prefix, transposed?) for every tensor."""
    names = {"wte.weight": ("wte.weight", False), "wpe.weight": ("wpe.weight", False),
             "ln_f.weight": ("ln_f.weight", False), "ln_f.bias": ("ln_f.bias", False)}
    for i in range(n_layer):
        names.update({f"blocks.{i}.{ours}": (f"h.{i}.{theirs}", t) for ours, (theirs, t) in _GPT2_BLOCK.items()})
    return names


def check_gpt2_type(hf_config: dict, where: str = "the checkpoint") -> None:
    """Refuse a config.json of another architecture, naming it."""
    check_model_type(hf_config, "gpt2", "GPT2", where, f"{GPT2_FROM} reads GPT-2 checkpoints only")


def _gpt2_setting(hf_config: dict, key: str):
    value = hf_config.get(key)
    return GPT2_DEFAULTS[key] if value is None else value


def gpt2_config_to_lmlab(hf_config: dict, where: str = "the checkpoint"):
    """The GPTConfig of a GPT-2 config.json; anything lmlab's GPT cannot compute exactly is refused."""
    from ..models.gpt import GPTConfig

    check_gpt2_type(hf_config, where)
    get = lambda key: _gpt2_setting(hf_config, key)  # noqa: E731
    n_embd = get("n_embd")
    refusals = [
        (get("n_inner") not in (None, 4 * n_embd), f"its MLP width n_inner {get('n_inner')} is not 4 * n_embd"),
        (get("activation_function") not in GPT2_ACTIVATIONS, f"activation {get('activation_function')!r} is not "
                                                             f"one of {', '.join(GPT2_ACTIVATIONS)}"),
        (bool(get("scale_attn_by_inverse_layer_idx")), "it sets scale_attn_by_inverse_layer_idx"),
        (bool(get("reorder_and_upcast_attn")), "it sets reorder_and_upcast_attn"),
        (not get("scale_attn_weights"), "it sets scale_attn_weights false"),
        (bool(get("add_cross_attention")), "it has cross-attention layers"),
    ]
    for refused, why in refusals:
        if refused:
            raise LmlabError(f"{where} cannot be converted exactly: {why}, which lmlab's GPT does not implement.")
    cfg = GPTConfig(vocab_size=int(get("vocab_size")), block_size=int(get("n_positions")), n_layer=int(get("n_layer")),
                    n_head=int(get("n_head")), n_embd=int(n_embd), dropout=float(get("resid_pdrop")), bias=True,
                    pos_encoding="learned", tie_weights=bool(get("tie_word_embeddings")),
                    activation=GPT2_ACTIVATIONS[get("activation_function")],
                    layer_norm_eps=float(get("layer_norm_epsilon")))
    cfg.validate()
    return cfg


def _strip_gpt2_prefix(hf_state: dict) -> dict:
    """HF names without "transformer." (GPT2LMHeadModel saves it, GPT2Model and the original gpt2 do not)."""
    return {k.removeprefix("transformer."): v for k, v in hf_state.items()}


def gpt2_to_lmlab(hf_config: dict, hf_state: dict, where: str = "the checkpoint"):
    """(GPTConfig, state dict of our GPT) from a GPT-2 config.json dict and its tensors (float32 copies)."""
    from ..models.gpt import GPT

    cfg = gpt2_config_to_lmlab(hf_config, where)
    hf = {k: v for k, v in _strip_gpt2_prefix(hf_state).items() if not _GPT2_BUFFERS.fullmatch(k)}
    names = _gpt2_name_map(cfg.n_layer)
    expected = {theirs for theirs, _ in names.values()} | ({"lm_head.weight"} if not cfg.tie_weights else set())
    missing = sorted(expected - hf.keys())
    unexpected = sorted(hf.keys() - expected - {"lm_head.weight"})  # a tied checkpoint may repeat lm_head
    if missing or unexpected:
        problem = f"lacks {', '.join(missing[:3])}" if missing else f"has unknown tensors {', '.join(unexpected[:3])}"
        raise LmlabError(f"{where} {problem}{' ...' if len(missing or unexpected) > 3 else ''}; "
                         "it is not a GPT-2 checkpoint lmlab can read.")
    state = {ours: (hf[theirs].t() if transposed else hf[theirs]).float().contiguous()
             for ours, (theirs, transposed) in names.items()}
    if not cfg.tie_weights:
        state["lm_head.weight"] = hf["lm_head.weight"].float().contiguous()
    check_shapes(GPT, cfg, state, where)
    return cfg, state


def lmlab_to_gpt2(model, eot_id: int | None = None) -> tuple[dict, dict]:
    """(config.json dict, HF-named tensors) of a GPT2LMHeadModel that computes what our GPT `model` computes.

    bias=False models get zero biases, sinusoidal positions are written as a learned wpe table, an untied head
    sets tie_word_embeddings false. `eot_id`, the tokenizer's end-of-text id, becomes bos/eos_token_id.
    """
    from ..models.gpt import GPT

    if not isinstance(model, GPT):
        raise LmlabError(f"only GPT models can be exported to GPT-2, not a {getattr(model, 'family', type(model))} "
                         "model.")
    cfg, ours = model.cfg, model.state_dict()
    tensor = lambda name: ours[name].detach().float().cpu()  # noqa: E731
    state = {}
    for name, (theirs, transposed) in _gpt2_name_map(cfg.n_layer).items():
        if name in ours:
            t = tensor(name).t() if transposed else tensor(name)
        elif name == "wpe.weight":
            t = model.pos_table.detach().float().cpu()
        else:  # a bias of a bias=False model: the weight it goes with says its size
            t = torch.zeros(ours[name.removesuffix("bias") + "weight"].shape[0])
        state[f"transformer.{theirs}"] = t.contiguous().clone()
    if not cfg.tie_weights:
        state["lm_head.weight"] = tensor("lm_head.weight").contiguous().clone()
    return gpt2_config_from_lmlab(cfg, eot_id), state


def gpt2_config_from_lmlab(cfg, eot_id: int | None = None) -> dict:
    """GPT2Config fields (config.json) for our GPTConfig."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None, "activation_function": GPT2_EXPORT_ACTIVATIONS[cfg.activation],
            "layer_norm_epsilon": cfg.layer_norm_eps, "tie_word_embeddings": cfg.tie_weights,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "initializer_range": 0.02, "bos_token_id": eot_id, "eos_token_id": eot_id, "use_cache": True,
            "dtype": "float32"}


def import_hf_gpt2(src_dir, out_run) -> dict:
    """Convert a HF GPT-2 checkpoint directory into an lmlab run directory (`lmlab.load`, `generate`, `eval`).

    Writes config.json (our GPTConfig), model.safetensors (our names) and tokenizer.json. The run has no
    config.yaml or trainer state: fine-tune it with `lmlab train --init RUN`. Returns a short summary.
    """
    from ..checkpoint import MODEL_CONFIG, WEIGHTS

    src, out = Path(src_dir), Path(out_run)
    hf_config = read_hf_config(src)
    check_free(out)
    check_gpt2_type(hf_config, str(src))
    tokenizer = read_hf_bpe_tokenizer(src)
    cfg, state = gpt2_to_lmlab(hf_config, read_hf_weights(src), str(src))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmlabError(f"{src}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{cfg.vocab_size}; the tokenizer files belong to another model.")
    with output_dir(out) as tmp:
        (tmp / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
        save_safetensors(state, tmp / WEIGHTS, {"step": "0", "source": f"hf-gpt2:{src.resolve()}"})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    return {"config": cfg, "tokenizer": tokenizer.kind, "eot_id": tokenizer.eot_id,
            "parameters": sum(t.numel() for t in state.values())}


def export_hf_gpt2(run, out_dir) -> dict:
    """Write a lmlab GPT run as a HF GPT-2 directory that `GPT2LMHeadModel.from_pretrained` loads.

    config.json (GPT2Config fields), model.safetensors (HF names; the run's best weights when it kept them)
    and tokenizer.json. A BPE tokenizer is a Hugging Face tokenizers JSON already, so HF reads it too (with a
    tokenizer_config.json for `AutoTokenizer`); a char, word or byte tokenizer is written in lmlab's own
    format, which lmlab reads back but Hugging Face tokenizers cannot. Returns a short summary.
    """
    from ..checkpoint import load

    check_free(Path(out_dir))
    model, tokenizer = load(run)
    hf_config, state = lmlab_to_gpt2(model, tokenizer.eot_id)
    with output_dir(Path(out_dir)) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_safetensors(state, tmp / "model.safetensors", {})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        if tokenizer.kind == "bpe":
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer, model.cfg), indent=2)
                                                       + "\n", encoding="utf-8")
    return {"config": hf_config, "tokenizer": tokenizer.kind, "hf_tokenizer": tokenizer.kind == "bpe"}


def _tokenizer_config(tokenizer, cfg) -> dict:
    from ..tokenizer import EOT

    special = {"bos_token": EOT, "eos_token": EOT} if tokenizer.eot_id is not None else {}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.block_size, **special}


