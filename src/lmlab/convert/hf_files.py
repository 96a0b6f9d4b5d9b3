"""The files of a Hugging Face checkpoint directory, shared by every HF format: config.json, the weights
(model.safetensors, pytorch_model.bin through torch.load(weights_only=True), or their shards), GPT-2's BPE
tokenizer files, tokenizer_config.json (the chat template and special tokens, which a run keeps as they are);
the shape check of converted tensors; and the output directory a conversion writes atomically (a temporary
sibling, renamed).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import LmlabError
from ..files import read_json


def check_model_type(hf_config: dict, model_type: str, class_prefix: str, where: str, reads: str) -> None:
    """Refuse a config.json of another architecture than `model_type` (or classes named class_prefix...), naming it;
    `reads` ends the sentence (what the format reads)."""
    found = hf_config.get("model_type")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    if found == model_type or (found is None and archs and all(a.startswith(class_prefix) for a in archs)):
        return
    raise other_model_error(hf_config, where, reads)


def other_model_error(hf_config: dict, where: str, reads: str) -> LmlabError:
    """The sentence refusing a config.json of an architecture the format does not read, naming it."""
    found = hf_config.get("model_type")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    arch = f" ({', '.join(archs)})" if archs else ""
    what = f"a {found} model" if found else "a model of unknown type"
    return LmlabError(f"{where} holds {what}{arch}; {reads}.")


def read_hf_config(src: Path) -> dict:
    if not src.is_dir():
        raise LmlabError(f"{src} is not a directory; give a Hugging Face checkpoint directory "
                         "(config.json, model.safetensors or pytorch_model.bin, tokenizer files).")
    if not (src / "config.json").is_file():
        raise LmlabError(f"{src} has no config.json, so it is not a Hugging Face checkpoint directory.")
    cfg = read_json(src / "config.json")
    if not isinstance(cfg, dict):
        raise LmlabError(f"{src / 'config.json'} is not a JSON object; it is not a Hugging Face model config.")
    return cfg


def load_tensor_file(path: Path) -> dict:
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
            return load_tensor_file(src / name)
        index = src / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set((read_json(index).get("weight_map") or {}).values()))
            state = {}
            for shard in shards:
                state.update(load_tensor_file(src / shard))
            return state
    raise LmlabError(f"{src} has no model.safetensors or pytorch_model.bin; the checkpoint has no weights.")


def read_hf_bpe_tokenizer(src: Path):
    """tokenizer.json, else vocab.json + merges.txt as GPT-2's byte-level BPE (with <|endoftext|> special)."""
    from ..tokenizer import EOT, BPETokenizer, load_tokenizer

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


# The tokenizer_config.json keys a run keeps (Hugging Face's names): what a chat template needs to render.
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_SETTINGS = ("chat_template", "bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token",
                      "add_eos_token")


def _token_text(value):
    """A special token of tokenizer_config.json as its text (transformers also writes AddedToken objects)."""
    return value.get("content") if isinstance(value, dict) else value


def read_tokenizer_settings(src: Path) -> dict:
    """The chat template and special tokens of a directory's tokenizer_config.json (the template may also be
    its own chat_template.jinja file, as transformers >= 4.43 saves it); {} when there is neither."""
    path = src / TOKENIZER_CONFIG
    raw = read_json(path) if path.is_file() else {}
    if not isinstance(raw, dict):
        raise LmlabError(f"{path} is not a JSON object; it is not a Hugging Face tokenizer config.")
    settings = {k: _token_text(raw[k]) for k in TOKENIZER_SETTINGS if raw.get(k) is not None}
    template = src / "chat_template.jinja"
    if "chat_template" not in settings and template.is_file():
        settings["chat_template"] = template.read_text(encoding="utf-8")
    return settings


def tokenizer_config_json(settings: dict, block_size: int) -> str:
    """tokenizer_config.json text of a tokenizer.json with these settings, for AutoTokenizer and a chat template."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, **settings}
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def check_shapes(model_cls, cfg, state: dict, where: str, config: str = "config.json") -> None:
    """Every tensor has the shape `model_cls(cfg)` gives it (so a config that lies is caught here); `config`
    names where the settings came from."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in model_cls(cfg).state_dict().items()}
    for name, tensor in state.items():
        if tensor.shape != shapes[name]:
            raise LmlabError(f"{where} has a tensor of shape {tuple(tensor.shape)} where its {config} implies "
                             f"{tuple(shapes[name])} ({name}); the weights and {config} do not belong together.")


def check_free(out: Path) -> None:
    """An output directory must not exist yet (or be empty): a conversion never overwrites a run."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmlabError(f"{out} already exists and is not empty; choose another output directory.")


@contextlib.contextmanager
def output_dir(out: Path):
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


def save_safetensors(state: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt", **metadata})
