"""Speculative decoding on Tiny Shakespeare: an n-gram draft for a character GPT, same run, same prompts.

    python benchmarks/speculative_decoding.py [--target RUN] [--order 7] [--new-tokens 256] [--rounds 3]

Without --target it trains nanoGPT's "CPU baby" (configs/shakespeare-char-baby.yaml, 4x128) with a 256-token
context (batch 3 so a step sees as many tokens as the baby's) on the first 90% of data/tinyshakespeare.txt
(a few minutes) into runs/bench-speculative, reused by later runs. Prompt + new tokens stay within the context:
past it a GPT with learned positions recomputes its whole window for every token, with or without a draft. The draft is a modified Kneser-Ney n-gram counted on
the same 90% with the run's tokenizer. Prompts are 32-character slices of the validation 10%. For each setting
it prints the draft's acceptance rate, tokens per target pass, and tokens/s with and without the draft (medians
of interleaved rounds) — greedy (the output is checked to be identical) and sampling at temperature 0.8.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "data" / "tinyshakespeare.txt"


def train_baby(out: Path) -> Path:
    import lmlab

    lmlab.prepare(TEXT, out / "data", tokenizer="char", val_fraction=0.1, progress=False)
    cfg = lmlab.load_config(REPO / "configs" / "shakespeare-char-baby.yaml",
                            {"data.dir": str(out / "data"), "model.block_size": "256", "train.batch_size": "3"})
    print("training the baby GPT (4x128, block 256, 2000 steps) ...", file=sys.stderr, flush=True)
    lmlab.train(cfg, out / "run", progress=False)
    return out / "run"


def decode(model, tok, prompts, cfg, draft):
    from lmlab.generate import SpeculativeStats, complete

    stats = SpeculativeStats()
    start = time.perf_counter()
    outputs = [complete(model, tok, p, cfg, draft=draft, stats=stats)[0].token_ids for p in prompts]
    return time.perf_counter() - start, outputs, stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="a char-level run directory (default: train the baby GPT)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-speculative"), help="where the baby GPT goes")
    parser.add_argument("--order", type=int, default=7, help="n-gram order of the draft")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4, 6])
    args = parser.parse_args()

    import lmlab
    from lmlab.generate import GenerationConfig
    from lmlab.models.gpt import GPT, GPTConfig
    from lmlab.models.ngram import NGramLM

    torch.set_num_threads(1)
    text = TEXT.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    out = Path(args.out)
    run = Path(args.target) if args.target else (out / "run" if (out / "run" / "config.json").is_file()
                                                 else train_baby(out))
    model, tok = lmlab.load(run)
    start = time.perf_counter()
    # Character unigram counts-of-counts leave MKN's 1-gram discounts undefined: lmplz's fallback, as lmplz.
    ngram = NGramLM.train(text[:cut].splitlines(), order=args.order, tokenizer=tok, progress=False,
                          discount_fallback=True)
    print(f"draft: {args.order}-gram MKN on {cut:,} characters in {time.perf_counter() - start:.1f} s; "
          f"target: {run} ({model.num_parameters() / 1e6:.2f} M parameters, block {model.block_size})")
    draft = ngram.over_tokenizer(tok)
    step = (len(text) - cut) // args.prompts
    prompts = [text[cut + i * step:cut + i * step + 32] for i in range(args.prompts)]
    print(f"torch {torch.__version__}, 1 thread; {args.prompts} prompts x {args.new_tokens} new tokens, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| decoding | draft tokens k | acceptance | tokens per target pass | tokens/s plain | "
          "tokens/s speculative | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, warpers in (("greedy", dict(temperature=0)), ("sampling, T 0.8", dict(temperature=0.8, seed=1))):
        for k in args.draft_tokens:
            cfg = GenerationConfig(max_new_tokens=args.new_tokens, num_draft_tokens=k, **warpers)
            plain_t, spec_t = [], []
            for _ in range(args.rounds):
                t, plain_out, _ = decode(model, tok, prompts, cfg, None)
                plain_t.append(t)
                t, spec_out, stats = decode(model, tok, prompts, cfg, draft)
                spec_t.append(t)
            if warpers["temperature"] == 0 and spec_out != plain_out:
                print("  (!) greedy outputs differ", file=sys.stderr)
            tokens = sum(len(o) for o in spec_out)
            p, s = statistics.median(plain_t), statistics.median(spec_t)
            print(f"| {name} | {k} | {stats.acceptance_rate:.0%} | {stats.tokens / stats.target_calls:.2f} | "
                  f"{tokens / p:,.0f} | {tokens / s:,.0f} | {p / s:.2f}x |", flush=True)

    print("\nWhat a verification pass costs against one decoding step (KV cache, 100 cached tokens, ms, median of 20):")
    print("| model | draft call | 1 token | " + " | ".join(f"{k + 1} tokens" for k in args.draft_tokens) + " |")
    print("|---|---|---|" + "---|" * len(args.draft_tokens))
    context = torch.tensor([tok.encode(text[cut:cut + 101])])
    draft_ms = time_ms(lambda: draft.logprobs_next(context))
    big = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True)).eval()
    for name, m, ids in (("target (char GPT)", model, context),
                         ("GPT-2-small shape (random)", big, torch.randint(0, 50257, (1, 101)))):
        costs = [pass_ms(m, ids, n) for n in [1] + [k + 1 for k in args.draft_tokens]]
        print(f"| {name} | {draft_ms:.2f} | " + " | ".join(f"{c:.2f}" for c in costs) + " |", flush=True)


def time_ms(fn, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def pass_ms(model, ids, n: int) -> float:
    """One cached forward of the last n tokens of ids (the cache holds the rest): a verification pass."""
    _, cache = model.logprobs_next(ids[:, :-n])
    length = cache.length
    return time_ms(lambda: model.logprobs_last(ids, cache.rollback(length), n))


if __name__ == "__main__":
    main()
