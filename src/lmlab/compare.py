"""`lmlab compare`: several models of any family and tokenizer on the same raw text, in bits per byte.

Every model is scored by `metrics.score_text` on the text itself (each with its own tokenizer), so bits
per byte — total information over the UTF-8 bytes of the predicted text — is comparable across char,
word and BPE models. Two models that split the text into the same tokens can also be mixed linearly,
p(w|h) = λ p_A(w|h) + (1 - λ) p_B(w|h) (Jelinek & Mercer 1980; an n-gram + neural mix usually beats both).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load
from .errors import LmlabError
from .files import atomic_open
from .metrics import EvalResult, score_text
from .models.base import require_causal

LN2 = math.log(2)
FIELDS = ["model", "family", "parameters", "tokens", "bytes", "bits_per_byte", "bits_per_char", "perplexity",
          "eval_tokens_per_sec", "train_seconds", "path"]


@dataclass
class Scored:
    name: str
    path: Path
    model: object
    tokenizer: object
    result: EvalResult | None = None

    @property
    def family(self) -> str:
        return self.model.family


def load_models(paths, device: str = "cpu") -> list[Scored]:
    """Load every run directory / n-gram file; names are the paths' last parts (made unique)."""
    if not paths:
        raise LmlabError("give at least one run directory or n-gram model to compare.")
    out, names = [], set()
    for path in map(Path, paths):
        model, tokenizer = load(path, device=device)
        require_causal(model, path)
        name = path.name if path.suffix not in (".arpa", ".npz", ".lmbin") else path.stem
        while name in names:
            name = f"{path.parent.name}/{name}"
        names.add(name)
        out.append(Scored(name, path, model, tokenizer))
    return out


def score(entry: Scored, text: str, context: int | None = None) -> tuple[np.ndarray, EvalResult]:
    """Per-token log-probabilities of `text` under one model (windows of at most `context` tokens), and the
    totals. Errors name the model."""
    try:
        return score_text(entry.model, entry.tokenizer, text, **({"context": context} if context else {}))
    except LmlabError as e:
        raise LmlabError(f"{entry.path}: {e}") from None


def train_seconds(path: Path) -> float | None:
    """Training wall time of a run: elapsed_s of the last row of its metrics.csv (None for n-gram files)."""
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        return None
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s")]
    return float(rows[-1]["elapsed_s"]) if rows else None


def row(entry: Scored) -> dict:
    r = entry.result
    return {"model": entry.name, "family": entry.family, "parameters": int(entry.model.num_parameters()),
            "tokens": r.tokens, "bytes": r.bytes, "bits_per_byte": r.bits_per_byte, "bits_per_char": r.bits_per_char,
            "perplexity": r.perplexity, "eval_tokens_per_sec": r.tokens_per_sec,
            "train_seconds": train_seconds(entry.path), "path": str(entry.path)}


def markdown(rows: list[dict]) -> str:
    from .report import markdown_table

    headers = ["model", "family", "parameters", "tokens", "bits/byte", "bits/char", "perplexity (own tokens)",
               "eval tokens/s", "train time (s)"]
    cells = [[r["model"], r["family"], r["parameters"], r["tokens"], r["bits_per_byte"], r["bits_per_char"],
              r["perplexity"], r["eval_tokens_per_sec"],
              "-" if r["train_seconds"] is None else r["train_seconds"]] for r in rows]
    return markdown_table(headers, cells)


