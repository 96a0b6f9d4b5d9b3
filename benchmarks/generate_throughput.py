"""Decoding throughput (tokens/s): Hugging Face `generate` vs lmlab, same weights, greedy, with a KV cache.

    python benchmarks/generate_throughput.py [--shapes 12x768 6x384] [--batches 1 8] [--rounds 3]
                                             [--new-tokens 256] [--no-cache small|all|none] [--dtype fp16 bf16 int8]
                                             [--mkl] [--unpacked]

Both sides decode the same random prompts (16 tokens per row, different rows in a batch) for exactly
`--new-tokens` new tokens, greedily, each with its own cache: HF `GPT2LMHeadModel.generate` (sdpa attention,
its default DynamicCache, no end-of-text stop) and lmlab's `generate_ids`, which is what `lmlab generate`
runs. The weights are the same: an lmlab GPT built from a seed is converted into a `GPT2LMHeadModel`
(GPT-2's shape: biases, tanh GELU), and the benchmark checks that both give the same logits on the prompts
and the same greedy tokens (or reports the first step where they part: random-init logits can nearly tie).
HF cannot run past its n_positions, so at 6x384 (block 256) both decode 240 tokens after the 16-token prompt.

"No cache" is nanoGPT's `generate`: every step runs the whole sequence again and keeps the last position
(lmlab's model, no KV cache), to show what the cache buys; it runs one round only, and at 12x768 only at
batch 1 unless `--no-cache all` (batch 8 there takes minutes).

lmlab decodes through its CPU decoding kernels (lmlab.models.kernels: a GPT's blocks in one call per step, its
small-batch matrix product for the LM head). `--mkl` also times lmlab with torch ops only (the kernels off,
MKL's packed sgemm for the Linear layers), `--unpacked` with plain torch ops (F.linear): what the kernels buy.

`--dtype fp16|bf16|int8` adds lmlab's opt-in lower-precision decoding (`lmlab.generate.decoding_model`),
reported in its own table with its logit error against fp32: it is not a same-weights comparison.

Before the tables it measures the bandwidth a matrix-vector product reads from memory, and for each shape
the time a step needs at least to read the weights at that rate: batch-1 decoding cannot go faster.

Each side lives in its own worker process and the sides are timed in interleaved rounds; medians are
reported because this machine is shared and noisy: the ratios measured in the same run are what matter.
The ratio is also given by the processes' CPU time, which other programs on the machine disturb less than
the wall clock (but which counts threads spinning while they wait, so it is a cross-check, not the figure).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import Worker  # noqa: E402  (one worker process per side, 'run' requests on stdin)

from lmlab.generate import GenerationConfig, generate_ids  # noqa: E402
from lmlab.models import kernels  # noqa: E402
from lmlab.models.gpt import GPT, GPTConfig  # noqa: E402

SHAPES = {"12x768": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024),
          "6x384": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=65, block_size=256)}
PROMPT_TOKENS = 16
HF, OURS, UNPACKED, MKL, NO_CACHE = "HF generate", "lmlab", "lmlab unpacked", "lmlab MKL", "no cache"


# --------------------------------------------------------------------------- the same weights on both sides

def lmlab_model(shape: str) -> GPT:
    """The benchmark's model: GPT-2's architecture (biases, tanh GELU) at this shape, random init from seed 0."""
    torch.manual_seed(0)
    s = SHAPES[shape]
    return GPT(GPTConfig(vocab_size=s["vocab_size"], block_size=s["block_size"], n_layer=s["n_layer"],
                         n_head=s["n_head"], n_embd=s["n_embd"], bias=True, activation="gelu_tanh")).eval()


def to_hf(model: GPT):
    """The same weights as a transformers GPT2LMHeadModel (sdpa attention), through lmlab.convert."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlab.convert import lmlab_to_gpt2

    config, state = lmlab_to_gpt2(model)
    hf = GPT2LMHeadModel._from_config(GPT2Config(**config), attn_implementation="sdpa")
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)  # tied head
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # decode exactly --new-tokens tokens, as lmlab does
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def prompts(shape: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, SHAPES[shape]["vocab_size"], (batch, PROMPT_TOKENS), generator=g)


# --------------------------------------------------------------------------- one side's decoder

