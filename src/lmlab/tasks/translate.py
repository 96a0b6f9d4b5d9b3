"""Sequence-to-sequence workflow: translation (or summarization, reconstruction) with a trained encoder-decoder
through lmlab.generate's decoding; its data is prepared and batched by lmlab.tasks.pairs, and `lmlab eval --refs`
scores the output (BLEU / chrF / ROUGE, lmlab.metrics).

Input lines are stripped; an empty input line gives an empty output line, so line numbers stay aligned. A line
longer than the model's block_size is cut to its first block_size - 1 tokens (a note on stderr says how many), and
the output is the translation of the cut line.
"""
from __future__ import annotations

import sys

from ..errors import LmlabError
from .batching import pad_rows


def load_seq2seq(run, device: str = "cpu"):
    """(model, tokenizer) of a seq2seq run; any other run is a user error."""
    from ..checkpoint import load

    model, tokenizer = load(run, device=device)
    if getattr(model, "family", None) != "seq2seq":
        raise LmlabError(f"{run} is a {getattr(model, 'family', 'n-gram')} model, not a seq2seq run; translate and "
                         "--refs evaluation need a run trained with `lmlab seq2seq train`.")
    return model, tokenizer


def encode_sources(model, tokenizer, lines: list[str], warn: bool = True) -> list[list[int] | None]:
    """Each line's source ids + <eos> (None for an empty line), cut to block_size tokens with a note."""
    limit = model.cfg.block_size - 1
    out, cut = [], 0
    encoded = tokenizer.encode_lines([line.strip() for line in lines])
    for line, ids in zip(lines, encoded):
        if not line.strip():
            out.append(None)
            continue
        if len(ids) > limit:
            cut += 1
            ids = ids[:limit]
        out.append(list(ids) + [model.cfg.eos_id])
    if cut and warn:
        print(f"note: {cut:,} input line(s) have more than block_size - 1 = {limit} tokens; only their first "
              f"{limit} tokens are translated.", file=sys.stderr)
    return out


def translate(model, tokenizer, lines: list[str], cfg=None, batch_size: int = 64, progress: bool = False,
              warn: bool = True) -> list[str]:
    """The model's output for each input line (a translation, a summary, a reconstruction), in input order.

    Decoding is lmlab.generate's: greedy (temperature 0, the default here) or sampling through `sample_steps`
    on a batch of sources, beam search (num_beams > 1, with length_penalty) through `beam_search` one source at
    a time. Outputs end at <eos>, or after min(max_new_tokens, block_size) tokens.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from ..generate import GenerationConfig, beam_search, sample_steps

    cfg = cfg or GenerationConfig(temperature=0.0)
    cfg = replace(cfg, num_return_sequences=1, max_new_tokens=min(cfg.max_new_tokens, model.cfg.block_size))
    cfg.validate()
    model.eval()
    sources = encode_sources(model, tokenizer, lines, warn=warn)
    out = [""] * len(lines)
    todo = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: len(sources[i]))
    eos, start = model.cfg.eos_id, [model.cfg.eos_id]
    bar = tqdm(total=len(todo), disable=not progress, file=sys.stderr, desc="translate", unit="line", leave=False)
    step = 1 if cfg.num_beams > 1 else batch_size
    for first in range(0, len(todo), step):
        rows = todo[first:first + step]
        bound = model.bind(pad_rows([sources[i] for i in rows], model.cfg.pad_id))
        if cfg.num_beams > 1:
            out[rows[0]] = beam_search(bound, tokenizer, start, cfg)[0].text.strip()
        else:
            ids: list[list[int]] = [[] for _ in rows]
            done = [False] * len(rows)
            for next_ids, _ in sample_steps(bound, start, cfg, first_sequence=first, batch=len(rows)):
                for r, token in enumerate(next_ids.tolist()):
                    if done[r]:
                        continue
                    if token == eos:
                        done[r] = True
                    else:
                        ids[r].append(token)
                if all(done):
                    break
            for i, row_ids in zip(rows, ids):
                out[i] = tokenizer.decode(row_ids).strip()
        bar.update(len(rows))
    bar.close()
    return out
