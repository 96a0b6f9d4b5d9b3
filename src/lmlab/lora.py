"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), in PEFT's file format.

A frozen Linear layer W (out x in) learns a low-rank update (Hu et al. 2021, eq. 3):
    y = W x + (alpha / r) * B A dropout(x),    A: r x in, B: out x r, r << min(in, out),
with A kaiming-uniform (a = sqrt(5)) and B zero at the start, so a fresh adapter changes nothing (their section
4.1; PEFT's default init). Only A and B train; merging folds W + (alpha / r) B A back into one Linear, so the
merged model costs nothing extra at inference.

- `apply_lora(model, targets, rank, alpha, dropout, base_dtype)` wraps the named Linear layers in `LoRALinear`
  and freezes every other parameter. Targets are short module names (q_proj, down_proj; for a GPT qkv, proj, fc;
  "attn.proj" picks the attention one only) or Llama's q, k, v, o, gate, up, down.
- `save_adapter` / `load_adapter`: PEFT's directory, adapter_model.safetensors + adapter_config.json, as
  peft 0.21.2's save_pretrained writes it for the Hugging Face export of the base (convert/hf_llama.py,
  convert/hf_gpt2.py). Its tensor keys (PEFT leaves the adapter name "default" out of saved files):
      base_model.model.<HF module name>.lora_A.weight    [r, in]
      base_model.model.<HF module name>.lora_B.weight    [out, r]
  with HF module names model.layers.N.self_attn.q_proj, ..., lm_head (Llama / Qwen2 / Mistral) or
  transformer.h.N.attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (GPT-2, whose Conv1D layers make
  fan_in_fan_out true; A and B have the same shapes as for a Linear). So `peft.PeftModel.from_pretrained(hf, dir)`
  reads what save_adapter writes, and load_adapter reads what PEFT writes (plain LoRA; DoRA, rsLoRA, per-layer
  ranks and the like are refused).
- `base_weights_hash(model)`: SHA-256 of the base weights. save_adapter stores it as adapter_config.json's
  "lmlab_base_sha256" (PEFT ignores the key, with a warning); load_adapter checks it whenever the key is there
  and refuses an adapter made for other weights. PEFT's own files have no such key and load unchecked.
- `merge_lora(model)` puts plain nn.Linear layers back, with the update folded in (a run's model.safetensors is
  written from a merged model; an adapted one's state dict has LoRALinear's names: base.weight, lora_A.weight).

base_dtype stores a wrapped layer's frozen weight narrow, dequantized in forward (the arithmetic stays in the
adapter's float32), QLoRA-style (Dettmers et al. 2023) but on CPU and simpler: "bf16", "fp16", or "int8"
(weight-only, one absmax / 127 scale per output row, models/kernels.int8_rows). The adapter then learns
against the rounded base; merging gives float32 weights (the rounded base plus the update).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import read_weights, save_weights, unique_state_dict
from .errors import LmlabError
from .files import atomic_write_text, read_json

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_VERSION = "0.21.2"  # the peft whose save_pretrained output save_adapter matches (requirements-dev.txt)
PREFIX = "base_model.model."  # PeftModel's prefix of every saved key
HASH_KEY = "lmlab_base_sha256"
BASE_PATH = "lmlab_base_path"  # the model attribute (set by lmlab finetune) that becomes base_model_name_or_path
ALIASES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
           "down": "down_proj"}
BASE_DTYPES = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
# adapter_config.json as peft 0.21.2 writes it for plain LoRA; save_adapter fills in r, lora_alpha, ...
PEFT_CONFIG = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": PEFT_VERSION, "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": [], "target_parameters": None, "task_type": "CAUSAL_LM",
    "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False,
    "use_rslora": False, "velora_config": None}
# PEFT settings that change what the adapter computes: load_adapter refuses any value but these (or empty ones)
NOT_PLAIN = {"bias": "none", "use_dora": False, "use_rslora": False, "lora_bias": False, "rank_pattern": {},
             "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None, "exclude_modules": None,
             "layer_replication": None, "trainable_token_indices": None, "target_parameters": None,
             "alora_invocation_tokens": None, "use_qalora": False, "use_bdlora": None, "arrow_config": None,
             "kasa_config": None, "monteclora_config": None, "velora_config": None, "megatron_config": None}


