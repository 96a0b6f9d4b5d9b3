"""lmlab.integrations.pyctcdecode: pyctcdecode's CTC beam search with an lmlab n-gram gives the same beams (texts
and scores) as with the kenlm module on the same ARPA file, on CTC posteriors synthesised from real sentences
(Multi30k test_2016 captions, a character alphabet, seeded noise); word-by-word steps add up to full_scores."""
from pathlib import Path

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.models.ngram import NGramLM
from lmlab.models.ngram.step import Stepper

pyctcdecode = pytest.importorskip("pyctcdecode", reason="pyctcdecode is not installed (requirements-nodeps.txt)")

M30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
needs_m30k = pytest.mark.skipif(not (M30K / "train.en").is_file(), reason="../shared/data/multi30k is not here")


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    """A word 4-gram of the lowercased English side of Multi30k train (lowercase: a small alphabet)."""
    base = tmp_path_factory.mktemp("ctc")
    text = (M30K / "train.en").read_text(encoding="utf-8").lower()
    path = base / "en4.arpa"
    NGramLM.train(text.splitlines(keepends=True)[:12000], order=4, progress=False).save_arpa(path)
    return path


def sentences(n=6):
    lines = (M30K / "test_2016_flickr.en").read_text(encoding="utf-8").lower().splitlines()
    return [" ".join(line.replace(".", " ").replace(",", " ").split()) for line in lines[:n]]


def ctc_log_probs(text: str, labels: list[str], rng, noise: float = 1.6, peak: float = 3.0) -> np.ndarray:
    """Frames of a CTC output for `text`: each character 1-3 frames, a blank between repeated characters and at
    random elsewhere; logits = Gaussian noise + `peak` at the right label; log-softmaxed."""
    index = {c: i for i, c in enumerate(labels)}
    frames = []
    for i, ch in enumerate(text):
        if (i > 0 and text[i - 1] == ch) or rng.random() < 0.3:
            frames.append(0)  # blank
        frames += [index[ch]] * int(rng.integers(1, 4))
    logits = rng.normal(0.0, noise, (len(frames), len(labels)))
    logits[np.arange(len(frames)), frames] += peak
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@needs_m30k
def test_same_beams_as_pyctcdecode_with_kenlm(arpa):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed")
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel

    from lmlab.integrations.pyctcdecode import language_model

    texts = sentences()
    labels = [""] + sorted(set("".join(texts)) | {" "})
    model = NGramLM.from_arpa(arpa)
    unigrams = [w for w in model.vocab.words if w not in ("<unk>", "<s>", "</s>")]
    rng = np.random.default_rng(7)
    changed = 0
    for boundary in (True, False):
        settings = dict(alpha=0.6, beta=1.2, unk_score_offset=-10.0, score_boundary=boundary)
        ours = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), language_model(model, unigrams=unigrams,
                                                                                    **settings))
        theirs = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels),
                                      LanguageModel(kenlm.Model(str(arpa)), unigrams, **settings))
        plain = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels))
        for text in texts:
            logp = ctc_log_probs(text, labels, rng)
            a, b = ours.decode_beams(logp, beam_width=16), theirs.decode_beams(logp, beam_width=16)
            assert [beam[0] for beam in a] == [beam[0] for beam in b]
            for x, y in zip(a, b):  # kenlm holds float32 probabilities: 1e-6, or 1e-8 relative on long sums
                assert x[3] == pytest.approx(y[3], rel=1e-8, abs=1e-6)
                assert x[4] == pytest.approx(y[4], rel=1e-8, abs=1e-6)
            changed += a[0][0] != plain.decode(logp, beam_width=16)
    assert changed > 0  # the language model changed some outputs: the scores above were really used


@needs_m30k
def test_steps_add_up_to_full_scores(arpa):
    model = NGramLM.from_arpa(arpa)
    stepper = Stepper(model)
    for line in sentences(3) + ["zzqx unknown words here"]:
        words = line.split()
        state, total = stepper.begin_sentence(), 0.0
        for w in words:
            lp, state = stepper.step(state, stepper.word_id(w))
            total += lp
        total += stepper.end_score(state)
        assert total == pytest.approx(model.score(line), abs=1e-9)


def test_missing_model_and_char_model(tmp_path):
    from lmlab.integrations.pyctcdecode import language_model

    with pytest.raises(LmlabError, match="does not exist"):
        language_model(tmp_path / "nope.arpa")
    char = NGramLM.train(["a cat sat\n", "a dog ran\n"], order=2, tokenizer="char", smoothing="add-k", progress=False)
    with pytest.raises(LmlabError, match="whole words"):
        language_model(char)


NO_KENLM = """
import sys
sys.modules["kenlm"] = None  # as if the kenlm module could not be built: `import kenlm` raises ImportError
import numpy as np
from pyctcdecode import Alphabet, BeamSearchDecoderCTC
from lmlab.integrations.pyctcdecode import language_model
from lmlab.models.ngram import NGramLM

lines = open(sys.argv[1], encoding="utf-8").read().lower().splitlines()
lm = NGramLM.train([line + "\\n" for line in lines], order=3, progress=False)
labels = [""] + list(" abcdefghijklmnopqrstuvwxyz")
text, index = "a man in an orange hat", {c: i for i, c in enumerate(labels)}
frames = []
for i, c in enumerate(text):
    frames += ([0] if i and text[i - 1] == c else []) + [index[c]] * 2
rng = np.random.default_rng(0)
logits = rng.normal(0, 1.5, (len(frames), len(labels)))
logits[np.arange(len(frames)), frames] += 3
logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
print(BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), language_model(lm)).decode(logp))
print(BeamSearchDecoderCTC(Alphabet.build_alphabet(labels)).decode(logp))
"""


def test_decodes_without_the_kenlm_module(tmp_path):
    """In a process where `import kenlm` fails, the decoder with an lmlab n-gram still runs and the LM repairs the
    noisy output (without it the same posteriors decode to garbage)."""
    import subprocess
    import sys

    from conftest import ENV, ROOT

    r = subprocess.run([sys.executable, "-c", NO_KENLM, str(ROOT / "data" / "multi30k-mini" / "train.en")],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    with_lm, without = r.stdout.splitlines()
    assert with_lm == "a man in an orange hat" and without != with_lm
