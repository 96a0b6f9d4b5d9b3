"""Sequence-to-sequence workflow: translation (or summarization, reconstruction) with a trained encoder-decoder
on the one decoding driver; its data is prepared and batched by lmlab.tasks.pairs, `lmlab eval --refs` scores the
output (BLEU / chrF / ROUGE, lmlab.metrics), and denoising pretraining prepares then trains (`seq2seq pretrain`).

Input lines are stripped; an empty input line gives an empty output line, so line numbers stay aligned. A line
longer than the model's block_size is cut to its first block_size - 1 tokens (a note on stderr says how many), and
the output is the translation of the cut line. With --n-best K the K best beam hypotheses of each line are written
with their model log-probabilities as the n-best TSV that `lmlab rescore` reads (docs/rescore.md).
"""
from __future__ import annotations

import sys

from ..errors import LmlabError
from .batching import pad_rows


def load_seq2seq(run, device: str = "cpu"):
    """(model, tokenizer) of a seq2seq run; any other run is a user error."""
    from ..checkpoint import load

    from ..models.base import EncoderDecoder

    model, tokenizer = load(run, device=device)
    if not isinstance(model, EncoderDecoder):
        raise LmlabError(f"{run} is a {model.family} model, not a seq2seq run; translate and "
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

    Decoding is the one driver's (lmlab.decoding): each batch of sources is bound to the model (their encoder
    output computed once), and its target rows, all starting with <eos>, decode greedily (temperature 0, the
    default here) or by sampling, row i of the batch drawing from seed + i; they end at <eos> (the rows' own
    rule) or after min(max_new_tokens, block_size) tokens. Beam search (num_beams > 1, with length_penalty) runs
    one source at a time.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from ..decoding import Row, decode
    from ..generate import GenerationConfig, beam_search
    from ..sampling import Sampling, make_generators

    cfg = cfg or GenerationConfig(temperature=0.0)
    cfg = replace(cfg, num_return_sequences=1, max_new_tokens=min(cfg.max_new_tokens, model.cfg.block_size))
    cfg.validate()
    model.eval()
    sources = encode_sources(model, tokenizer, lines, warn=warn)
    out = [""] * len(lines)
    todo = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: len(sources[i]))
    eos, sampling = model.cfg.eos_id, Sampling.from_config(cfg)
    bar = tqdm(total=len(todo), disable=not progress, file=sys.stderr, desc="translate", unit="line", leave=False)
    step = 1 if cfg.num_beams > 1 else batch_size
    for first in range(0, len(todo), step):
        batch = todo[first:first + step]
        bound = model.bind(pad_rows([sources[i] for i in batch], model.cfg.pad_id))
        if cfg.num_beams > 1:
            out[batch[0]] = beam_search(bound, tokenizer, [eos], cfg)[0].text.strip()
        else:
            generators = make_generators(cfg, first + len(batch))[first:]
            rows = [Row([eos], sampling, g, cfg.new_tokens(1), eot=eos) for g in generators]
            for _ in decode(bound, rows):
                pass
            for i, row in zip(batch, rows):
                out[i] = tokenizer.decode(row.tokens).strip()
        bar.update(len(batch))
    bar.close()
    return out


def translate_nbest(model, tokenizer, lines: list[str], cfg, n_best: int, progress: bool = False,
                    warn: bool = True) -> list[list[tuple[str, float]]]:
    """The n_best best beam-search hypotheses of each input line, best first, each with its model log-probability
    (natural log: the sum over its tokens and the end-of-text token that finished it; a hypothesis cut at the
    token limit has no end token). An empty input line gives one empty hypothesis of log-probability 0."""
    from dataclasses import replace

    from tqdm import tqdm

    from ..generate import beam_search

    if not isinstance(n_best, int) or n_best < 1:
        raise LmlabError(f"--n-best must be a whole number >= 1, got {n_best!r}.")
    if cfg.num_beams < n_best:
        raise LmlabError(f"--n-best {n_best} needs at least as many beams; give --num-beams {n_best} or more "
                         f"(got {cfg.num_beams}).")
    cfg = replace(cfg, num_return_sequences=n_best, max_new_tokens=min(cfg.max_new_tokens, model.cfg.block_size))
    cfg.validate()
    model.eval()
    sources = encode_sources(model, tokenizer, lines, warn=warn)
    out: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
    todo = [i for i, s in enumerate(sources) if s is not None]
    for i in tqdm(todo, disable=not progress, file=sys.stderr, desc="n-best", unit="line", leave=False):
        bound = model.bind(pad_rows([sources[i]], model.cfg.pad_id))
        out[i] = [(c.text.strip(), float(sum(c.logprobs)) + c.end_logprob)
                  for c in beam_search(bound, tokenizer, [model.cfg.eos_id], cfg)]
    return out