MASK_LEVELS = 1 << 16  # keep_mask's resolution: p is taken as round(p * MASK_LEVELS) / MASK_LEVELS


def keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's keep-mask shaped like `like`: Bernoulli(1 - p) per entry (p at a resolution of 1/65536), from
    16-bit uniform integers, four per 64-bit draw of torch's generator. nn.Dropout draws the same distribution
    with bernoulli_, one generator call per entry: about 7x the time on CPU, where it was ~20% of a LoRA step."""
    n = like.numel()
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=like.device)
    threshold = round(p * MASK_LEVELS) - MASK_LEVELS // 2  # int16 values >= threshold: probability 1 - p
    return (words.view(torch.int16)[:n] >= threshold).view(like.shape)


def _keep_scale(p: float) -> float:
    """1 / (1 - p), with p at keep_mask's resolution: the scale of an unbiased dropout (expected multiplier 1)."""
    return 1.0 / (1 - round(p * MASK_LEVELS) / MASK_LEVELS)


class _LoRAFunction(torch.autograd.Function):
    """y = x W^T + b + s (D(x) A^T) B^T with W frozen, as one autograd node (the same values and gradients as the
    chain of modules PEFT runs, in less memory and time):
    - forward: the low-rank term is added into the base output by one addmm (no separate [N, out] product,
      scaling and sum); the dropout keep-mask (keep_mask: nn.Dropout's distribution, drawn faster) is kept as
      bool and D(x) = (x * mask) / (1 - p) is formed as x * mask, its 1 / (1 - p) folded into the [N, r]
      product (one pass over x instead of three: a float noise tensor, its scaling, the product); x * mask is
      recomputed in backward instead of saved as a float copy per layer (q, k and v share one input: autograd
      keeps x once for all three);
    - backward: dx = g W + s/(1-p) ((g B) A) * mask, dA = s/(1-p) (g B)^T (x * mask), dB = s g^T (D(x) A^T),
      no dW (frozen); a narrow base (bf16 / fp16 / int8) is dequantized again in backward rather than kept in
      float."""

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, layer, p: float):
        w = layer.base_weight().to(x.dtype)
        keep = keep_mask(x, p) if p > 0 else None
        masked = x * keep if keep is not None else x
        low = masked.reshape(-1, x.shape[-1]) @ lora_a.t()  # [N, r]
        if keep is not None:
            low.mul_(_keep_scale(p))
        y = F.linear(x, w, layer.base.bias)
        y.view(-1, y.shape[-1]).addmm_(low, lora_b.t(), alpha=layer.scaling)
        ctx.save_for_backward(x, keep, low, lora_a, lora_b)
        ctx.layer, ctx.p = layer, p
        return y

    @staticmethod
    def backward(ctx, grad):
        x, keep, low, lora_a, lora_b = ctx.saved_tensors
        layer, s = ctx.layer, ctx.layer.scaling
        s_masked = s * _keep_scale(ctx.p) if keep is not None else s
        g = grad.reshape(-1, grad.shape[-1])
        gb = g @ lora_b  # [N, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = g @ layer.base_weight().to(g.dtype)
            if keep is None:
                dx.addmm_(gb, lora_a, alpha=s)
            else:
                dx.add_((gb @ lora_a).mul_(keep.reshape(dx.shape)), alpha=s_masked)
            dx = dx.view(x.shape)
        if ctx.needs_input_grad[1]:
            masked = x * keep if keep is not None else x
            da = (gb.t() @ masked.reshape(-1, x.shape[-1])).mul_(s_masked)
        if ctx.needs_input_grad[2]:
            db = (g.t() @ low).mul_(s)
        return dx, da, db, None, None


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) * lora_B(lora_A(dropout(x))) around a frozen nn.Linear (Hu et al. 2021, eq. 3).

    lora_A starts kaiming-uniform (a = sqrt(5)), lora_B at zero (PEFT's default). base_dtype ("bf16", "fp16",
    "int8") stores the base weight narrow (int8: with one float scale per row, `weight_scale`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, base_dtype: str | None = None):
        super().__init__()
        if base_dtype not in BASE_DTYPES:
            raise LmlabError(f"base_dtype must be one of bf16, fp16, int8 or None, got {base_dtype!r}.")
        w = base.weight
        dtype = w.dtype if w.is_floating_point() else torch.float32
        self.base, self.rank, self.alpha, self.scaling = base.requires_grad_(False), rank, alpha, alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=w.device, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=w.device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.base_dtype = base_dtype if BASE_DTYPES.get(base_dtype) is not None else None
        self.register_buffer("weight_scale", None)
        if self.base_dtype:
            self._store_narrow()

    def _store_narrow(self) -> None:
        """Replace the base weight by its bf16 / fp16 copy, or int8 values and per-row scales."""
        w = self.base.weight.detach()
        if self.base_dtype == "int8":
            from .models.kernels import int8_rows

            w, scale = int8_rows(w)
            self.weight_scale = scale.to(self.lora_A.weight.dtype)
        self.base.weight = nn.Parameter(w.to(BASE_DTYPES[self.base_dtype]), requires_grad=False)

    def base_weight(self) -> torch.Tensor:
        """The base weight in the adapter's dtype (dequantized when it is stored narrow)."""
        w = self.base.weight.to(self.lora_A.weight.dtype)
        return w * self.weight_scale[:, None] if self.weight_scale is not None else w

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A: the update of the base weight [out, in]."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.lora_dropout.p if self.training and isinstance(self.lora_dropout, nn.Dropout) else 0.0
        trains = x.requires_grad or self.lora_A.weight.requires_grad or self.lora_B.weight.requires_grad
        if torch.is_grad_enabled() and trains and not torch.is_autocast_enabled(x.device.type):
            return _LoRAFunction.apply(x, self.lora_A.weight, self.lora_B.weight, self, p)  # (autocast: modules)
        y = self.base(x) if self.base_dtype is None else F.linear(x, self.base_weight().to(x.dtype), self.base.bias)
        return y + self.lora_B(self.lora_A(F.dropout(x, p) if p else x)) * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the update folded into its weight (float32 when it was stored narrow)."""
        with torch.no_grad():
            if self.base_dtype is None:
                self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
            else:
                self.base.weight = nn.Parameter(self.base_weight() + self.delta_weight(), requires_grad=False)
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, base_dtype={self.base_dtype or 'as is'}"


# ----------------------------------------------------------------------------------- finding and wrapping layers

def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> LoRALinear of every adapted layer."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Module name -> nn.Linear of every Linear layer not already inside a LoRALinear."""
    inner = tuple(f"{name}." for name in lora_layers(model))
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not (inner and name.startswith(inner))}


