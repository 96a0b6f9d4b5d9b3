"""The `lmlab` command: a table of verbs, each one call into the library function that does it.

VERBS maps a verb (a dict of them for `lmlab ngram train`-style verbs) to a `Verb`: its help, the function it calls
("module:function" under lmlab, imported only when run, so `lmlab --help` stays fast), its options (argparse's own
arguments) and the shared option groups it takes (device, generation settings, labelled-data columns, denoising
noise). No option has a default here (argparse.SUPPRESS): the function's signature holds the defaults, and an option
not given is not passed. A verb that takes config overrides (--model.n_layer 4) gets them as `overrides`.
User mistakes raise LmlabError anywhere below; main() prints it as one sentence and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field

from .errors import LmlabError


def opt(*flags, **kwargs) -> tuple:
    """One argparse argument: opt("--max-tokens", type=int, help=...)."""
    return flags, kwargs


@dataclass
class Group:
    """Options several verbs share. `into`: the keyword they are passed as together (e.g. "cfg"), built by `make`
    from the values given (plus `defaults`); without `into` each option is its own keyword."""
    options: dict[str, tuple]  # keyword -> opt(...)
    into: str | None = None
    make: str | None = None  # "module:callable" building the combined value
    defaults: dict = field(default_factory=dict)

    def pick(self, *names: str, **defaults) -> "Group":
        return Group({n: self.options[n] for n in names}, self.into, self.make, defaults)


DEVICE = Group({"device": opt("--device", help="cpu, cuda, cuda:N or auto")})
QUIET = Group({"quiet": opt("--quiet", action="store_true", help="no progress bar")})
COLUMNS = Group({
    "text_column": opt("--text-column", help="text column of a TSV/CSV (default text)"),
    "label_column": opt("--label-column", help="label column of a TSV/CSV (default label)"),
    "encoding": opt("--encoding", help="text encoding of the files (default utf-8; e.g. cp1252)")})
NOISE = Group({
    "mask_ratio": opt("--mask-ratio", type=float, help="share of tokens masked in spans, one <mask> per span (0.3)"),
    "poisson_lambda": opt("--poisson-lambda", type=float, help="mean span length (3)"),
    "delete": opt("--delete", type=float, help="token deletion probability (0.1)"),
    "shuffle_window": opt("--shuffle-window", type=float,
                          help="local shuffle: tokens move by less than this many places (3; 0 = off)")}, into="noise")
# GenerationConfig's fields (lmlab.generate, Hugging Face's names); a verb picks the ones it takes.
GENERATION = Group({
    "max_new_tokens": opt("--max-new-tokens", type=int, help="new tokens at most (default 200; seq2seq: at most "
                                                             "block_size)"),
    "max_length": opt("--max-length", type=int, help="limit on prompt + new tokens"),
    "temperature": opt("--temperature", type=float, help="0 = greedy"),
    "top_k": opt("--top-k", type=int), "top_p": opt("--top-p", type=float), "min_p": opt("--min-p", type=float),
    "repetition_penalty": opt("--repetition-penalty", type=float),
    "no_repeat_ngram_size": opt("--no-repeat-ngram-size", type=int),
    "bad_words": opt("--bad-words", nargs="+", metavar="WORD", help="texts never to produce"),
    "stop": opt("--stop", nargs="+", metavar="TEXT", help="end where one of these strings begins"),
    "num_beams": opt("--num-beams", type=int, help="> 1: beam search (1 = greedy or sampling)"),
    "length_penalty": opt("--length-penalty", type=float, help="beam score = sum log p / length ** this"),
    "early_stopping": opt("--early-stopping", action="store_true"),
    "num_return_sequences": opt("--num-return-sequences", type=int), "seed": opt("--seed", type=int),
    "num_draft_tokens": opt("--num-draft-tokens", type=int, help="tokens the draft proposes per verification")},
    into="cfg", make="generate:GenerationConfig")
RUN = {  # starting, continuing or fine-tuning a run from a config
    "config": opt("--config", help="YAML config file (see configs/)"),
    "out": opt("--out", help="run directory (default: runs/<config name>)"),
    "resume": opt("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"),
    "init": opt("--init", metavar="RUN_DIR", help="fine-tune: a new run starting from this run's weights and "
                "architecture (e.g. one made by lmlab convert); prepare its data with --tokenizer RUN_DIR")}
DTYPE = opt("--dtype", choices=["fp32", "fp16", "bf16", "int8"], help="the weights' precision for decoding (fp16 "
            "or int8 Linear weights read by the CPU kernels, activations in fp32; or bf16 throughout): faster, "
            "logits no longer exact")
CHAT_TEMPLATE = opt("--chat-template", metavar="FILE.jinja", help="a Jinja chat template to use instead of the "
                    "model's own (as in Hugging Face's tokenizer_config.json)")
TRUNCATE_HISTORY = opt("--truncate-history", action="store_true", help="a conversation longer than the context loses "
                       "its oldest turns (default: refused)")
CONTEXT = opt("--context", type=int, metavar="N", help="windowed models (GPT, Llama) score with windows of at most "
              "N tokens (default: block_size; a model of a long context costs T^2 per window)")
NPROC = opt("--nproc", type=int, metavar="N", help="train with N processes on this machine (torchrun --standalone; "
            "one per GPU, gloo on CPU); pick DDP or FSDP with --train.strategy")


@dataclass
class Verb:
    help: str
    call: str  # "module:function" under lmlab
    options: dict[str, tuple] = field(default_factory=dict)  # keyword -> opt(...)
    groups: tuple = ()
    overrides: bool = False  # takes --model.X / --data.X / --train.X
    fixed: dict = field(default_factory=dict)  # keywords always passed
    description: str | None = None


VERBS = {
    "prepare": Verb("tokenize a text file or directory into train.bin / val.bin", "data:prepare_command", {
        "source": opt("source", help="text file or directory"),
        "tokenizer": opt("--tokenizer", metavar="char|byte|word|jieba|bpe|char-bpe|TOKENIZER", help="word: "
                         "whitespace-separated words + newline, unseen words -> <unk>; jieba: Chinese words cut by "
                         "jieba (rjieba); bpe: byte-level BPE; char-bpe: BPE over characters, no byte pieces; or an "
                         "existing tokenizer.json / run directory to reuse"),
        "vocab_size": opt("--vocab-size", type=int, help="BPE vocabulary size (e.g. 4096); word, jieba: an optional "
                          "maximum; char: keep the N-1 most frequent characters, U+FFFD for the rest"),
        "encoding": opt("--encoding", help="text encoding of the files (default utf-8; gb18030 for GBK Chinese)"),
        "val_fraction": opt("--val-fraction", type=float, help="last fraction of the text kept for validation"),
        "out": opt("--out", required=True, help="output directory"),
        "workers": opt("--workers", type=int, metavar="N", help="processes reading and encoding the text (same output)"),
    }, (QUIET,)),
    "train": Verb("train a model from a YAML config", "train:train_command", {**RUN, "nproc": NPROC}, (QUIET,),
                  overrides=True, description="Train a model from a YAML config. Any config field can be overridden "
                                              "with a dotted flag, e.g. --model.n_layer 4 --train.max_iters 2000."),
    "eval": Verb("perplexity and bits per token/char/byte of a model on a text; BLEU / chrF / ROUGE of a seq2seq run",
                 "evaluate:eval_command", {
                     "run": opt("run", help="run directory, or an n-gram model (.arpa / .npz / .lmbin)"),
                     "data": opt("--data", required=True, help="a text file, or a val.bin/train.bin of lmlab prepare"),
                     "stride": opt("--stride", type=int, help="sliding-window stride (default block_size/2)"),
                     "context": CONTEXT,
                     "refs": opt("--refs", help="seq2seq: reference file, one line per line of --data"),
                     "metric": opt("--metric", help="seq2seq: bleu (default), chrf or rouge"),
                     "hyps": opt("--hyps", help="seq2seq: also write the model's output lines to this file"),
                     "json_output": opt("--json", action="store_true", help="print the result as JSON")},
                 (GENERATION.pick("num_beams", "length_penalty", "max_new_tokens", temperature=0.0), DEVICE)),
    "generate": Verb("sample text from a model, streamed as it is produced", "generate:generate_command", {
        "run": opt("run", help="run directory or n-gram model"),
        "prompt": opt("--prompt", help="text to continue (default: a newline)"),
        "draft": opt("--draft", metavar="RUN_OR_ARPA", help="speculative decoding: a draft model (an n-gram, or a "
                     "smaller run with the same tokenizer); the output distribution stays the model's"),
        "stream_output": opt("--stream", action=argparse.BooleanOptionalAction,
                             help="print tokens as they come (default) or each sequence when it is done"),
        "logprobs": opt("--logprobs", action="store_true", help="after each sequence, its tokens and log-probabilities"),
        "dtype": DTYPE,
    }, (GENERATION, DEVICE)),
    "chat": Verb("talk to a model through its chat template: interactive on a terminal, or answer stdin once",
                 "chat:chat_command", {
        "run": opt("run", help="run directory of a model with a chat template (e.g. one lmlab convert made)"),
        "system": opt("--system", metavar="TEXT", help="the system message"),
        "messages": opt("--messages", metavar="FILE", help="continue a saved conversation (JSON messages)"),
        "chat_template": CHAT_TEMPLATE, "truncate_history": TRUNCATE_HISTORY,
        "save": opt("--save", metavar="FILE", help="write the conversation (JSON messages) here at the end"),
        "dtype": DTYPE,
    }, (GENERATION.pick("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                        "no_repeat_ngram_size", "bad_words", "stop", "num_beams", "length_penalty", "seed"), DEVICE)),
    "finetune": Verb("supervised fine-tuning of a run on chat / instruction examples, the loss on the answers",
                     "tasks.finetune:finetune_command", {
        "run": opt("run", help="the run to start from (e.g. one lmlab convert made); with --resume, the one to continue"),
        "data": opt("--data", help="training examples: chat JSONL ({'messages': [...]}), prompt/completion JSONL "
                    "or Alpaca JSON/JSONL"),
        "val": opt("--val", help="validation examples (default: 5%% of --data held out)"),
        "fmt": opt("--format", choices=["chat", "prompt-completion", "alpaca"], help="(default: detected)"),
        "out": opt("--out", help="the new run directory"),
        "resume": opt("--resume", action="store_true", help="continue the fine-tuning run RUN from its checkpoint"),
        "chat_template": CHAT_TEMPLATE,
        "train_on_prompt": opt("--train-on-prompt", action="store_true", help="the loss on every token, not only "
                               "the answers"),
        "full": opt("--full", action="store_true", help="train every weight instead of LoRA adapters"),
        "pack": opt("--pack", action="store_true", help="pack several examples per row (attention and loss stay "
                    "within each example)"),
        "gradient_checkpointing": opt("--gradient-checkpointing", action="store_true", help="recompute each block's "
                                      "activations in the backward pass instead of keeping them (less memory)"),
        "nproc": NPROC,
        "lora_rank": opt("--lora-rank", type=int, help="LoRA rank (default 8)"),
        "lora_alpha": opt("--lora-alpha", type=float, help="LoRA alpha: the update is scaled by alpha / rank (16)"),
        "lora_dropout": opt("--lora-dropout", type=float, help="dropout on the adapters' input (0.05)"),
        "lora_targets": opt("--lora-targets", metavar="q,k,v,...", help="the Linear layers that get adapters "
                            "(default q,k,v,o,gate,up,down)"),
        "lora_base_dtype": opt("--lora-base-dtype", choices=["fp32", "bf16", "fp16", "int8"],
                               help="hold the frozen base weights in this precision (QLoRA-style; default fp32)"),
    }, (QUIET,), overrides=True),
    "merge": Verb("fold a LoRA adapter (PEFT's files) into a run's weights, as a new plain run", "lora:merge_command", {
        "run": opt("run", help="the base run the adapter was trained on"),
        "adapter": opt("--adapter", required=True, metavar="DIR", help="adapter_config.json + adapter_model.safetensors"
                       " (a LoRA run of lmlab finetune, or peft's save_pretrained)"),
        "out": opt("--out", required=True, help="the merged run to write")}),
    "compare": Verb("several models (any family, any tokenizer) on one text, in bits per byte", "compare:compare_command", {
        "models": opt("models", nargs="+", metavar="RUN_OR_ARPA", help="run directories and/or n-gram model files"),
        "data": opt("--data", required=True, help="the text file every model is scored on"),
        "out": opt("--out", help="directory for compare.csv, compare.png (default: here)"),
        "plot_curves": opt("--plot-curves", action="store_true", help="also the runs' validation curves (curves.png)"),
        "interpolate": opt("--interpolate", nargs=2, metavar=("A", "B"), help="mix two models with the same tokens: "
                           "weight tuned on the first half of the text, bits per byte on the second half"),
        "context": CONTEXT,
    }, (DEVICE,)),
    "rescore": Verb("re-rank n-best lists with n-gram / neural / mixed language models, weights tuned on a dev "
                    "list", "rescore:rescore_command", {
        "nbest": opt("nbest", metavar="NBEST", help="n-best TSV: id <TAB> hypothesis <TAB> score [<TAB> score ...] "
                     "(what `seq2seq translate --n-best K` writes)"),
        "lm": opt("--lm", action="append", required=True, metavar="MODEL", help="an n-gram file or a run of any "
                  "causal family (repeat for a mixture)"),
        "weights": opt("--weights", nargs="+", type=float, metavar="W", help="mixture weights of the --lm models"),
        "mix": opt("--mix", metavar="auto|linear|log-linear", help="how several LMs combine (default auto: linear "
                   "per token when they split text into the same tokens, else log-linear per sentence)"),
        "score_weights": opt("--score-weights", nargs="+", type=float, metavar="W", help="weights of the n-best "
                             "file's score columns (default 1 each)"),
        "lm_weight": opt("--lm-weight", type=float, metavar="LAMBDA", help="fixed LM weight (default: tuned with "
                         "--dev, else 0.5)"),
        "length_bonus": opt("--length-bonus", type=float, metavar="BETA", help="fixed per-word bonus (default: "
                            "tuned with --dev, else 0)"),
        "dev": opt("--dev", metavar="DEV_NBEST", help="n-best list to tune lambda and beta on (with --refs)"),
        "refs": opt("--refs", metavar="DEV_REFS", help="references of --dev, one line per id"),
        "test_refs": opt("--test-refs", metavar="REFS", help="references of NBEST: the metric before and after"),
        "metric": opt("--metric", help="bleu (default), chrf, wer or cer"),
        "out": opt("--out", help="write the 1-best lines here (default stdout)"),
        "context": CONTEXT,
    }, (DEVICE,)),
    "ngram": {
        "train": Verb("count and estimate an n-gram model (lmplz)", "models.ngram.verbs:train_command", {
            "order": opt("-o", "--order", type=int), "data": opt("--data", required=True, help="training text"),
            "out": opt("--out", required=True, help="model file: .arpa (KenLM/SRILM readable), .lmbin (memory-mapped, "
                         "fast queries) or .npz"),
            "tokenizer": opt("--tokenizer", metavar="word|char|jieba|TOKENIZER", help="word (as lmplz), char, "
                             "jieba (Chinese words), or a run's tokenizer.json / run directory: n-grams of its token "
                             "ids, to mix with that run"),
            "smoothing": opt("--smoothing", choices=["mkn", "add-k", "witten-bell"]),
            "k": opt("-k", type=float, help="k for add-k smoothing"),
            "discount_fallback": opt("--discount-fallback", nargs="*", type=float, metavar="D", help="when the "
                                     "closed-form discounts fail, use these (default 0.5 1 1.5), like lmplz"),
            "skip_symbols": opt("--skip-symbols", action="store_true", help="treat <s>, </s>, <unk> as spaces"),
            "prune": opt("--prune", nargs="+", type=int, metavar="N", help="drop n-grams seen at most N times, one "
                         "threshold per order, e.g. 0 0 1 (lmplz --prune)"),
            "limit_vocab_file": opt("--limit-vocab-file", metavar="F", help="keep only n-grams of these words"),
            "encoding": opt("--encoding", help="encoding of the training text"),
            "memory": opt("--memory", metavar="SIZE", help="count out of core, sorting blocks of this much memory, "
                          "e.g. 4G, 500M or 80%% (lmplz -S); the same model (docs/ngram.md: what stays in memory)"),
            "temp_dir": opt("--temp-dir", metavar="DIR", help="with --memory: where the sorted runs are spilled "
                            "(default the system's temp dir; lmplz -T); removed after the build"),
            "workers": opt("--workers", type=int, metavar="N", help="with --memory: tokenise and count in N "
                           "processes")}, (QUIET,)),
        "query": Verb("score text from stdin (or --data) like KenLM's query", "models.ngram.verbs:query_command", {
            "model": opt("model", help=".arpa, .npz or .lmbin model"),
            "data": opt("--data", help="text file to score instead of stdin"),
            "summary": opt("--summary", action="store_true", help="print only the totals"),
            "verify": opt("--verify", action="store_true", help=".lmbin: check the whole file's checksum first "
                          "(loading checks only the header)")}),
        "build-binary": Verb("an ARPA (or .npz) model as an .lmbin file: memory-mapped, loads in milliseconds, "
                             "compiled queries (KenLM's build_binary)", "models.ngram.verbs:build_binary_command", {
            "model": opt("model", help=".arpa (read streaming) or .npz model"),
            "out": opt("out", help="the .lmbin file to write"),
            "tokenizer": opt("--tokenizer", metavar="word|char|jieba|TOKENIZER", help="the model's token scheme, "
                             "if not the one noted beside / inside it")}),
        "prune": Verb("entropy-prune a trained model (Stolcke 1998, SRILM's ngram -prune)",
                      "models.ngram.entropy_prune:prune_command", {
            "model": opt("model", help=".arpa, .npz or .lmbin model to prune"),
            "threshold": opt("--threshold", type=float, required=True, help="drop n-grams whose removal raises the "
                             "perplexity by less than this relative amount, e.g. 1e-8 (SRILM -prune)"),
            "out": opt("--out", required=True, help="pruned model: .arpa, .npz or .lmbin (by suffix)"),
            "minprune": opt("--minprune", type=int, metavar="N", help="prune only n-grams of order N and above "
                            "(default 2; SRILM -minprune)"),
            "history_lm": opt("--history-lm", metavar="MODEL", help="take the context probabilities P(h) from this "
                              "model (e.g. a Witten-Bell one of order N-1; SRILM -prune-history-lm), not the pruned "
                              "one: better for Kneser-Ney models")}),
    },
    "convert": Verb("import / export Hugging Face GPT-2 and Llama / Qwen2 / Mistral checkpoints; import BERT ones "
                    "and GGUF files", "convert:convert_command", {
        "source": opt("source", help="Hugging Face directory or .gguf file (with --from), or lmlab run directory "
                      "(with --to)"),
        "from_format": opt("--from", metavar="FORMAT", help="import: hf-gpt2, hf-bert, hf-llama or gguf"),
        "to": opt("--to", nargs="+", metavar=("FORMAT", "DIR"), help="export: hf-gpt2 or hf-llama and the output "
                  "directory"),
        "out": opt("--out", help="output directory (a run for --from; the HF directory for --to)"),
        "chat_template": CHAT_TEMPLATE}),
    "classify": {
        "train": Verb("train a classifier into a run directory", "tasks.classify:train_command", {
            "train": opt("--train", help="training data: TSV/CSV file or one-file-per-label directory"),
            "val": opt("--val", help="validation data (default: hold out --val-fraction of --train)"),
            "model": opt("--model", choices=["encoder", "lstm", "gpt"]),
            "init": opt("--init", metavar="RUN_OR_HF_DIR", help="an lmlab run (encoder or GPT) or a HF BERT dir"),
            "out": opt("--out", help="run directory to write"), "resume": RUN["resume"], "nproc": NPROC,
            "val_fraction": opt("--val-fraction", type=float, help="held out of --train when --val is not given"),
            "split_seed": opt("--split-seed", type=int, help="seed of that held-out split"),
            "max_length": opt("--max-length", type=int, help="tokens per text at most (longer texts are cut)"),
            "epochs": opt("--epochs", type=int, help="passes over the training texts (default per model)"),
            "batch_size": opt("--batch-size", type=int), "lr": opt("--lr", type=float, help="peak learning rate"),
            "seed": opt("--seed", type=int),
            "pooling": opt("--pooling", help="encoder: cls or mean; lstm: max, mean or last; gpt: last, mean or max"),
            "pooler": opt("--pooler", action=argparse.BooleanOptionalAction, help="encoder: BERT's pooler"),
            "bidirectional": opt("--bidirectional", action=argparse.BooleanOptionalAction, help="lstm (default on)"),
            "lm_loss_weight": opt("--lm-loss-weight", type=float, help="gpt: auxiliary LM loss weight (GPT-1: 0.5)"),
            "label_lms": opt("--label-lms", action="store_true", help="gpt: one fine-tuned LM per label, its "
                             "log P(text | label) added to the head's logits (weights fitted on validation)"),
            "dropout": opt("--dropout", type=float),
            "vocab_size": opt("--vocab-size", type=int, help="vocabulary of a tokenizer built from --train"),
            "tokenizer": opt("--tokenizer", choices=["word", "char", "jieba"], help="lstm: the tokens it reads "
                             "(default word; char or jieba for Chinese)"),
            "group_by_length": opt("--group-by-length", action=argparse.BooleanOptionalAction,
                                   help="batch texts of similar length together (default on)"),
        }, (COLUMNS, DEVICE, QUIET), overrides=True),
        "eval": Verb("accuracy, per-class and macro precision / recall / F1, confusion matrix",
                     "tasks.classify:eval_command", {
                         "run": opt("run", help="classifier run directory"),
                         "data": opt("--data", required=True, help="labelled texts: TSV/CSV or one file per label"),
                         "png": opt("--png", help="where to draw the confusion matrix (default RUN/confusion.png)"),
                         "json_output": opt("--json", action="store_true", help="print the result as JSON")},
                     (COLUMNS, DEVICE)),
        "predict": Verb("the label and class probabilities of each text", "tasks.classify:predict_command", {
            "run": opt("run", help="classifier run directory"),
            "texts": opt("texts", nargs="+", metavar="TEXT", help="texts to classify ('-': one per line of stdin)"),
            "json_output": opt("--json", action="store_true", help="print JSON lines")}, (DEVICE,)),
        "split": Verb("a fixed seeded train / test split of labelled texts as two TSV files", "tasks.labeled:split_command", {
            "source": opt("source", help="TSV/CSV file or one-file-per-label directory"),
            "out": opt("--out", required=True, help="directory for train.tsv and test.tsv"),
            "fraction": opt("--fraction", type=float, help="share of the texts in test.tsv (default 0.1)"),
            "seed": opt("--seed", type=int)}, (COLUMNS,)),
    },
    "seq2seq": {
        "prepare": Verb("tokenize parallel files (or monolingual text, --text) into a data dir",
                        "tasks.pairs:prepare_command", {
                            "src": opt("--src", help="source-language file, one sentence per line"),
                            "tgt": opt("--tgt", help="target-language file, aligned with --src"),
                            "val_src": opt("--val-src", help="validation source file (default: hold out a share)"),
                            "val_tgt": opt("--val-tgt", help="validation target file"),
                            "text": opt("--text", help="instead of pairs: monolingual lines for denoising"),
                            "val_text": opt("--val-text", help="validation lines for --text"),
                            "vocab_size": opt("--vocab-size", type=int, help="size of the shared BPE vocabulary"),
                            "tokenizer": opt("--tokenizer", help="reuse the vocabulary of a prepared dir or run"),
                            "val_fraction": opt("--val-fraction", type=float),
                            "out": opt("--out", required=True, help="output directory")}, (NOISE,)),
        "train": Verb("train (or fine-tune with --init, or resume) a seq2seq model", "train:train_command", RUN, (QUIET,),
                      overrides=True, fixed={"family": "seq2seq"}),
        "translate": Verb("decode input lines (a file or stdin) to stdout, one line per line",
                          "tasks.translate:translate_command", {
                              "run": opt("run", help="seq2seq run directory"),
                              "input": opt("--input", help="input file (default '-': stdin)"),
                              "batch_size": opt("--batch-size", type=int, help="sources decoded together (64)"),
                              "n_best": opt("--n-best", type=int, metavar="K", help="write the K best beam "
                                            "hypotheses per line with their log p, as lmlab rescore's TSV "
                                            "(needs --num-beams K or more)"),
                              "out": opt("--out", help="write the output to this file (atomically) instead of "
                                         "stdout")},
                          (GENERATION.pick("num_beams", "length_penalty", "max_new_tokens", "temperature", "top_k",
                                           "top_p", "seed", temperature=0.0), DEVICE)),
        "pretrain": Verb("denoising-autoencoder pretraining on monolingual text", "tasks.translate:pretrain_command", {
            "text": opt("--text", required=True, help="monolingual text, one sentence per line"),
            "val_text": opt("--val-text", help="validation lines (default: hold out --val-fraction)"),
            "tokenizer": opt("--tokenizer", help="the vocabulary to use: the parallel data's prepared directory"),
            "vocab_size": opt("--vocab-size", type=int, help="build a new vocabulary from --text instead"),
            "val_fraction": opt("--val-fraction", type=float),
            "config": opt("--config", required=True, help="YAML config: its model and train sections are used"),
            "out": opt("--out", required=True, help="run directory; the prepared text goes to OUT/data")},
            (NOISE, QUIET), overrides=True),
    },
    "serve": Verb("serve models over an OpenAI-compatible HTTP API, with a browser playground", "serve:serve", {
        "specs": opt("models", nargs="+", metavar="RUN_OR_ARPA", help="run directories or n-gram files, PATH or NAME=PATH"),
        "host": opt("--host", help="address to bind (default 127.0.0.1; any other needs --api-key)"),
        "port": opt("--port", type=int, help="(default 8000)"),
        "api_key": opt("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /metrics (or LMLAB_API_KEY)"),
        "max_batch": opt("--max-batch", type=int, help="sequences decoded together per model (32)"),
        "max_tokens": opt("--max-tokens", type=int, help="cap on a request's max_tokens (512)"),
        "max_body_bytes": opt("--max-body-bytes", type=int, help="cap on a request body (1 MiB)"),
        "timeout": opt("--timeout", type=float, help="seconds a request may take, queueing included (120)"),
        "max_queue": opt("--max-queue", type=int, help="requests waiting for room before new ones get 503 (256)"),
        "log_level": opt("--log-level", choices=["critical", "error", "warning", "info", "debug"]),
        "chat_template": opt("--chat-template", action="append", metavar="[NAME=]FILE.jinja", help="a Jinja chat "
                             "template for every model, or for model NAME, instead of its own (repeatable)"),
        "truncate_history": TRUNCATE_HISTORY,
        "dtype": DTYPE}, (DEVICE,)),
    "demo": Verb("prepare Tiny Shakespeare, train a small GPT (~2-3 min), evaluate, sample", "demo:run_demo", {
        "out": opt("--out", help="where the demo writes its data and run (default runs/demo)"),
        "zh": opt("--zh", action="store_true", help="the demo on People's Daily 1998 (Chinese characters), in "
                  "Chinese"),
        "max_iters": opt("--max-iters", type=int)}),
}
TOPICS = {"ngram": "n-gram LMs like KenLM: train (lmplz) an ARPA file, build-binary it, query it",
          "classify": "text classification: train / eval / predict an encoder, LSTM or GPT classifier",
          "seq2seq": "encoder-decoder Transformer: prepare pairs, train, translate, pretrain"}


def _add(sub, name: str, verb: Verb) -> None:
    p = sub.add_parser(name, help=verb.help, description=verb.description or verb.help[0].upper() + verb.help[1:] + ".",
                       argument_default=argparse.SUPPRESS)
    for keyword, (flags, kwargs) in [*verb.options.items(), *(o for g in verb.groups for o in g.options.items())]:
        if flags[0].startswith("-"):
            p.add_argument(*flags, dest=keyword, **kwargs)
        else:  # a positional argument: its keyword is its name, shown as written
            p.add_argument(keyword, **{"metavar": flags[0], **kwargs})
    p.set_defaults(_verb=verb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Build, train, evaluate and sample language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, entry in VERBS.items():
        if isinstance(entry, Verb):
            _add(sub, name, entry)
            continue
        topic = sub.add_parser(name, help=TOPICS[name], description=TOPICS[name] + ".")
        verbs = topic.add_subparsers(dest="verb", metavar="VERB", required=True)
        for verb_name, verb in entry.items():
            _add(verbs, verb_name, verb)
    return parser


def _call(verb: Verb, values: dict) -> None:
    """Gather each group's values into its keyword, then call the verb's function."""
    kwargs = {**verb.fixed}
    for group in verb.groups:
        given = {k: values.pop(k) for k in list(values) if k in group.options}
        if group.into is None:
            kwargs.update(given)
        elif given or group.make:
            kwargs[group.into] = _load(group.make)(**group.defaults, **given) if group.make else given
    _load(verb.call)(**kwargs, **values)


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"lmlab.{module}"), name)


def main(argv: list[str] | None = None) -> int:
    from .config import parse_overrides

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("command", "verb", "_verb")}
    verb: Verb = args._verb
    try:
        if extra and not verb.overrides:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if verb.overrides:
            values["overrides"] = parse_overrides(extra) if extra else {}
        _call(verb, values)
    except LmlabError as e:
        print(f"lmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmlab generate ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a path given by the user that cannot be created, read or written (e.g. --out is a file)
        where = f": {e.filename}" if e.filename else ""
        print(f"lmlab {args.command}: error: {e.strerror or e}{where}; check the paths given.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
