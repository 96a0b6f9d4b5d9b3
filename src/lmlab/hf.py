"""Hugging Face interop: import and export GPT-2 (and, below, BERT) checkpoints as lmlab run directories.

GPT-2 section: `gpt2_to_lmlab` / `lmlab_to_gpt2` map a `GPT2LMHeadModel` config + state dict to and from our
GPTConfig + state dict (in memory, exact: logits match to float rounding); `import_hf_gpt2(src_dir, out_run)`
and `export_hf_gpt2(run, out_dir)` read and write whole directories (`lmlab convert`). transformers is not
needed for any of it: the files are config.json, model.safetensors (or pytorch_model.bin, read with
weights_only=True) and tokenizer.json (or vocab.json + merges.txt).

BERT section (at the end): `bert_to_lmlab` maps a BertModel / BertForMaskedLM config + state dict to our
EncoderConfig + state dict (hidden states match transformers' to float rounding); `load_hf_bert(dir)` gives
(config, tensors, WordPiece tokenizer) in memory (`lmlab classify train --init DIR`), `import_hf_bert(src_dir,
out_run)` writes a run directory (`lmlab convert --from hf-bert`).
"""
from __future__ import annotations


# =============================================================================================
# GPT-2
# =============================================================================================
#
# Layout of GPT2LMHeadModel: transformer.{wte,wpe,h.N.*,ln_f} + lm_head. Its Conv1D layers store weights as
# [in, out] (the transpose of nn.Linear); c_attn packs q, k, v along the output dim like our fused qkv Linear.

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import LmlabError
from .files import read_json

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
    model_type = hf_config.get("model_type")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    if model_type == "gpt2" or (model_type is None and archs and all(a.startswith("GPT2") for a in archs)):
        return
    arch = f" ({', '.join(archs)})" if archs else ""
    what = f"a {model_type} model" if model_type else "a model of unknown type"
    raise LmlabError(f"{where} holds {what}{arch}; {GPT2_FROM} reads GPT-2 checkpoints only.")


def _gpt2_setting(hf_config: dict, key: str):
    value = hf_config.get(key)
    return GPT2_DEFAULTS[key] if value is None else value


def gpt2_config_to_lmlab(hf_config: dict, where: str = "the checkpoint"):
    """The GPTConfig of a GPT-2 config.json; anything lmlab's GPT cannot compute exactly is refused."""
    from .models.gpt import GPTConfig

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
    _check_gpt2_shapes(cfg, state, where)
    return cfg, state


def _check_gpt2_shapes(cfg, state: dict, where: str) -> None:
    """Every tensor has the shape our GPT of `cfg` gives it (so a config.json that lies is caught here)."""
    from .models.gpt import GPT

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(cfg).state_dict().items()}
    for name, tensor in state.items():
        if tensor.shape != shapes[name]:
            raise LmlabError(f"{where} has a tensor of shape {tuple(tensor.shape)} where its config.json implies "
                             f"{tuple(shapes[name])} ({name}); the weights and config.json do not belong together.")


def lmlab_to_gpt2(model, eot_id: int | None = None) -> tuple[dict, dict]:
    """(config.json dict, HF-named tensors) of a GPT2LMHeadModel that computes what our GPT `model` computes.

    bias=False models get zero biases, sinusoidal positions are written as a learned wpe table, an untied head
    sets tie_word_embeddings false. `eot_id`, the tokenizer's end-of-text id, becomes bos/eos_token_id.
    """
    from .models.gpt import GPT

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


# --------------------------------------------------------------------------------------------- files

def _read_hf_config(src: Path) -> dict:
    if not src.is_dir():
        raise LmlabError(f"{src} is not a directory; give a Hugging Face checkpoint directory "
                         "(config.json, model.safetensors or pytorch_model.bin, tokenizer files).")
    if not (src / "config.json").is_file():
        raise LmlabError(f"{src} has no config.json, so it is not a Hugging Face checkpoint directory.")
    cfg = read_json(src / "config.json")
    if not isinstance(cfg, dict):
        raise LmlabError(f"{src / 'config.json'} is not a JSON object; it is not a Hugging Face model config.")
    return cfg


def _load_tensor_file(path: Path) -> dict:
    """Tensors of one .safetensors or .bin file (.bin through torch.load(weights_only=True): no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle errors of a corrupt, truncated or unsafe file
        raise LmlabError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:80]}); "
                         "it is corrupt, truncated or not a plain tensor file.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LmlabError(f"{path} does not hold a plain state dict of tensors.")
    return state


def read_hf_weights(src: Path) -> dict:
    """The tensors of a HF checkpoint directory: model.safetensors, else pytorch_model.bin (or their shards)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (src / name).is_file():
            return _load_tensor_file(src / name)
        index = src / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set((read_json(index).get("weight_map") or {}).values()))
            state = {}
            for shard in shards:
                state.update(_load_tensor_file(src / shard))
            return state
    raise LmlabError(f"{src} has no model.safetensors or pytorch_model.bin; the checkpoint has no weights.")