def _named(names, target: str) -> list[str]:
    """The names that are `target` or end with ".target" (PEFT's rule for target_modules)."""
    return [n for n in names if n == target or n.endswith(f".{target}")]


def _available(names) -> str:
    """The distinct short names of `names`, with their aliases: "q_proj (q), ..., lm_head"."""
    short = dict.fromkeys(n.rsplit(".", 1)[-1] for n in names)
    alias = {full: a for a, full in ALIASES.items()}
    return ", ".join(f"{s} ({alias[s]})" if s in alias else s for s in short)


def resolve_targets(model: nn.Module, targets) -> list[str]:
    """The Linear module names (model order) that the short names `targets` pick; an unknown one is refused."""
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise LmlabError(f"give the layers to adapt as a list of short names, e.g. ['q', 'v']; got {targets!r}.")
    layers, adapted = linear_layers(model), lora_layers(model)
    chosen, unknown = set(), []
    for target in targets:
        short = ALIASES.get(target, target)
        if _named(adapted, short):
            raise LmlabError(f"{_named(adapted, short)[0]} already has a LoRA adapter; merge_lora(model) first or "
                             "start from a model without adapters.")
        hits = _named(layers, short)
        chosen.update(hits)
        if not hits:
            unknown.append(target)
    if unknown:
        family = getattr(model, "family", type(model).__name__)
        raise LmlabError(f"no Linear layer of this {family} model is named {', '.join(map(repr, unknown))}; its "
                         f"Linear layers are {_available(layers)}.")
    return [n for n in layers if n in chosen]


