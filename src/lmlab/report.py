"""A training run's metrics log (metrics.csv, TensorBoard), and tables and plots: loss curves (loss.png), the
compare chart and curves, Markdown tables for the terminal."""
from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

from .files import atomic_open

METRIC_FIELDS = ["step", "train_loss", "val_loss", "lr", "tokens_per_sec", "elapsed_s"]


class MetricsLog:
    """metrics.csv (a row per step, the evaluation before the first step a row of its own) and TensorBoard scalars
    (loss/train, loss/val, lr) in `run_dir`, written by rank 0 only: with main False every call does nothing.
    A run that continues at `step` > 0 appends to its rows (truncate_metrics has dropped those past it)."""

    def __init__(self, run_dir: Path, step: int, tensorboard: bool, main: bool):
        self.file = self.rows = self.tb = None
        if not main:
            return
        path = run_dir / "metrics.csv"
        new = step == 0 or not path.exists()  # a fresh run never appends to an earlier attempt's rows
        self.file = open(path, "w" if new else "a", newline="")
        self.rows = csv.DictWriter(self.file, fieldnames=METRIC_FIELDS)
        if new:
            self.rows.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step or None)
            except BaseException:
                self.close()
                raise

    def evaluation(self, step: int, val: float, elapsed: float) -> None:
        """A validation loss; at step 0 (before training) its own row, later ones go into their step's row."""
        if self.tb:
            self.tb.add_scalar("loss/val", val, step)
        if self.rows is not None and step == 0:
            self.rows.writerow({"step": step, "val_loss": f"{val:.6f}", "elapsed_s": f"{elapsed:.3f}"})

    def train_step(self, step: int, loss: float, lr: float, tokens_per_sec: float, elapsed: float,
                   val: float | None) -> None:
        if self.rows is not None:
            row = {"step": step, "train_loss": f"{loss:.6f}", "lr": f"{lr:.6g}",
                   "tokens_per_sec": f"{tokens_per_sec:.1f}", "elapsed_s": f"{elapsed:.3f}"}
            if val is not None:
                row["val_loss"] = f"{val:.6f}"
            self.rows.writerow(row)
        if self.tb:
            self.tb.add_scalar("loss/train", loss, step)
            self.tb.add_scalar("lr", lr, step)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.tb:
            self.tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows of metrics.csv written after `step`, the checkpoint a run resumes from (they will be redone)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        # A kill can leave a half-written last row: keep only complete rows up to the checkpoint.
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s") and r["step"].isdigit() and int(r["step"]) <= step]
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of train_loss and val_loss from a metrics.csv."""
    series = {"train_loss": [], "val_loss": []}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name in series:
                if row.get(name):
                    series[name].append((int(row["step"]), float(row[name])))
    return series


def plot_loss(metrics_csv: str | Path, out_png: str | Path, title: str | None = None) -> None:
    """Train loss (light, with a moving average) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if series["train_loss"]:
        steps, losses = zip(*series["train_loss"])
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", label="train (moving average)")
    if series["val_loss"]:
        steps, losses = zip(*series["val_loss"])
        ax.plot(steps, losses, "o-", color="tab:orange", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or Path(metrics_csv).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    _save_png(fig, out_png)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _save_png(fig, out_png) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    with atomic_open(out_png, "wb") as f:
        f.write(buffer.getvalue())


def plot_bars(labels: list[str], values: list[float], out_png: str | Path, ylabel: str, title: str) -> None:
    """One bar per model, its value written on top (the `lmlab compare` chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2), 4), dpi=110)
    bars = ax.bar(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, out_png)


def plot_curves(series: dict[str, list[tuple[int, float]]], out_png: str | Path, ylabel: str, title: str) -> None:
    """Several (step, value) curves on one axis, one per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, "o-", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    _save_png(fig, out_png)


def plot_confusion(matrix, labels: list[str], out_png: str | Path, title: str = "confusion matrix") -> None:
    """A confusion matrix as a heat map: rows the true labels, columns the predictions, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * n, 2 + 0.6 * n), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    peak = max(1, max(max(row) for row in matrix))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                    color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save_png(fig, out_png)
