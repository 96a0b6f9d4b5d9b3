"""Hugging Face BERT -> lmlab encoder (`lmlab convert --from hf-bert DIR --out RUN`, `lmlab classify train --init DIR`).

`bert_to_lmlab` maps a BertModel / BertForMaskedLM config + state dict to our EncoderConfig + state dict (hidden
states match transformers' to float rounding); `load_hf_bert(dir)` gives (config, tensors, WordPiece tokenizer) in
memory, `import_hf_bert(src_dir, out_run)` writes a run directory.

Layout of BertModel: embeddings.{word,position,token_type}_embeddings + embeddings.LayerNorm, then per layer
attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
output.{dense,LayerNorm}; pooler.dense. BertForMaskedLM / BertForPreTraining / BertForSequenceClassification
put it under "bert." and add cls.predictions.* (the MLM head) or classifier.*. Weights are nn.Linear
([out, in]) like ours; query, key and value are concatenated into our fused qkv.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..errors import LmlabError
from .hf_files import check_free, check_model_type, output_dir, read_hf_config, read_hf_weights, save_safetensors

BERT_FROM = "--from hf-bert"
# HF hidden_act -> our EncoderConfig.activation
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_fast": "gelu_tanh"}
_BERT_BLOCK = {"attn.proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
               "mlp.fc": "intermediate.dense", "mlp.proj": "output.dense", "ln_2": "output.LayerNorm"}
_BERT_IGNORED = ("embeddings.position_ids", "cls.seq_relationship.", "classifier.")


def check_bert_type(hf_config: dict, where: str = "the checkpoint") -> None:
    """Refuse a config.json of another architecture, naming it."""
    check_model_type(hf_config, "bert", "Bert", where, f"{BERT_FROM} reads BERT checkpoints (model_type bert) only")


def bert_config_to_lmlab(hf_config: dict, where: str = "the checkpoint"):
    """The EncoderConfig of a BERT config.json (no head: num_labels 0); what we cannot compute exactly is refused."""
    from ..models.encoder import EncoderConfig

    check_bert_type(hf_config, where)
    act = hf_config.get("hidden_act", "gelu")
    if act not in BERT_ACTIVATIONS:
        raise LmlabError(f"{where} uses hidden_act {act!r}; lmlab's encoder computes {', '.join(BERT_ACTIVATIONS)}.")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise LmlabError(f"{where} uses {hf_config['position_embedding_type']} position embeddings; lmlab's encoder "
                         "has absolute (learned) positions only.")
    if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
        raise LmlabError(f"{where} is a BERT decoder (is_decoder / cross-attention); lmlab imports encoders only.")
    try:
        cfg = EncoderConfig(vocab_size=int(hf_config.get("vocab_size", 30522)),
                            block_size=int(hf_config.get("max_position_embeddings", 512)),
                            n_layer=int(hf_config.get("num_hidden_layers", 12)),
                            n_head=int(hf_config.get("num_attention_heads", 12)),
                            n_embd=int(hf_config.get("hidden_size", 768)),
                            n_inner=int(hf_config.get("intermediate_size", 3072)),
                            type_vocab_size=int(hf_config.get("type_vocab_size", 2)),
                            dropout=float(hf_config.get("hidden_dropout_prob", 0.1)),
                            activation=BERT_ACTIVATIONS[act],
                            layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-12)),
                            pad_id=int(hf_config.get("pad_token_id") or 0), num_labels=0, mlm_head=False,
                            pooler=False)
    except (TypeError, ValueError) as e:
        raise LmlabError(f"{where}/config.json has a malformed value ({e}).") from None
    cfg.validate()
    return cfg


def bert_to_lmlab(hf_config: dict, hf_state: dict, where: str = "the checkpoint"):
    """(EncoderConfig, state dict of our Encoder) from a BERT config.json dict and its tensors (float32 copies).

    The pooler comes along when the checkpoint has it; so does the masked-LM head (cls.predictions), and then
    the config says mlm_head true.
    """
    cfg = bert_config_to_lmlab(hf_config, where)
    state = {}
    for name, tensor in hf_state.items():
        name = name[len("bert."):] if name.startswith("bert.") else name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if not name.startswith(_BERT_IGNORED):
            state[name] = tensor.float()
    ours = {"wte.weight": state.pop("embeddings.word_embeddings.weight", None),
            "wpe.weight": state.pop("embeddings.position_embeddings.weight", None),
            "wtt.weight": state.pop("embeddings.token_type_embeddings.weight", None),
            "ln_emb.weight": state.pop("embeddings.LayerNorm.weight", None),
            "ln_emb.bias": state.pop("embeddings.LayerNorm.bias", None)}
    for i in range(cfg.n_layer):
        hf = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            qkv = [state.pop(f"{hf}attention.self.{x}.{part}", None) for x in ("query", "key", "value")]
            ours[f"blocks.{i}.attn.qkv.{part}"] = None if any(t is None for t in qkv) else torch.cat(qkv, 0)
            for mine, theirs in _BERT_BLOCK.items():
                ours[f"blocks.{i}.{mine}.{part}"] = state.pop(f"{hf}{theirs}.{part}", None)
    missing = sorted(k for k, v in ours.items() if v is None)
    if missing:
        raise LmlabError(f"{where} lacks BERT weights for {missing[:3]} (config.json says {cfg.n_layer} layers); "
                         "the weights and config.json do not belong together.")
    if "pooler.dense.weight" in state:
        cfg.pooler = True
        ours["pooler.weight"], ours["pooler.bias"] = state.pop("pooler.dense.weight"), state.pop("pooler.dense.bias")
    mlm = "cls.predictions.transform.dense.weight" in state
    if mlm:
        cfg.mlm_head = True
        p = "cls.predictions."
        ours.update({"mlm.dense.weight": state.pop(f"{p}transform.dense.weight"),
                     "mlm.dense.bias": state.pop(f"{p}transform.dense.bias"),
                     "mlm.ln.weight": state.pop(f"{p}transform.LayerNorm.weight"),
                     "mlm.ln.bias": state.pop(f"{p}transform.LayerNorm.bias"),
                     "mlm.decoder.bias": state.pop(f"{p}bias", None)
                     if f"{p}bias" in state else state.pop(f"{p}decoder.bias")})
        state.pop(f"{p}decoder.weight", None)  # tied to the word embeddings
    leftover = sorted(k for k in state if not k.startswith("pooler."))
    if leftover:
        raise LmlabError(f"{where} has weights lmlab's encoder has no place for ({leftover[:3]}); it is not a plain "
                         "BERT checkpoint.")
    _check_bert_shapes(cfg, ours, where)
    return cfg, {k: v.contiguous() for k, v in ours.items()}


def _bert_shapes(cfg) -> dict[str, tuple]:
    """Shape of every tensor of our Encoder for `cfg` (without building one)."""
    c, v, inner = cfg.n_embd, cfg.vocab_size, cfg.n_inner or 4 * cfg.n_embd
    shapes = {"wte.weight": (v, c), "wpe.weight": (cfg.block_size, c), "wtt.weight": (cfg.type_vocab_size, c),
              "ln_emb.weight": (c,), "ln_emb.bias": (c,), "pooler.weight": (c, c), "pooler.bias": (c,),
              "mlm.dense.weight": (c, c), "mlm.dense.bias": (c,), "mlm.ln.weight": (c,), "mlm.ln.bias": (c,),
              "mlm.decoder.bias": (v,)}
    block = {"attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,), "attn.proj.weight": (c, c),
             "attn.proj.bias": (c,), "mlp.fc.weight": (inner, c), "mlp.fc.bias": (inner,),
             "mlp.proj.weight": (c, inner), "mlp.proj.bias": (c,)}
    block.update({f"ln_{i}.{p}": (c,) for i in (1, 2) for p in ("weight", "bias")})
    for i in range(cfg.n_layer):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def _check_bert_shapes(cfg, state: dict, where: str) -> None:
    expected = _bert_shapes(cfg)
    for name, tensor in state.items():
        if name in expected and expected[name] != tuple(tensor.shape):
            raise LmlabError(f"{where}: weight {name} has shape {tuple(tensor.shape)} but config.json implies "
                             f"{expected[name]}; the weights and config.json do not belong together.")


def load_hf_bert(src_dir):
    """(EncoderConfig, our state dict, WordPieceTokenizer) of a Hugging Face BERT directory, in memory."""
    from ..tokenizer import load_wordpiece

    src = Path(src_dir)
    hf_config = read_hf_config(src)
    check_bert_type(hf_config, str(src))
    cfg, state = bert_to_lmlab(hf_config, read_hf_weights(src), str(src))
    tokenizer = load_wordpiece(src)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmlabError(f"{src}: the tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}; "
                         "the tokenizer files belong to another model.")
    return cfg, state, tokenizer


def import_hf_bert(src_dir, out_run) -> dict:
    """Convert a HF BERT directory (BertModel, BertForMaskedLM, ...) into an lmlab encoder run.

    Writes config.json (our EncoderConfig), model.safetensors (our names) and tokenizer.json (WordPiece; from
    tokenizer.json or vocab.txt). Fine-tune it with `lmlab classify train --model encoder --init RUN`, or
    continue masked-LM pretraining when it has the MLM head. Returns a short summary.
    """
    from ..checkpoint import MODEL_CONFIG, WEIGHTS

    src, out = Path(src_dir), Path(out_run)
    check_free(out)
    cfg, state, tokenizer = load_hf_bert(src)
    with output_dir(out) as tmp:
        (tmp / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
        save_safetensors(state, tmp / WEIGHTS, {"step": "0", "source": f"hf-bert:{src.resolve()}"})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    return {"config": cfg, "tokenizer": tokenizer.kind, "mlm_head": cfg.mlm_head, "pooler": "pooler.weight" in state,
            "parameters": sum(t.numel() for t in state.values())}
