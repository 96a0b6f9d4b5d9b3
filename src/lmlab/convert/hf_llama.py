"""Hugging Face Llama / Qwen2 / Mistral <-> lmlab Llama (`lmlab convert --from hf-llama DIR --out RUN`,
`RUN --to hf-llama DIR`).

LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM are one computation (RMSNorm, rotary positions in
rotate_half layout, grouped-query attention, SwiGLU); Qwen2 adds biases on q, k and v, Mistral a sliding window.
lmlab's module names are Hugging Face's without "model.", so the weights convert by name; what lmlab's Llama
cannot compute exactly (rope scaling, a sliding window shorter than the context, other biases or activations)
is refused in one sentence. A run keeps the tokenizer's tokenizer.json and, as tokenizer_config.json, its chat
template and special tokens. Export writes qwen2 when the run has q/k/v biases, llama otherwise.
`write_llama_run` is also the GGUF import's writer (convert/gguf.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..errors import LmlabError
from .hf_files import (TOKENIZER_CONFIG, check_free, check_shapes, other_model_error, output_dir, read_hf_config,
                       read_hf_weights, read_tokenizer_settings, save_safetensors, tokenizer_config_json)

LLAMA_FROM = "--from hf-llama"
# model_type -> the class name prefix of its architectures (older config.json files name only the class)
LLAMA_TYPES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
# The class defaults of what a config.json may leave out (LlamaConfig / Qwen2Config / MistralConfig).
MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "mistral": 131072}
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_UNUSED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


def not_exact(where: str, why: str) -> LmlabError:
    """The one sentence refusing what lmlab's Llama cannot compute exactly (`why` names it)."""
    return LmlabError(f"{where} cannot be converted exactly: {why}, which lmlab's Llama does not implement.")


def llama_type(hf_config: dict, where: str) -> str:
    """llama, qwen2 or mistral; any other architecture is refused, naming it."""
    found = hf_config.get("model_type")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    for model_type, prefix in LLAMA_TYPES.items():
        if found == model_type or (found is None and archs and all(a.startswith(prefix) for a in archs)):
            return model_type
    raise other_model_error(hf_config, where, f"{LLAMA_FROM} reads Llama, Qwen2 and Mistral checkpoints only")


