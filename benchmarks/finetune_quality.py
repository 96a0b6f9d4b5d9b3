"""What supervised fine-tuning buys SmolLM2-135M-Instruct on CPU, task by task, on fixed splits, in one run each:

    python benchmarks/finetune_quality.py polarity|chitchat|synopses [--run CONVERTED_RUN] [--out DIR] [--steps N]

- polarity: rt-polarity (Pang & Lee 2005) on the fixed seeded split of benchmarks/classify_mr.py
  (`lmlab classify split data/rt-polarity --fraction 0.1 --seed 0`: 9,596 train / 1,066 test) as an instruction,
  "Review: ...\nIs this review positive or negative? Answer with one word." -> "positive" / "negative" (one token
  each), through the model's chat template. The prediction is the answer the model gives the higher probability
  right after the generation prompt (a choice between the two, as lm-evaluation-harness scores multiple choice).
  Zero-shot; 4-shot (two positive and two negative training reviews as earlier turns, fixed); and after
  `lmlab finetune` (LoRA r8 on q,k,v,o,gate,up,down, --steps steps of batch 8 over the first steps x 8 training
  reviews of a seeded shuffle). Accuracy on all 1,066 test reviews. Reference: the fine-tuned MiniLM encoder's
  84.52% (README).
- chitchat: the BYU PCC open-domain conversations of the PyPI package chitchat-dataset 0.9.0 (read from the
  installed package). The two speakers alternate; the second one is the assistant; each conversation is cut into
  windows of six messages (three exchanges). Fixed split by a hash of the conversation id (5% held out; its first
  400 windows are the test set). Held-out perplexity of the assistant turns (the SFT masks: each assistant turn
  and its <|im_end|>), before and after LoRA SFT on the first --steps x 8 training windows; then three openings
  answered through `lmlab chat` by both models.
- synopses: Debian package descriptions -> their one-line synopses (../shared/data/debian-descriptions); ROUGE-1/2/L
  (rouge-score, stemming) on test (--limit N: its first N pairs): lead-7 (the first sentence cut to 7 words),
  lmlab's seq2seq trained from scratch on train (configs/synopses.yaml, --seq2seq-steps), SmolLM2 zero-shot
  (greedy) and after LoRA SFT on train.
Each part prints its table and writes OUT/PART.json with every figure and what each run cost in wall time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from smollm2 import convert, gguf_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LORA_ARGS = ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.05"]
POLARITY_QUESTION = "Review: {text}\nIs this review positive or negative? Answer with one word."
SYNOPSIS_QUESTION = ("Here is the description of a Debian package:\n\n{text}\n\nWrite the package's one-line "
                     "synopsis: a short phrase of about seven words.")


def run_cli(*args, stdin: str | None = None) -> str:
    """Run an lmlab command; its stdout (exits with its stderr when it fails)."""
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args)], input=stdin, capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"lmlab {' '.join(map(str, args[:2]))} failed: {(r.stderr or '').strip()[-2000:]}")
    return r.stdout or ""


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations),
                    encoding="utf-8")
    return path


def finetune(run: Path, train: Path, out: Path, steps: int, extra=()) -> float:
    """`lmlab finetune` (LoRA r8 on every projection), its wall time in seconds."""
    start = time.perf_counter()
    if not (out / "model.safetensors").exists():
        run_cli("finetune", run, "--data", train, "--out", out, "--quiet", *LORA_ARGS, "--train.max_iters", steps,
              "--train.eval_interval", steps, "--train.eval_iters", 4, "--train.tensorboard", "false", *extra)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- scoring answers

def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest prefix all rows share, leaving each row at least one token of its own."""
    n = min(map(len, rows)) - 1
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return max(n, 0)


