"""The `lmlab` command: one thin function per verb that parses arguments and calls the library.

User mistakes raise LmlabError; main() prints them as one sentence and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LmlabError


# --------------------------------------------------------------------------- prepare

def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a text file or directory into train.bin / val.bin",
                       description="Tokenize a text file or a directory of text files into train.bin / val.bin "
                                   "(numpy uint16/uint32), tokenizer.json and meta.json.")
    p.add_argument("source", help="text file or directory")
    p.add_argument("--tokenizer", choices=["char", "byte", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (e.g. 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text kept for validation")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    from .data import prepare

    meta = prepare(args.source, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, progress=not args.quiet)
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, accepts_overrides=True)


def cmd_train(args) -> None:
    from .config import load_config
    from .train import resume_config, train

    if args.resume:
        cfg, run_dir = resume_config(args.resume, args.overrides), Path(args.resume)
    else:
        if not args.config:
            raise LmlabError("lmlab train needs --config FILE (see configs/) or --resume RUN_DIR.")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.out or Path("runs") / Path(args.config).stem)
    summary = train(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}, "
          f"{summary['tokens_per_sec']:,.0f} tokens/s; run saved in {run_dir} (loss curve: {run_dir / 'loss.png'})")


# --------------------------------------------------------------------------- eval

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and bits per token/char/byte of a model on a text",
                       description="Evaluate a run on a text file or a prepared .bin split.")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="a text file, or a val.bin/train.bin written by lmlab prepare")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default block_size/2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    from .checkpoint import load
    from .metrics import evaluate_ids, evaluate_text

    model, tokenizer = load(args.run)
    kwargs = {"stride": args.stride} if args.stride else {}
    path = Path(args.data)
    if path.suffix == ".bin":
        from .data import load_split

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


def read_text(path: Path) -> str:
    if not path.is_file():
        raise LmlabError(f"{path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text (bad byte at offset {e.start}).") from None
    if not text:
        raise LmlabError(f"{path} is empty.")
    return text


# --------------------------------------------------------------------------- generate

def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a model, streamed as it is produced")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> None:
    from .checkpoint import load
    from .generate import GenerationConfig, stream

    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, num_return_sequences=args.num_return_sequences, seed=args.seed)
    cfg.validate()
    model, tokenizer = load(args.run)
    for i in range(cfg.num_return_sequences):
        if cfg.num_return_sequences > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        sys.stdout.write(args.prompt)
        for piece in stream(model, tokenizer, args.prompt, cfg, sequence=i):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    sys.stdout.flush()


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
    for add in (_add_prepare, _add_train, _add_eval, _add_generate, _add_demo):
        add(sub)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