def _check_settings(model: nn.Module, names: list[str], rank, alpha, dropout, base_dtype) -> None:
    """Refuse a rank outside 1..min(in, out) of every layer, alpha <= 0, dropout outside [0, 1), an unknown
    base_dtype, and a layer whose weight is tied to another module's (a tied LM head)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LmlabError(f"the LoRA rank must be a positive integer, got {rank!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise LmlabError(f"the LoRA alpha must be a number > 0, got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise LmlabError(f"the LoRA dropout must be in [0, 1), got {dropout!r}.")
    if base_dtype not in BASE_DTYPES:
        raise LmlabError(f"base_dtype must be one of bf16, fp16, int8 or None, got {base_dtype!r}.")
    layers = {name: model.get_submodule(name) for name in names}
    narrowest = min(names, key=lambda n: min(layers[n].in_features, layers[n].out_features))
    layer = layers[narrowest]
    if rank > min(layer.in_features, layer.out_features):
        raise LmlabError(f"rank {rank} is larger than {narrowest} ({layer.in_features} in, {layer.out_features} "
                         f"out); give a rank of at most {min(layer.in_features, layer.out_features)}.")
    weights = {id(layers[n].weight): n for n in names}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = weights.get(id(p))
        if owner is not None and name != f"{owner}.weight":
            raise LmlabError(f"{owner} shares its weight with {name.removesuffix('.weight')} (tied weights), so "
                             "merging an adapter into it would change that one too; adapt other layers.")


def _wrap(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float, base_dtype) -> None:
    """Put a LoRALinear around each named Linear; freeze everything but the adapters."""
    if BASE_DTYPES[base_dtype] is not None and not hasattr(model, HASH_KEY):
        setattr(model, HASH_KEY, base_weights_hash(model))  # before the weights are rounded
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        base = getattr(owner, attr)
        setattr(owner, attr, LoRALinear(base, rank, alpha, dropout, base_dtype).train(base.training))
    model.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)


def apply_lora(model: nn.Module, targets: list[str], rank: int = 8, alpha: float = 8.0, dropout: float = 0.0,
               base_dtype: str | None = None) -> list[str]:
    """Wrap the Linear layers that `targets` name in LoRALinear (Hu et al. 2021) and freeze every other parameter;
    return the wrapped module names. base_dtype: None (as is), "bf16", "fp16" or "int8" storage of their weights."""
    names = resolve_targets(model, targets)
    _check_settings(model, names, rank, alpha, dropout, base_dtype)
    _wrap(model, names, rank, alpha, dropout, base_dtype)
    return names


def merge_lora(model: nn.Module) -> list[str]:
    """Fold each adapter into its base weight, W + (alpha / r) B A, and put the plain nn.Linear back; return the
    merged names. Parameters stay frozen as apply_lora left them (model.requires_grad_(True) to train them all)."""
    merged = []
    for name, layer in lora_layers(model).items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, layer.merged())
        merged.append(name)
    if hasattr(model, HASH_KEY):
        delattr(model, HASH_KEY)  # the weights changed
    return merged


# ----------------------------------------------------------------------------------- the base's hash

def _base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors (tied ones once) without the adapters', under the names of the unadapted model."""
    renames = {f"{name}.base.": f"{name}." for name in lora_layers(model)}
    out = {}
    for key, tensor in unique_state_dict(model).items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        out[renames[prefix] + key[len(prefix):] if prefix else key] = tensor
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the model with each adapter folded into its weight (W + (alpha / r) B A, float32), under the
    unadapted model's names; the model is left as it is. What a LoRA run's model.safetensors holds, so that every
    verb loads it as a plain model."""
    out = _base_tensors(model)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            out.pop(f"{name}.weight_scale", None)
            out[f"{name}.weight"] = layer.base_weight() + layer.delta_weight()
    return out


def record_base_hash(model: nn.Module) -> str:
    """Hash the base once (base_weights_hash) and keep it with the model, for the adapter files of each save."""
    digest = base_weights_hash(model)
    setattr(model, HASH_KEY, digest)
    return digest


def base_weights_hash(model: nn.Module) -> str:
    """SHA-256 over the base model's tensors: each one's name, dtype, shape and bytes, sorted by name.

    Adapters do not count, so a model with LoRA layers gives its base's hash; where apply_lora stored weights
    narrow (base_dtype), the hash it took of them just before."""
    recorded = getattr(model, HASH_KEY, None)
    if recorded:
        return recorded
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_tensors(model).items()):
        digest.update(f"{name} {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- PEFT's names and files

def hf_module_name(model: nn.Module, name: str) -> str:
    """The name of lmlab's Linear module `name` in the Hugging Face export of the model (convert/)."""
    family = getattr(model, "family", None)
    if name == "lm_head" and family in ("llama", "gpt"):
        return name
    if family == "llama":
        return f"model.{name}"
    if family == "gpt":
        from .convert.hf_gpt2 import _gpt2_name_map

        theirs = _gpt2_name_map(model.cfg.n_layer).get(f"{name}.weight")
        if theirs:
            return "transformer." + theirs[0].removesuffix(".weight")
    raise LmlabError(f"PEFT adapter files use Hugging Face's module names, which lmlab knows for llama and gpt "
                     f"models only; {name} of this {family or type(model).__name__} model has none.")