def _rope(hf_config: dict) -> tuple[float, dict]:
    """rope theta and the rest of the rope settings (transformers 5's rope_parameters, or 4's rope_theta and
    rope_scaling)."""
    params = dict(hf_config.get("rope_parameters") or {})
    params.update(hf_config.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or hf_config.get("rope_theta") or 10000.0
    return float(theta), params


def _sliding_window(hf_config: dict, model_type: str, positions: int) -> int | None:
    """The sliding window some layer attends through, when it is shorter than the context (else None)."""
    window = hf_config.get("sliding_window", 4096 if model_type == "mistral" else None)  # MistralConfig's default
    if model_type == "llama" or window is None or window >= positions:
        return None
    if model_type == "qwen2":  # only with use_sliding_window, in the layers from max_window_layers on
        n_layer = hf_config["num_hidden_layers"]
        layers = hf_config.get("layer_types") or ["sliding_attention" if i >= hf_config.get("max_window_layers", 28)
                                                  else "full_attention" for i in range(n_layer)]
        return window if hf_config.get("use_sliding_window") and "sliding_attention" in layers else None
    return window


def _refusals(hf_config: dict, model_type: str, positions: int) -> list[tuple[bool, str]]:
    _, rope = _rope(hf_config)
    rope_type = rope.get("rope_type", rope.get("type"))
    window = _sliding_window(hf_config, model_type, positions)
    act = hf_config.get("hidden_act", "silu")
    return [
        (rope_type not in (None, "default"), f"its rope scaling is {rope_type!r}"),
        (rope.get("partial_rotary_factor", 1.0) != 1.0, "it rotates only part of each head (partial_rotary_factor)"),
        (window is not None, f"its sliding window of {window} tokens is shorter than its context of {positions}"),
        (act not in ("silu", "swish"), f"its MLP activation is {act!r}, not silu"),
        (bool(hf_config.get("attention_bias")), "it sets attention_bias (biases on q, k, v and o_proj)"),
        (bool(hf_config.get("mlp_bias")), "it sets mlp_bias"),
    ]


def llama_config_from_hf(hf_config: dict, where: str = "the checkpoint"):
    """The LlamaConfig of a Llama / Qwen2 / Mistral config.json; what lmlab's Llama cannot compute is refused."""
    from ..models.llama import LlamaConfig

    model_type = llama_type(hf_config, where)
    missing = [k for k in SHAPE_KEYS if not isinstance(hf_config.get(k), int)]
    if missing:
        raise LmlabError(f"{where}/config.json has no {missing[0]}; it is not a complete {model_type} config.")
    positions = int(hf_config.get("max_position_embeddings") or MAX_POSITIONS[model_type])
    for refused, why in _refusals(hf_config, model_type, positions):
        if refused:
            raise not_exact(where, why)
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or 0
    cfg = LlamaConfig(vocab_size=hf_config["vocab_size"], block_size=positions, n_layer=hf_config["num_hidden_layers"],
                      n_head=heads, n_kv_head=int(hf_config.get("num_key_value_heads") or heads),
                      n_embd=hf_config["hidden_size"],
                      head_dim=0 if head_dim * heads == hf_config["hidden_size"] else int(head_dim),
                      intermediate_size=hf_config["intermediate_size"], rope_theta=_rope(hf_config)[0],
                      rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
                      tie_weights=bool(hf_config.get("tie_word_embeddings", False)), qkv_bias=model_type == "qwen2",
                      dropout=float(hf_config.get("attention_dropout") or 0.0))
    try:
        cfg.validate()
    except LmlabError as e:
        raise LmlabError(f"{where}/config.json describes no model lmlab can build: {e}") from None
    return cfg


def hf_llama_to_lmlab(hf_config: dict, hf_state: dict, where: str = "the checkpoint"):
    """(LlamaConfig, state dict of our Llama, float32) from a config.json dict and its tensors."""
    from ..checkpoint import unique_state_dict
    from ..models.llama import Llama

    cfg = llama_config_from_hf(hf_config, where)
    hf = {k.removeprefix("model."): v for k, v in hf_state.items() if not k.endswith(_UNUSED)}
    if cfg.tie_weights:
        hf.pop("lm_head.weight", None)  # a tied checkpoint may repeat it
    with torch.device("meta"):
        expected = set(unique_state_dict(Llama(cfg), keep_device=True))
    missing, unexpected = sorted(expected - hf.keys()), sorted(hf.keys() - expected)
    if missing or unexpected:
        problem = f"lacks {', '.join(missing[:3])}" if missing else f"has unknown tensors {', '.join(unexpected[:3])}"
        raise LmlabError(f"{where} {problem}{' ...' if len(missing or unexpected) > 3 else ''}; it is not a "
                         "checkpoint of the model its config.json describes.")
    state = {k: v.float().contiguous() for k, v in hf.items()}
    check_shapes(Llama, cfg, state, where)
    return cfg, state


def write_llama_run(out: Path, cfg, state: dict, tokenizer, settings: dict, source: str) -> dict:
    """An lmlab run directory of a converted Llama: config.json, model.safetensors (float32), tokenizer.json and
    tokenizer_config.json (the chat template and special tokens), written atomically. Returns a short summary."""
    from ..checkpoint import MODEL_CONFIG, WEIGHTS

    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmlabError(f"{source}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{cfg.vocab_size}; the tokenizer belongs to another model.")
    with output_dir(out) as tmp:
        (tmp / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
        save_safetensors(state, tmp / WEIGHTS, {"step": "0", "source": source})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        (tmp / TOKENIZER_CONFIG).write_text(tokenizer_config_json(settings, cfg.block_size), encoding="utf-8")
    return {"config": cfg, "tokenizer": tokenizer.kind, "chat_template": "chat_template" in settings,
            "parameters": sum(t.numel() for t in state.values())}


def _hf_tokenizer(src: Path, hf_config: dict):
    """The directory's tokenizer.json and its settings (special tokens from config.json's ids where
    tokenizer_config.json does not name them)."""
    from ..tokenizer import load_tokenizer

    if not (src / "tokenizer.json").is_file():
        raise LmlabError(f"{src} has no tokenizer.json; {LLAMA_FROM} reads the model's tokenizer from it.")
    tokenizer = load_tokenizer(src / "tokenizer.json")
    settings = read_tokenizer_settings(src)
    for name in ("bos", "eos", "pad"):
        token_id = hf_config.get(f"{name}_token_id")
        token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        if f"{name}_token" not in settings and isinstance(token_id, int) and tokenizer.kind == "bpe":
            text = tokenizer.hf.id_to_token(token_id)
            if text is not None:
                settings[f"{name}_token"] = text
    return tokenizer, settings


def import_hf_llama(src_dir, out_run) -> dict:
    """Convert a HF Llama / Qwen2 / Mistral directory into an lmlab run (`lmlab.load`, `generate`, `eval`)."""
    src, out = Path(src_dir), Path(out_run)
    hf_config = read_hf_config(src)
    check_free(out)
    llama_config_from_hf(hf_config, str(src))  # refuse before reading any weights
    tokenizer, settings = _hf_tokenizer(src, hf_config)
    cfg, state = hf_llama_to_lmlab(hf_config, read_hf_weights(src), str(src))
    info = write_llama_run(out, cfg, state, tokenizer, settings, f"hf-llama:{src.resolve()}")
    return {**info, "model_type": llama_type(hf_config, str(src))}


def hf_llama_config(cfg, special_ids: dict) -> dict:
    """config.json of the Hugging Face class that computes what our LlamaConfig does: Qwen2ForCausalLM when it
    has q/k/v biases, else LlamaForCausalLM. `special_ids`: bos/eos/pad_token_id."""
    common = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_width,
              "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "hidden_act": "silu",
              "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.rms_norm_eps,
              "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
              "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_weights,
              "attention_dropout": cfg.dropout, "initializer_range": 0.02, "use_cache": True, "dtype": "float32",
              **special_ids}
    if not cfg.qkv_bias:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "attention_bias": False,
                "mlp_bias": False, "pretraining_tp": 1}
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": cfg.n_layer, "layer_types": ["full_attention"] * cfg.n_layer}


