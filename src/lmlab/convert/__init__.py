"""`lmlab convert`: checkpoints of other tools <-> lmlab run directories, one module per format.

FORMATS maps a format name to its reader (`--from FORMAT SRC --out RUN`) and writer (`RUN --to FORMAT DIR`); each
returns the line `lmlab convert` prints. A new format is one new module here and one row of FORMATS.
- hf-gpt2 (hf_gpt2.py): Hugging Face GPT2LMHeadModel directories, both ways, logits equal to float rounding.
- hf-bert (hf_bert.py): Hugging Face BertModel / BertForMaskedLM / ... directories, import only (an encoder to
  fine-tune with `lmlab classify train --init RUN`).
- hf-llama (hf_llama.py): Hugging Face LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM directories <->
  lmlab Llama runs, both ways, logits equal to float rounding.
- gguf (gguf.py): llama.cpp's GGUF files (architectures llama and qwen2), import only, dequantized to float32.
hf_files.py holds what every Hugging Face format reads and writes (config.json, safetensors / .bin weights,
tokenizer files, tokenizer_config.json, the atomic output directory).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import LmlabError
from .hf_bert import bert_to_lmlab, import_hf_bert, load_hf_bert  # noqa: F401 (the interop API in one place)
from .hf_gpt2 import export_hf_gpt2, gpt2_to_lmlab, import_hf_gpt2, lmlab_to_gpt2  # noqa: F401
from .hf_llama import export_hf_llama, hf_llama_to_lmlab, import_hf_llama, lmlab_to_hf_llama  # noqa: F401


def _gpt2_imported(src, out) -> str:
    info = import_hf_gpt2(src, out)
    c = info["config"]
    eot = f", end-of-text id {info['eot_id']}" if info["eot_id"] is not None else ""
    return (f"wrote {out}: GPT-2 {c.n_layer}x{c.n_embd}, {c.n_head} heads, context {c.block_size}, "
            f"vocab {c.vocab_size}, {info['parameters']:,} parameters, {info['tokenizer']} tokenizer{eot}")


def _tokenizer_note(info) -> str:
    return "" if info["hf_tokenizer"] else (f"; its {info['tokenizer']} tokenizer.json is lmlab's format, "
                                            "which Hugging Face tokenizers cannot read")


def _gpt2_exported(run, out) -> str:
    info = export_hf_gpt2(run, out)
    return f"wrote {out}: config.json, model.safetensors, tokenizer.json for GPT2LMHeadModel{_tokenizer_note(info)}"


def _bert_imported(src, out) -> str:
    info = import_hf_bert(src, out)
    c = info["config"]
    heads = ", ".join(h for h, on in (("pooler", info["pooler"]), ("masked-LM head", info["mlm_head"])) if on)
    return (f"wrote {out}: BERT encoder {c.n_layer}x{c.n_embd}, {c.n_head} heads, {c.block_size} positions, "
            f"vocab {c.vocab_size}, {info['parameters']:,} parameters{', ' + heads if heads else ''}, "
            f"{info['tokenizer']} tokenizer")


def _llama_summary(c) -> str:
    kv = f" ({c.kv_heads} key/value)" if c.kv_heads != c.n_head else ""
    return (f"{c.n_layer}x{c.n_embd}, {c.n_head} heads{kv}, SwiGLU {c.mlp_width}, context {c.block_size}, "
            f"vocab {c.vocab_size}{', q/k/v biases' if c.qkv_bias else ''}{', tied head' if c.tie_weights else ''}")


def _template_note(info) -> str:
    return ", chat template kept" if info["chat_template"] else ""


def _llama_imported(src, out) -> str:
    info = import_hf_llama(src, out)
    return (f"wrote {out}: {info['model_type']} {_llama_summary(info['config'])}, {info['parameters']:,} parameters, "
            f"{info['tokenizer']} tokenizer{_template_note(info)}")


def _llama_exported(run, out) -> str:
    info = export_hf_llama(run, out)
    settings = ", tokenizer_config.json" if info["hf_tokenizer"] else ""
    return (f"wrote {out}: config.json, model.safetensors, tokenizer.json{settings} for "
            f"{info['config']['architectures'][0]}{_tokenizer_note(info)}")


def _gguf_imported(src, out) -> str:
    from .gguf import import_gguf

    info = import_gguf(src, out)
    return (f"wrote {out}: {info['architecture']} {_llama_summary(info['config'])}, {info['parameters']:,} "
            f"parameters dequantized to float32 from {', '.join(info['tensor_types'])}, {info['tokenizer']} "
            f"tokenizer{_template_note(info)}")


# format -> (reader: (source, out run) -> summary, writer: (run, out dir) -> summary, or None: import only)
FORMATS = {"hf-gpt2": (_gpt2_imported, _gpt2_exported), "hf-bert": (_bert_imported, None),
           "hf-llama": (_llama_imported, _llama_exported), "gguf": (_gguf_imported, None)}


def convert_command(source, from_format: str | None = None, to: list[str] | None = None, out=None,
                    chat_template: str | None = None) -> None:
    """`lmlab convert --from FORMAT SRC --out RUN` or `lmlab convert RUN --to FORMAT [DIR]` (or --out DIR);
    `chat_template`: a Jinja file that becomes the output's chat template (its tokenizer_config.json)."""
    if bool(from_format) == bool(to):
        raise LmlabError("lmlab convert needs either --from hf-gpt2 HF_DIR --out RUN or RUN --to hf-gpt2 HF_DIR.")
    fmt = from_format or to[0]
    if fmt not in FORMATS:
        raise LmlabError(f"unknown format {fmt!r}; lmlab convert knows {', '.join(FORMATS)}.")
    if to and len(to) > 2:
        raise LmlabError("--to takes a format and one output directory, e.g. --to hf-gpt2 DIR.")
    reader, writer = FORMATS[fmt]
    if to and writer is None:
        exporters = ", ".join(f"--to {f}" for f, (_, w) in FORMATS.items() if w)
        raise LmlabError(f"{fmt} is an import format (--from {fmt}); lmlab convert exports {exporters}.")
    out = to[1] if to and len(to) == 2 else out
    if not out:
        raise LmlabError("lmlab convert needs an output directory: --out DIR (or --to hf-gpt2 DIR).")
    template = None
    if chat_template:  # checked before anything is converted
        from ..chat import ChatTemplate, read_template_file

        template = read_template_file(chat_template)
        ChatTemplate(template, {}, [], chat_template)
    print(reader(source, out) if from_format else writer(source, out))
    if template is not None:
        set_chat_template(Path(out), template)


def set_chat_template(directory: Path, template: str) -> None:
    """Write `template` into directory/tokenizer_config.json (kept: every other key)."""
    import json

    from ..files import atomic_write_text, read_json

    path = directory / "tokenizer_config.json"
    settings = read_json(path) if path.is_file() else {}
    settings["chat_template"] = template
    atomic_write_text(path, json.dumps(settings, ensure_ascii=False, indent=2) + "\n")
