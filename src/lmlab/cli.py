"""The `lmlab` command: one thin function per verb that parses arguments and calls the library.

User mistakes raise LmlabError; main() prints them as one sentence and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LmlabError
from .files import read_text


# --------------------------------------------------------------------------- prepare

def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a text file or directory into train.bin / val.bin",
                       description="Tokenize a text file or a directory of text files into train.bin / val.bin "
                                   "(numpy uint16/uint32), tokenizer.json and meta.json.")
    p.add_argument("source", help="text file or directory")
    p.add_argument("--tokenizer", default="char", metavar="char|byte|word|bpe|TOKENIZER",
                   help="word: whitespace-separated words + newline, unseen words -> <unk>; or an existing "
                        "tokenizer.json / run directory to reuse (e.g. to fine-tune that run with train --init)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="BPE vocabulary size (e.g. 4096); for word, an optional maximum (most frequent words)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text kept for validation")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes reading and encoding the text (same output as 1; memory stays bounded)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    from .data import prepare

    tokenizer = args.tokenizer
    if tokenizer not in ("char", "byte", "word", "bpe"):
        from .tokenizer import load_tokenizer

        if not Path(tokenizer).exists():
            raise LmlabError(f"--tokenizer {tokenizer!r} is neither char, byte, word, bpe nor an existing "
                             "tokenizer.json or run directory.")
        if args.vocab_size is not None:
            raise LmlabError("--vocab-size builds a new tokenizer; leave it out when reusing one with "
                             "--tokenizer PATH.")
        tokenizer = load_tokenizer(tokenizer)
    meta = prepare(args.source, args.out, tokenizer=tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, progress=not args.quiet, workers=args.workers)
    print(f"wrote {args.out}: vocab {meta['vocab_size']}, train {meta['train']['tokens']:,} tokens, "
          f"val {meta['val']['tokens']:,} tokens ({meta['dtype']})")


# --------------------------------------------------------------------------- train

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model from a YAML config. Any config field can be overridden "
                                   "with a dotted flag, e.g. --model.n_layer 4 --train.max_iters 2000.")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--init", metavar="RUN_DIR",
                   help="fine-tune: a new run starting from this run's weights and architecture (e.g. one made by "
                        "lmlab convert); prepare its data with `lmlab prepare --tokenizer RUN_DIR`")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with N processes on this machine: runs `torchrun --standalone --nproc_per_node N "
                        "-m lmlab train ...` (one per GPU; on CPU, gloo); pick DDP or FSDP with --train.strategy")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, accepts_overrides=True)


def _launch_torchrun(args) -> None:
    """Run this `lmlab train` in args.nproc processes through torchrun (lmlab.distributed.launch)."""
    from .config import load_config
    from .distributed import check_nproc, launch
    from .train import resume_config

    check_nproc(args.nproc)
    if args.resume:  # a bad config or run is reported once, here, rather than by every process
        resume_config(args.resume, args.overrides)
    elif not args.config:
        raise LmlabError("lmlab train needs --config FILE (see configs/) or --resume RUN_DIR.")
    elif not args.init:
        load_config(args.config, args.overrides)
    argv = ["train"]
    for flag in ("config", "out", "resume", "init"):
        if getattr(args, flag):
            argv += [f"--{flag}", str(getattr(args, flag))]
    if args.quiet:
        argv.append("--quiet")
    for key, value in args.overrides.items():
        argv += [f"--{key}", str(value)]
    launch(argv, args.nproc)


def cmd_train(args) -> None:
    import os

    from .config import load_config
    from .train import Interrupted, init_config, resume_config, train

    if getattr(args, "nproc", None) not in (None, 1) and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args)
    if args.resume and args.init:
        raise LmlabError("--init starts a new run and --resume continues one; give only one of them.")
    if args.resume:  # train() refuses a corrupt or mismatched checkpoint before the run is touched
        cfg, run_dir = resume_config(args.resume, args.overrides), Path(args.resume)
    else:
        if not args.config:
            raise LmlabError("lmlab train needs --config FILE (see configs/) or --resume RUN_DIR.")
        if args.init:
            cfg = init_config(args.init, args.config, args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.out or Path("runs") / Path(args.config).stem)
    try:
        summary = train(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet, init=args.init)
    except Interrupted as e:  # SIGINT / SIGTERM: the checkpoint is saved; say so and exit with 128 + signal
        if os.environ.get("RANK", "0") == "0":
            print(f"lmlab train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for every process
        print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}, "
              f"{summary['tokens_per_sec']:,.0f} tokens/s; run saved in {run_dir} (loss curve: {run_dir / 'loss.png'})")


# --------------------------------------------------------------------------- eval

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and bits per token/char/byte of a model on a text; "
                                    "BLEU / chrF / ROUGE of a seq2seq run",
                       description="Evaluate a run on a text file or a prepared .bin split. A seq2seq run is "
                                   "scored instead on its output: --data holds the input lines, --refs the "
                                   "reference lines, --metric bleu|chrf (sacrebleu) or rouge (rouge-score).")
    p.add_argument("run", help="run directory, or an n-gram model (.arpa / .npz)")
    p.add_argument("--data", required=True, help="a text file, or a val.bin/train.bin written by lmlab prepare")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default block_size/2)")
    p.add_argument("--refs", help="seq2seq: reference file, one line per line of --data")
    p.add_argument("--metric", default=None, help="seq2seq: bleu (default), chrf or rouge")
    p.add_argument("--num-beams", type=int, default=1, help="seq2seq: beam size (1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="seq2seq beam search: score / length ** this")
    p.add_argument("--max-new-tokens", type=int, default=200, help="seq2seq: longest output (capped at block_size)")
    p.add_argument("--hyps", help="seq2seq: also write the model's output lines to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    from .checkpoint import load
    from .metrics import evaluate_ids, evaluate_text
    from .train import resolve_device

    if args.refs is not None or args.metric is not None:
        return cmd_eval_seq2seq(args)
    from .models.base import require_causal

    model, tokenizer = load(args.run, device=str(resolve_device(args.device)))
    require_causal(model, args.run)
    kwargs = {"stride": args.stride} if args.stride is not None else {}
    path = Path(args.data)
    if path.suffix == ".bin":
        from .data import load_split

        from .checkpoint import is_ngram_file

        if is_ngram_file(args.run):
            raise LmlabError(f"{args.run} is an n-gram model: evaluate it on a text file, not on a .bin split.")
        data_tokenizer = path.parent / "tokenizer.json"
        if data_tokenizer.is_file() and (json.loads(data_tokenizer.read_text(encoding="utf-8"))
                                         != json.loads((Path(args.run) / "tokenizer.json").read_text(encoding="utf-8"))):
            raise LmlabError(f"{path} was prepared with another tokenizer than the one of {args.run}; "
                             "evaluate on a text file instead.")
        result = evaluate_ids(model, tokenizer, load_split(path.parent, path.stem), **kwargs)
    else:
        result = evaluate_text(model, tokenizer, read_text(path), **kwargs)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print(f"{args.run} on {args.data}: {result.tokens:,} tokens, {result.bytes:,} bytes")
    for name in ("cross_entropy", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte"):
        print(f"  {name:<15} {getattr(result, name):.4f}")
    print(f"  {'tokens/s':<15} {result.tokens_per_sec:,.0f}")


def cmd_eval_seq2seq(args) -> None:
    """lmlab eval RUN --data SRC --refs REF --metric bleu|chrf|rouge: decode SRC, score against REF."""
    from .files import atomic_write_text
    from .generate import GenerationConfig
    from .metrics import TEXT_METRICS, text_metric
    from .tasks.pairs import read_lines
    from .tasks.translate import load_seq2seq, translate
    from .train import resolve_device

    metric = (args.metric or "bleu").lower()
    if metric not in TEXT_METRICS:
        raise LmlabError(f"unknown metric {args.metric!r}; use --metric {', '.join(TEXT_METRICS)}.")
    if args.refs is None:
        raise LmlabError("--metric scores a seq2seq run's output against references; give --refs FILE too.")
    sources, refs = read_lines(args.data), read_lines(args.refs)
    if len(sources) != len(refs):
        raise LmlabError(f"{args.data} has {len(sources):,} lines but {args.refs} has {len(refs):,}; give one "
                         "reference line per input line.")
    model, tokenizer = load_seq2seq(args.run, device=str(resolve_device(args.device)))
    cfg = GenerationConfig(temperature=0.0, num_beams=args.num_beams, length_penalty=args.length_penalty,
                           max_new_tokens=args.max_new_tokens)
    cfg.validate()
    hyps = translate(model, tokenizer, sources, cfg, progress=not args.json and sys.stderr.isatty())
    if args.hyps:
        atomic_write_text(args.hyps, "".join(h + "\n" for h in hyps))
    result = text_metric(hyps, refs, metric)
    result.update(run=str(args.run), data=str(args.data), refs=str(args.refs), lines=len(hyps),
                  num_beams=args.num_beams)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    decoding = f"beam {args.num_beams}" if args.num_beams > 1 else "greedy"
    print(f"{args.run} on {args.data} ({len(hyps):,} lines, {decoding}) against {args.refs}:")
    print(f"  {result['text']}")
    print(f"  signature: {result['signature']}")


# --------------------------------------------------------------------------- generate

def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a model, streamed as it is produced",
                       description="Continue a prompt with any model (GPT, RNN, n-gram): greedy, sampling with "
                                   "temperature / top-k / top-p / min-p, or beam search; stop strings, penalties.")
    p.add_argument("run", help="run directory or n-gram model")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--max-length", type=int, default=None, help="limit on prompt + new tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--bad-words", nargs="+", default=[], metavar="WORD", help="texts never to produce")
    p.add_argument("--stop", nargs="+", default=[], metavar="TEXT", help="end where one of these strings begins")
    p.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--early-stopping", action="store_true")
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--draft", metavar="RUN_OR_ARPA", default=None,
                   help="speculative decoding: a draft model (an n-gram, or a smaller run with the same tokenizer) "
                        "proposes tokens the model verifies; the output distribution stays the model's")
    p.add_argument("--num-draft-tokens", type=int, default=4, help="tokens the draft proposes per verification")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print tokens as they come (default) or each sequence when it is done")
    p.add_argument("--logprobs", action="store_true", help="after each sequence, print its tokens and log-probabilities")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                   help="opt-in lower precision for decoding: Linear weights rounded to fp16 (CPU kernels read "
                        "them as fp16), bf16 weights, or int8 dynamically quantized Linear layers (CPU): fewer "
                        "bytes read per token, so faster; the logits are no longer exact")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> None:
    from .checkpoint import load
    from .generate import (GenerationConfig, SpeculativeStats, check_speculative, complete, decoding_model,
                           load_draft, stream)
    from .train import resolve_device

    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens, max_length=args.max_length, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, bad_words=args.bad_words, stop=args.stop,
        num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        num_return_sequences=args.num_return_sequences, seed=args.seed, num_draft_tokens=args.num_draft_tokens)
    cfg.validate()
    if args.draft:
        check_speculative(cfg)
    from .models.base import require_causal

    model, tokenizer = load(args.run, device=str(resolve_device(args.device)))
    require_causal(model, args.run)
    model = decoding_model(model, args.dtype)
    draft = load_draft(args.draft, tokenizer) if args.draft else None
    stats = SpeculativeStats()
    if not tokenizer.encode(args.prompt):  # unknown characters fail here, before the prompt is echoed
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    streaming = args.stream and cfg.num_beams == 1 and not args.logprobs
    completions = None if streaming else complete(model, tokenizer, args.prompt, cfg, draft=draft, stats=stats)
    for i in range(cfg.num_return_sequences):
        if cfg.num_return_sequences > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        sys.stdout.write(args.prompt)
        pieces = (stream(model, tokenizer, args.prompt, cfg, sequence=i, draft=draft, stats=stats) if streaming
                  else [completions[i].text])
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.logprobs:
            c = completions[i]
            for token, lp in zip(c.token_ids, c.logprobs):
                sys.stdout.write(f"{token}\t{tokenizer.decode([token])!r}\t{lp:.4f}\n")
            sys.stdout.write(f"total log p {sum(c.logprobs):.4f} over {len(c.logprobs)} tokens ({c.finish_reason})\n")
    sys.stdout.flush()
    if draft is not None:
        print(f"speculative decoding: accepted {stats.accepted:,} of {stats.drafted:,} draft tokens "
              f"({stats.acceptance_rate:.0%}); {stats.tokens:,} tokens in {stats.target_calls:,} passes of the model",
              file=sys.stderr)


# --------------------------------------------------------------------------- compare

def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="several models (any family, any tokenizer) on one text, in bits per byte",
                       description="Evaluate run directories and n-gram models (.arpa / .npz) on the same raw text: "
                                   "a Markdown table, compare.csv and a bar chart compare.png.")
    p.add_argument("models", nargs="+", metavar="RUN_OR_ARPA", help="run directories and/or n-gram model files")
    p.add_argument("--data", required=True, help="the text file every model is scored on")
    p.add_argument("--out", default=".", help="directory for compare.csv, compare.png (default: here)")
    p.add_argument("--plot-curves", action="store_true",
                   help="also overlay the runs' validation curves, in bits per byte, in curves.png")
    p.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                   help="mix two models with the same tokens: tune the weight on the first half of the text, "
                        "report bits per byte on the second half")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> None:
    from .compare import compare
    from .train import resolve_device

    text = read_text(Path(args.data))
    result = compare(args.models, text, args.out, plot_curves=args.plot_curves,
                     interpolate_pair=tuple(args.interpolate) if args.interpolate else None,
                     device=str(resolve_device(args.device)))
    print(result["table"])
    mix = result.get("interpolation")
    if mix:
        print(f"\ninterpolation on the second half of {args.data} ({mix['tokens']:,} tokens, {mix['bytes']:,} bytes), "
              f"weight tuned on the first half: {mix['weight_a']:.3f} x {mix['a']} + {1 - mix['weight_a']:.3f} x "
              f"{mix['b']}\n  {mix['a']} alone: {mix['bits_per_byte_a']:.4f} bits/byte\n  {mix['b']} alone: "
              f"{mix['bits_per_byte_b']:.4f} bits/byte\n  mix: {mix['bits_per_byte_mix']:.4f} bits/byte")
    for name in result.get("curves_skipped", []):
        print(f"note: no validation curve for {name} (no metrics.csv, or its data dir's meta.json is gone).",
              file=sys.stderr)
    print("\nwrote " + ", ".join(str(f) for f in result["files"]))


# --------------------------------------------------------------------------- ngram

def _add_ngram(sub) -> None:
    p = sub.add_parser("ngram", help="n-gram LMs like KenLM: train (lmplz) an ARPA file, query it",
                       description="Build a modified Kneser-Ney n-gram model (same ARPA as KenLM's lmplz) or score text "
                                   "with an ARPA/.npz model (like KenLM's query).")
    verbs = p.add_subparsers(dest="ngram_command", metavar="VERB")
    verbs.required = True
    t = verbs.add_parser("train", help="count and estimate an n-gram model (lmplz)")
    t.add_argument("-o", "--order", type=int, default=5)
    t.add_argument("--data", required=True, help="training text, one sentence per line")
    t.add_argument("--out", required=True, help="model file: .arpa (KenLM/SRILM readable) or .npz (fast reload)")
    t.add_argument("--tokenizer", default="word", metavar="word|char|TOKENIZER",
                   help="word (blank-separated, as lmplz), char, or a run's tokenizer.json / run directory: n-grams "
                        "of its token ids (saved beside the model as NAME.tokenizer.json), to mix with that run")
    t.add_argument("--smoothing", choices=["mkn", "add-k", "witten-bell"], default="mkn")
    t.add_argument("-k", type=float, default=1.0, help="k for add-k smoothing")
    t.add_argument("--discount-fallback", nargs="*", type=float, metavar="D",
                   help="when the closed-form discounts fail, use these (default 0.5 1 1.5), like lmplz")
    t.add_argument("--skip-symbols", action="store_true", help="treat <s>, </s>, <unk> in the text as spaces")
    t.add_argument("--prune", nargs="+", type=int, metavar="N",
                   help="drop n-grams seen at most N times, one threshold per order, e.g. 0 0 1 (lmplz --prune)")
    t.add_argument("--limit-vocab-file", metavar="F",
                   help="keep only n-grams made of the whitespace-separated words in F (lmplz --limit_vocab_file)")
    t.add_argument("--encoding", default="utf-8", help="encoding of the training text")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_ngram_train)
    q = verbs.add_parser("query", help="score text from stdin (or --data) like KenLM's query")
    q.add_argument("model", help=".arpa or .npz model")
    q.add_argument("--data", help="text file to score instead of stdin")
    q.add_argument("--summary", action="store_true", help="print only the totals")
    q.set_defaults(func=cmd_ngram_query)


def cmd_ngram_train(args) -> None:
    from .models.ngram import train_file

    fallback = None if args.discount_fallback is None else (args.discount_fallback or True)
    print(train_file(args.data, args.out, order=args.order, smoothing=args.smoothing, discount_fallback=fallback,
                     prune=args.prune, limit_vocab=args.limit_vocab_file, progress=not args.quiet,
                     tokenizer=args.tokenizer, skip_symbols=args.skip_symbols, k=args.k, encoding=args.encoding),
          file=sys.stderr)


def cmd_ngram_query(args) -> None:
    from .models.ngram import load_ngram, query_report

    model = load_ngram(args.model)
    text = read_text(Path(args.data)) if args.data else sys.stdin.read()
    for line in query_report(model, text, summary=args.summary):
        sys.stdout.write(line)


# --------------------------------------------------------------------------- convert

CONVERT_FORMATS = ("hf-gpt2", "hf-bert")  # hf-bert: import only


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="import / export Hugging Face GPT-2 checkpoints; import BERT ones",
                       description="lmlab convert --from hf-gpt2 HF_DIR --out RUN reads a Hugging Face GPT-2 "
                                   "directory into an lmlab run; lmlab convert RUN --to hf-gpt2 HF_DIR writes a run "
                                   "that transformers' GPT2LMHeadModel.from_pretrained loads; lmlab convert "
                                   "--from hf-bert HF_DIR --out RUN imports a BERT encoder (BertModel, "
                                   "BertForMaskedLM, ...) to fine-tune with lmlab classify train --init RUN.")
    p.add_argument("source", help="Hugging Face directory (with --from) or lmlab run directory (with --to)")
    p.add_argument("--from", dest="from_format", metavar="FORMAT", help="import: hf-gpt2 or hf-bert")
    p.add_argument("--to", nargs="+", metavar=("FORMAT", "DIR"), help="export: hf-gpt2 and the output directory")
    p.add_argument("--out", help="output directory (a run for --from; the HF directory for --to, if not after it)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> None:
    if bool(args.from_format) == bool(args.to):
        raise LmlabError("lmlab convert needs either --from hf-gpt2 HF_DIR --out RUN or RUN --to hf-gpt2 HF_DIR.")
    fmt = args.from_format or args.to[0]
    if fmt not in CONVERT_FORMATS:
        raise LmlabError(f"unknown format {fmt!r}; lmlab convert knows {', '.join(CONVERT_FORMATS)}.")
    if args.to and len(args.to) > 2:
        raise LmlabError("--to takes a format and one output directory, e.g. --to hf-gpt2 DIR.")
    if args.to and fmt == "hf-bert":
        raise LmlabError("hf-bert is an import format (--from hf-bert); lmlab convert exports GPT-2 only (--to hf-gpt2).")
    out = args.to[1] if args.to and len(args.to) == 2 else args.out
    if not out:
        raise LmlabError("lmlab convert needs an output directory: --out DIR (or --to hf-gpt2 DIR).")
    from .hf import export_hf_gpt2, import_hf_gpt2

    if args.from_format == "hf-bert":
        from .hf import import_hf_bert

        info = import_hf_bert(args.source, out)
        c = info["config"]
        heads = ", ".join(h for h, on in (("pooler", info["pooler"]), ("masked-LM head", info["mlm_head"])) if on)
        print(f"wrote {out}: BERT encoder {c.n_layer}x{c.n_embd}, {c.n_head} heads, {c.block_size} positions, "
              f"vocab {c.vocab_size}, {info['parameters']:,} parameters{', ' + heads if heads else ''}, "
              f"{info['tokenizer']} tokenizer")
        return
    if args.from_format:
        info = import_hf_gpt2(args.source, out)
        c = info["config"]
        eot = f", end-of-text id {info['eot_id']}" if info["eot_id"] is not None else ""
        print(f"wrote {out}: GPT-2 {c.n_layer}x{c.n_embd}, {c.n_head} heads, context {c.block_size}, "
              f"vocab {c.vocab_size}, {info['parameters']:,} parameters, {info['tokenizer']} tokenizer{eot}")
    else:
        info = export_hf_gpt2(args.source, out)
        note = "" if info["hf_tokenizer"] else (f"; its {info['tokenizer']} tokenizer.json is lmlab's format, "
                                                "which Hugging Face tokenizers cannot read")
        print(f"wrote {out}: config.json, model.safetensors, tokenizer.json for GPT2LMHeadModel{note}")


# --------------------------------------------------------------------------- classify

def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="text classification: train / eval / predict an encoder, LSTM or GPT classifier",
                       description="Train a text classifier (BERT-style encoder, LSTM, or GPT + head) on labelled "
                                   "texts with the same Trainer, evaluate it (accuracy, precision / recall / F1, "
                                   "confusion matrix) and classify new texts. Data: a TSV/CSV file with text and "
                                   "label columns, or a directory with one file per label (one text per line).")
    verbs = p.add_subparsers(dest="classify_command", metavar="VERB")
    verbs.required = True

    def data_options(q, defaults: bool = True):
        q.add_argument("--text-column", default="text" if defaults else None, help="text column of a TSV/CSV (default text)")
        q.add_argument("--label-column", default="label" if defaults else None,
                       help="label column of a TSV/CSV (default label)")
        q.add_argument("--encoding", default="utf-8" if defaults else None,
                       help="text encoding of the files (default utf-8; e.g. cp1252)")

    t = verbs.add_parser("train", help="train a classifier into a run directory",
                         description="Train a classifier. Any config field can be overridden with a dotted flag, "
                                     "e.g. --model.n_layer 2 --train.weight_decay 0.")
    t.add_argument("--train", help="training data: TSV/CSV file or one-file-per-label directory")
    t.add_argument("--val", help="validation data (default: hold out --val-fraction of --train)")
    t.add_argument("--model", choices=["encoder", "lstm", "gpt"], default="encoder")
    t.add_argument("--init", metavar="RUN_OR_HF_DIR",
                   help="start from an lmlab run (encoder or GPT) or a Hugging Face BERT directory")
    t.add_argument("--out", help="run directory to write")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted classifier run from its last checkpoint (its own data and settings)")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine through torchrun, like `lmlab train --nproc N`")
    data_options(t)
    t.add_argument("--val-fraction", type=float, default=0.1, help="held out of --train when --val is not given")
    t.add_argument("--split-seed", type=int, default=0, help="seed of that held-out split")
    t.add_argument("--max-length", type=int, default=128, help="tokens per text at most (longer texts are cut)")
    t.add_argument("--epochs", type=int, default=None, help="passes over the training texts (default per model)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default per model)")
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--pooling", default=None,
                   help="encoder: cls (default) or mean; lstm: max (default), mean or last; "
                        "gpt: last (default), mean or max")
    t.add_argument("--pooler", action=argparse.BooleanOptionalAction, default=None,
                   help="encoder: BERT's dense + tanh pooler before the classifier (default: if the init has one)")
    t.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True, help="lstm (default on)")
    t.add_argument("--lm-loss-weight", type=float, default=None,
                   help="gpt: weight of the auxiliary language-model loss (GPT-1 used 0.5; default 0)")
    t.add_argument("--label-lms", action="store_true",
                   help="gpt: also fine-tune one copy of the LM per label and add its log P(text | label) to the "
                        "head's logits, the two weighted as fitted on the validation texts (a generative / "
                        "discriminative hybrid; helps with little data)")
    t.add_argument("--dropout", type=float, default=None)
    t.add_argument("--vocab-size", type=int, default=None, help="vocabulary of a tokenizer built from --train")
    t.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch texts of similar length together, less padding (default on)")
    t.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_classify_train, accepts_overrides=True)

    e = verbs.add_parser("eval", help="accuracy, per-class and macro precision / recall / F1, confusion matrix")
    e.add_argument("run", help="classifier run directory")
    e.add_argument("--data", required=True, help="labelled texts: TSV/CSV file or one-file-per-label directory")
    data_options(e, defaults=False)
    e.add_argument("--png", help="where to draw the confusion matrix (default RUN/confusion.png)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    e.set_defaults(func=cmd_classify_eval)

    r = verbs.add_parser("predict", help="the label and class probabilities of each text")
    r.add_argument("run", help="classifier run directory")
    r.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify ('-' reads one text per line from stdin)")
    r.add_argument("--json", action="store_true", help="print JSON lines")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    r.set_defaults(func=cmd_classify_predict)

    s = verbs.add_parser("split", help="a fixed seeded train / test split of labelled texts as two TSV files")
    s.add_argument("source", help="TSV/CSV file or one-file-per-label directory")
    s.add_argument("--out", required=True, help="directory for train.tsv and test.tsv")
    s.add_argument("--fraction", type=float, default=0.1, help="share of the texts in test.tsv (default 0.1)")
    s.add_argument("--seed", type=int, default=0)
    data_options(s)
    s.set_defaults(func=cmd_classify_split)


def cmd_classify_train(args) -> None:
    import signal

    from .tasks.classify import resume_classifier, train_classifier
    from .train import Interrupted

    overrides = dict(args.overrides)
    if args.device is not None:
        overrides.setdefault("train.device", args.device)
    options = {"pooling": args.pooling, "pooler": args.pooler, "bidirectional": args.bidirectional,
               "lm_loss_weight": args.lm_loss_weight, "label_lms": args.label_lms, "dropout": args.dropout,
               "vocab_size": args.vocab_size}
    try:
        if args.resume:
            if args.train or args.out or args.init:
                raise LmlabError("--resume continues a run with its own data and settings; leave out --train, --out "
                                 "and --init (change settings with overrides such as --train.max_iters N).")
            s = resume_classifier(args.resume, overrides, progress=not args.quiet, nproc=args.nproc)
        elif not args.train or not args.out:
            raise LmlabError("lmlab classify train needs --train DATA and --out RUN_DIR (or --resume RUN_DIR).")
        else:
            s = train_classifier(args.train, args.out, kind=args.model, val=args.val, init=args.init,
                                 text_column=args.text_column, label_column=args.label_column, encoding=args.encoding,
                                 val_fraction=args.val_fraction, split_seed=args.split_seed, max_length=args.max_length,
                                 epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                                 group_by_length=args.group_by_length, overrides=overrides, progress=not args.quiet,
                                 nproc=args.nproc, **options)
    except Interrupted as e:  # SIGINT / SIGTERM: the checkpoint is saved; say how to continue, exit 128 + signal
        print(f"lmlab classify train: {signal.Signals(e.signum).name} received: stopped after step {e.step} and saved "
              f"a checkpoint in {e.run_dir}; continue with `lmlab classify train --resume {e.run_dir}`.",
              file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except SystemExit as e:  # --nproc: the processes were stopped (each saved a checkpoint) or failed
        if isinstance(e.code, int) and e.code > 128 and (args.resume or args.out):
            print(f"lmlab classify train: continue with `lmlab classify train --resume {args.resume or args.out} "
                  f"--nproc {args.nproc}`.", file=sys.stderr)
        raise
    m = s["val_metrics"]
    if "generative_scale" in s:
        print(f"label LMs: logits = {s['head_scale']:.3g} x head + {s['generative_scale']:.3g} x log P(text | label), "
              "fitted on the validation texts")
    run = args.resume or args.out
    print(f"done: {s['model']} classifier, {s['parameters']:,} parameters, {s['step']} steps in {s['wall_seconds']:.1f} s; "
          f"validation accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}; run saved in {run}")


def cmd_classify_eval(args) -> None:
    from .tasks.classify import evaluate_classifier, format_report
    from .train import resolve_device

    report = evaluate_classifier(args.run, args.data, args.text_column, args.label_column, args.encoding,
                                 png=args.png, device=str(resolve_device(args.device)))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.run} on {args.data}")
    print(format_report(report))
    print(f"\nconfusion matrix drawn in {report['png']}")


def cmd_classify_predict(args) -> None:
    from .tasks.classify import predict
    from .train import resolve_device

    texts = [line.rstrip("\n") for line in sys.stdin if line.strip()] if args.texts == ["-"] else args.texts
    for r in predict(args.run, texts, device=str(resolve_device(args.device))):
        if args.json:
            print(json.dumps(r))
        else:
            probs = "  ".join(f"{label} {p:.4f}" for label, p in r["probabilities"].items())
            print(f"{r['label']}\t{probs}\t{r['text']}")


def cmd_classify_split(args) -> None:
    from .tasks.labeled import split_file

    info = split_file(args.source, args.out, fraction=args.fraction, seed=args.seed, text_column=args.text_column,
                      label_column=args.label_column, encoding=args.encoding)
    print(f"wrote {Path(args.out) / 'train.tsv'} ({info['train']:,} texts) and {Path(args.out) / 'test.tsv'} "
          f"({info['test']:,} texts); labels {', '.join(info['labels'])}")


# --------------------------------------------------------------------------- seq2seq

def _add_seq2seq(sub) -> None:
    p = sub.add_parser("seq2seq", help="encoder-decoder Transformer: prepare pairs, train, translate, pretrain",
                       description="Translation / summarization with an encoder-decoder Transformer: prepare "
                                   "parallel text with a shared BPE vocabulary, train with the one Trainer, "
                                   "decode with greedy, sampling or beam search, pretrain as a denoising "
                                   "autoencoder. Score with `lmlab eval RUN --data SRC --refs REF --metric bleu`.")
    verbs = p.add_subparsers(dest="seq2seq_command", metavar="VERB")
    verbs.required = True

    def noise_options(q):
        d = {"mask_ratio": 0.3, "poisson_lambda": 3.0, "delete": 0.1, "shuffle_window": 3.0}
        q.add_argument("--mask-ratio", type=float, default=d["mask_ratio"],
                       help="share of tokens masked in spans, one <mask> per span (default 0.3)")
        q.add_argument("--poisson-lambda", type=float, default=d["poisson_lambda"], help="mean span length (3)")
        q.add_argument("--delete", type=float, default=d["delete"], help="token deletion probability (0.1)")
        q.add_argument("--shuffle-window", type=float, default=d["shuffle_window"],
                       help="local shuffle: tokens move by less than this many places (3; 0 = off)")

    q = verbs.add_parser("prepare", help="tokenize parallel files (or monolingual text, --text) into a data dir",
                         description="Tokenize sentence pairs (--src/--tgt, one sentence per line, aligned) or "
                                     "monolingual lines for denoising (--text) with one BPE vocabulary shared by "
                                     "both sides. Pairs with an empty side are skipped (and counted).")
    q.add_argument("--src", help="source-language file, one sentence per line")
    q.add_argument("--tgt", help="target-language file, aligned with --src")
    q.add_argument("--val-src", help="validation source file (default: hold out --val-fraction of the pairs)")
    q.add_argument("--val-tgt", help="validation target file")
    q.add_argument("--text", help="instead of pairs: monolingual lines for denoising pretraining")
    q.add_argument("--val-text", help="validation lines for --text (default: hold out --val-fraction)")
    q.add_argument("--vocab-size", type=int, default=None, help="size of the shared BPE vocabulary (e.g. 8000)")
    q.add_argument("--tokenizer", help="reuse the vocabulary of a prepared dir or run (needed to fine-tune it)")
    q.add_argument("--val-fraction", type=float, default=0.05)
    q.add_argument("--out", required=True, help="output directory")
    noise_options(q)
    q.set_defaults(func=cmd_seq2seq_prepare)

    t = verbs.add_parser("train", help="train (or fine-tune with --init, or resume) a seq2seq model",
                         description="Train an encoder-decoder from a YAML config (model.family: seq2seq) with "
                                     "the one Trainer; any field can be overridden, e.g. --train.max_iters 2000.")
    t.add_argument("--config", help="YAML config, e.g. configs/multi30k-de-en.yaml")
    t.add_argument("--out", help="run directory (default: runs/<config name>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--init", metavar="RUN_DIR", help="fine-tune from a run's weights (e.g. `seq2seq pretrain`'s)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_seq2seq_train, accepts_overrides=True)

    r = verbs.add_parser("translate", help="decode input lines (a file or stdin) to stdout, one line per line",
                         description="Translate (or summarize) each input line; empty lines give empty lines. "
                                     "Lines longer than the model's block_size are cut, with a note on stderr.")
    r.add_argument("run", help="seq2seq run directory")
    r.add_argument("--input", default="-", help="input file (default '-': stdin)")
    r.add_argument("--num-beams", type=int, default=1, help="beam size (1 = greedy or sampling)")
    r.add_argument("--length-penalty", type=float, default=1.0, help="beam score = sum log p / length ** this")
    r.add_argument("--max-new-tokens", type=int, default=200, help="longest output (capped at block_size)")
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    r.add_argument("--top-k", type=int, default=None)
    r.add_argument("--top-p", type=float, default=None)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=64, help="sources decoded together (greedy / sampling)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    r.set_defaults(func=cmd_seq2seq_translate)

    e = verbs.add_parser("pretrain", help="denoising-autoencoder pretraining on monolingual text",
                         description="Train the encoder-decoder to rebuild each line of --text from a corrupted "
                                     "copy (local shuffle, token deletion, span masking: BART-style); then "
                                     "fine-tune on pairs with `lmlab seq2seq train --init RUN`. Give --tokenizer "
                                     "the parallel data's directory so both share one vocabulary.")
    e.add_argument("--text", required=True, help="monolingual text, one sentence per line")
    e.add_argument("--val-text", help="validation lines (default: hold out --val-fraction)")
    e.add_argument("--tokenizer", help="the vocabulary to use: the parallel data's prepared directory")
    e.add_argument("--vocab-size", type=int, default=None, help="build a new vocabulary from --text instead")
    e.add_argument("--val-fraction", type=float, default=0.05)
    e.add_argument("--config", required=True, help="YAML config: its model and train sections are used")
    e.add_argument("--out", required=True, help="run directory; the prepared text goes to OUT/data")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    noise_options(e)
    e.set_defaults(func=cmd_seq2seq_pretrain, accepts_overrides=True)


def _noise(args) -> dict:
    return {"mask_ratio": args.mask_ratio, "poisson_lambda": args.poisson_lambda, "delete": args.delete,
            "shuffle_window": args.shuffle_window}


def cmd_seq2seq_prepare(args) -> None:
    from .tasks.pairs import prepare_denoise, prepare_pairs

    if args.text is not None:
        if args.src or args.tgt or args.val_src or args.val_tgt:
            raise LmlabError("give either --text (monolingual, for denoising) or --src and --tgt (pairs), not both.")
        meta = prepare_denoise(args.text, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                               val_fraction=args.val_fraction, noise=_noise(args), val_text=args.val_text)
        what = "lines"
    else:
        if not args.src or not args.tgt:
            raise LmlabError("lmlab seq2seq prepare needs --src and --tgt (parallel files), or --text.")
        meta = prepare_pairs(args.src, args.tgt, args.out, val_src=args.val_src, val_tgt=args.val_tgt,
                             tokenizer=args.tokenizer, vocab_size=args.vocab_size, val_fraction=args.val_fraction)
        what = "pairs"
    tr, va = meta["train"], meta["val"]
    skipped = tr["skipped_empty"] + va["skipped_empty"]
    note = f"; skipped {skipped:,} pair(s) with an empty side" if skipped else ""
    print(f"wrote {args.out}: {meta['task']}, shared vocab {meta['vocab_size']:,}, train {tr['pairs']:,} {what} "
          f"({tr['src_tokens']:,} + {tr['tgt_tokens']:,} tokens), val {va['pairs']:,} {what}{note}")


def _check_seq2seq_config(cfg) -> None:
    if cfg.model.family != "seq2seq":
        raise LmlabError(f"the config's model.family is {cfg.model.family!r}; lmlab seq2seq trains model.family "
                         "seq2seq (use `lmlab train` for other families).")


def cmd_seq2seq_train(args) -> None:
    from .config import load_config
    from .train import init_config, resume_config

    if args.resume:
        _check_seq2seq_config(resume_config(args.resume, args.overrides))
    elif args.config:
        _check_seq2seq_config(init_config(args.init, args.config, args.overrides) if args.init
                              else load_config(args.config, args.overrides))
    cmd_train(args)


def cmd_seq2seq_translate(args) -> None:
    from .generate import GenerationConfig
    from .tasks.pairs import read_lines
    from .tasks.translate import load_seq2seq, translate
    from .train import resolve_device

    cfg = GenerationConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           num_beams=args.num_beams, length_penalty=args.length_penalty,
                           max_new_tokens=args.max_new_tokens)
    cfg.validate()
    if args.batch_size < 1:
        raise LmlabError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.input == "-":
        lines = [line.strip() for line in sys.stdin.read().splitlines()]
    else:
        lines = read_lines(args.input)
    model, tokenizer = load_seq2seq(args.run, device=str(resolve_device(args.device)))
    for line in translate(model, tokenizer, lines, cfg, batch_size=args.batch_size):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_seq2seq_pretrain(args) -> None:
    from .config import load_config
    from .tasks.pairs import prepare_denoise
    from .train import train

    out = Path(args.out)
    if (out / "trainer_state.pt").exists():
        raise LmlabError(f"{out} already holds a run; choose another --out.")
    overrides = dict(args.overrides)
    overrides["data.dir"] = str(out / "data")
    cfg = load_config(args.config, overrides)
    _check_seq2seq_config(cfg)
    meta = prepare_denoise(args.text, out / "data", tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                           val_fraction=args.val_fraction, noise=_noise(args), val_text=args.val_text)
    print(f"denoising data: {meta['train']['pairs']:,} train lines, {meta['val']['pairs']:,} val lines in {out / 'data'}")
    summary = train(cfg, out, progress=not args.quiet)
    print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}; pretrained run in {out}; "
          f"fine-tune it with `lmlab seq2seq train --config CONFIG --init {out}`")


# --------------------------------------------------------------------------- serve

def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API, with a browser playground",
                       description="Serve runs (GPT, RNN, imported GPT-2) and n-gram models over HTTP: OpenAI-style "
                                   "/v1/completions (streaming), /v1/models, /v1/score, /health, /metrics, and a "
                                   "playground page at /. Concurrent requests are decoded together (continuous "
                                   "batching).")
    p.add_argument("models", nargs="+", metavar="RUN_OR_ARPA", help="run directories or n-gram files, as PATH or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --api-key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (or set LMLAB_API_KEY)")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together per model")
    p.add_argument("--max-tokens", type=int, default=512, help="cap on a request's max_tokens")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="cap on a request body (bytes)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take, queueing included")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for room before new ones get 503")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> None:
    from .serve import serve
    from .train import resolve_device

    serve(args.models, host=args.host, port=args.port, api_key=args.api_key,
          device=str(resolve_device(args.device)), log_level=args.log_level, max_tokens=args.max_tokens,
          max_body_bytes=args.max_body_bytes, timeout=args.timeout, max_batch=args.max_batch,
          max_queue=args.max_queue)


# --------------------------------------------------------------------------- demo

def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="prepare Tiny Shakespeare, train a small GPT (~2-3 min), evaluate, sample")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its data and run")
    p.add_argument("--max-iters", type=int, default=2000)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.out), max_iters=args.max_iters)


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Build, train, evaluate and sample language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_prepare, _add_train, _add_eval, _add_generate, _add_compare, _add_ngram, _add_convert,
                _add_demo):
        add(sub)
    _add_classify(sub)
    _add_seq2seq(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import parse_overrides

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and not getattr(args, "accepts_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = parse_overrides(extra) if extra else {}
        args.func(args)
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
