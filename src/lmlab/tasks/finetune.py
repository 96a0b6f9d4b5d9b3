"""Supervised fine-tuning (SFT): instruction or chat examples -> token ids with the loss on the answers only.

- Data (`read_examples`): OpenAI chat JSONL ({"messages": [...]}), prompt / completion JSONL, or Alpaca
  (`instruction`, optional `input`, `output`; JSON list or JSONL), detected from the first record or named with
  --format. Every example becomes a list of messages (lmlab.chat's checks: roles, text content) with at least one
  assistant turn.
- Rendering (`example_ids`): with the run's chat template, the conversation is rendered once; each assistant turn
  is the text between the conversation rendered up to it with the generation prompt and rendered through it, and
  its tokens (those whose characters fall there, by the tokenizer's offsets) carry the loss, up to and including
  the turn's end-of-turn token (so the model learns to stop), nothing after it. Without a template the messages
  are joined by newlines, each assistant turn followed by the end-of-text token. `train_on_prompt`: every token
  carries the loss.
- On disk (`prepare_sft`): RUN/data with the ids and the target marks as ragged rows (tasks/batching.py) and a
  meta.json of task "sft"; `SFTBatches` gives the Trainer (x, y) with y = -100 where no loss is taken (prompt
  tokens, padding), examples longer than block_size + 1 tokens cropped (counted).
- `finetune` / `lmlab finetune RUN --data train.jsonl --out RUN2`: prepares RUN2/data with RUN's tokenizer and
  template and trains RUN's architecture from its weights on the one Trainer (`train(..., init=RUN)`), so
  --resume and --train.* come with it: LoRA adapters by default (train.lora_*, lmlab.lora; the run's
  model.safetensors then holds the merged weights and adapter_*.json/.safetensors PEFT's files), every weight
  with --full.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import LmlabError
from .batching import LengthBatching, SplitRows, ids_dtype, pad_rows, read_rows, write_rows

TASK = "sft"
FORMATS = ("chat", "prompt-completion", "alpaca")
MADE_BY = "lmlab finetune"


# --------------------------------------------------------------------------- reading examples

def _records(path: Path) -> list[tuple[int, object]]:
    """(line number, record) of a JSONL file, or of a JSON list (Alpaca's own format)."""
    from ..files import read_text

    text = read_text(path)
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
        if not isinstance(data, list):
            raise LmlabError(f"{path} must hold a JSON list of examples (or one JSON object per line).")
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}, line {number}: not valid JSON ({e.msg}); each line must be one JSON "
                                 "object.") from None
    return out


def detect_format(record) -> str:
    if isinstance(record, dict):
        if "messages" in record:
            return "chat"
        if "prompt" in record and "completion" in record:
            return "prompt-completion"
        if "instruction" in record and "output" in record:
            return "alpaca"
    raise LmlabError("cannot tell the data's format from its first example; give --format chat (objects with "
                     "'messages'), prompt-completion ('prompt', 'completion') or alpaca ('instruction', 'output').")


def to_messages(record, fmt: str) -> list[dict]:
    from ..chat import check_messages

    if not isinstance(record, dict):
        raise LmlabError("the example is not a JSON object.")
    if fmt == "chat":
        messages = record.get("messages")
    elif fmt == "prompt-completion":
        messages = [{"role": "user", "content": record.get("prompt")},
                    {"role": "assistant", "content": record.get("completion")}]
    else:
        question = record.get("instruction")
        if isinstance(question, str) and record.get("input"):
            question = f"{question}\n\n{record['input']}"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": record.get("output")}]
    if fmt != "chat" and any(not isinstance(m["content"], str) for m in messages):
        fields = {"prompt-completion": "'prompt' and 'completion'", "alpaca": "'instruction' and 'output'"}[fmt]
        raise LmlabError(f"the example needs {fields} as strings.")
    messages = check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise LmlabError("the example has no assistant turn: there is nothing to learn from it.")
    return messages


def read_examples(path, fmt: str | None = None) -> list[list[dict]]:
    """The examples of a file as message lists; a bad one is an LmlabError naming its line."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise LmlabError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}.")
    records = _records(path)
    if not records:
        raise LmlabError(f"{path} has no examples.")
    fmt = fmt or detect_format(records[0][1])
    out = []
    for number, record in records:
        try:
            out.append(to_messages(record, fmt))
        except LmlabError as e:
            raise LmlabError(f"{path}, line {number}: {e}") from None
    return out


# --------------------------------------------------------------------------- examples -> ids and loss marks

def _spans(template, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True) if i else ""
        through = template.render(messages[:i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise LmlabError("the chat template does not render the conversation turn by turn (a turn's text "
                             "changes when later turns follow), so its answers cannot be located; use "
                             "--train-on-prompt, or another template.")
        spans.append((len(before), len(through)))
    return text, spans


def _token_starts(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Ids of `text` and the character where each token starts."""
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        enc = hf.encode(text, add_special_tokens=False)
        return list(enc.ids), [start for start, _ in enc.offsets]
    ids, starts, pos = [], [], 0  # one token per character (char / byte tokenizers): build it piece by piece
    for ch in text:
        piece = tokenizer.encode(ch)
        ids += piece
        starts += [pos] * len(piece)
        pos += 1
    return ids, starts


