"""CPU decoding kernels (decode_kernels.cpp), compiled on first use for this CPU: the small-batch matrix
product of a decoding step (`small_gemm`, used by layers.linear) and a GPT's or a Llama's whole stack of blocks
for one new position (`gpt_blocks_apply`, used by GPT.hidden; `llama_blocks_apply`, used by Llama.hidden), with
the weights in float32, float16 or int8 (WEIGHT_FORMAT).

The kernels are plain C++ (no torch headers), built once with the system's C++ compiler
(`c++ -O3 -march=native -fopenmp`, about two seconds) into ~/.cache/lmlab/kernels/ (or $XDG_CACHE_HOME), keyed
by the source, the compiler and the CPU (lmlab.native, which the n-gram query kernel uses too), and called
through ctypes (which releases the GIL). They run their threads on the OpenMP runtime torch already loaded (the
same libgomp.so.1), with torch's thread count. Without a compiler, on another platform, or with LMLAB_KERNELS=0,
`available()` is False and decoding runs torch ops (with MKL's packed sgemm, layers.linear).
"""
from __future__ import annotations

import ctypes
import platform
import weakref
from pathlib import Path

import torch

from .. import native

SOURCE = Path(__file__).with_name("decode_kernels.cpp")
_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: unavailable


def _load():
    global _lib
    if _lib is None:
        _lib = False
        lib = native.load_library(SOURCE, ("-fopenmp",))
        if lib is not None:
            try:
                lib.lmlab_small_gemm.restype = None
                lib.lmlab_small_gemm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                                 ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                                 ctypes.c_int]
                lib.lmlab_panel_width.restype = lib.lmlab_half_weights.restype = ctypes.c_int
                lib.lmlab_gpt_blocks.restype = None
                lib.lmlab_gpt_blocks.argtypes = ([ctypes.c_void_p] + [ctypes.c_int64] * 5
                                                 + [ctypes.c_float, ctypes.c_int] + [ctypes.c_void_p] * 3
                                                 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2)
                lib.lmlab_llama_blocks.restype = None
                lib.lmlab_llama_blocks.argtypes = ([ctypes.c_void_p] + [ctypes.c_int64] * 7 + [ctypes.c_float]
                                                   + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
                                                   + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 2)
                _lib = lib
            except AttributeError:
                pass  # a library without these symbols: MKL it is
    return _lib


_fallback = native.Fallback()
disabled = _fallback.forced  # `with disabled():` decode with torch ops only (MKL's packed sgemm), to compare the two


