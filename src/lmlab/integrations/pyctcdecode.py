"""An lmlab n-gram model as pyctcdecode's language model: CTC beam search with shallow fusion, no kenlm module.

    from pyctcdecode import Alphabet, BeamSearchDecoderCTC
    from lmlab.integrations.pyctcdecode import language_model

    decoder = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), language_model("en.arpa", alpha=0.5, beta=1.0))
    text = decoder.decode(log_probs)        # log_probs: [frames, len(labels)]

`language_model` returns a pyctcdecode ``LanguageModel`` (an ``AbstractLanguageModel``) whose kenlm.Model is
replaced by the lmlab NGramLM (ARPA, .npz, or any file `load_ngram` reads): the unigram set, the partial-word trie
and its out-of-vocabulary penalty, reset_params, alpha / beta / unk_score_offset / score_boundary are
pyctcdecode's own code; only the calls that need kenlm are re-done here, mirroring pyctcdecode 0.5.0's
LanguageModel: a state is a tuple of word ids (lmlab.models.ngram.step) instead of a kenlm.State,
BeginSentenceWrite is (<s>,), NullContextWrite is (), BaseScore is Stepper.step. The score of a word is

    alpha * ln(10) * (log10 p(word | state) [+ unk_score_offset if OOV] [+ log10 p(</s> | state') if last]) + beta

which is what pyctcdecode computes with kenlm, so the beams (texts and scores) are the same (tests hold them
to 1e-6).

Reads: an n-gram model file (or an NGramLM). Writes: nothing (a decoder's save_to_dir is not supported).
"""
from __future__ import annotations

from typing import Collection

from ..errors import LmlabError

# pyctcdecode's defaults (pyctcdecode.constants), except beta, which pyctcdecode sets to 1.5.
DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_UNK_OFFSET = 0.5, 1.0, -10.0


def _pyctcdecode():
    try:
        import pyctcdecode.language_model as lm
    except ImportError:
        raise LmlabError("lmlab.integrations.pyctcdecode needs the pyctcdecode package; install it with "
                         "`pip install --no-deps pyctcdecode==0.5.0 pygtrie==2.6.2` (its numpy<2 pin is too "
                         "strict; see requirements-nodeps.txt).") from None
    return lm


class _ModelView:
    """The parts of a kenlm.Model that pyctcdecode's LanguageModel reads directly: `order` and `word in model`."""

    def __init__(self, model):
        self.model = model
        self.order = model.order

    def __contains__(self, word: str) -> bool:
        return word in self.model.vocab.index


def language_model(model, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                   unk_score_offset: float = DEFAULT_UNK_OFFSET, score_boundary: bool = True,
                   unigrams: Collection[str] | None = None):
    """A pyctcdecode language model backed by an lmlab n-gram (a path or an NGramLM).

    unigrams: the known words (pyctcdecode's partial-word trie: a word prefix outside it costs unk_score_offset);
    default: the model's vocabulary without <unk>, <s>, </s>."""
    from ..models.ngram import SPECIALS, NGramLM, load_ngram

    lm = _pyctcdecode()
    if not isinstance(model, NGramLM):
        from pathlib import Path

        if not Path(model).is_file():
            raise LmlabError(f"{model} does not exist; give an n-gram model file (.arpa, .npz).")
        model = load_ngram(model)
    if model.scheme.name != "word":
        raise LmlabError(f"pyctcdecode scores whole words; this n-gram model is over {model.scheme.name} tokens. "
                         "Train one with `lmlab ngram train --tokenizer word`.")
    if unigrams is None:
        unigrams = [w for w in model.vocab.words if w not in SPECIALS]
    return _language_model_class(lm)(model, unigrams, float(alpha), float(beta), float(unk_score_offset),
                                     bool(score_boundary))


_CLASS = None


def _language_model_class(lm):
    """pyctcdecode's LanguageModel with the kenlm calls done by an lmlab n-gram (built once, on first use)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from ..models.ngram.step import Stepper

    class NGramLanguageModel(lm.LanguageModel):
        """pyctcdecode.LanguageModel over an lmlab NGramLM (see the module docstring)."""

        def __init__(self, model, unigrams, alpha, beta, unk_score_offset, score_boundary):
            super().__init__(_ModelView(model), unigrams, alpha=alpha, beta=beta,
                             unk_score_offset=unk_score_offset, score_boundary=score_boundary)
            self.ngram = model
            self._stepper = Stepper(model)

        def get_start_state(self) -> tuple:
            return self._stepper.begin_sentence() if self.score_boundary else self._stepper.null_context()

        def _get_raw_end_score(self, start_state: tuple) -> float:
            return self._stepper.end_score(start_state) if self.score_boundary else 0.0

        def score(self, prev_state: tuple, word: str, is_last_word: bool = False) -> tuple[float, tuple]:
            """As LanguageModel.score: kenlm's BaseScore, the unk offset, the end of sentence, alpha and beta."""
            lm_score, end_state = self._stepper.step(prev_state, self._stepper.word_id(word))
            if len(self._unigram_set) > 0 and word not in self._unigram_set or word not in self._kenlm_model:
                lm_score += self.unk_score_offset
            if is_last_word:
                lm_score = lm_score + self._get_raw_end_score(end_state)
            lm_score = self.alpha * lm_score * lm.LOG_BASE_CHANGE_FACTOR + self.beta
            return lm_score, end_state

        def save_to_dir(self, filepath: str, unigram_encoding=None) -> None:
            raise LmlabError("a decoder with an lmlab n-gram cannot be saved with save_to_dir; keep the model file "
                             "and build the language model again with lmlab.integrations.pyctcdecode.language_model.")

    _CLASS = NGramLanguageModel
    return _CLASS