def example_ids(messages: list[dict], template, tokenizer, stop_ids=(), train_on_prompt: bool = False
                ) -> tuple[list[int], list[bool]]:
    """Token ids of one example and, per token, whether the loss is taken on it (see the module docstring)."""
    if template is None:
        return _plain_ids(messages, tokenizer, train_on_prompt)
    text, spans = _spans(template, messages)
    ids, starts = _token_starts(tokenizer, text)
    target = [train_on_prompt] * len(ids)
    stops = set(stop_ids)
    for begin, end in spans:
        inside = [t for t, s in enumerate(starts) if begin <= s < end]
        ends = [t for t in inside if ids[t] in stops]
        for t in inside[:inside.index(ends[-1]) + 1] if ends else inside:  # up to its end-of-turn token
            target[t] = True
    return ids, target


def _plain_ids(messages: list[dict], tokenizer, train_on_prompt: bool) -> tuple[list[int], list[bool]]:
    """A model without a chat template: the messages' texts joined by newlines, each answer then end-of-text."""
    ids, target = [], []
    for m in messages:
        piece = tokenizer.encode(m["content"] + ("" if m["role"] == "assistant" else "\n"))
        if m["role"] == "assistant" and tokenizer.eot_id is not None:
            piece = piece + [tokenizer.eot_id]
        ids += piece
        target += [train_on_prompt or m["role"] == "assistant"] * len(piece)
    return ids, target


# --------------------------------------------------------------------------- the prepared directory

def prepare_sft(train_path, out_dir, tokenizer, template=None, val_path=None, fmt: str | None = None,
                train_on_prompt: bool = False, val_fraction: float = 0.05, seed: int = 0, pack: bool = False) -> dict:
    """Read, render and write the examples into out_dir (train and val splits, meta.json last); `pack`: the
    batches pack several examples per row (SFTBatches)."""
    from ..data import FORMAT_VERSION
    from ..files import atomic_write_json, staged_dir

    train = read_examples(train_path, fmt)
    if val_path is not None:
        val = read_examples(val_path, fmt)
    else:
        if len(train) < 2:
            raise LmlabError(f"{train_path} has {len(train)} example; give --val FILE, or more examples to hold "
                             "some out.")
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(round(len(train) * val_fraction)))
        val, train = [train[i] for i in order[:n_val]], [train[i] for i in order[n_val:]]
    stop_ids = template.stop_ids if template is not None else ()
    meta = {"format_version": FORMAT_VERSION, "task": TASK, "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "template": template is not None,
            "train_on_prompt": train_on_prompt, "pack": pack, "dtype": ids_dtype(tokenizer.vocab_size)}
    with staged_dir(out_dir) as tmp:
        for split, examples in (("train", train), ("val", val)):
            rows = [example_ids(m, template, tokenizer, stop_ids, train_on_prompt) for m in examples]
            tokens = write_rows(tmp, split, {"ids": [r[0] for r in rows], "target": [r[1] for r in rows]},
                                meta["dtype"])
            meta[split] = {"examples": len(rows), "tokens": tokens["ids"],
                           "target_tokens": int(sum(sum(r[1]) for r in rows))}
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def pack_examples(lengths, capacity: int) -> list[list[int]]:
    """Examples (by index) grouped into rows of at most `capacity` tokens: best fit, longest first (a row takes
    the example when it is the fullest row with room for it; a deterministic function of the lengths)."""
    import bisect

    rows, room = [], []  # room: sorted (tokens left, row index)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at == len(room):
            rows.append([i])
            left, row = capacity - lengths[i], len(rows) - 1
        else:
            left, row = room.pop(at)
            rows[row].append(i)
            left -= lengths[i]
        bisect.insort(room, (left, row))
    return rows