def _hf_linear_names(model: nn.Module) -> dict[str, str]:
    """HF module name -> lmlab module name of every Linear layer, adapted or not."""
    names = list(linear_layers(model)) + list(lora_layers(model))
    return {hf_module_name(model, n): n for n in names}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under PEFT's saved names: base_model.model.<HF module>.lora_A.weight / lora_B.weight."""
    layers = lora_layers(model)
    if not layers:
        raise LmlabError("the model has no LoRA layers; apply_lora(model, targets, ...) first.")
    out = {}
    for name, layer in layers.items():
        key = PREFIX + hf_module_name(model, name)
        out[f"{key}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().clone()
        out[f"{key}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().clone()
    return out


def _target_modules(model: nn.Module) -> list[str]:
    """PEFT's target_modules for the adapted layers: a short HF name where it picks exactly those, else the
    full HF names (e.g. only the attention c_proj of a GPT-2)."""
    every = _hf_linear_names(model)
    adapted = {hf_module_name(model, n) for n in lora_layers(model)}
    out = []
    for short in sorted({h.rsplit(".", 1)[-1] for h in adapted}):
        same = set(_named(every, short))
        out += [short] if same <= adapted else sorted(same & adapted)
    return out


def adapter_config(model: nn.Module, base_hash: str | None = None, info: dict | None = None) -> dict:
    """adapter_config.json of the model's adapters: PEFT's keys, plus lmlab_base_sha256 and lmlab_info;
    base_model_name_or_path is the base run's directory where the model knows it (BASE_PATH), as PEFT records
    the base it adapted."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise LmlabError("the model has no LoRA layers; apply_lora(model, targets, ...) first.")
    settings = {(m.rank, m.alpha, getattr(m.lora_dropout, "p", 0.0)) for m in layers}
    if len(settings) > 1:
        raise LmlabError(f"the model's LoRA layers differ in (rank, alpha, dropout) {sorted(settings)}; one PEFT "
                         "adapter_config.json holds one of each.")
    (rank, alpha, dropout), = settings
    config = {**PEFT_CONFIG, "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
              "target_modules": _target_modules(model), "fan_in_fan_out": model.family == "gpt",  # GPT-2's Conv1D
              "base_model_name_or_path": getattr(model, BASE_PATH, None)}
    if base_hash is not None:
        config[HASH_KEY] = base_hash
    if info:
        config["lmlab_info"] = info
    return config


def save_adapter(model: nn.Module, directory, base_hash: str, info: dict | None = None) -> Path:
    """Write the adapters as PEFT does (adapter_model.safetensors, then adapter_config.json, each atomically),
    with lmlab_base_sha256 = base_hash (base_weights_hash of the base) and `info` (JSON) as lmlab_info."""
    if not isinstance(base_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", base_hash):
        raise LmlabError(f"base_hash must be a SHA-256 hex digest (base_weights_hash(model)), got {base_hash!r}.")
    directory = Path(directory)
    tensors, config = adapter_state_dict(model), adapter_config(model, base_hash, info)
    try:
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as e:
        raise LmlabError(f"the adapter's info must be JSON data ({e}).") from None
    if directory.exists() and not directory.is_dir():
        raise LmlabError(f"{directory} is a file; give a directory for the adapter.")
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(tensors, directory / ADAPTER_WEIGHTS, step=0)
    atomic_write_text(directory / ADAPTER_CONFIG, text)  # last: a directory with a config has its weights
    return directory


def _read_config(path: Path) -> dict:
    """A PEFT LoRA adapter_config.json, checked: plain LoRA with a positive r, alpha and a dropout in [0, 1)."""
    config = read_json(path)
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise LmlabError(f"{path} is not a LoRA adapter config (peft_type {found!r}, not 'LORA').")
    r, alpha, dropout = config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)) or not alpha > 0 \
            or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise LmlabError(f"{path} has no valid r, lora_alpha and lora_dropout (got {r!r}, {alpha!r}, {dropout!r}).")
    for key, plain in NOT_PLAIN.items():
        value = config.get(key, plain)
        if value not in (plain, None, False, [], {}):
            raise LmlabError(f"{path} sets {key} = {json.dumps(value)[:60]}, which is not plain LoRA; lmlab "
                             "loads plain LoRA adapters only.")
    return config


def _config_targets(model: nn.Module, config: dict, path: Path) -> list[str]:
    """The lmlab module names that target_modules picks (a list of names, a regex, or "all-linear"), PEFT's way."""
    every = _hf_linear_names(model)
    targets = config.get("target_modules")
    if targets == "all-linear":  # PEFT: every Linear but the output layer
        hits = [h for h in every if h != "lm_head"]
    elif isinstance(targets, str):
        try:
            hits = [h for h in every if re.fullmatch(targets, h)]
        except re.error as e:
            raise LmlabError(f"{path} has target_modules {targets!r}, not a valid regular expression ({e}).") from None
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        hits = [h for h in every if any(_named([h], t) for t in targets)]
    else:
        raise LmlabError(f"{path} has no target_modules list (got {targets!r}).")
    if not hits:
        raise LmlabError(f"{path}'s target_modules {targets!r} name no Linear layer of this model; its Linear layers "
                         f"are {_available(every)}.")
    return [every[h] for h in hits]


def _check_tensors(model: nn.Module, names: list[str], rank: int, tensors: dict, path: Path) -> None:
    """Refuse a weights file whose keys are not exactly the targeted layers' A and B, or of other shapes."""
    want = {}
    for name in names:
        layer, key = model.get_submodule(name), PREFIX + hf_module_name(model, name)
        want[f"{key}.lora_A.weight"] = (rank, layer.in_features)
        want[f"{key}.lora_B.weight"] = (layer.out_features, rank)
    missing, unexpected = sorted(want.keys() - tensors.keys()), sorted(tensors.keys() - want.keys())
    if missing or unexpected:
        raise LmlabError(f"{path} does not match its {ADAPTER_CONFIG} and this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}).")
    for key, shape in want.items():
        if tuple(tensors[key].shape) != shape:
            raise LmlabError(f"{path} holds {key} of shape {tuple(tensors[key].shape)} where the model and its "
                             f"{ADAPTER_CONFIG} imply {shape}.")


def load_adapter(model: nn.Module, directory, base_dtype: str | None = None) -> list[str]:
    """Apply the LoRA adapter that save_adapter or PEFT's save_pretrained wrote in `directory` to `model` (as
    apply_lora does: the adapters trainable, the rest frozen) and load its weights; return the adapted names.

    Strict: a missing or malformed file, keys that are not exactly the targeted layers', other shapes, and an
    lmlab_base_sha256 other than base_weights_hash(model) are refused, naming the file, before the model changes."""
    if base_dtype not in BASE_DTYPES:
        raise LmlabError(f"base_dtype must be one of bf16, fp16, int8 or None, got {base_dtype!r}.")
    directory = Path(directory)
    if not directory.is_dir():
        raise LmlabError(f"{directory} is not a directory; give the directory that save_adapter (or PEFT's "
                         "save_pretrained) wrote.")
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    config = _read_config(config_path)
    if lora_layers(model):
        raise LmlabError("the model already has LoRA layers; load the adapter onto a model without them.")
    expected = config.get(HASH_KEY)
    if expected is not None and expected != base_weights_hash(model):
        raise LmlabError(f"{config_path} was made for other base weights ({HASH_KEY} {str(expected)[:12]}..., this "
                         f"model's {base_weights_hash(model)[:12]}...); load it onto the model it was trained on.")
    names = _config_targets(model, config, config_path)
    rank, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    try:
        _check_settings(model, names, rank, alpha, dropout, base_dtype)
    except LmlabError as e:
        raise LmlabError(f"{config_path}: {e}") from None
    if not weights_path.is_file():
        raise LmlabError(f"{directory} has no {ADAPTER_WEIGHTS}; the adapter has no weights.")
    tensors, _ = read_weights(weights_path)
    _check_tensors(model, names, rank, tensors, weights_path)
    _wrap(model, names, rank, alpha, dropout, base_dtype)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            key = PREFIX + hf_module_name(model, name)
            layer.lora_A.weight.copy_(tensors[f"{key}.lora_A.weight"])
            layer.lora_B.weight.copy_(tensors[f"{key}.lora_B.weight"])
    return names


# ----------------------------------------------------------------------------------- lmlab merge

def merge_command(run, adapter, out) -> None:
    """`lmlab merge BASE_RUN --adapter DIR --out RUN`: a plain run of the base with the adapter (PEFT's files, made
    by lmlab finetune or by peft) folded into its weights. An adapter that names another base (its
    lmlab_base_sha256) is refused, and nothing is written."""
    import dataclasses
    import shutil

    from .checkpoint import MODEL_CONFIG, WEIGHTS, load, save_weights, unique_state_dict
    from .convert.hf_files import check_free, output_dir

    out = Path(out)
    check_free(out)
    model, tokenizer = load(run)
    names = load_adapter(model, adapter)
    merge_lora(model)
    with output_dir(out) as tmp:
        shutil.copyfile(Path(run) / MODEL_CONFIG, tmp / MODEL_CONFIG)
        save_weights(unique_state_dict(model), tmp / WEIGHTS, 0, dataclasses.asdict(model.cfg))
        tokenizer.save(tmp / "tokenizer.json")
    print(f"wrote {out}: {run} with the adapter of {adapter} merged into {len(names)} layers")


def load_adapted(directory, which: str = "best", device: str = "cpu"):
    """(model, tokenizer) of a bare adapter directory (adapter_config.json + adapter_model.safetensors, no weights
    of its own): the base run its base_model_name_or_path names, with the adapter merged in (lmlab.load does this
    for such a directory, so every verb takes one)."""
    from .checkpoint import is_run_dir, load

    directory = Path(directory)
    base = _read_config(directory / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base or not is_run_dir(base):
        raise LmlabError(f"{directory} holds an adapter for {base!r}, which is not an lmlab run here; give its base "
                         f"run: lmlab.load(BASE, adapter='{directory}'), or `lmlab merge BASE --adapter {directory} "
                         "--out RUN`.")
    return load(base, which, device, adapter=directory)