def decoder(side: str, shape: str, batch: int, new_tokens: int):
    """A function that decodes new_tokens greedy tokens for every prompt row and returns them [B, new]."""
    ids = prompts(shape, batch)
    model = lmlab_model(shape)
    if side == HF:
        hf = to_hf(model)
        del model
        mask = torch.ones_like(ids)

        def run():
            with torch.inference_mode():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
            return out[:, PROMPT_TOKENS:]
        return run
    if side == NO_CACHE:
        def run():  # nanoGPT's generate: the whole (cropped) sequence every step, logits of the last position
            x = ids
            with torch.inference_mode():
                for _ in range(new_tokens):
                    logits = model.lm_head(model.hidden(x[:, -model.block_size:])[:, -1])
                    x = torch.cat([x, logits.argmax(-1, keepdim=True)], dim=1)
            return x[:, PROMPT_TOKENS:]
        return run
    if side == UNPACKED:  # lmlab's torch ops without packed weights (plain F.linear) or decoding kernels
        from lmlab.models import layers

        layers.PACK_ROWS = None
    elif side not in (OURS, MKL):
        from lmlab.generate import decoding_model

        model = decoding_model(model, side.split()[-1])
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0)
    rows = ids.tolist()
    torch_ops_only = side in (UNPACKED, MKL)  # MKL: torch ops with MKL's packed weights, no decoding kernels

    def run():
        with kernels.disabled() if torch_ops_only else contextlib.nullcontext():
            return torch.stack(list(generate_ids(model, rows, cfg)), dim=1)
    return run


def worker(side: str, shape: str, batch: int, new_tokens: int, threads: int | None):
    """Serve 'N' requests on stdin: decode N times, answer with the seconds per decode and the last tokens."""
    import warnings

    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    run = decoder(side, shape, batch, new_tokens)
    decoder(side, shape, batch, 4)()  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        n, start, cpu = int(line), time.perf_counter(), time.process_time()
        for _ in range(n):
            out = run()
        seconds, cpu = (time.perf_counter() - start) / n, (time.process_time() - cpu) / n
        print("tokens " + ";".join(",".join(map(str, row)) for row in out.tolist()), flush=True)
        print(f"time {seconds} {cpu}", flush=True)


class DecodeWorker(Worker):
    def run(self, steps=1):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        tokens = None
        for line in self.proc.stdout:
            if line.startswith("tokens "):
                tokens = [list(map(int, row.split(","))) for row in line[7:].strip().split(";")]
            elif line.startswith("time "):
                return float(line.split()[1]), float(line.split()[2]), tokens
        raise RuntimeError("worker died")


# --------------------------------------------------------------------------- checks in the parent

def logit_error(shape: str, batch: int, dtypes: list[str]) -> dict[str, float]:
    """max |logit difference| on the prompts: HF vs lmlab fp32, and each opt-in dtype vs fp32."""
    ids = prompts(shape, batch)
    model = lmlab_model(shape)
    with torch.inference_mode():
        ours = model(ids).float()
        hf_logits = to_hf(model)(ids).logits.float()
        errors = {HF: float((hf_logits - ours).abs().max())}
        # A cached decoding step (the last prompt token after the others: the decoding kernel where it builds)
        # against HF's logits there, both as log-probabilities.
        _, cache = model.logprobs_next(ids[:, :-1])
        step, _ = model.logprobs_next(ids, cache)
        errors["step"] = float((step - hf_logits[:, -1].log_softmax(-1)).abs().max())
        for dtype in dtypes:
            from lmlab.generate import decoding_model

            low = decoding_model(lmlab_model(shape), dtype)
            errors[dtype] = float((low(ids).float() - ours).abs().max())
    errors["logit std"] = float(ours.std())
    return errors


