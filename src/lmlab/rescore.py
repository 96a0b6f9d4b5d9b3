"""`lmlab rescore`: n-best lists re-ranked with language models, the weights tuned on a dev list.

Each hypothesis h of an id gets

    total(h) = sum_i w_i * score_i(h) + lambda * log P_LM(h) + beta * words(h)

(the n-best file's own scores, e.g. the translation model's log p, an LM's natural-log probability of the
hypothesis as a sentence, and a per-word bonus), and the hypothesis of highest total is each id's 1-best. This is
the log-linear n-best reranking of MT and ASR systems (Och 2003 tunes such weights on a dev set). P_LM(h) is the
sentence "h + end of line" scored from a sentence start, as `lmlab compare` scores text: an n-gram from
<s> with </s> at the end (KenLM's score(h) x ln 10), a neural run (any causal family) on "\\n" + h + "\\n" (the
first newline is context only; many hypotheses at a time through logprobs_next, equal to compare's per-text
scores up to float rounding). Several LMs combine either linearly per token, P(w|h) = sum_k w_k P_k(w|h)
(possible only when they cut the hypotheses into the same tokens, as `lmlab compare --interpolate`), or
log-linearly per sentence, sum_k w_k log P_k(h) (any tokenizers).

Tuning (with a dev list and its references): a grid over (lambda, beta), then coordinate search (each weight
moved by +-step while the dev metric improves, the step halved when none does) over lambda (one per LM when
log-linear mixture weights are not given), beta and the weights of score columns after the first. The corpus
metric (sacrebleu BLEU / chrF, jiwer WER / CER) is summed from per-hypothesis statistics computed once, so a
search point costs one argmax; the reported numbers come from sacrebleu / jiwer themselves.

Reads: n-best TSV files, reference files (one line per id, in the order the ids first appear), language models
(n-gram files, run directories). Writes: the 1-best lines (a file, atomically, or stdout) and the report.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import LmlabError

METRICS = ("bleu", "chrf", "wer", "cer")
LOWER_IS_BETTER = ("wer", "cer")
MIXES = ("auto", "linear", "log-linear")
DEFAULT_LM_WEIGHT, DEFAULT_LENGTH_BONUS = 0.5, 0.0
LM_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0)
BETA_GRID = tuple(np.round(np.arange(-2.0, 2.01, 0.25), 2))


# ----------------------------------------------------------------------------- the n-best file

@dataclass
class NBest:
    """An n-best list: ids in file order, every hypothesis (flat), the first hypothesis index of each id, and the
    score columns [hypotheses, columns]."""
    path: str
    ids: list[str]
    texts: list[str]
    starts: np.ndarray
    scores: np.ndarray

    @property
    def groups(self) -> np.ndarray:
        """The id index of every hypothesis."""
        return np.repeat(np.arange(len(self.ids)), np.diff(np.append(self.starts, len(self.texts))))


def parse_nbest(path) -> NBest:
    """Read an n-best TSV: id <TAB> hypothesis <TAB> score [<TAB> score ...] per line, the lines of one id
    together, every line the same number of scores; blank lines are skipped. A bad line is named by its number."""
    from .files import read_text

    text = read_text(path, empty_ok=True).removeprefix("\ufeff")
    ids, texts, starts, rows, seen, columns = [], [], [], [], set(), None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"line {number} of {path}"
        if not fields[0].strip():
            raise LmlabError(f"{where} has no id; each line is id<TAB>hypothesis<TAB>score.")
        key = fields[0].strip()
        if len(fields) == 1:
            raise LmlabError(f"{where}: id {key!r} has no hypothesis; each line is id<TAB>hypothesis<TAB>score.")
        if len(fields) == 2:
            raise LmlabError(f"{where} has no score after the hypothesis; each line is id<TAB>hypothesis<TAB>score.")
        scores = [_score(v, where) for v in fields[2:]]
        if columns is not None and len(scores) != columns:
            raise LmlabError(f"{where} has {len(scores)} score(s) but the lines before it have {columns}; give every "
                             "line the same score columns.")
        columns = len(scores)
        if not ids or ids[-1] != key:
            if key in seen:
                raise LmlabError(f"{where}: id {key!r} appears again after other ids; keep the lines of one id "
                                 "together.")
            seen.add(key)
            ids.append(key)
            starts.append(len(texts))
        texts.append(fields[1].strip())
        rows.append(scores)
    if not ids:
        raise LmlabError(f"{path} holds no hypotheses; give lines of id<TAB>hypothesis<TAB>score.")
    return NBest(str(path), ids, texts, np.array(starts, dtype=np.int64), np.array(rows, dtype=np.float64))


def _score(value: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise LmlabError(f"{where}: score {value!r} is not a number.") from None
    if not math.isfinite(x):
        raise LmlabError(f"{where}: score {value!r} is not a finite number.")
    return x


def read_refs(path, nbest: NBest) -> list[str]:
    """One reference line per id of the n-best list, in the order its ids first appear."""
    from .tasks.pairs import read_lines

    refs = read_lines(path)
    while refs and refs[-1] == "" and len(refs) > len(nbest.ids):
        refs.pop()  # trailing blank lines
    if len(refs) != len(nbest.ids):
        raise LmlabError(f"{path} has {len(refs):,} reference lines but {nbest.path} has {len(nbest.ids):,} ids; give "
                         "one reference line per id, in the order the ids appear.")
    return refs


# ----------------------------------------------------------------------------- language-model scores

def load_lms(paths, device: str = "cpu"):
    """compare.Scored entries of the --lm models (n-gram files or runs of a causal family)."""
    from .compare import load_models

    return load_models(paths, device)


def hypothesis_tokens(entry, text: str) -> list[int]:
    """The ids an LM predicts for one hypothesis: those of "\\n" + text + "\\n" after the first (the sentence's
    tokens and its end of line)."""
    return list(entry.tokenizer.encode("\n" + text + "\n"))[1:]


def token_logprobs(entry, texts: list[str], context: int | None = None, cache: dict | None = None) -> list[np.ndarray]:
    """Natural-log probability of each token of each hypothesis (hypothesis_tokens), as `lmlab compare` scores:
    compare.score on "\\n" + text + "\\n", whose first token (a sentence end) is context only. An n-gram forgets
    everything at a sentence end, so all hypotheses go through it in one pass; a neural LM goes in batches
    (neural_logprobs). cache: a dict kept across calls (several rescorings with the same models): text -> scores."""
    if cache is not None:
        known = cache.setdefault((str(entry.path), context), {})
        todo = list(dict.fromkeys(t for t in texts if t not in known))
        if todo:
            known.update(zip(todo, token_logprobs(entry, todo, context)))
        return [known[t] for t in texts]
    from .compare import score

    if entry.family == "ngram":
        from .models.ngram import EOS_ID

        joined = "\n" + "".join(t + "\n" for t in texts)
        ids = np.asarray(entry.tokenizer.encode(joined))
        lp = score(entry, joined, context)[0][1:]  # drop p(</s> | <s>) of the empty first line
        ends = np.flatnonzero(ids[1:] == EOS_ID) + 1
        return np.split(lp, ends[:-1])
    return neural_logprobs(entry, texts, context)


def neural_logprobs(entry, texts: list[str], context: int | None = None, batch_size: int = 64) -> list[np.ndarray]:
    """A neural LM's token log-probabilities of the hypotheses, many at a time: each batch of token rows (right-
    padded; a causal model never looks at the padding after a row) is stepped column by column through
    logprobs_next, the decoding protocol every causal family answers, its state carried. The same numbers as
    compare.score on each "\\n" + text + "\\n" up to float rounding (a test holds them within 1e-5); a row longer
    than the model's block_size (or `context`) goes through compare.score itself."""
    import torch

    from .compare import score

    model = entry.model
    try:
        rows = [list(entry.tokenizer.encode("\n" + text + "\n")) for text in texts]
    except LmlabError as e:
        raise LmlabError(f"{entry.path}: {e}") from None
    limit = min(x for x in (model.block_size, context, math.inf) if x is not None)
    out: list[np.ndarray | None] = [None] * len(texts)
    fits = sorted((i for i, r in enumerate(rows) if len(r) <= limit), key=lambda i: len(rows[i]))
    for first in range(0, len(fits), batch_size):
        chunk = fits[first:first + batch_size]
        width = len(rows[chunk[-1]])
        ids = torch.tensor([rows[i] + [rows[i][-1]] * (width - len(rows[i])) for i in chunk], device=model.device)
        logp = torch.empty(len(chunk), width - 1, dtype=torch.float64)
        state = None
        with torch.inference_mode():
            for t in range(1, width):
                step, state = model.logprobs_next(ids[:, :t], state)
                logp[:, t - 1] = step.gather(1, ids[:, t:t + 1])[:, 0].double().cpu()
        for b, i in enumerate(chunk):
            out[i] = logp[b, :len(rows[i]) - 1].numpy()
    for i in (i for i, r in enumerate(rows) if len(r) > limit):
        out[i] = score(entry, "\n" + texts[i] + "\n", context)[0][-(len(rows[i]) - 1):]
    return out


