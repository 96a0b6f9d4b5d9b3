"""GGUF (llama.cpp's model files) -> lmlab Llama runs: `lmlab convert --from gguf FILE.gguf --out RUN`.

The file is read with the `gguf` package (llama.cpp's own reader) and every tensor dequantized with its
`gguf.quants.dequantize` to float32. Architectures llama and qwen2; what lmlab's Llama cannot compute exactly
(rope scaling, a sliding window, mixtures of experts, partial rotary dimensions, ...) is refused in one sentence.
- Weights: llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output) map to ours; for the llama
  architecture llama.cpp's converter permuted the rows of attn_q and attn_k into its interleaved rotary layout,
  which `unpermute` undoes (Hugging Face's rotate_half layout, ours). No output.weight: the head is tied.
- Config: block_count, embedding_length, feed_forward_length, attention.head_count(_kv), rope.freq_base,
  attention.layer_norm_rms_epsilon, context_length -> block_size.
- Tokenizer (tokenizer.ggml.model gpt2): tokens, merges and token types become a Hugging Face `tokenizers`
  byte-level BPE that gives the ids transformers' GGUF tokenizer gives: control tokens special, user-defined
  tokens added, the split regex of the file's pre-tokenizer type; the chat template and bos / eos / unk / pad
  tokens go to the run's tokenizer_config.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import LmlabError
from .hf_files import check_free, check_shapes
from .hf_llama import not_exact, write_llama_run

GGUF_FROM = "--from gguf"
ARCHITECTURES = ("llama", "qwen2")
# Tensor types read (dequantized by gguf.quants); the other ones are refused, named.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# llama.cpp's tensor names (after "blk.N.") -> ours (after "layers.N.")
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex its merges were learned with (the ones transformers knows); any other
# type splits like GPT-2 (the ByteLevel pre-tokenizer's own regex), as transformers does.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def read_gguf(path: Path):
    """A gguf.GGUFReader of the file; a file that is not GGUF, or is truncated, is refused in one sentence."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LmlabError(f"{GGUF_FROM} needs the gguf package (llama.cpp's reader): pip install gguf.") from None

    if not path.is_file():
        raise LmlabError(f"{path} does not exist or is not a file; give a .gguf model file.")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LmlabError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    try:
        reader = GGUFReader(path)
        for tensor in reader.tensors:  # the reader maps tensors lazily: a short file shows here
            if tensor.data.nbytes != tensor.n_bytes:
                raise ValueError("tensor data ends early")
    except Exception as e:  # the reader raises ValueError / struct / numpy errors on a cut or damaged file
        raise LmlabError(f"{path} is truncated or corrupt: the gguf reader fails ({type(e).__name__}: "
                         f"{str(e)[:80]}).") from None
    return reader


def gguf_metadata(reader, where: str) -> dict:
    """Every key of the file's metadata with its value (strings, numbers, lists)."""
    try:
        return {key: field.contents() for key, field in reader.fields.items()}
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise LmlabError(f"{where} has unreadable metadata ({type(e).__name__}); it is corrupt.") from None


def _uniform(value, key: str, where: str) -> int:
    if isinstance(value, list):  # per-layer values (hybrid models)
        if len(set(value)) != 1:
            raise not_exact(where, f"its {key} differs from layer to layer")
        value = value[0]
    return int(value)


def _refusals(meta: dict, arch: str, names, head_dim: int, context: int) -> list[tuple[bool, str]]:
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    scaling, factor = key("rope.scaling.type", "none"), float(key("rope.scaling.factor", 1.0) or 1.0)
    window = key("attention.sliding_window")
    window = min(window) if isinstance(window, list) else window
    return [
        (scaling != "none" and not (scaling == "linear" and factor == 1.0), f"its rope scaling is {scaling!r}"),
        ("rope_freqs.weight" in names, "its rope frequencies are rescaled (a rope_freqs tensor, Llama 3.1's)"),
        (int(key("rope.dimension_count", head_dim)) != head_dim, "it rotates only part of each head"),
        (int(key("expert_count", 0) or 0) > 0, "it is a mixture of experts"),
        (window is not None and 0 < int(window) < context, f"it attends through a sliding window of {window} tokens"),
    ]


def llama_config_from_gguf(meta: dict, shapes: dict, where: str):
    """The LlamaConfig of a GGUF file's metadata (`shapes`: each tensor's [out, in] shape); other architectures
    and what lmlab's Llama cannot compute exactly are refused, named."""
    from ..models.llama import LlamaConfig

    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise LmlabError(f"{where} holds a {arch!r} model; {GGUF_FROM} reads the GGUF architectures "
                         f"{' and '.join(ARCHITECTURES)} only.")
    needed = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count", "context_length")
    missing = [f"{arch}.{k}" for k in needed if f"{arch}.{k}" not in meta]
    if missing or "token_embd.weight" not in shapes:
        raise LmlabError(f"{where} has no {(missing or ['token_embd.weight'])[0]}; it is not a complete {arch} "
                         "model.")
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    n_embd, n_head = int(key("embedding_length")), _uniform(key("attention.head_count"), "head count", where)
    head_dim = int(key("attention.key_length", 0) or n_embd // n_head)
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise not_exact(where, "its keys and values have different head sizes")
    context = int(key("context_length"))
    for refused, why in _refusals(meta, arch, shapes, head_dim, context):
        if refused:
            raise not_exact(where, why)
    cfg = LlamaConfig(vocab_size=shapes["token_embd.weight"][0], block_size=context, n_layer=int(key("block_count")),
                      n_head=n_head,
                      n_kv_head=_uniform(key("attention.head_count_kv", n_head), "key/value head count", where),
                      n_embd=n_embd, head_dim=0 if head_dim * n_head == n_embd else head_dim,
                      intermediate_size=_uniform(key("feed_forward_length"), "feed-forward width", where),
                      rope_theta=float(key("rope.freq_base", 10000.0)),
                      rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
                      tie_weights="output.weight" not in shapes, qkv_bias="blk.0.attn_q.bias" in shapes)
    try:
        cfg.validate()
    except LmlabError as e:
        raise LmlabError(f"{where}'s metadata describes no model lmlab can build: {e}") from None
    return cfg


def unpermute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's permutation of q / k rows (weights or biases) for its rotary layout: each head's rows
    were reordered (2, d/2) -> (d/2, 2), pairing dimension i with i + d/2; this puts them back."""
    d = weight.shape[0] // n_head
    return weight.reshape(n_head, d // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _our_name(name: str) -> str | None:
    """Our state-dict name of a llama.cpp tensor name (None when it has no place in our Llama)."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK:
        return f"layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP:
        return f"{_TOP[parts[0]]}.{parts[1]}"
    return None


def tensor_shape(tensor) -> tuple[int, ...]:
    """A GGUF tensor's shape in our [out, in] order (GGUF lists the fastest-moving dimension first)."""
    return tuple(int(n) for n in reversed(tensor.shape))


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as float32 (gguf.quants.dequantize), shaped [out, in]."""
    from gguf import quants

    values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)  # a plain array: memmap views are slow
    values = np.require(values, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])  # (copies an F32 tensor out of the file)
    return torch.from_numpy(values.reshape(tensor_shape(tensor)))


def _check_tensors(reader, cfg, where: str) -> None:
    """Every tensor has a place in our Llama and a type we read, and none of ours is missing."""
    from ..models.llama import Llama

    with torch.device("meta"):
        expected = {k for k in Llama(cfg).state_dict() if not (cfg.tie_weights and k == "lm_head.weight")}
    found = set()
    for tensor in reader.tensors:
        name, kind = _our_name(tensor.name), tensor.tensor_type.name
        if name not in expected:
            raise LmlabError(f"{where} has a tensor {tensor.name}, which lmlab's Llama has no place for.")
        if kind not in TENSOR_TYPES:
            raise LmlabError(f"{where} stores {tensor.name} as {kind}, a tensor type {GGUF_FROM} does not read "
                             f"(it reads {', '.join(TENSOR_TYPES)}).")
        found.add(name)
    missing = sorted(expected - found)
    if missing:
        raise LmlabError(f"{where} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                         "its tensors do not make the model its metadata describes.")


def gguf_state(reader, cfg, arch: str, where: str) -> dict:
    """Our Llama's float32 state dict from the file's tensors (q / k rows put back into rotate_half order)."""
    from ..models.llama import Llama

    _check_tensors(reader, cfg, where)
    state = {}
    for tensor in reader.tensors:
        weight = dequantized(tensor)
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            weight = unpermute(weight, cfg.n_head if kind == "attn_q" else cfg.kv_heads)
        state[_our_name(tensor.name)] = weight
    check_shapes(Llama, cfg, state, where, "metadata")
    return state


def byte_spelling() -> dict[int, str]:
    """GPT-2's printable character for each byte (bytes_to_unicode), in which byte-level BPE writes tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


def gguf_tokenizer(meta: dict, where: str):
    """A BPETokenizer of the metadata's byte-level BPE (tokenizer.ggml.model gpt2), built as transformers builds
    its GGUF tokenizer (GPT2Tokenizer from the vocabulary and merges, control tokens special, user-defined tokens
    added, the pre-tokenizer type's split regex), so both give the same ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from ..tokenizer import BPETokenizer

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise LmlabError(f"{where} has a {model!r} tokenizer; {GGUF_FROM} reads byte-level BPE tokenizers "
                         "(tokenizer.ggml.model gpt2) only.")
    tokens, types = meta.get("tokenizer.ggml.tokens") or [], meta.get("tokenizer.ggml.token_type") or []
    spelling = byte_spelling()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    try:
        hf = Tokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                  fuse_unk=False))
    except Exception as e:  # the Rust side: a merge of tokens that are not in the vocabulary
        raise LmlabError(f"{where}: its tokenizer is not a valid BPE ({str(e)[:80]}).") from None
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    specials = [t for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet]
    specials += [text for text in _special_tokens(meta).values() if text in vocab]
    hf.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(specials)])
    hf.add_tokens([AddedToken(t, normalized=False, special=False)
                   for t, kind in zip(tokens, types) if kind == USER_DEFINED and t in vocab])
    return BPETokenizer(hf)


def _special_tokens(meta: dict) -> dict:
    """bos / eos / unk / pad token texts named by the metadata's ids."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
           "pad_token": "padding_token_id"}
    return {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in ids.items()
            if isinstance(meta.get(f"tokenizer.ggml.{key}"), int) and 0 <= meta[f"tokenizer.ggml.{key}"] < len(tokens)}


def tokenizer_settings(meta: dict) -> dict:
    """The run's tokenizer_config.json keys: the chat template, the special tokens, whether to add bos / eos."""
    settings = {"chat_template": meta.get("tokenizer.chat_template"), **_special_tokens(meta),
                "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
                "add_eos_token": meta.get("tokenizer.ggml.add_eos_token")}
    return {k: v for k, v in settings.items() if v is not None}


def import_gguf(src_file, out_run) -> dict:
    """Convert a GGUF file into an lmlab run directory: float32 weights, tokenizer.json, tokenizer_config.json."""
    src, out = Path(src_file), Path(out_run)
    check_free(out)
    reader = read_gguf(src)
    meta = gguf_metadata(reader, str(src))
    cfg = llama_config_from_gguf(meta, {t.name: tensor_shape(t) for t in reader.tensors}, str(src))
    tokenizer = gguf_tokenizer(meta, str(src))
    state = gguf_state(reader, cfg, meta["general.architecture"], str(src))
    info = write_llama_run(out, cfg, state, tokenizer, tokenizer_settings(meta), f"gguf:{src.resolve()}")
    kinds = sorted({t.tensor_type.name for t in reader.tensors})
    return {**info, "architecture": meta["general.architecture"], "name": meta.get("general.name"),
            "tensor_types": kinds}