class SFTBatches(SplitRows):
    """(x [B, T], y [B, T]) of a prepared SFT directory: x the example's ids but the last, y the next ids with -100
    where no loss is taken (prompt, padding). Examples longer than block_size + 1 tokens keep their first
    block_size + 1 (counted once per split). Batches of similar length (tasks.batching.LengthBatching), a pure
    function of the batch index, so a resumed run sees the same batches.

    pack: each row holds several examples (pack_examples, up to block_size tokens), and a batch is
    (x, y, segments) with segments [B, T] the example of each column (-1: padding), for attention and positions
    that stay within each example (models/decoder.packed_positions): the same loss as unpacked, in fewer rows."""

    BUCKET = 50  # batches per length-sorted window

    def __init__(self, data_dir, batch_size: int, seed: int, block_size: int, pad_id: int, warn: bool = True,
                 pack: bool = False):
        from ..data import read_meta

        self.data_dir, self.meta = Path(data_dir), read_meta(data_dir, (TASK,), MADE_BY, "instruction examples")
        self.batch_size, self.seed, self.block_size, self.pad_id, self.warn = batch_size, seed, block_size, pad_id, warn
        self.pack = pack
        super().__init__()

    def load(self, name: str):
        """The split's (inputs, labels, segments or None) rows of examples that have an answer within the block,
        and its batching."""
        ids, target = read_rows(self.data_dir, name, ("ids", "target"), self.meta["dtype"], MADE_BY)
        keep = [i for i, t in enumerate(target) if t[1:self.block_size + 1].any()]
        if not keep:
            raise LmlabError(f"the {name} split of {self.data_dir} has no example with an answer within "
                             f"block_size {self.block_size} tokens.")
        long = sum(1 for row in ids if len(row) > self.block_size + 1)
        if long and self.warn:
            print(f"note: {long:,} {name} example(s) are longer than block_size + 1 = {self.block_size + 1} "
                  "tokens and are cropped to it.", file=sys.stderr)
        ids, target = [ids[i][:self.block_size + 1] for i in keep], [target[i][:self.block_size + 1] for i in keep]
        inputs = [row[:-1] for row in ids]
        labels = [np.where(t[1:] > 0, row[1:], -100) for row, t in zip(ids, target)]
        segments = None
        if self.pack:
            rows = pack_examples([len(x) for x in inputs], self.block_size)
            segments = [np.concatenate([np.full(len(inputs[i]), k) for k, i in enumerate(r)]) for r in rows]
            inputs = [np.concatenate([inputs[i] for i in r]) for r in rows]
            labels = [np.concatenate([labels[i] for i in r]) for r in rows]
        return (inputs, labels, segments), LengthBatching([len(r) for r in inputs], self.batch_size, self.seed,
                                                          shuffle=name == "train", window=self.BUCKET)

    def batch(self, name: str, index: int):
        import torch

        inputs, labels, segments = self.split(name)
        rows = self.rows(name, index)
        x = pad_rows([inputs[i] for i in rows], self.pad_id)
        y = pad_rows([labels[i] for i in rows], -100).to(torch.long)
        return (x, y) if segments is None else (x, y, pad_rows([segments[i] for i in rows], -1))


def training_batches(cfg) -> SFTBatches:
    """The Trainer's data for a causal LM config whose data directory holds SFT examples (padded with the
    end-of-text id, which the loss never sees)."""
    from ..data import read_meta

    meta = read_meta(cfg.data.dir)
    pad = meta.get("eot_id")
    return SFTBatches(cfg.data.dir, cfg.train.batch_size, cfg.train.seed, cfg.model.block_size,
                      0 if pad is None else pad, pack=bool(meta.get("pack")))


# --------------------------------------------------------------------------- lmlab finetune

SFT_DEFAULTS = {"train.learning_rate": "5e-5", "train.min_lr": "5e-6", "train.warmup_iters": "10",
                "train.max_iters": "200", "train.batch_size": "8", "train.eval_interval": "50",
                "train.eval_iters": "10", "train.weight_decay": "0.0"}


LORA_DEFAULTS = {"train.lora_rank": "8", "train.learning_rate": "2e-4", "train.min_lr": "2e-5"}