def same_tokens(entries, texts: list[str]) -> bool:
    """Whether every LM cuts every hypothesis into the same pieces of text (<unk> matches anything)."""
    from .compare import token_strings

    for text in texts:
        pieces = [token_strings(e.tokenizer, "\n" + text + "\n")[1:] for e in entries]
        for other in pieces[1:]:
            if len(other) != len(pieces[0]) or any(a != b and "<unk>" not in (a, b) for a, b in zip(pieces[0], other)):
                return False
    return True


def mixture_weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n:
        raise LmlabError(f"--weights has {len(w)} value(s) for {n} --lm model(s); give one weight per model.")
    if (w < 0).any() or w.sum() <= 0:
        raise LmlabError("--weights must be non-negative with a positive sum.")
    return w / w.sum()


def linear_mix(per_model: list[list[np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """Sentence log-probability under sum_k w_k P_k(w|h), per token (Jelinek & Mercer 1980)."""
    logw = np.log(np.maximum(weights, 1e-300))
    return np.array([float(np.logaddexp.reduce(np.stack(toks) + logw[:, None], axis=0).sum())
                     for toks in zip(*per_model)])


def em_weights(per_model: list[list[np.ndarray]], iterations: int = 100) -> np.ndarray:
    """Linear-mixture weights maximising the likelihood of the given tokens (EM: each weight <- the mean posterior
    of its model; the likelihood is concave in the weights, so EM reaches the maximum)."""
    lp = np.stack([np.concatenate(m) for m in per_model])  # [models, tokens]
    w = np.full(len(per_model), 1.0 / len(per_model))
    for _ in range(iterations):
        joint = lp + np.log(np.maximum(w, 1e-300))[:, None]
        post = np.exp(joint - np.logaddexp.reduce(joint, axis=0))
        w = post.mean(axis=1)
    return w


@dataclass
class Mixture:
    """How the LMs make the LM column(s) of total(h): "single" (one LM), "linear" (one column, per-token mixture
    with `weights`) or "log-linear" (one column sum_k w_k log P_k(h), or with per_lm one column per LM, their
    weights tuned as separate lambdas)."""
    mix: str
    weights: np.ndarray
    per_lm: bool = False


def plan_mixture(entries, texts: list[str], mix: str, weights, tune: bool, ref_texts=None,
                 context=None, cache: dict | None = None) -> Mixture:
    """Choose the combination: auto is linear when every LM cuts every hypothesis into the same tokens, else
    log-linear. Linear weights not given are fitted by EM on the dev references (equal without them)."""
    if len(entries) == 1:
        return Mixture("single", np.ones(1))
    same = same_tokens(entries, texts)
    if mix == "auto":
        mix = "linear" if same else "log-linear"
    if mix == "linear":
        if not same:
            raise LmlabError("--mix linear needs LMs that cut the hypotheses into the same tokens; these do not "
                             "(use --mix log-linear).")
        if weights is None and ref_texts is not None:
            return Mixture("linear", em_weights([token_logprobs(e, ref_texts, context, cache) for e in entries]))
        return Mixture("linear", mixture_weights(weights, len(entries)))
    if weights is None and tune:
        return Mixture("log-linear", np.full(len(entries), 1.0 / len(entries)), per_lm=True)
    return Mixture("log-linear", mixture_weights(weights, len(entries)))


def lm_columns(entries, texts: list[str], mixture: Mixture, context=None, cache: dict | None = None) -> np.ndarray:
    """[hypotheses, 1 or number of LMs]: the LM log-probabilities of the hypotheses, combined per `mixture`."""
    per_model = [token_logprobs(e, texts, context, cache) for e in entries]
    if mixture.mix == "linear":
        return linear_mix(per_model, mixture.weights)[:, None]
    sentence = np.array([[lp.sum() for lp in m] for m in per_model]).T  # [hypotheses, models]
    return sentence if mixture.per_lm else sentence @ mixture.weights[:, None]


# ----------------------------------------------------------------------------- metrics from statistics

class CorpusMetric:
    """A corpus metric over chosen hypotheses, summed from per-hypothesis statistics computed once."""

    def __init__(self, name: str, hyps: list[str], refs_per_hyp: list[str]):
        self.name = name
        if name in ("bleu", "chrf"):
            from sacrebleu.metrics import BLEU, CHRF

            self.scorer = BLEU() if name == "bleu" else CHRF()
            self.stats = np.array(self.scorer._extract_corpus_statistics(hyps, [refs_per_hyp]), dtype=np.float64)
        else:
            jiwer = require_jiwer()
            process = jiwer.process_words if name == "wer" else jiwer.process_characters
            rows = []
            for hyp, ref in zip(hyps, refs_per_hyp):
                o = process(ref, hyp)
                rows.append((o.substitutions + o.deletions + o.insertions, o.hits + o.substitutions + o.deletions))
            self.stats = np.array(rows, dtype=np.float64)

    def value(self, chosen: np.ndarray) -> float:
        total = self.stats[chosen].sum(axis=0)
        if self.name in ("bleu", "chrf"):
            return float(self.scorer._compute_score_from_stats([int(round(x)) if self.name == "bleu" else x
                                                                for x in total]).score)
        return 100.0 * float(total[0] / total[1]) if total[1] else (0.0 if total[0] == 0 else math.inf)

    def gain(self, chosen: np.ndarray) -> float:
        """The value to maximise."""
        v = self.value(chosen)
        return -v if self.name in LOWER_IS_BETTER else v


def official_score(name: str, hyps: list[str], refs: list[str]) -> float:
    """The metric as its library computes it on whole lists (BLEU / chrF x 100, WER / CER in %)."""
    if name in ("bleu", "chrf"):
        from .metrics import text_metric

        return text_metric(hyps, refs, name)["score"]
    jiwer = require_jiwer()
    if not any(r.strip() for r in refs):
        raise LmlabError("every reference line is empty; WER / CER need some reference words.")
    return 100.0 * (jiwer.wer(refs, hyps) if name == "wer" else jiwer.cer(refs, hyps))


def require_jiwer():
    try:
        import jiwer
    except ImportError:
        raise LmlabError("--metric wer / cer needs the jiwer package; install it with `pip install jiwer==4.0.0` "
                         "(pinned in requirements.txt).") from None
    return jiwer


def check_metric(metric) -> str:
    name = (metric or "bleu").lower()
    if name not in METRICS:
        raise LmlabError(f"unknown metric {metric!r}; use --metric {', '.join(METRICS)}.")
    return name


# ----------------------------------------------------------------------------- totals and the search

@dataclass
class Params:
    """The weights of total(h): of the given score columns, of each LM column, and the per-word bonus."""
    score_weights: np.ndarray
    lm_weights: np.ndarray
    length_bonus: float
    fixed: set = field(default_factory=set)  # names of what is not tuned: "score", "lm", "beta"

    def vector(self) -> np.ndarray:
        return np.concatenate((self.score_weights, self.lm_weights, [self.length_bonus]))

    def with_vector(self, v: np.ndarray) -> "Params":
        m, k = len(self.score_weights), len(self.lm_weights)
        return Params(v[:m].copy(), v[m:m + k].copy(), float(v[-1]), self.fixed)

    def tunable(self) -> list[int]:
        """Indices of the vector the coordinate search moves (the first score weight stays 1: only ratios count)."""
        m, k = len(self.score_weights), len(self.lm_weights)
        out = [] if "score" in self.fixed else list(range(1, m))
        out += [] if "lm" in self.fixed else list(range(m, m + k))
        return out + ([] if "beta" in self.fixed else [m + k])


def feature_matrix(nbest: NBest, lm: np.ndarray) -> np.ndarray:
    """[hypotheses, score columns + LM columns + 1]: what Params.vector weights (the last column: words)."""
    words = np.array([len(t.split()) for t in nbest.texts], dtype=np.float64)
    return np.column_stack((nbest.scores, lm, words))


def choose(features: np.ndarray, nbest: NBest, vector: np.ndarray) -> np.ndarray:
    """The index of each id's highest-total hypothesis (the first one on ties)."""
    total = features @ vector
    best = np.maximum.reduceat(total, nbest.starts)
    is_best = total >= best[nbest.groups]
    first = np.flatnonzero(is_best)
    keep = np.concatenate(([True], nbest.groups[first][1:] != nbest.groups[first][:-1]))
    return first[keep]


def tune(features: np.ndarray, nbest: NBest, metric: CorpusMetric, start: Params, rounds: int = 30,
         min_step: float = 0.01):
    """Grid over (lambda, beta) — every LM column the same lambda — then coordinate search; returns the best Params
    and its dev metric value. Ties keep the earlier point, so the result is never worse than the grid's best."""
    m, k = len(start.score_weights), len(start.lm_weights)
    cache: dict[bytes, float] = {}

    def gain(v):
        chosen = choose(features, nbest, v)
        key = chosen.tobytes()
        if key not in cache:
            cache[key] = metric.gain(chosen)
        return cache[key]

    base = start.vector()
    lambdas = [None] if "lm" in start.fixed else LM_GRID
    betas = [None] if "beta" in start.fixed else BETA_GRID
    best_v, best_g = base, gain(base)
    for lam in lambdas:
        for beta in betas:
            v = base.copy()
            if lam is not None:
                v[m:m + k] = lam
            if beta is not None:
                v[-1] = beta
            g = gain(v)
            if g > best_g:
                best_v, best_g = v, g
    step = 0.25
    for _ in range(rounds):
        moved = False
        for i in start.tunable():
            for delta in (step, -step):
                v = best_v.copy()
                v[i] += delta
                if m <= i < m + k and v[i] < 0:
                    continue  # an LM weight below 0 would reward unlikely sentences
                g = gain(v)
                if g > best_g:
                    best_v, best_g, moved = v, g, True
                    break
        if not moved:
            step /= 2
            if step < min_step:
                break
    return start.with_vector(best_v), best_g


# ----------------------------------------------------------------------------- the command

def initial_params(nbest: NBest, lm_columns_count: int, score_weights, lm_weight, length_bonus) -> Params:
    m = nbest.scores.shape[1]
    if score_weights is not None and len(score_weights) != m:
        raise LmlabError(f"--score-weights has {len(score_weights)} value(s) but {nbest.path} has {m} score "
                         "column(s); give one weight per column.")
    fixed = {name for name, given in (("score", score_weights), ("lm", lm_weight), ("beta", length_bonus))
             if given is not None}
    lam = DEFAULT_LM_WEIGHT if lm_weight is None else float(lm_weight)
    return Params(np.ones(m) if score_weights is None else np.asarray(score_weights, dtype=np.float64),
                  np.full(lm_columns_count, lam), DEFAULT_LENGTH_BONUS if length_bonus is None else
                  float(length_bonus), fixed)


def rescore(nbest_path, lms, weights=None, mix: str = "auto", score_weights=None, lm_weight=None,
            length_bonus=None, dev=None, refs=None, test_refs=None, metric=None, device: str = "cpu",
            context: int | None = None, cache: dict | None = None) -> dict:
    """Rescore an n-best list (tuning on a dev list when given); returns the 1-best lines, the weights, metrics.
    cache: a dict to keep the LM scores in across calls (see token_logprobs)."""
    name = check_metric(metric)
    mix = (mix or "auto").lower()
    if mix not in MIXES:
        raise LmlabError(f"unknown --mix {mix!r}; use {', '.join(MIXES)}.")
    if (dev is None) != (refs is None):
        raise LmlabError("tuning needs both --dev (an n-best list) and --refs (its references).")
    nbest = parse_nbest(nbest_path)
    test_references = read_refs(test_refs, nbest) if test_refs is not None else None
    dev_list = parse_nbest(dev) if dev is not None else None
    if dev_list is not None and dev_list.scores.shape[1] != nbest.scores.shape[1]:
        raise LmlabError(f"{dev} has {dev_list.scores.shape[1]} score column(s) but {nbest_path} has "
                         f"{nbest.scores.shape[1]}; the dev list must come from the same system.")
    dev_references = read_refs(refs, dev_list) if dev_list is not None else None
    if weights is not None:
        mixture_weights(weights, len(lms))  # a bad count fails before any model loads
    entries = load_lms(lms, device)
    mixture = plan_mixture(entries, nbest.texts + (dev_list.texts if dev_list else []), mix, weights,
                           tune=dev_list is not None, ref_texts=dev_references, context=context, cache=cache)
    width = len(entries) if mixture.per_lm else 1
    params = initial_params(nbest, width, score_weights, lm_weight, length_bonus)
    out = {"metric": name, "lms": [e.name for e in entries], "mix": mixture.mix, "mixture_weights": mixture.weights,
           "tuned": dev_list is not None, "ids": nbest.ids}
    if dev_list is not None:
        dev_features = feature_matrix(dev_list, lm_columns(entries, dev_list.texts, mixture, context, cache))
        dev_metric = CorpusMetric(name, dev_list.texts, [dev_references[g] for g in dev_list.groups])
        params, _ = tune(dev_features, dev_list, dev_metric, params)
        out["dev"] = evaluate(name, dev_list, dev_features, params, dev_references)
    features = feature_matrix(nbest, lm_columns(entries, nbest.texts, mixture, context, cache))
    out.update(best=pick(nbest, choose(features, nbest, params.vector())), params=params)
    if test_references is not None:
        out["test"] = evaluate(name, nbest, features, params, test_references)
    out["report"] = report(out, nbest_path, dev, test_refs)
    return out


def evaluate(name: str, nbest: NBest, features: np.ndarray, params: Params, refs: list[str]) -> dict:
    """The metric of the first hypotheses, of the ranking by the given scores alone, and of the rescored 1-best."""
    given = choose(features, nbest, given_only(params, features.shape[1]))
    return {"before": official_score(name, first_hypotheses(nbest), refs),
            "given_scores": official_score(name, pick(nbest, given), refs),
            "after": official_score(name, pick(nbest, choose(features, nbest, params.vector())), refs)}


def given_only(params: Params, width: int) -> np.ndarray:
    """The weight vector with the LM and length weights at 0: the ranking by the given scores alone."""
    v = np.zeros(width)
    v[:len(params.score_weights)] = params.score_weights
    return v


def first_hypotheses(nbest: NBest) -> list[str]:
    return [nbest.texts[s] for s in nbest.starts]


def pick(nbest: NBest, chosen: np.ndarray) -> list[str]:
    return [nbest.texts[i] for i in chosen]


def report(out: dict, nbest_path, dev, test_refs) -> str:
    p = out["params"]
    how = "tuned on " + str(dev) + f" ({out['metric']})" if out["tuned"] else "given / defaults"
    lms = ", ".join(out["lms"])
    if len(out["lms"]) > 1:
        if len(p.lm_weights) > 1:
            mix = f"log-linear mixture (each LM its own lambda) of {lms}"
        else:
            w = " / ".join(f"{x:.3f}" for x in out["mixture_weights"])
            mix = f"{out['mix']} mixture {w} of {lms}"
    else:
        mix = lms
    lam = ", ".join(f"{x:g}" for x in p.lm_weights)
    lines = [f"weights ({how}): score columns {', '.join(f'{x:g}' for x in p.score_weights)}; "
             f"lambda {lam} x log P_LM ({mix}); beta {p.length_bonus:g} per word"]
    unit = "%" if out["metric"] in LOWER_IS_BETTER else ""
    for split, path in (("dev", dev), ("test", test_refs)):
        if split in out:
            r = out[split]
            lines.append(f"{out['metric'].upper()} on {path if split == 'dev' else nbest_path}: first hypotheses "
                         f"{r['before']:.2f}{unit}, given scores only {r['given_scores']:.2f}{unit}, rescored "
                         f"{r['after']:.2f}{unit} ({r['after'] - r['before']:+.2f})")
    return "\n".join(lines)


def rescore_command(nbest, lm, weights=None, mix: str = "auto", score_weights=None, lm_weight=None,
                    length_bonus=None, dev=None, refs=None, test_refs=None, metric=None, out=None,
                    device: str = "cpu", context: int | None = None) -> None:
    """`lmlab rescore`: the 1-best line of each id (to --out or stdout) and the report (stderr when the lines go
    to stdout)."""
    from .files import atomic_write_text
    from .runtime import resolve_device

    if out is not None and Path(out).is_dir():
        raise LmlabError(f"--out {out} is a directory; give a file name.")
    result = rescore(nbest, lm, weights=weights, mix=mix, score_weights=score_weights, lm_weight=lm_weight,
                     length_bonus=length_bonus, dev=dev, refs=refs, test_refs=test_refs, metric=metric,
                     device=str(resolve_device(device)), context=context)
    text = "".join(line + "\n" for line in result["best"])
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        print(result["report"], file=sys.stderr)
    else:
        atomic_write_text(out, text)
        print(result["report"] + f"\nwrote {out}")
