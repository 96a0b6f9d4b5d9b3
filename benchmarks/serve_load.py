"""Load test of `lmlab serve`: 1, 8 and 32 concurrent streaming completions; aggregate tokens/s and time to first token.

    python benchmarks/serve_load.py [--run RUN] [--concurrency 1 8 32] [--max-tokens 64] [--rounds 3] [--threads N]

Starts `lmlab serve` in a subprocess on a free 127.0.0.1 port (loopback only) and fires, at each concurrency c,
`rounds` waves of c streaming requests at once (different prompts of 16-64 characters, temperature 1, a seed
each), reading the Server-Sent Events with a small asyncio HTTP client. The levels take turns wave by wave, so
a change in the load of a shared machine hits them alike. Per level it prints the aggregate
completion tokens per second (all tokens of the level / its wall time), p50 / p95 time to first token, and the
server's mean batch (decode-step rows / decode steps, from /metrics) — continuous batching at work. The goal:
aggregate tokens/s at 32 streams >= 4x one stream.

Without --run the model is nanoGPT's Shakespeare-char shape (6 layers x 384, block 256, 65 characters; about
10 M parameters) with random weights, written to a temporary run directory: random weights never produce an
end-of-text token, so every request generates exactly --max-tokens tokens. Everything is bounded: at most
rounds x (1 + 8 + 32) requests, each with --max-tokens tokens, and --deadline seconds in all.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


def random_run(path: Path) -> Path:
    """A run directory with a randomly initialised 6x384 char GPT (nanoGPT's shakespeare-char shape)."""
    import torch

    from lmlab.checkpoint import WEIGHTS, save_model_config, save_weights
    from lmlab.models.gpt import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tokenizer = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=6, n_head=6, n_embd=384)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path / "tokenizer.json")
    save_model_config(cfg, path)
    save_weights(GPT(cfg).eval(), path / WEIGHTS, step=0)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def stream_completion(port: int, body: dict) -> tuple[float, float, int]:
    """One streaming request: (seconds to the first text, seconds to the end, completion tokens)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (HOST.encode(), len(payload), payload))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"the server answered {status!r}: {await reader.read(500)!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # headers
    first, tokens, buffer = None, 0, b""
    while True:  # chunked transfer encoding
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        buffer += await reader.readexactly(size)
        await reader.readexactly(2)
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            data = json.loads(event[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if first is None and any(c["text"] for c in data["choices"]):
                first = time.perf_counter() - start
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    writer.close()
    return first if first is not None else float("nan"), time.perf_counter() - start, tokens


def server_counter(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wave(port: int, c: int, max_tokens: int, prompts: list[str], seed: int) -> dict:
    """c streaming requests at once: their tokens, wall time and times to first token."""
    bodies = [{"model": "bench", "prompt": prompts[(seed + i) % len(prompts)], "max_tokens": max_tokens,
               "temperature": 1.0, "seed": seed + i, "stream": True, "stream_options": {"include_usage": True}}
              for i in range(c)]
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_completion(port, b) for b in bodies))
    return {"seconds": time.perf_counter() - start, "ttft": [first for first, _, _ in results],
            "tokens": sum(n for _, _, n in results)}


def summary(c: int, waves: list[dict], steps: float) -> dict:
    tokens, seconds = sum(w["tokens"] for w in waves), sum(w["seconds"] for w in waves)
    ttft = sorted(t for w in waves for t in w["ttft"])
    requests = c * len(waves)
    return {"streams": c, "requests": requests, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "ttft_p50": statistics.median(ttft), "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            # every step after a request's first token runs all its rows: rows ~ tokens - requests
            "mean_batch": (tokens - requests) / steps if steps else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="run directory to serve (default: a random-weight 6x384 char GPT)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--deadline", type=float, default=300, help="give up after this many seconds in all")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: torch's)")
    args = p.parse_args()
    if max(args.concurrency) > 64 or args.max_tokens > 512 or args.rounds > 5:
        sys.exit("serve_load: keep it bounded: concurrency <= 64, max-tokens <= 512, rounds <= 5.")

    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    rng = random.Random(0)
    prompts = [text[s:s + rng.randint(16, 64)] for s in (rng.randrange(len(text) - 64) for _ in range(64))]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or str(random_run(Path(tmp) / "bench"))
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        server = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", f"bench={run}", "--host", HOST,
                                   "--port", str(port), "--max-batch", str(max(args.concurrency)),
                                   "--log-level", "warning", "--max-tokens", str(args.max_tokens)], env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    server_counter(port, "lmlab_decode_steps")
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit("serve_load: the server did not start")
                    time.sleep(0.2)
            for c in args.concurrency:  # warm-up: every batch shape once
                asyncio.run(asyncio.wait_for(wave(port, c, 4, prompts, 0), 120))
            # The levels take turns, wave after wave, so that a change in the machine's load hits them alike.
            waves = {c: [] for c in args.concurrency}
            steps = dict.fromkeys(args.concurrency, 0.0)
            started = time.monotonic()
            for r in range(args.rounds):
                for c in args.concurrency:
                    left = args.deadline - (time.monotonic() - started)
                    if left <= 0:
                        sys.exit("serve_load: --deadline reached")
                    before = server_counter(port, "lmlab_decode_steps")
                    waves[c].append(asyncio.run(asyncio.wait_for(wave(port, c, args.max_tokens, prompts, 7 * c + r),
                                                                 left)))
                    steps[c] += server_counter(port, "lmlab_decode_steps") - before
            rows = [summary(c, waves[c], steps[c]) for c in args.concurrency]
            for row in rows:
                print(f"  {row['streams']:>2} streams: {row['tokens_per_s']:8.1f} tokens/s  TTFT p50 "
                      f"{1000 * row['ttft_p50']:7.1f} ms  p95 {1000 * row['ttft_p95']:7.1f} ms  mean batch "
                      f"{row['mean_batch']:.1f}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(20)
    base = rows[0]["tokens_per_s"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nlmlab serve, {'random-weight 6x384 char GPT' if not args.run else args.run}, {args.max_tokens} tokens "
          f"per request, {args.rounds} interleaved waves per level, torch threads: {args.threads or 'default'}, "
          f"{os.cpu_count()} CPU cores, load average {load:.1f}\n")
    print("| concurrent streams | requests | tokens/s (aggregate) | vs 1 stream | TTFT p50 | TTFT p95 | mean batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['streams']} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | "
              f"{1000 * r['ttft_p50']:.0f} ms | {1000 * r['ttft_p95']:.0f} ms | {r['mean_batch']:.1f} |")
    last = rows[-1]
    if rows[0]["streams"] == 1 and last["streams"] >= 32:
        ratio = last["tokens_per_s"] / base
        print(f"\ngoal (aggregate tokens/s at {last['streams']} streams >= 4x one stream): "
              f"{ratio:.2f}x, {'met' if ratio >= 4 else 'NOT met'}")


if __name__ == "__main__":
    main()