def finetune(run, data, out, val=None, fmt: str | None = None, chat_template=None, train_on_prompt: bool = False,
             overrides: dict | None = None, progress: bool = True, full: bool = False, pack: bool = False,
             nproc: int = 1) -> dict:
    """Fine-tune the run `run` on the examples in `data` into the new run `out` (see the module docstring): LoRA
    adapters (rank 8 on q, k, v, o, gate, up, down unless train.lora_* say otherwise), or every weight with
    `full`; `pack`: several examples per row; `nproc` > 1: the data is prepared once, then that many training
    processes start (torchrun, DDP)."""
    from .. import distributed
    from ..chat import load_template
    from ..runs import init_config
    from ..tokenizer import load_tokenizer
    from ..train import train

    distributed.check_launcher(nproc, "lmlab finetune")
    out = Path(out)
    if (out / "data" / "meta.json").exists() or (out / "trainer_state.pt").exists():
        raise LmlabError(f"{out} already holds a fine-tuning run; continue it with `lmlab finetune {out} --resume` "
                         "or choose another --out.")
    if full and int((overrides or {}).get("train.lora_rank", 0)):
        raise LmlabError("--full trains every weight; leave out --lora-rank (or --full).")
    settings = {**SFT_DEFAULTS, **({} if full else LORA_DEFAULTS), **(overrides or {}), "data.dir": str(out / "data")}
    cfg = init_config(run, None, settings)  # (checks the run and every override before anything is written)
    if cfg.train.lora_rank:
        check_lora(cfg)
    tokenizer = load_tokenizer(run)
    try:
        template = load_template(tokenizer, f"the run {run}", chat_template)
    except LmlabError:
        if chat_template is not None:
            raise
        template = None
        print(f"note: {run} has no chat template; the examples are plain text (messages joined by newlines, "
              "each answer followed by end-of-text).", file=sys.stderr)
    if chat_template is not None:  # the fine-tuned run keeps the template it learned (tokenizer_config.json)
        tokenizer.settings_text = json.dumps({**tokenizer.settings, "chat_template": template.source},
                                             ensure_ascii=False, indent=2)
    meta = prepare_sft(data, out / "data", tokenizer, template, val, fmt, train_on_prompt, seed=cfg.train.seed,
                       pack=pack)
    if progress:
        print(f"prepared {meta['train']['examples']:,} training examples ({meta['train']['target_tokens']:,} of "
              f"{meta['train']['tokens']:,} tokens carry the loss) and {meta['val']['examples']:,} validation "
              f"examples into {out / 'data'}", file=sys.stderr)
    if nproc > 1:
        from ..config import save_config

        save_config(cfg, out / "config.yaml")  # what the processes train
        return distributed.train_processes(["train", "--config", str(out / "config.yaml"), "--out", str(out),
                                            "--init", str(run)], nproc, out, progress)
    return train(cfg, out, progress=progress, init=run)


def check_lora(cfg) -> None:
    """The LoRA settings against the model, on the meta device (no memory, no time), before anything is written."""
    import torch

    from ..lora import HASH_KEY, apply_lora
    from ..models import build_model
    from ..train import lora_arguments

    with torch.device("meta"):
        model = build_model(cfg.model)
        setattr(model, HASH_KEY, "0" * 64)  # (meta tensors have no bytes to hash)
        apply_lora(model, *lora_arguments(cfg.train))


def finetune_command(run, data=None, out=None, val=None, fmt: str | None = None, chat_template=None,
                     train_on_prompt: bool = False, resume: bool = False, quiet: bool = False, full: bool = False,
                     pack: bool = False, nproc: int | None = None, lora_rank: int | None = None,
                     lora_alpha: float | None = None, lora_dropout: float | None = None,
                     lora_targets: str | None = None, lora_base_dtype: str | None = None,
                     gradient_checkpointing: bool = False, overrides: dict | None = None) -> None:
    """`lmlab finetune RUN --data FILE --out RUN2`, or `lmlab finetune RUN2 --resume`."""
    from .. import distributed
    from ..runs import resume_config
    from ..train import Interrupted, train

    given = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
             "lora_targets": lora_targets, "lora_base_dtype": lora_base_dtype,
             "gradient_checkpointing": "true" if gradient_checkpointing else None}
    overrides = {**(overrides or {}), **{f"train.{k}": str(v) for k, v in given.items() if v is not None}}
    nproc = nproc or 1
    if not resume and not (data and out):
        raise LmlabError("lmlab finetune needs RUN --data FILE --out NEW_RUN (or NEW_RUN --resume).")
    try:
        if resume:
            cfg = resume_config(run, overrides)  # (checked here, before any process starts)
            distributed.check_launcher(nproc, "lmlab finetune")
            flags = [f"--{key}={value}" for key, value in overrides.items()]
            summary = (distributed.train_processes(["train", "--resume", str(run), *flags], nproc, run, not quiet)
                       if nproc > 1 else train(cfg, run, resume=True, progress=not quiet))
        else:
            summary = finetune(run, data, out, val, fmt, chat_template, train_on_prompt, overrides, not quiet, full,
                               pack, nproc)
    except Interrupted as e:
        print(f"lmlab finetune: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    if "best_val_loss" in summary:  # (training processes said it themselves)
        print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}; run saved in "
              f"{run if resume else out}")
