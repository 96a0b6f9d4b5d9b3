"""`lmlab eval`: a run (or an n-gram model) on data; what the model is decides what is measured.

- A causal LM (models.base.CausalLM) on a text file or a prepared .bin split: cross-entropy, perplexity and bits
  per token / character / byte (lmlab.metrics), so models of any tokenizer compare in bits per byte.
- An encoder-decoder, given --refs: BLEU / chrF (sacrebleu) or ROUGE (rouge-score) of its output against the
  references (lmlab.tasks.translate.evaluate_translation).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import LmlabError
from .metrics import EvalResult


def evaluate_run(run, data, stride: int | None = None, device: str = "cpu", context: int | None = None) -> EvalResult:
    """A causal LM of a run directory or n-gram file on a text file or a prepared .bin split of its tokenizer."""
    from .checkpoint import is_ngram_file, load
    from .files import read_json, read_text
    from .metrics import evaluate_ids, evaluate_text
    from .models.base import require_causal
    from .runtime import resolve_device

    model, tokenizer = load(run, device=str(resolve_device(device)))
    require_causal(model, run)
    kwargs = {k: v for k, v in (("stride", stride), ("context", context)) if v is not None}
    path = Path(data)
    if path.suffix != ".bin":
        return evaluate_text(model, tokenizer, read_text(path), **kwargs)
    from .data import load_split

    if is_ngram_file(run):
        raise LmlabError(f"{run} is an n-gram model: evaluate it on a text file, not on a .bin split.")
    data_tokenizer = path.parent / "tokenizer.json"
    if data_tokenizer.is_file() and read_json(data_tokenizer) != read_json(Path(run) / "tokenizer.json"):
        raise LmlabError(f"{path} was prepared with another tokenizer than the one of {run}; "
                         "evaluate on a text file instead.")
    return evaluate_ids(model, tokenizer, load_split(path.parent, path.stem), **kwargs)


def eval_command(run, data, cfg, stride: int | None = None, refs=None, metric: str | None = None, hyps=None,
                 json_output: bool = False, device: str = "cpu", context: int | None = None) -> None:
    """`lmlab eval`: print the measures (or their JSON). With --refs or --metric, `cfg` (beams, length penalty,
    max new tokens) decodes the encoder-decoder's output."""
    if refs is not None or metric is not None:
        from .tasks.translate import evaluate_translation

        result = evaluate_translation(run, data, refs, cfg, metric, hyps, device,
                                      progress=not json_output and sys.stderr.isatty())
        report = result.pop("report")
        print(json.dumps(result, indent=2) if json_output else report)
        return
    result = evaluate_run(run, data, stride, device, context)
    if json_output:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print(f"{run} on {data}: {result.tokens:,} tokens, {result.bytes:,} bytes")
    for name in ("cross_entropy", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte"):
        print(f"  {name:<15} {getattr(result, name):.4f}")
    print(f"  {'tokens/s':<15} {result.tokens_per_sec:,.0f}")
