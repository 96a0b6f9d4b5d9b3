"""`lmlab demo`: Tiny Shakespeare, char level -> a small GPT trained for ~2 minutes -> eval -> sample.
`lmlab demo --zh`: the same on People's Daily 1998 (Chinese characters), with its summary in Chinese."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# Shipped inside the package (the repo's data/tinyshakespeare.txt and configs/ are links to these), so the
# demo runs the same from a checkout and from an installed wheel.
PACKAGE = Path(__file__).resolve().parent
TEXT = PACKAGE / "texts" / "tinyshakespeare.txt"
CONFIG = PACKAGE / "configs" / "shakespeare-char-baby.yaml"


@dataclass(frozen=True)
class Demo:
    text: Path
    prompt: str
    steps: tuple[str, str, str, str]  # what is printed before each of the four steps ({} filled in)
    rows: tuple[str, ...]  # the summary table's row labels
    title: str
    hints: tuple[str, str, str]


ENGLISH = Demo(
    TEXT, "ROMEO:",
    ("1/4 preparing {name} (character level) into {data}", "2/4 training a {layers}-layer, {width}-wide GPT for "
     "{steps} steps into {run}", "3/4 evaluating on the validation split",
     "4/4 sampling (temperature 0.8, top-k 50, seed 1):"),
    ("parameters", "vocabulary", "training steps", "training time (s)", "training tokens/s",
     "best val loss (nats/char)", "val cross-entropy, full split", "val perplexity", "val bits per byte"),
    "GPT on Tiny Shakespeare", ("run directory:", "loss curve:   ", "try:"))
CHINESE = Demo(
    PACKAGE / "texts" / "peoples-daily-1998.txt", "新华社北京",
    ("1/4 把 {name}（《人民日报》1998 年 1 月，按字切分）准备到 {data}",
     "2/4 训练一个 {layers} 层、宽 {width} 的 GPT，共 {steps} 步，保存到 {run}", "3/4 在验证集上评测",
     "4/4 生成样例（温度 0.8，top-k 50，种子 1）："),
    ("参数量", "词表（字数）", "训练步数", "训练用时（秒）", "训练速度（字/秒）", "最佳验证损失（纳特/字）",
     "整个验证集的交叉熵", "验证集困惑度", "验证集每字节比特数"),
    "《人民日报》上的字级 GPT", ("运行目录：", "损失曲线：", "试试："))


def run_demo(out="runs/demo", max_iters: int = 2000, zh: bool = False) -> dict:
    from .checkpoint import load
    from .config import load_config
    from .data import prepare
    from .generate import GenerationConfig, generate
    from .metrics import evaluate_ids
    from .data import load_split
    from .report import markdown_table
    from .train import train

    demo = CHINESE if zh else ENGLISH
    out = Path(out)
    data_dir, run_dir = out / "data", out / "gpt"
    print(demo.steps[0].format(name=demo.text.name, data=data_dir))
    meta = prepare(demo.text, data_dir, tokenizer="char", val_fraction=0.1)
    cfg = load_config(CONFIG, {"data.dir": str(data_dir), "train.max_iters": str(max_iters),
                               "train.lr_decay_iters": str(max_iters)})
    m = cfg.model
    print(demo.steps[1].format(layers=m.n_layer, width=m.n_embd, steps=max_iters, run=run_dir))
    if (run_dir / "trainer_state.pt").exists():  # a previous demo: start afresh
        import shutil

        shutil.rmtree(run_dir)
    start = time.time()
    summary = train(cfg, run_dir)
    wall = time.time() - start
    print(demo.steps[2])
    model, tokenizer = load(run_dir)
    result = evaluate_ids(model, tokenizer, load_split(data_dir, "val"))
    print(demo.steps[3] + "\n")
    sample = generate(model, tokenizer, demo.prompt, GenerationConfig(max_new_tokens=300, temperature=0.8,
                                                                      top_k=50, seed=1))[0]
    print(demo.prompt + sample + "\n")
    values = [summary["parameters"], meta["vocab_size"], summary["step"], f"{wall:.1f}",
              round(summary["tokens_per_sec"]), summary["best_val_loss"], result.cross_entropy, result.perplexity,
              result.bits_per_byte]
    print(markdown_table(["", demo.title], [[label, value] for label, value in zip(demo.rows, values)]))
    print(f"\n{demo.hints[0]} {run_dir}\n{demo.hints[1]} {run_dir / 'loss.png'}")
    print(f"{demo.hints[2]} lmlab generate {run_dir} --prompt '{demo.prompt}' --temperature 0.8 --top-k 50")
    return {"summary": summary, "eval": result}