def lmlab_to_hf_llama(model, special_ids: dict | None = None) -> tuple[dict, dict]:
    """(config.json dict, HF-named float32 tensors) of the HF model that computes what our Llama `model` does."""
    from ..checkpoint import unique_state_dict

    if getattr(model, "family", None) != "llama":
        raise LmlabError(f"only Llama models can be exported to hf-llama, not a "
                         f"{getattr(model, 'family', type(model).__name__)} model.")
    state = {(k if k == "lm_head.weight" else f"model.{k}"): v.float().clone()
             for k, v in unique_state_dict(model).items()}
    return hf_llama_config(model.cfg, special_ids or {}), state


def _special_ids(tokenizer, settings: dict) -> dict:
    """bos/eos/pad_token_id of the tokenizer's special tokens (the end-of-text id when it names none)."""
    ids = {}
    for name in ("bos", "eos", "pad"):
        text = settings.get(f"{name}_token")
        token_id = tokenizer.hf.token_to_id(text) if text is not None and tokenizer.kind == "bpe" else None
        if token_id is None and name != "pad":
            token_id = tokenizer.eot_id
        if token_id is not None:
            ids[f"{name}_token_id"] = token_id
    return ids


def export_hf_llama(run, out_dir) -> dict:
    """Write a lmlab Llama run as a HF directory that `AutoModelForCausalLM.from_pretrained` loads: config.json,
    model.safetensors, tokenizer.json and tokenizer_config.json (with the run's chat template and special
    tokens). A char / word / byte tokenizer is written in lmlab's own format, which Hugging Face cannot read."""
    from ..checkpoint import load

    out = Path(out_dir)
    check_free(out)
    model, tokenizer = load(run)
    settings = read_tokenizer_settings(Path(run))
    hf_config, state = lmlab_to_hf_llama(model, _special_ids(tokenizer, settings))
    with output_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_safetensors(state, tmp / "model.safetensors", {})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        if tokenizer.kind == "bpe":
            text = tokenizer_config_json(settings, model.cfg.block_size)
            (tmp / TOKENIZER_CONFIG).write_text(text, encoding="utf-8")
    return {"config": hf_config, "tokenizer": tokenizer.kind, "hf_tokenizer": tokenizer.kind == "bpe"}