def choice_logprobs(model, prompts: list[list[int]], choices: list[int], batch: int = 16) -> list[list[float]]:
    """For each prompt, the log-probability of each one-token answer in `choices` right after it.

    The prompts' shared opening (the template's system turn; the 4-shot examples) runs once into a KV cache that
    every batch starts from; the rest of each prompt runs right-padded in batches of similar length."""
    import torch
    import torch.nn.functional as F

    shared = common_prefix(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [[0.0] * len(choices) for _ in prompts]
    with torch.inference_mode():
        cache = model.new_cache(1)
        if shared:
            model.hidden(torch.tensor([prompts[0][:shared]]), cache)
        for start in range(0, len(order), batch):
            group = order[start:start + batch]
            rest = [prompts[i][shared:] for i in group]
            width = max(map(len, rest))
            cache.rollback(shared).select(torch.zeros(len(group), dtype=torch.long))
            h = model.hidden(torch.tensor([r + [0] * (width - len(r)) for r in rest]), cache)
            last = h[torch.arange(len(group)), torch.tensor([len(r) - 1 for r in rest])]
            lp = F.log_softmax(model.lm_head(last).float(), dim=-1)[:, choices]
            for row, i in enumerate(group):
                out[i] = lp[row].tolist()
    return out


def target_nll(model, batches) -> tuple[float, int]:
    """Summed next-token NLL (nats) and count of the tokens that carry the loss, over SFTBatches' batches."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in batches:
            n = int((y != -100).sum())
            total += float(model.loss((x, y))) * n
            count += n
    return total, count


# --------------------------------------------------------------------------- rt-polarity

def polarity(args, run: Path, out: Path) -> dict:
    import numpy as np

    import lmlab
    from lmlab.chat import load_template
    from lmlab.tasks.labeled import read_labeled, split_file

    split = out / "mr"
    if not (split / "test.tsv").exists():
        split_file(REPO / "data" / "rt-polarity", split, 0.1, 0)
    train_texts, train_labels = read_labeled(split / "train.tsv")
    test_texts, test_labels = read_labeled(split / "test.tsv")
    if args.limit:
        test_texts, test_labels = test_texts[:args.limit], test_labels[:args.limit]
    words = {"neg": "negative", "pos": "positive"}  # the rt-polarity labels (its file names) as answers
    train_labels, test_labels = [words[l] for l in train_labels], [words[l] for l in test_labels]
    names = sorted(set(train_labels))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_texts))
    shots = [i for i in order if train_labels[i] == names[0]][:2] + [i for i in order if train_labels[i] == names[1]][:2]
    shots = [shots[k] for k in (0, 2, 1, 3)]  # alternating labels

    def turn(text, label=None):
        m = [{"role": "user", "content": POLARITY_QUESTION.format(text=text)}]
        return m + ([{"role": "assistant", "content": label}] if label else [])

    few = [m for i in shots for m in turn(train_texts[i], train_labels[i])]

    def accuracy(run_dir, prefix) -> tuple[float, float]:
        start = time.perf_counter()
        model, tokenizer = lmlab.load(run_dir)
        template = load_template(tokenizer)
        prompts = [tokenizer.encode(template.render(prefix + turn(t), add_generation_prompt=True)) for t in test_texts]
        choices = [tokenizer.encode(name) for name in names]
        if any(len(c) != 1 for c in choices):
            sys.exit(f"the answers {names} are not one token each for this tokenizer")
        scores = choice_logprobs(model, prompts, [c[0] for c in choices])
        right = sum(names[int(np.argmax(s))] == label for s, label in zip(scores, test_labels))
        return 100 * right / len(test_labels), time.perf_counter() - start

    result = {"test_reviews": len(test_labels), "labels": names}
    result["zero_shot"], result["zero_shot_s"] = accuracy(run, [])
    print(f"zero-shot accuracy {result['zero_shot']:.2f}% ({result['zero_shot_s']:.0f} s)", flush=True)
    result["four_shot"], result["four_shot_s"] = accuracy(run, few)
    print(f"4-shot accuracy {result['four_shot']:.2f}% ({result['four_shot_s']:.0f} s)", flush=True)
    n = args.steps * 8
    chosen = [i for i in order if i not in shots][:n]
    train = write_jsonl(out / "polarity-train.jsonl", [turn(train_texts[i], train_labels[i]) for i in chosen])
    tuned = out / "polarity-lora"
    result["sft_examples"], result["sft_steps"] = len(chosen), args.steps
    result["sft_s"] = finetune(run, train, tuned, args.steps)
    result["lora_sft"], result["lora_sft_eval_s"] = accuracy(tuned, [])
    print(f"LoRA SFT ({len(chosen)} reviews, {args.steps} steps, {result['sft_s']:.0f} s): accuracy "
          f"{result['lora_sft']:.2f}%", flush=True)
    print("\n| SmolLM2-135M-Instruct on rt-polarity test | accuracy | wall time |\n|---|---|---|")
    print(f"| zero-shot | {result['zero_shot']:.2f}% | {result['zero_shot_s']:.0f} s |")
    print(f"| 4-shot | {result['four_shot']:.2f}% | {result['four_shot_s']:.0f} s |")
    print(f"| LoRA SFT | {result['lora_sft']:.2f}% | {result['sft_s']:.0f} s train + {result['lora_sft_eval_s']:.0f} s |")
    return result


# --------------------------------------------------------------------------- chitchat

def chitchat_conversations() -> list[tuple[str, list[dict]]]:
    """(conversation id, messages) of chitchat-dataset 0.9.0: the speakers alternate, the second is the assistant
    (consecutive messages of one speaker are joined; a conversation is cut after its last assistant turn)."""
    try:
        import chitchat_dataset
    except ImportError:
        sys.exit("install the data: pip install chitchat-dataset==0.9.0")
    out = []
    for cid, convo in chitchat_dataset.Dataset().items():
        turns = []  # [(speaker, text)]
        for message in (m for group in convo["messages"] for m in group):
            text = message["text"].strip()
            if not text:
                continue
            if turns and turns[-1][0] == message["sender"]:
                turns[-1] = (message["sender"], turns[-1][1] + " " + text)
            else:
                turns.append((message["sender"], text))
        roles = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, (_, t) in enumerate(turns)]
        while roles and roles[-1]["role"] != "assistant":
            roles.pop()
        if roles:
            out.append((str(cid), roles))
    return out


def windows(messages: list[dict], size: int = 6) -> list[list[dict]]:
    """A conversation cut into pieces of `size` messages (three exchanges, user first), each ending with an
    assistant turn: examples of ~150 tokens that a CPU can train on."""
    pieces = [messages[k:k + size] for k in range(0, len(messages), size)]
    return [p if p[-1]["role"] == "assistant" else p[:-1] for p in pieces if len(p) >= 2]


def chitchat(args, run: Path, out: Path) -> dict:
    import lmlab
    from lmlab.chat import load_template
    from lmlab.tasks.finetune import SFTBatches, prepare_sft

    convos = chitchat_conversations()
    held = lambda cid: int(hashlib.sha256(cid.encode()).hexdigest(), 16) % 20 == 0  # noqa: E731
    train = [w for cid, m in convos if not held(cid) for w in windows(m)]
    test = [w for cid, m in convos if held(cid) for w in windows(m)][:args.limit or 400]
    train_file = write_jsonl(out / "chitchat-train.jsonl", train[:args.steps * 8])
    test_file = write_jsonl(out / "chitchat-test.jsonl", test)

    def perplexity(run_dir) -> tuple[float, float]:
        import math

        start = time.perf_counter()
        model, tokenizer = lmlab.load(run_dir)
        data = out / f"chitchat-eval-{run_dir.name}"
        if not (data / "meta.json").exists():
            prepare_sft(test_file, data, tokenizer, load_template(tokenizer), val_path=test_file)
        batches = SFTBatches(data, 8, 0, model.cfg.block_size, tokenizer.eot_id or 0, warn=False)
        total, count = target_nll(model, (batches.batch("val", i) for i in range(batches.batches("val"))))
        return math.exp(total / count), time.perf_counter() - start

    result = {"conversations": len(convos), "train_windows": len(train), "test_windows": len(test),
              "sft_windows": min(len(train), args.steps * 8), "sft_steps": args.steps}
    result["ppl_before"], result["ppl_before_s"] = perplexity(run)
    print(f"held-out assistant-turn perplexity before: {result['ppl_before']:.2f}", flush=True)
    tuned = out / "chitchat-lora"
    result["sft_s"] = finetune(run, train_file, tuned, args.steps)
    result["ppl_after"], result["ppl_after_s"] = perplexity(tuned)
    print(f"after LoRA SFT ({args.steps} steps, {result['sft_s']:.0f} s): {result['ppl_after']:.2f}", flush=True)
    (out / "chitchat.json").write_text(json.dumps(result, indent=2) + "\n")  # kept if a chat below fails
    samples = []
    for opening in ("hi! how was your weekend?", "what kind of music do you like?", "i'm so tired of winter already"):
        for name, run_dir in (("before", run), ("after", tuned)):
            reply = run_cli("chat", run_dir, "--temperature", 0, "--max-new-tokens", 60, stdin=opening).strip()
            samples.append({"user": opening, "model": name, "reply": reply})
            print(f"[{name}] user: {opening}\n[{name}] assistant: {reply}", flush=True)
    result["samples"] = samples
    return result


# --------------------------------------------------------------------------- Debian synopses

def read_pairs(split: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    folder = SHARED / "debian-descriptions"
    src = (folder / f"{split}.src").read_text(encoding="utf-8").splitlines()
    tgt = (folder / f"{split}.tgt").read_text(encoding="utf-8").splitlines()
    return (src[:limit], tgt[:limit]) if limit else (src, tgt)


def lead(text: str, words: int = 7) -> str:
    """The description's first sentence, cut to `words` words (SOURCE.md's baseline)."""
    first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    return " ".join(first.split()[:words])


def synopsis_messages(text: str, answer: str | None = None) -> list[dict]:
    m = [{"role": "user", "content": SYNOPSIS_QUESTION.format(text=text)}]
    return m + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def clean_synopsis(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip('"').removeprefix("Synopsis:").strip()


def generate_synopses(run_dir: Path, sources: list[str], batch: int = 16) -> tuple[list[str], float]:
    import lmlab
    from lmlab.chat import load_template

    start = time.perf_counter()
    model, tokenizer = lmlab.load(run_dir)
    template = load_template(tokenizer)
    cfg = lmlab.GenerationConfig(max_new_tokens=24, temperature=0.0, stop=["\n"], stop_token_ids=template.stop_ids)
    prompts = [template.render(synopsis_messages(s), add_generation_prompt=True) for s in sources]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    hyps = [""] * len(prompts)
    for k in range(0, len(order), batch):
        group = order[k:k + batch]
        for i, done in zip(group, lmlab.complete(model, tokenizer, [prompts[i] for i in group], cfg)):
            hyps[i] = clean_synopsis(done[0].text)
    return hyps, time.perf_counter() - start


def synopses(args, run: Path, out: Path) -> dict:
    from lmlab.metrics import text_metric

    src, refs = read_pairs("test", args.limit)
    rows = {}

    def score(name, hyps, seconds):
        r = text_metric(hyps, refs, "rouge")
        rows[name] = {"rouge1": r["rouge1"], "rouge2": r["rouge2"], "rougeL": r["rougeL"], "wall_s": seconds}
        (out / f"synopses-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.txt").write_text("\n".join(hyps) + "\n")
        print(f"| {name} | {r['rouge1']:.2f} | {r['rouge2']:.2f} | {r['rougeL']:.2f} | {seconds:.0f} s |", flush=True)

    print("| model | ROUGE-1 | ROUGE-2 | ROUGE-L | wall time |\n|---|---|---|---|---|", flush=True)
    if args.limit:  # the baseline on the whole test split too (SOURCE.md's figures)
        whole_src, whole_refs = read_pairs("test")
        r = text_metric([lead(s) for s in whole_src], whole_refs, "rouge")
        rows["lead-7, all of test"] = {k: r[k] for k in ("rouge1", "rouge2", "rougeL")}
        print(f"| lead-7 (all {len(whole_src):,} test pairs) | {r['rouge1']:.2f} | {r['rouge2']:.2f} | "
              f"{r['rougeL']:.2f} | 0 s |", flush=True)
    score("lead-7", [lead(s) for s in src], 0.0)
    models = set(args.models.split(","))
    if "seq2seq" in models and args.seq2seq_steps:
        score("lmlab seq2seq from scratch", *seq2seq_synopses(args, out, src))
    if "zero-shot" in models:
        score("SmolLM2-135M-Instruct zero-shot", *generate_synopses(run, src))
    if "lora" not in models:
        return {"test_pairs": len(src), "rows": rows}
    train_src, train_tgt = read_pairs("train")
    n = args.steps * 8
    train = write_jsonl(out / "synopses-train.jsonl", [synopsis_messages(s, t) for s, t in
                                                       zip(train_src[:n], train_tgt[:n])])
    val_src, val_tgt = read_pairs("valid", 64)
    val = write_jsonl(out / "synopses-val.jsonl", [synopsis_messages(s, t) for s, t in zip(val_src, val_tgt)])
    tuned = out / "synopses-lora"
    sft_s = finetune(run, train, tuned, args.steps, ["--val", val])
    hyps, seconds = generate_synopses(tuned, src)
    score(f"SmolLM2-135M-Instruct LoRA SFT ({n} pairs)", hyps, sft_s + seconds)
    return {"test_pairs": len(src), "rows": rows, "sft_pairs": n, "sft_steps": args.steps, "sft_s": sft_s}


def seq2seq_synopses(args, out: Path, src: list[str]) -> tuple[list[str], float]:
    """lmlab seq2seq prepare + train (configs/synopses.yaml) on the train split + greedy decoding of `src`."""
    start = time.perf_counter()
    folder, run = SHARED / "debian-descriptions", out / "synopses-seq2seq"
    if not (out / "synopses-data" / "meta.json").exists():
        run_cli("seq2seq", "prepare", "--src", folder / "train.src", "--tgt", folder / "train.tgt", "--val-src",
              folder / "valid.src", "--val-tgt", folder / "valid.tgt", "--vocab-size", 8000, "--out",
              out / "synopses-data")
    if not (run / "model.safetensors").exists():
        run_cli("seq2seq", "train", "--config", REPO / "configs" / "synopses.yaml", "--out", run, "--quiet",
              "--data.dir", out / "synopses-data", "--train.max_iters", args.seq2seq_steps,
              "--train.eval_interval", max(1, args.seq2seq_steps // 4))
    source = out / "synopses-test.src"
    source.write_text("\n".join(src) + "\n", encoding="utf-8")
    text = run_cli("seq2seq", "translate", run, "--input", source, "--max-new-tokens", 24)
    return text.splitlines(), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["polarity", "chitchat", "synopses"])
    ap.add_argument("--run", help="an `lmlab convert --from gguf` run of SmolLM2 (default: convert into --out)")
    ap.add_argument("--out", default=str(REPO / "runs" / "finetune-quality"))
    ap.add_argument("--steps", type=int, default=300, help="LoRA SFT steps of batch 8")
    ap.add_argument("--seq2seq-steps", type=int, default=2000, help="synopses: steps of the seq2seq from scratch")
    ap.add_argument("--limit", type=int, help="score only the first N test items (a quick look; not the figures)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="seq2seq,zero-shot,lora",
                    help="synopses: which models to score besides lead-7 (comma-separated)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else out / "smollm2"
    if not (run / "model.safetensors").exists():
        convert(gguf_path(), run)
    start = time.perf_counter()
    result = {"polarity": polarity, "chitchat": chitchat, "synopses": synopses}[args.part](args, run, out)
    result.update(wall_s=time.perf_counter() - start, threads=args.threads, date=time.strftime("%Y-%m-%d"))
    (out / f"{args.part}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
