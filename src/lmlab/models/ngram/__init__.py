"""N-gram language models like KenLM's lmplz: counting, smoothing (modified Kneser-Ney, Witten-Bell, add-k), ARPA.

The builder is a chain of passes, one module each, laid out like lmplz's lm/builder (each module's header says
what it reads and what it writes; the lmplz stage is in brackets):

    corpus.py    text -> Vocab + word ids per line -> the sentence stream <s> w1 .. wk </s>  [corpus_count]
    count.py     the stream -> the unique n-grams of every order, with raw counts             [corpus_count]
    discount.py  raw counts -> adjusted (continuation) counts, MKN discounts D1 D2 D3+        [adjust_counts]
    estimate.py  counts -> log10 probabilities and backoffs (MKN, Witten-Bell, add-k)         [initial_probabilities,
                                                                                               interpolate]
    prune.py     --prune / --limit-vocab-file: keep masks, then the tables renumbered
    entropy_prune.py  a trained model -> a smaller one: Stolcke's entropy pruning (`ngram prune`) [SRILM -prune]
    arpa.py      tables <-> ARPA text                                                         [output]
    binary.py    tables <-> .lmbin (memory-mapped; compiled queries, query_kernels.cpp)       [build_binary]
    bounded.py   the same passes out of core (`ngram train --memory`, spill/merge in external.py) [lmplz -S / -T]

The query side: tables.py (the sorted tables and their lookups), model.py (NGramLM; NGramLM.train runs the
passes), vocab.py (Vocab, NGramTokenizer), sample.py (sentences drawn from a model), tokens.py (a model seen
through a run's tokenizer: a speculative-decoding draft), verbs.py (`lmlab ngram train` / `query` as library
calls). Text is cut into words by a token scheme of lmlab.splitting. Everything is NumPy (scoring also in a compiled
kernel, binary.py, with the NumPy path as its fallback); torch is imported only by the causal-LM calls.
"""
from ...splitting import SPACE_SYMBOL
from .arpa import tokenizer_file
from .count import Counts, count_ngrams, unique_groups
from .discount import FALLBACK_DISCOUNTS, adjusted_counts, mkn_discounts
from .entropy_prune import entropy_prune
from .estimate import SMOOTHINGS
from .model import NGramLM
from .tables import LN10, NGramTables
from .tokens import NGramOverTokens
from .verbs import load_ngram, query_report, train_file
from .vocab import BOS, BOS_ID, EOS, EOS_ID, SPECIALS, UNK, UNK_ID, NGramTokenizer, Vocab

__all__ = [
    "BOS", "BOS_ID", "Counts", "EOS", "EOS_ID", "FALLBACK_DISCOUNTS", "LN10", "NGramLM", "NGramOverTokens",
    "NGramTables", "NGramTokenizer", "SMOOTHINGS", "SPACE_SYMBOL", "SPECIALS", "UNK", "UNK_ID", "Vocab",
    "adjusted_counts", "count_ngrams", "entropy_prune", "load_ngram", "mkn_discounts", "query_report",
    "tokenizer_file", "train_file", "unique_groups",
]
