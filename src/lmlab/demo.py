"""`lmlab demo`: Tiny Shakespeare, char level -> a small GPT trained for ~2 minutes -> eval -> sample."""
from __future__ import annotations

import time
from pathlib import Path

# Shipped inside the package (the repo's data/tinyshakespeare.txt and configs/ are links to these), so the
# demo runs the same from a checkout and from an installed wheel.
PACKAGE = Path(__file__).resolve().parent
TEXT = PACKAGE / "texts" / "tinyshakespeare.txt"
CONFIG = PACKAGE / "configs" / "shakespeare-char-baby.yaml"


def run_demo(out="runs/demo", max_iters: int = 2000) -> dict:
    from .checkpoint import load
    from .config import load_config
    from .data import prepare
    from .generate import GenerationConfig, generate
    from .metrics import evaluate_ids
    from .data import load_split
    from .report import markdown_table
    from .train import train

    out = Path(out)
    data_dir, run_dir = out / "data", out / "gpt"
    print(f"1/4 preparing {TEXT.name} (character level) into {data_dir}")
    meta = prepare(TEXT, data_dir, tokenizer="char", val_fraction=0.1)
    cfg = load_config(CONFIG, {"data.dir": str(data_dir), "train.max_iters": str(max_iters),
                               "train.lr_decay_iters": str(max_iters)})
    m = cfg.model
    print(f"2/4 training a {m.n_layer}-layer, {m.n_embd}-wide GPT for {max_iters} steps into {run_dir}")
    if (run_dir / "trainer_state.pt").exists():  # a previous demo: start afresh
        import shutil

        shutil.rmtree(run_dir)
    start = time.time()
    summary = train(cfg, run_dir)
    wall = time.time() - start
    print("3/4 evaluating on the validation split")
    model, tokenizer = load(run_dir)
    result = evaluate_ids(model, tokenizer, load_split(data_dir, "val"))
    print("4/4 sampling (temperature 0.8, top-k 50, seed 1):\n")
    sample = generate(model, tokenizer, "ROMEO:", GenerationConfig(max_new_tokens=300, temperature=0.8,
                                                                   top_k=50, seed=1))[0]
    print("ROMEO:" + sample + "\n")
    rows = [["parameters", summary["parameters"]], ["vocabulary", meta["vocab_size"]],
            ["training steps", summary["step"]], ["training time (s)", f"{wall:.1f}"],
            ["training tokens/s", round(summary["tokens_per_sec"])],
            ["best val loss (nats/char)", summary["best_val_loss"]],
            ["val cross-entropy, full split", result.cross_entropy], ["val perplexity", result.perplexity],
            ["val bits per byte", result.bits_per_byte]]
    print(markdown_table(["", "GPT on Tiny Shakespeare"], rows))
    print(f"\nrun directory: {run_dir}\nloss curve:    {run_dir / 'loss.png'}")
    print(f"try: lmlab generate {run_dir} --prompt 'ROMEO:' --temperature 0.8 --top-k 50")
    return {"summary": summary, "eval": result}