def write_csv(rows: list[dict], path: Path, fields=FIELDS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    with atomic_open(path, "w") as f:
        f.write(buffer.getvalue())


# ----------------------------------------------------------------------------- validation curves

def val_curve_bits_per_byte(run: Path) -> list[tuple[int, float]] | None:
    """A run's validation curve in bits per byte: loss (nats/token) / ln 2 x tokens/bytes of its val split.

    The val loss is a mean over the sampled validation tokens; multiplying by the val split's
    tokens-per-byte ratio (meta.json) turns it into bits per byte of that split, assuming the sampled
    batches have the split's average bytes per token. None when the run or its data dir is missing.
    """
    from .config import load_config
    from .data import read_meta
    from .report import read_metrics

    if not (run / "metrics.csv").is_file() or not (run / "config.yaml").is_file():
        return None
    try:
        meta = read_meta(load_config(run / "config.yaml").data.dir)
    except LmlabError:
        return None
    if not meta["val"]["bytes"]:
        return None
    ratio = meta["val"]["tokens"] / meta["val"]["bytes"]
    return [(step, loss / LN2 * ratio) for step, loss in read_metrics(run / "metrics.csv")["val_loss"]]


# ----------------------------------------------------------------------------- interpolation

def mix_logprobs(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """log(λ p_A + (1 - λ) p_B) per token, exact at λ = 0 and 1."""
    if lam >= 1.0:
        return a
    if lam <= 0.0:
        return b
    return np.logaddexp(math.log(lam) + a, math.log1p(-lam) + b)


def best_weight(a: np.ndarray, b: np.ndarray, iterations: int = 60) -> float:
    """The λ in [0, 1] maximising the mixed log-likelihood: it is concave in λ, so golden-section search
    finds the maximum; the ends are checked too (one model alone may be best)."""
    nll = lambda lam: -float(mix_logprobs(a, b, lam).sum())
    lo, hi = 0.0, 1.0
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = nll(x1), nll(x2)
    for _ in range(iterations):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = nll(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = nll(x2)
    return min([0.0, 1.0, (lo + hi) / 2], key=nll)


def token_strings(tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer.encode(text)]


def check_same_tokens(a: Scored, b: Scored, text: str) -> None:
    """Mixing needs both models to predict the same tokens: the same pieces of text (<unk> matches anything)."""
    sa, sb = token_strings(a.tokenizer, text), token_strings(b.tokenizer, text)
    same = len(sa) == len(sb) and all(x == y or "<unk>" in (x, y) for x, y in zip(sa, sb))
    if not same:
        raise LmlabError(f"--interpolate needs two models that split the text into the same tokens; {a.name} "
                         f"({len(sa):,} tokens) and {b.name} ({len(sb):,} tokens) do not.")


def halves(text: str) -> tuple[str, str]:
    """The text cut at the first line break after its middle: (held-out part for λ, part to report on)."""
    cut = text.find("\n", len(text) // 2) + 1
    if cut <= 0 or cut >= len(text):
        raise LmlabError("--interpolate needs a text with a line break after its middle (to tune the mixing "
                         "weight on the first half and report on the second); give a longer text.")
    return text[:cut], text[cut:]


def interpolate(a: Scored, b: Scored, text: str, context: int | None = None) -> dict:
    """Tune λ on the first half of `text`, report bits per byte of A, B and the mix on the second half."""
    tune, test = halves(text)
    check_same_tokens(a, b, text)
    (la, _), (lb, _) = score(a, tune, context), score(b, tune, context)
    m = min(len(la), len(lb))  # a GPT/RNN does not predict the first token, an n-gram does: align the ends
    lam = best_weight(la[-m:], lb[-m:])
    (ta, ra), (tb, rb) = score(a, test, context), score(b, test, context)
    m = min(len(ta), len(tb))
    nbytes = min(ra.bytes, rb.bytes)  # bytes of the tokens both predict
    bpb = lambda lp: -float(lp.sum()) / LN2 / nbytes
    return {"a": a.name, "b": b.name, "weight_a": lam, "tokens": m, "bytes": nbytes,
            "bits_per_byte_a": bpb(ta[-m:]), "bits_per_byte_b": bpb(tb[-m:]),
            "bits_per_byte_mix": bpb(mix_logprobs(ta[-m:], tb[-m:], lam))}


# ----------------------------------------------------------------------------- the command

def compare(paths, text: str, out_dir: str | Path = ".", plot_curves: bool = False,
            interpolate_pair: tuple[str, str] | None = None, device: str = "cpu", context: int | None = None) -> dict:
    """Score every model on `text`; write compare.csv and compare.png (+ curves.png, interpolate.csv) to out_dir."""
    from .report import plot_bars, plot_curves as plot_curve_lines

    if not text:
        raise LmlabError("the comparison text is empty; give a text file with some text.")
    entries = load_models(paths, device)
    pair = None
    if interpolate_pair is not None:
        pair = [next((e for e in entries if str(e.path) == str(p) or e.name == str(p)), None)
                for p in interpolate_pair]
        pair = [e or load_models([p], device)[0] for e, p in zip(pair, interpolate_pair)]
    for entry in entries:
        entry.result = score(entry, text, context)[1]
    rows = [row(e) for e in entries]
    out_dir = Path(out_dir)
    out = {"rows": rows, "table": markdown(rows), "files": []}
    mix = interpolate(*pair, text, context) if pair is not None else None
    write_csv(rows, out_dir / "compare.csv")
    plot_bars([r["model"] for r in rows], [r["bits_per_byte"] for r in rows], out_dir / "compare.png",
              ylabel="bits per byte (lower is better)", title="models on the same text")
    out["files"] += [out_dir / "compare.csv", out_dir / "compare.png"]
    if plot_curves:
        curves = {e.name: val_curve_bits_per_byte(e.path) for e in entries if e.path.is_dir()}
        out["curves_skipped"] = [name for name, c in curves.items() if not c]
        plot_curve_lines({n: c for n, c in curves.items() if c}, out_dir / "curves.png",
                         ylabel="validation bits per byte", title="validation curves")
        out["files"].append(out_dir / "curves.png")
    if mix is not None:
        write_csv([mix], out_dir / "interpolate.csv", fields=list(mix))
        out["interpolation"] = mix
        out["files"].append(out_dir / "interpolate.csv")
    return out


def compare_command(models, data, out=".", plot_curves: bool = False, interpolate=None, device: str = "cpu",
                    context: int | None = None) -> None:
    """`lmlab compare`: the table, the interpolation's result, and the files written."""
    import sys

    from .files import read_text
    from .runtime import resolve_device

    result = compare(models, read_text(data), out, plot_curves=plot_curves,
                     interpolate_pair=tuple(interpolate) if interpolate else None, device=str(resolve_device(device)),
                     context=context)
    print(result["table"])
    mix = result.get("interpolation")
    if mix:
        print(f"\ninterpolation on the second half of {data} ({mix['tokens']:,} tokens, {mix['bytes']:,} bytes), "
              f"weight tuned on the first half: {mix['weight_a']:.3f} x {mix['a']} + {1 - mix['weight_a']:.3f} x "
              f"{mix['b']}\n  {mix['a']} alone: {mix['bits_per_byte_a']:.4f} bits/byte\n  {mix['b']} alone: "
              f"{mix['bits_per_byte_b']:.4f} bits/byte\n  mix: {mix['bits_per_byte_mix']:.4f} bits/byte")
    for name in result.get("curves_skipped", []):
        print(f"note: no validation curve for {name} (no metrics.csv, or its data dir's meta.json is gone).",
              file=sys.stderr)
    print("\nwrote " + ", ".join(str(f) for f in result["files"]))