def nbest_tsv(nbest: list[list[tuple[str, float]]]) -> str:
    """An n-best list in lmlab rescore's TSV: id (the input line number, from 1) <TAB> hypothesis <TAB> log p."""
    clean = lambda text: text.replace("\t", " ").replace("\n", " ").replace("\r", " ")  # noqa: E731
    return "".join(f"{i}\t{clean(text)}\t{score:.10g}\n" for i, hyps in enumerate(nbest, start=1)
                   for text, score in hyps)


def read_input(path) -> list[str]:
    """The lines to translate: a file's, or stdin's for "-" (stripped, empty lines kept)."""
    from .pairs import read_lines

    return [line.strip() for line in sys.stdin.read().splitlines()] if str(path) == "-" else read_lines(path)


def translate_command(run, cfg, input="-", batch_size: int = 64, device: str = "cpu", n_best: int | None = None,
                      out=None) -> None:
    """`lmlab seq2seq translate`: each input line's output, one line per line (or, with n_best, the n-best list
    as TSV: id, hypothesis, log p), on stdout or written atomically to `out`."""
    from ..files import atomic_write_text
    from ..runtime import resolve_device

    cfg.validate()
    if batch_size < 1:
        raise LmlabError(f"--batch-size must be >= 1, got {batch_size}.")
    if n_best is not None and n_best < 1:
        raise LmlabError(f"--n-best must be a whole number >= 1, got {n_best}.")
    if n_best is not None and cfg.num_beams < n_best:
        raise LmlabError(f"--n-best {n_best} needs --num-beams {n_best} or more (got {cfg.num_beams}).")
    lines = read_input(input)
    model, tokenizer = load_seq2seq(run, device=str(resolve_device(device)))
    if n_best is not None:
        text = nbest_tsv(translate_nbest(model, tokenizer, lines, cfg, n_best))
    else:
        text = "".join(line + "\n" for line in translate(model, tokenizer, lines, cfg, batch_size=batch_size))
    if out is not None:
        atomic_write_text(out, text)
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def evaluate_translation(run, data, refs, cfg, metric: str | None = None, hyps=None, device: str = "cpu",
                         progress: bool = False) -> dict:
    """`lmlab eval RUN --data SRC --refs REF --metric bleu|chrf|rouge`: decode SRC, score against REF."""
    from ..files import atomic_write_text
    from ..metrics import TEXT_METRICS, text_metric
    from ..runtime import resolve_device
    from .pairs import read_lines

    name = (metric or "bleu").lower()
    if name not in TEXT_METRICS:
        raise LmlabError(f"unknown metric {metric!r}; use --metric {', '.join(TEXT_METRICS)}.")
    if refs is None:
        raise LmlabError("--metric scores a seq2seq run's output against references; give --refs FILE too.")
    sources, references = read_lines(data), read_lines(refs)
    if len(sources) != len(references):
        raise LmlabError(f"{data} has {len(sources):,} lines but {refs} has {len(references):,}; give one "
                         "reference line per input line.")
    model, tokenizer = load_seq2seq(run, device=str(resolve_device(device)))
    cfg.validate()
    outputs = translate(model, tokenizer, sources, cfg, progress=progress)
    if hyps:
        atomic_write_text(hyps, "".join(h + "\n" for h in outputs))
    result = text_metric(outputs, references, name)
    decoding = f"beam {cfg.num_beams}" if cfg.num_beams > 1 else "greedy"
    result.update(run=str(run), data=str(data), refs=str(refs), lines=len(outputs), num_beams=cfg.num_beams,
                  report=f"{run} on {data} ({len(outputs):,} lines, {decoding}) against {refs}:\n  {result['text']}\n"
                         f"  signature: {result['signature']}")
    return result


def pretrain_command(text, config, out, overrides: dict | None = None, tokenizer=None, vocab_size=None,
                     val_text=None, val_fraction: float = 0.05, noise: dict | None = None, quiet: bool = False) -> None:
    """`lmlab seq2seq pretrain`: prepare monolingual lines into OUT/data, then train the denoising autoencoder."""
    from pathlib import Path

    from ..config import load_config
    from ..train import require_family, train
    from .pairs import prepare_denoise

    out = Path(out)
    if (out / "trainer_state.pt").exists():
        raise LmlabError(f"{out} already holds a run; choose another --out.")
    cfg = load_config(config, {**(overrides or {}), "data.dir": str(out / "data")})
    require_family(cfg, "seq2seq")
    meta = prepare_denoise(text, out / "data", tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                           noise=noise, val_text=val_text)
    print(f"denoising data: {meta['train']['pairs']:,} train lines, {meta['val']['pairs']:,} val lines in {out / 'data'}")
    summary = train(cfg, out, progress=not quiet)
    print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}; pretrained run in {out}; "
          f"fine-tune it with `lmlab seq2seq train --config CONFIG --init {out}`")