def read_hf_bpe_tokenizer(src: Path):
    """tokenizer.json, else vocab.json + merges.txt as GPT-2's byte-level BPE (with <|endoftext|> special)."""
    from .tokenizer import EOT, BPETokenizer, load_tokenizer

    if (src / "tokenizer.json").is_file():
        return load_tokenizer(src / "tokenizer.json")
    vocab, merges = src / "vocab.json", src / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise LmlabError(f"{src} has no tokenizer.json and no vocab.json + merges.txt; add the model's tokenizer "
                         "files to the directory.")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    try:
        hf = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise LmlabError(f"{vocab} and {merges} are not a BPE vocabulary the `tokenizers` library can read "
                         f"({str(e)[:80]}).") from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([AddedToken(EOT, special=True)])  # keeps its vocab.json id when it has one
    return BPETokenizer(hf)


def check_free(out: Path) -> None:
    """An output directory must not exist yet (or be empty): a conversion never overwrites a run."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmlabError(f"{out} already exists and is not empty; choose another output directory.")


@contextlib.contextmanager
def _output_dir(out: Path):
    """A temporary sibling of `out` to write into, renamed to `out` on success, removed on failure."""
    check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, out)  # onto a missing or empty directory: all files appear at once
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_safetensors(state: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt", **metadata})


def import_hf_gpt2(src_dir, out_run) -> dict:
    """Convert a HF GPT-2 checkpoint directory into an lmlab run directory (`lmlab.load`, `generate`, `eval`).

    Writes config.json (our GPTConfig), model.safetensors (our names) and tokenizer.json. The run has no
    config.yaml or trainer state: fine-tune it with `lmlab train --init RUN`. Returns a short summary.
    """
    from .checkpoint import MODEL_CONFIG, WEIGHTS

    src, out = Path(src_dir), Path(out_run)
    hf_config = _read_hf_config(src)
    check_free(out)
    check_gpt2_type(hf_config, str(src))
    tokenizer = read_hf_bpe_tokenizer(src)
    cfg, state = gpt2_to_lmlab(hf_config, read_hf_weights(src), str(src))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmlabError(f"{src}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{cfg.vocab_size}; the tokenizer files belong to another model.")
    with _output_dir(out) as tmp:
        (tmp / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
        _save_safetensors(state, tmp / WEIGHTS, {"step": "0", "source": f"hf-gpt2:{src.resolve()}"})
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
    from .checkpoint import load

    check_free(Path(out_dir))
    model, tokenizer = load(run)
    hf_config, state = lmlab_to_gpt2(model, tokenizer.eot_id)
    with _output_dir(Path(out_dir)) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        _save_safetensors(state, tmp / "model.safetensors", {})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        if tokenizer.kind == "bpe":
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer, model.cfg), indent=2)
                                                       + "\n", encoding="utf-8")
    return {"config": hf_config, "tokenizer": tokenizer.kind, "hf_tokenizer": tokenizer.kind == "bpe"}


def _tokenizer_config(tokenizer, cfg) -> dict:
    from .tokenizer import EOT

    special = {"bos_token": EOT, "eos_token": EOT} if tokenizer.eot_id is not None else {}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.block_size, **special}


# =============================================================================================
# BERT
# =============================================================================================
#
# Layout of BertModel: embeddings.{word,position,token_type}_embeddings + embeddings.LayerNorm, then per layer
# attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
# output.{dense,LayerNorm}; pooler.dense. BertForMaskedLM / BertForPreTraining / BertForSequenceClassification
# put it under "bert." and add cls.predictions.* (the MLM head) or classifier.*. Weights are nn.Linear
# ([out, in]) like ours; query, key and value are concatenated into our fused qkv.

BERT_FROM = "--from hf-bert"
# HF hidden_act -> our EncoderConfig.activation
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_fast": "gelu_tanh"}
_BERT_BLOCK = {"attn.proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
               "mlp.fc": "intermediate.dense", "mlp.proj": "output.dense", "ln_2": "output.LayerNorm"}
_BERT_IGNORED = ("embeddings.position_ids", "cls.seq_relationship.", "classifier.")


def check_bert_type(hf_config: dict, where: str = "the checkpoint") -> None:
    """Refuse a config.json of another architecture, naming it."""
    model_type = hf_config.get("model_type")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    if model_type == "bert" or (model_type is None and archs and all(a.startswith("Bert") for a in archs)):
        return
    arch = f" ({', '.join(archs)})" if archs else ""
    what = f"a {model_type} model" if model_type else "a model of unknown type"
    raise LmlabError(f"{where} holds {what}{arch}; {BERT_FROM} reads BERT checkpoints (model_type bert) only.")


def bert_config_to_lmlab(hf_config: dict, where: str = "the checkpoint"):
    """The EncoderConfig of a BERT config.json (no head: num_labels 0); what we cannot compute exactly is refused."""
    from .models.encoder import EncoderConfig

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
    from .tokenizer import load_wordpiece

    src = Path(src_dir)
    hf_config = _read_hf_config(src)
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
    from .checkpoint import MODEL_CONFIG, WEIGHTS

    src, out = Path(src_dir), Path(out_run)
    check_free(out)
    cfg, state, tokenizer = load_hf_bert(src)
    with _output_dir(out) as tmp:
        (tmp / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
        _save_safetensors(state, tmp / WEIGHTS, {"step": "0", "source": f"hf-bert:{src.resolve()}"})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    return {"config": cfg, "tokenizer": tokenizer.kind, "mlm_head": cfg.mlm_head, "pooler": "pooler.weight" in state,
            "parameters": sum(t.numel() for t in state.values())}
