"""Language-model metrics from summed log-probabilities: cross-entropy, perplexity, bits per token/char/byte.

Bits per byte divides the total information by the UTF-8 bytes of the text the model predicted, so
models with different tokenizers (char, BPE, words) are compared on the same footing.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import LmlabError


@dataclass
class EvalResult:
    tokens: int  # tokens predicted
    chars: int  # characters of the predicted text
    bytes: int  # UTF-8 bytes of the predicted text
    nll: float  # total negative log-likelihood, nats
    seconds: float = 0.0

    @property
    def cross_entropy(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    @property
    def bits_per_token(self) -> float:
        return self.cross_entropy / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("cross_entropy", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte",
                     "tokens_per_sec"):
            out[name] = getattr(self, name)
        return out


def evaluate_ids(model, tokenizer, ids, text: str | None = None, **kwargs) -> EvalResult:
    """Score token ids with `model.token_logprobs`; count chars/bytes of the predicted part of the text.

    A model that cannot predict the first token (no beginning-of-text context: GPT, RNN) predicts
    ids[1:]; the characters of the unpredicted prefix are left out of the char/byte counts.
    """
    return score_ids(model, tokenizer, ids, text, **kwargs)[1]


def score_ids(model, tokenizer, ids, text: str | None = None, **kwargs) -> tuple[np.ndarray, EvalResult]:
    """evaluate_ids, also returning the per-token natural-log probabilities (of the last `tokens` ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise LmlabError("the evaluation text is too short: it needs at least two tokens.")
    for name in ("stride", "context"):
        if kwargs.get(name) is not None and kwargs[name] < 1:
            raise LmlabError(f"{name} must be a positive number of tokens, got {kwargs[name]}.")
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise LmlabError(f"the data has token id {int(ids.max() if ids.max() >= vocab else ids.min())} outside the "
                         f"model's vocabulary of {vocab}; it was prepared with another tokenizer.")
    start = time.perf_counter()
    logprobs = model.token_logprobs(ids, **kwargs)
    seconds = time.perf_counter() - start
    if text is None:  # ids from a .bin split: the text is their decoding, without document separators
        predicted_ids = ids[ids.size - logprobs.size:]
        eot = getattr(tokenizer, "eot_id", None)
        predicted = tokenizer.decode(predicted_ids if eot is None else predicted_ids[predicted_ids != eot])
    else:
        skipped = tokenizer.decode(ids[: ids.size - logprobs.size]) if logprobs.size < ids.size else ""
        predicted = text[len(skipped):] if text.startswith(skipped) else text
    result = EvalResult(tokens=int(logprobs.size), chars=len(predicted), bytes=len(predicted.encode("utf-8")),
                        nll=float(-logprobs.sum()), seconds=seconds)
    return logprobs, result


def score_text(model, tokenizer, text: str, **kwargs) -> tuple[np.ndarray, EvalResult]:
    """evaluate_text, also returning the per-token natural-log probabilities."""
    if not text:
        raise LmlabError("the evaluation text is empty.")
    return score_ids(model, tokenizer, tokenizer.encode(text), text=text, **kwargs)


def evaluate_text(model, tokenizer, text: str, **kwargs) -> EvalResult:
    if not text:
        raise LmlabError("the evaluation text is empty.")
    return evaluate_ids(model, tokenizer, tokenizer.encode(text), text=text, **kwargs)


# ---------------------------------------------------------------------------------------------
# Classification: accuracy, per-class and macro precision / recall / F1, confusion matrix
# ---------------------------------------------------------------------------------------------


def classification_report(y_true, y_pred, labels: list[str]) -> dict:
    """Metrics of predicted class indices against true ones (0 <= index < len(labels)).

    Precision of a class = TP / predicted as it, recall = TP / truly it, F1 their harmonic mean; a class never
    predicted (or absent) has 0 where the ratio is 0/0, as scikit-learn's zero_division=0. Macro = unweighted
    mean over the classes. confusion[i][j] counts texts of class i predicted as j.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise LmlabError("classification metrics need as many predictions as labels, and at least one.")
    k = len(labels)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                         "support": int(actual[i])} for i, label in enumerate(labels)}
    return {"accuracy": float(tp.sum() / y_true.size), "examples": int(y_true.size),
            "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean()), "per_class": per_class, "labels": list(labels),
            "confusion": confusion.tolist()}


# ---------------------------------------------------------------------------------------------
# Translation and summarization: BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score)
# ---------------------------------------------------------------------------------------------

TEXT_METRICS = ("bleu", "chrf", "rouge")


def text_metric(hypotheses: list[str], references: list[str], metric: str) -> dict:
    """Corpus score of hypotheses against one reference each, by the standard implementations.

    bleu / chrf: sacrebleu's corpus BLEU (13a tokenization, exp smoothing, detokenized input) and chrF2, with
    sacrebleu's signature. rouge: rouge-score's ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Porter stemming),
    averaged over the pairs, x 100. Returns {"metric", "score", "text", "signature"[, "rouge1", "rouge2",
    "rougeL"]}.
    """
    if metric not in TEXT_METRICS:
        raise LmlabError(f"unknown metric {metric!r}; use {', '.join(TEXT_METRICS)}.")
    if len(hypotheses) != len(references):
        raise LmlabError(f"there are {len(hypotheses):,} hypotheses but {len(references):,} references; "
                         "give one reference line per input line.")
    if not hypotheses:
        raise LmlabError("there is nothing to score: no input lines.")
    if metric in ("bleu", "chrf"):
        from sacrebleu.metrics import BLEU, CHRF

        scorer = BLEU() if metric == "bleu" else CHRF()
        result = scorer.corpus_score(hypotheses, [references])
        return {"metric": metric, "score": float(result.score), "text": str(result),
                "signature": str(scorer.get_signature())}
    from importlib.metadata import version

    from rouge_score import rouge_scorer

    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    totals = dict.fromkeys(names, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)
        for name in names:
            totals[name] += scores[name].fmeasure
    out = {name: 100 * totals[name] / len(hypotheses) for name in names}
    text = " ".join(f"{n.upper().replace('ROUGE', 'ROUGE-')} {out[n]:.2f}" for n in names)
    return {"metric": "rouge", "score": out["rougeL"], "text": text, **out,
            "signature": f"rouge-score {version('rouge-score')}|F-measure|stemmer:porter|mean over {len(hypotheses)} pairs"}