def available() -> bool:
    return not _fallback.on and bool(_load())


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] as int8 values q [N, K] and one float32 scale per row [N], weight ~ q * scale (symmetric,
    absmax / 127 per output channel; an all-zero row gets scale 1). Quantizing q * scale again gives q back."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def pack(weight: torch.Tensor, fmt: str | None = None) -> torch.Tensor:
    """weight [N, K] as the kernel's panels [ceil(N / P), K, P] (zero columns past N): float32; float16 for
    fmt "fp16" where this CPU reads it (weights that are float16 values, see WEIGHT_FORMAT); for "int8", int8
    panels each followed by its P columns' float32 scales (bytes [ceil(N / P), K * P + 4 P])."""
    P = _load().lmlab_panel_width()
    N, K = weight.shape
    n_pad = -(-N // P) * P
    if fmt == "int8":
        q, scale = int8_rows(weight)
        padded, scales = torch.zeros(n_pad, K, dtype=torch.int8), torch.ones(n_pad)
        padded[:N], scales[:N] = q, scale
        panels = padded.view(-1, P, K).transpose(1, 2).reshape(-1, K * P)
        return _in_huge_pages(torch.cat([panels, scales.view(-1, P).view(torch.int8)], dim=1))
    dtype = torch.float16 if fmt == "fp16" and _load().lmlab_half_weights() else torch.float32
    padded = torch.zeros(n_pad, K, dtype=dtype)
    padded[:N] = weight.detach()
    return _in_huge_pages(padded.view(-1, P, K).transpose(1, 2))


_HUGE = 2 << 20
_MADV_HUGEPAGE = 14


def _in_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose 2 MB-aligned interior the kernel is asked (madvise MADV_HUGEPAGE, before
    the pages are first touched) to back with transparent huge pages: a decoding step streams every weight once,
    and with 4 KB pages each stream crosses a page, and the TLB misses on it, every 4 KB. Measured on 40
    matrices of 3072x576: 22.6 -> 24.5 GB/s. Where the kernel says no (THP off), a plain copy."""
    out = torch.empty(t.shape, dtype=t.dtype)
    start, end = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    first, last = -(-start // _HUGE) * _HUGE, end // _HUGE * _HUGE
    if last > first and platform.system() == "Linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_HUGEPAGE)
    return out.copy_(t)


FORMAT_CODES = {torch.float32: 0, torch.float16: 1, torch.int8: 2}  # decode_kernels.cpp's Format, by packed dtype


def small_gemm(x: torch.Tensor, packed: torch.Tensor, n_out: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ W^T + bias for W packed by `pack` (n_out rows): [M, n_out], float32 on CPU."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], n_out, dtype=torch.float32)
    _load().lmlab_small_gemm(x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), FORMAT_CODES[packed.dtype],
                             n_out, _pointer(bias), y.data_ptr(), torch.get_num_threads())
    return y


# --------------------------------------------------------------------------- packed weights, GPT blocks

_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # nn.Linear -> (key, packed weight)
# An nn.Linear with this attribute set to "fp16" holds float16 values (packed in float16), to "int8" values
# q * scale as int8_rows makes them (packed as int8 and scales): generate.decoding_model sets it.
WEIGHT_FORMAT = "decoding_weight_format"


def weight_format(layer: torch.nn.Module) -> str | None:
    return getattr(layer, WEIGHT_FORMAT, None)


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place-change counter (an optimizer step bumps it); tensors made under
    torch.inference_mode keep none (-1)."""
    return -1 if t.is_inference() else t._version


def packed_weight(layer: torch.nn.Linear, key: tuple = (), packer=None) -> torch.Tensor:
    """The layer's weight packed by `packer` (default: this kernel's panels in the layer's WEIGHT_FORMAT), kept
    until the weight changes (its storage or version: an optimizer step) or `key` does: one packed copy per
    layer."""
    w = layer.weight
    fmt = weight_format(layer)
    key = (w.data_ptr(), _version(w), fmt) + key
    cached = _packed.get(layer)
    if cached is None or cached[0] != key:
        cached = _packed[layer] = (key, packer(w) if packer else pack(w, fmt))
    return cached[1]


class _BlockWeights(ctypes.Structure):  # decode_kernels.cpp's BlockWeights
    _fields_ = [(name, ctypes.c_void_p) for name in
                ("ln1_w", "ln1_b", "qkv", "qkv_b", "proj", "proj_b", "ln2_w", "ln2_b", "fc", "fc_b", "fc_proj",
                 "fc_proj_b")]


_block_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # blocks -> (key, table, packed weights)


def _pointer(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _block_table(blocks: torch.nn.ModuleList) -> tuple:
    """(the blocks' parameters as a C array of BlockWeights, the packed weights it points to), rebuilt when any
    parameter changes; (None, []) where the kernel does not compute these blocks (another dtype or device,
    quantized layers, another activation)."""
    params = list(blocks.parameters())
    key = tuple((p.data_ptr(), _version(p)) for p in params)
    cached = _block_tables.get(blocks)
    if cached is None or cached[0] != key:
        first = blocks[0]
        supported = (all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
                     and all(type(layer) is torch.nn.Linear and type(b.ln_1) is type(b.ln_2) is torch.nn.LayerNorm
                             and b.mlp.approximate == first.mlp.approximate in ("none", "tanh")
                             and b.ln_1.eps == b.ln_2.eps == first.ln_1.eps
                             and b.ln_1.weight is not None and b.ln_2.weight is not None
                             and b.mlp.fc.out_features == first.mlp.fc.out_features
                             and weight_format(layer) == weight_format(first.attn.qkv)
                             for b in blocks for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)))
        table, keep = None, []
        if supported:
            table = (_BlockWeights * len(blocks))()
            for entry, b in zip(table, blocks):
                linears = {"qkv": b.attn.qkv, "proj": b.attn.proj, "fc": b.mlp.fc, "fc_proj": b.mlp.proj}
                for name, layer in linears.items():
                    keep.append(packed_weight(layer))
                    setattr(entry, name, keep[-1].data_ptr())
                    setattr(entry, name + "_b", _pointer(layer.bias))
                for name, norm in (("ln1", b.ln_1), ("ln2", b.ln_2)):
                    setattr(entry, name + "_w", _pointer(norm.weight))
                    setattr(entry, name + "_b", _pointer(norm.bias))
        cached = _block_tables[blocks] = (key, table, keep)
    return cached[1:]


def _row_contiguous(cache) -> bool:
    """Each row's [H, max_len, hs] keys and values contiguous, keys and values laid out alike (a batch cache's
    view over its first rows qualifies, see serve.batching)."""
    k, v = cache.k, cache.v
    _, _, H, L, hs = k.shape
    return k.stride() == v.stride() and k.stride()[2:] == (L * hs, hs, 1)


def gpt_blocks_apply(blocks: torch.nn.ModuleList, x: torch.Tensor, cache, pad: torch.Tensor | None) -> bool:
    """Run x [B, 1, C] (one new position per row, float32, CPU) through every pre-LN block in place, appending
    each layer's key and value to `cache` (a layers.KVCache) at cache.length; rows with left padding `pad` [B]
    attend from their first real position. False (x untouched) where the kernel cannot: then run the blocks."""
    B, T, C = x.shape
    cache.room_for_columns(cache.length + T)
    if (T != 1 or not available() or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous()
            or torch.is_grad_enabled() or blocks.training or cache.k.dtype != torch.float32
            or cache.k.shape[1] != B or cache.length >= cache.k.shape[3] or not _row_contiguous(cache)
            or (pad is not None and (pad.dtype != torch.long or not pad.is_contiguous()))):
        return False
    # The weights cannot change within one generation (its cached keys would be stale): look them up once per
    # cache, which keeps the packed weights the table points to alive.
    if cache.kernel_table is None or cache.kernel_table[0] is not blocks:
        cache.kernel_table = (blocks, *_block_table(blocks))
    table = cache.kernel_table[1]
    if table is None:
        return False
    first = blocks[0]
    n_layer, _, H, max_len, _ = cache.k.shape
    hidden = first.mlp.fc.out_features
    fmt = FORMAT_CODES[cache.kernel_table[2][0].dtype]  # (the packed weights, as packed)
    scratch = torch.empty(B * (5 * C + hidden + H * max_len))
    _load().lmlab_gpt_blocks(ctypes.addressof(table), n_layer, B, C, H, hidden, first.ln_1.eps,
                             1 if first.mlp.approximate == "none" else 2, x.data_ptr(), cache.k.data_ptr(),
                             cache.v.data_ptr(), max_len, cache.k.stride(0), cache.k.stride(1), cache.length,
                             _pointer(pad), scratch.data_ptr(), fmt, torch.get_num_threads())
    return True


class _LlamaWeights(ctypes.Structure):  # decode_kernels.cpp's LlamaWeights
    _fields_ = [(name, ctypes.c_void_p) for name in ("attn_norm", "qkv", "qkv_b", "o", "mlp_norm", "gate_up", "down")]


def _packed_rows(owner: torch.nn.Module, layers: list, fmt: str | None) -> torch.Tensor:
    """The weights of several Linear layers stacked (their output rows one after another) and packed: one matrix
    product reads them as one stream (Llama's q, k, v; gate and up). Kept with `owner` until a weight changes."""
    key = tuple((layer.weight.data_ptr(), _version(layer.weight)) for layer in layers) + (fmt,)
    cached = _packed.get(owner)
    if cached is None or cached[0] != key:
        cached = _packed[owner] = (key, pack(torch.cat([layer.weight.detach() for layer in layers]), fmt))
    return cached[1]


def _llama_table(layers: torch.nn.ModuleList) -> tuple:
    """As _block_table, for Llama blocks (models/llama.py): (C array of LlamaWeights, what it points to)."""
    params = list(layers.parameters())
    key = tuple((p.data_ptr(), _version(p)) for p in params)
    cached = _block_tables.get(layers)
    if cached is None or cached[0] != key:
        first = layers[0]
        fmt = weight_format(first.self_attn.q_proj)
        linears = lambda b: (b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj, b.self_attn.o_proj,  # noqa
                             b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)
        supported = (all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
                     and all(type(layer) is torch.nn.Linear and weight_format(layer) == fmt
                             for b in layers for layer in linears(b))
                     and all(type(n) is torch.nn.RMSNorm and n.weight is not None and n.eps == first.input_layernorm.eps
                             for b in layers for n in (b.input_layernorm, b.post_attention_layernorm)))
        table, keep = None, []
        if supported:
            table = (_LlamaWeights * len(layers))()
            for entry, b in zip(table, layers):
                a, mlp = b.self_attn, b.mlp
                keep += [_packed_rows(a, [a.q_proj, a.k_proj, a.v_proj], fmt), packed_weight(a.o_proj),
                         _packed_rows(mlp, [mlp.gate_proj, mlp.up_proj], fmt), packed_weight(mlp.down_proj)]
                bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
                keep.append(bias)
                entry.qkv, entry.o, entry.gate_up, entry.down = (t.data_ptr() for t in keep[-5:-1])
                entry.qkv_b = _pointer(bias)
                entry.attn_norm, entry.mlp_norm = (_pointer(n.weight) for n in (b.input_layernorm,
                                                                                b.post_attention_layernorm))
        cached = _block_tables[layers] = (key, table, keep)
    return cached[1:]


def llama_blocks_apply(model, x: torch.Tensor, cache, positions: torch.Tensor, pad: torch.Tensor | None) -> bool:
    """A Llama decoding step through the kernel: x [B, 1, C] (one new position per row, float32, CPU) through
    every block in place, each layer's key and value appended to `cache`; `positions`: the new position's rotary
    position ([1], or [B, 1] with left padding `pad`). False (x untouched) where the kernel cannot."""
    B, T, C = x.shape
    cache.room_for_columns(cache.length + T)
    layers, cfg = model.layers, model.cfg
    if (T != 1 or not available() or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous()
            or torch.is_grad_enabled() or model.training or cache.k.dtype != torch.float32
            or model.rope_cos.dtype != torch.float32 or cache.k.shape[1] != B or not _row_contiguous(cache)
            or (pad is not None and (pad.dtype != torch.long or not pad.is_contiguous()))):
        return False
    if cache.kernel_table is None or cache.kernel_table[0] is not layers:
        cache.kernel_table = (layers, *_llama_table(layers))
    table = cache.kernel_table[1]
    if table is None:
        return False
    n_layer, _, Hkv, max_len, d = cache.k.shape
    H, I = cfg.n_head, cfg.mlp_width
    fmt = FORMAT_CODES[cache.kernel_table[2][0].dtype]
    pos = positions.reshape(-1).expand(B).contiguous()
    scratch = torch.empty(B * (C + (H + 2 * Hkv) * d + H * d + 3 * I + H * max_len))
    _load().lmlab_llama_blocks(ctypes.addressof(table), n_layer, B, C, H, Hkv, d, I,
                               layers[0].input_layernorm.eps or torch.finfo(torch.float32).eps, x.data_ptr(),
                               cache.k.data_ptr(), cache.v.data_ptr(), max_len, cache.k.stride(0), cache.k.stride(1),
                               cache.length, _pointer(pad), model.rope_cos.data_ptr(), model.rope_sin.data_ptr(),
                               pos.data_ptr(), scratch.data_ptr(), fmt, torch.get_num_threads())
    return True