def first_divergence(a, b) -> str:
    for row, (x, y) in enumerate(zip(a, b)):
        for step, (s, t) in enumerate(zip(x, y)):
            if s != t:
                return f"row {row} step {step}"
    return "identical"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-cache", choices=["small", "all", "none"], default="small",
                        help="run the no-cache decoder everywhere but 12x768 batch > 1 (small), everywhere, or never")
    parser.add_argument("--dtype", nargs="*", default=[], choices=["fp16", "bf16", "int8"],
                        help="also time lmlab's opt-in lower-precision decoding (reported separately)")
    parser.add_argument("--unpacked", action="store_true",
                        help="also time lmlab's plain torch ops (no packed weights, no decoding kernels)")
    parser.add_argument("--mkl", action="store_true",
                        help="also time lmlab's torch ops with MKL's packed weights (no decoding kernels)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: torch's)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, shape, batch, new = args.worker
        return worker(side, shape, int(batch), int(new), args.threads)
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; greedy, "
          f"{PROMPT_TOKENS}-token prompts, {args.rounds} rounds, median; load average {_load()}")
    bandwidth = read_bandwidth(args.threads)
    print(f"memory read bandwidth (a matrix-vector product over 512 MB, best of 6): {bandwidth / 1e9:.1f} GB/s")
    for shape in args.shapes:
        rows, low_rows = [], []
        new = min(args.new_tokens, SHAPES[shape]["block_size"] - PROMPT_TOKENS)  # HF stops at n_positions
        for batch in args.batches:
            sides = ([HF, OURS] + ([UNPACKED] if args.unpacked else []) + ([MKL] if args.mkl else [])
                     + [f"lmlab {d}" for d in args.dtype])
            slow = shape == "12x768" and batch > 1
            no_cache = args.no_cache == "all" or (args.no_cache == "small" and not slow)
            threads = ["--threads", str(args.threads)] if args.threads else []
            workers = {s: DecodeWorker(s, [sys.executable, __file__, "--worker", s, shape, str(batch),
                                           str(new)] + threads) for s in sides + ([NO_CACHE] if no_cache else [])}
            times, cpu, tokens = {s: [] for s in workers}, {s: [] for s in workers}, {}
            for r in range(args.rounds):
                for s, w in workers.items():
                    if s == NO_CACHE and r > 0:
                        continue
                    seconds, cpu_seconds, tokens[s] = w.run(1)
                    times[s].append(seconds)
                    cpu[s].append(cpu_seconds)
            for w in workers.values():
                w.close()
            rate = {s: batch * new / statistics.median(t) for s, t in times.items()}
            err = logit_error(shape, batch, args.dtype)
            ms = {s: 1000 * statistics.median(t) / new for s, t in times.items()}
            rows.append(f"| {batch} | {rate[HF]:,.1f} ({ms[HF]:.1f} ms) | {rate[OURS]:,.1f} ({ms[OURS]:.1f} ms) | "
                        f"**{rate[OURS] / rate[HF]:.2f}x** | "
                        f"{statistics.median(cpu[HF]) / statistics.median(cpu[OURS]):.2f}x | "
                        + (f"{rate[UNPACKED]:,.1f} ({rate[UNPACKED] / rate[HF]:.2f}x) | " if args.unpacked else "")
                        + (f"{rate[MKL]:,.1f} ({rate[MKL] / rate[HF]:.2f}x) | " if args.mkl else "")
                        + (f"{rate[NO_CACHE]:,.1f} | {rate[OURS] / rate[NO_CACHE]:.1f}x" if no_cache else "- | -")
                        + f" | {err[HF]:.1e} / {err['step']:.1e} | {first_divergence(tokens[OURS], tokens[HF])} |")
            for d in args.dtype:
                s = f"lmlab {d}"
                low_rows.append(f"| {d} | {batch} | {rate[s]:,.1f} | {rate[s] / rate[OURS]:.2f}x | "
                                f"{rate[s] / rate[HF]:.2f}x | {err[d]:.2e} (logit std {err['logit std']:.2f}) | "
                                f"{first_divergence(tokens[s], tokens[OURS])} |")
        s = SHAPES[shape]
        weight_bytes = 4 * sum(p.numel() for n, p in lmlab_model(shape).named_parameters() if n != "wpe.weight")
        print(f"\n## {shape}, vocab {s['vocab_size']}, fp32, same weights, {new} new tokens")
        print(f"Every step reads the weights once: {weight_bytes / 1e6:.0f} MB, at least "
              f"{1000 * weight_bytes / bandwidth:.1f} ms at that bandwidth when they do not stay in cache "
              f"(a ceiling of {bandwidth / weight_bytes:.0f} tok/s per row of batch 1).")
        print("| batch | HF generate tok/s (ms/step) | lmlab tok/s (ms/step) | lmlab / HF | same by CPU time | "
              + ("lmlab unpacked tok/s (/ HF) | " if args.unpacked else "")
              + ("lmlab MKL packed tok/s (/ HF) | " if args.mkl else "")
              + "no cache tok/s | cache speed-up | max logit diff vs HF (forward / decoding step) | "
              "greedy tokens vs HF |")
        print("|---" * (9 + args.unpacked + args.mkl) + "|")
        print("\n".join(rows))
        if low_rows:
            print(f"\n## {shape}: lmlab opt-in lower precision (not the same weights)")
            print("| dtype | batch | tok/s | vs lmlab fp32 | vs HF fp32 | max logit error vs fp32 | greedy tokens vs fp32 |")
            print("|---|---|---|---|---|---|---|")
            print("\n".join(low_rows))
        sys.stdout.flush()
    print(f"\nload average at the end {_load()}")


def read_bandwidth(threads: int | None) -> float:
    """Bytes per second a matrix-vector product reads from a matrix too large for any cache (512 MB): the
    access pattern of batch-1 decoding, so its roofline."""
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    matrix, vector = torch.rand(128 << 10, 1024), torch.rand(1, 1024)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        F.linear(vector, matrix)
        best = min(best, time.perf_counter() - start)
    return matrix.numel() * matrix.element_size() / best


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
