"""One Trainer for every torch model family: the model only has to provide `loss(batch)` (models.base.Trainable).

AdamW with decay / no-decay groups, linear warmup then cosine decay (nanoGPT / GPT-3 schedule),
global-norm gradient clipping, gradient accumulation, autocast, periodic evaluation with
keep-best, atomic checkpoints, exact resume, progress bar, metrics.csv, TensorBoard, loss.png.
The Trainer runs the loop; what it calls lives in the module that owns it: distributed.Parallel (DDP / FSDP and
the state gathered from shards), resume.Checkpoints (trainer_state.pt, RNG, restore), report.MetricsLog
(metrics.csv, TensorBoard), runtime (device, autocast, StopSignals), runs (the run directory, --init).

The data object provides `batch(split, index)`, a pure function of its index, so a resumed run
draws the same batches as an uninterrupted one; with the RNG state restored, its losses match.

Several processes (`torchrun --nproc_per_node N -m lmlab train ...`, or `lmlab train --nproc N`): train.strategy
ddp (DistributedDataParallel) or fsdp (fully_shard, FSDP2). Process r reads global micro-batch indices
(step * grad_accum + micro) * N + r, so N processes with grad_accum g train exactly as one process with
grad_accum g * N; rank 0 alone writes metrics, TensorBoard, checkpoints and the progress bar.

Checkpoints are one full state in one process's format whatever the strategy (FSDP shards are gathered to rank 0
with torch.distributed.checkpoint's full-state dicts, not saved as DCP shards), so a run resumes with any number
of processes and either strategy; the price is that the full state must fit in rank 0's CPU memory. Each rank's
RNG state is kept for an exact resume with the same process count.

SIGINT / SIGTERM (Ctrl-C, Slurm's preemption, torchrun passing either on): the step in progress finishes, a
checkpoint is written, and `Interrupted` is raised (`lmlab train` exits 128 + signal). A failed write (full
disk, no permission) is a clear error that keeps the previous checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from .checkpoint import STATE, check_resumable
from .config import Config, TrainConfig
from .data import ShardedData, read_meta
from .errors import LmlabError
from .files import read_json
from .report import MetricsLog, plot_loss, truncate_metrics
from .resume import Checkpoints
from .runs import check_same_tokenizer, command_config, load_init_weights, start_run_dir
from .runtime import StopSignals, autocast_context, resolve_device, tune_allocator


def lr_at(step: int, t: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based), `elapsed` training seconds into the run: linear warmup,
    cosine decay to min_lr; with train.max_seconds the decay's progress is the larger of the steps' and the
    budget's fraction (elapsed / max_seconds)."""
    decay_iters = t.lr_decay_iters or t.max_iters
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    progress = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    if t.max_seconds:
        progress = max(progress, elapsed / t.max_seconds)
    if progress >= 1.0:
        return t.min_lr
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.learning_rate - t.min_lr)


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, not on biases or norm gains (nanoGPT, GPT-2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # One fused kernel per step instead of a loop over tensors; the fused CPU kernel exists since torch 2.4.
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=True)


def count_tokens(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return first.numel()


class Interrupted(LmlabError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; `lmlab train` exits with 128 + signal."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step} and saved a checkpoint in {run_dir}; "
                         f"continue with `lmlab train --resume {run_dir}`.")

    def __reduce__(self):  # picklable (multiprocessing hands exceptions between processes)
        return Interrupted, (self.signum, self.step, self.run_dir)


class Trainer:
    """Train `model` on `data` with the settings of `cfg.train`, writing everything into `run_dir`.

    Under torchrun (WORLD_SIZE > 1) every process builds the same Trainer: the model is wrapped in DDP or FSDP
    (train.strategy), each process reads its own micro-batches, and rank 0 alone writes the run directory
    (metrics, TensorBoard, checkpoints) and shows the progress bar.
    """

    def __init__(self, model: torch.nn.Module, data, cfg: Config, run_dir: str | Path,
                 tokenizer_path: str | Path | None = None, progress: bool = True):
        tune_allocator()
        self.cfg, self.t = cfg, cfg.train
        self.run_dir = Path(run_dir)
        self.dist = distributed.setup(self.t.strategy, self.t.device)
        self.device = resolve_device(distributed.rank_device(self.t.device, self.dist))
        self.model = model.to(self.device)
        if self.t.compile:
            model.compile()  # compiles the module's __call__, so loss() runs the compiled forward
        self.parallel = distributed.Parallel(self.model, self.dist, self.device)
        self.optimizer = build_optimizer(model, self.t)  # after wrapping: FSDP replaced the parameters
        self.autocast = autocast_context(self.device, self.t.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.t.precision == "fp16" else None
        self.checkpoints = Checkpoints(self.run_dir, cfg, self.parallel, self.optimizer, self.scaler, self.device)
        # Several processes: ShardedData (TokenStreams, whose state carries between batches) is cut into per-rank
        # streams; any other data is read at global micro-batch indices, rank r taking every world-th (see
        # _micro_index), so the processes together read what one process with grad_accum x world would.
        self.sharded = self.dist.world > 1 and isinstance(data, ShardedData)
        self.data = data.shard(self.dist.rank, self.dist.world) if self.sharded else data
        self.progress = progress and self.dist.main
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.signals = StopSignals(announce=self.progress)
        if self.dist.main:
            start_run_dir(self.run_dir, cfg, tokenizer_path)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """trainer_state.pt (the whole resume point), then model.safetensors (see lmlab.resume)."""
        self.checkpoints.save(self.step, self.elapsed, self.best_val)

    def resume(self) -> None:
        """Restore model, optimizer, step and RNG from the run directory's last checkpoint (on every rank)."""
        self.step, self.elapsed, self.best_val = self.checkpoints.restore()
        if self.dist.main:
            truncate_metrics(self.run_dir / "metrics.csv", self.step)

    # ------------------------------------------------------------------ loop

    def _eval_indices(self) -> list[tuple[int, bool]]:
        """(val batch index, counts) for this rank. One process: 0 .. eval_iters-1. Several: rank r takes r,
        r + world, ... (or all of them from its own streams when the data is sharded); every rank runs the same
        number of forward passes, padding with batches that do not count (FSDP's collectives need that)."""
        n, world = self.t.eval_iters, self.dist.world
        if world == 1 or self.sharded:
            return [(i, True) for i in range(n)]
        per_rank = -(-n // world)
        return [(i % n, i < n) for i in range(self.dist.rank, per_rank * world, world)]

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (over every process's batches)."""
        self.parallel.module.eval()
        forward = self.parallel.module if self.parallel.fsdp else self.model.loss  # FSDP must gather the shards
        losses = []
        for i, counts in self._eval_indices():
            batch = self._to_device(self.data.batch("val", i))
            with self.autocast:
                loss = forward(batch).item()
            if counts:
                losses.append(loss)
        self.parallel.module.train()
        if self.dist.world == 1:
            return sum(losses) / len(losses)
        total, count = self.dist.all_reduce_sum([sum(losses), len(losses)])
        return total / count

    def _to_device(self, batch):
        if self.device.type == "cpu":
            return batch
        return tuple(b.to(self.device, non_blocking=True) for b in batch)

    def _micro_index(self, micro: int) -> int:
        """The data index of this rank's micro-batch `micro` of the current step."""
        local = self.step * self.t.grad_accum + micro
        return local if self.sharded else local * self.dist.world + self.dist.rank

    def _train_step(self, lr: float) -> tuple[float, int, bool, float]:
        """One optimizer step over grad_accum micro-batches at learning rate `lr`; returns (mean loss over every process, tokens over
        every process, whether some process received SIGINT / SIGTERM, the step's seconds: under DDP the mean
        over the processes, so that every process has the same elapsed time, learning rate and time to stop)."""
        start = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total, tokens = 0.0, 0
        for micro in range(self.t.grad_accum):
            batch = self._to_device(self.data.batch("train", self._micro_index(micro)))
            with self.parallel.no_sync(micro < self.t.grad_accum - 1):
                with self.autocast:
                    loss = self.parallel.module(batch) / self.t.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
            tokens += count_tokens(batch)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip, foreach=True)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stop = self.signals.received is not None
        took = time.perf_counter() - start
        if self.dist.world > 1:  # one all-reduce: the mean loss, the tokens, any process's stop request, the time
            total, tokens, stops, took = self.dist.all_reduce_sum([total, tokens, float(stop), took])
            total, tokens, stop, took = total / self.dist.world, int(tokens), stops > 0, took / self.dist.world
        return total, tokens, stop, took

    def _finished(self) -> bool:
        """Whether the run has reached max_iters or its train.max_seconds budget."""
        return self.step >= self.t.max_iters or bool(self.t.max_seconds and self.elapsed >= self.t.max_seconds)

    def _should_eval(self) -> bool:
        return self.step % self.t.eval_interval == 0 or self._finished()

    def _should_save(self) -> bool:
        every = self.t.save_interval or self.t.eval_interval
        return self.step % every == 0 or self._finished()

    def fit(self) -> dict:
        """Train until max_iters or the train.max_seconds budget; return a summary (final/best val loss, tokens/s,
        training seconds)."""
        self.parallel.module.train()
        log = bar = None
        try:
            log = MetricsLog(self.run_dir, self.step, self.t.tensorboard, self.dist.main)
            bar = tqdm(total=self.t.max_iters, initial=self.step, disable=not self.progress, file=sys.stderr,
                       dynamic_ncols=True, desc="train", unit="step")
            with self.signals:
                val, run_tokens, run_time = self._loop(log, bar)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            self.parallel.close()
        if self.dist.main:
            plot_loss(self.run_dir / "metrics.csv", self.run_dir / "loss.png")
        return {"step": self.step, "val_loss": val, "best_val_loss": self.best_val,
                "tokens_per_sec": run_tokens / run_time if run_time else 0.0, "train_seconds": self.elapsed}

    def _loop(self, log: MetricsLog, bar) -> tuple[float | None, int, float]:
        """The steps up to max_iters / max_seconds, after an evaluation when the run starts; returns the last val loss,
        and the tokens and seconds this call trained."""
        run_tokens, run_time, val = 0, 0.0, None
        if self.step == 0:
            self._log_eval(log, bar)
        while not self._finished():
            lr = lr_at(self.step, self.t, self.elapsed)
            loss, tokens, stop, took = self._train_step(lr)
            if not math.isfinite(loss):
                raise LmlabError(f"training diverged at step {self.step + 1} (loss {loss}); "
                                 "lower train.learning_rate or raise train.warmup_iters.")
            self.step += 1
            self.elapsed += took
            run_tokens, run_time = run_tokens + tokens, run_time + took
            evaluated = self._should_eval()
            if evaluated:
                val = self._log_eval(log, bar)
            log.train_step(self.step, loss, lr, tokens / took, self.elapsed, val if evaluated else None)
            if self.step % self.t.log_interval == 0 or self._finished():
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{run_tokens / run_time:,.0f}")
            bar.update(1)
            if self._should_save() or stop:
                self.checkpoints.write(log.flush, self.run_dir / "metrics.csv")
                self.save_checkpoint()
            if stop:
                raise Interrupted(self.signals.received or signal.SIGTERM, self.step, self.run_dir)
        return val, run_tokens, run_time

    def _log_eval(self, log: MetricsLog, bar) -> float:
        val = self.evaluate()
        log.evaluation(self.step, val, self.elapsed)
        if val < self.best_val:
            self.best_val = val
            if self.t.keep_best and self.step > 0:
                self.checkpoints.save_best(self.step)
        if self.progress:
            bar.write(f"step {self.step}: val loss {val:.4f} (best {self.best_val:.4f})", file=sys.stderr)
        return val


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          init: str | Path | None = None) -> dict:
    """Build the model and data of `cfg` and train them into `run_dir` (or continue that run).

    `init` names a run (one `lmlab convert` imported, say) whose weights the new model starts from; its
    config comes from `runs.init_config`, and the data must have been prepared with that run's tokenizer.
    """
    from .models import build_model, model_class

    run_dir = Path(run_dir)
    if resume and init is not None:
        raise LmlabError("--init starts a new run and --resume continues one; give only one of them.")
    if not resume and (run_dir / STATE).exists():
        raise LmlabError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                         "or choose another --out.")
    meta = read_meta(cfg.data.dir)
    if init is not None:
        check_same_tokenizer(cfg.data.dir, init)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = meta["vocab_size"]
    elif cfg.model.vocab_size < meta["vocab_size"]:
        raise LmlabError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the data's vocabulary "
                         f"({meta['vocab_size']}); leave it at 0 to take it from the data.")
    if getattr(cfg.model, "eot_id", None) == -1 and meta.get("eot_id") is not None:
        cfg.model.eot_id = meta["eot_id"]  # recurrent models reset their state at each document start
    if resume:
        check_resumable(run_dir, cfg)  # a corrupt checkpoint, or one of another architecture, fails here
    data = model_class(cfg.model.family).training_data(cfg)  # each family says what it trains on
    data.split("train"), data.split("val")  # fail on too-short splits before anything is written
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if init is not None:
        load_init_weights(model, init)
    if cfg.train.lora_rank:
        add_lora(model, cfg.train, run_dir if resume else None, init)
    if cfg.train.gradient_checkpointing:
        if not hasattr(model, "checkpoint_blocks"):
            raise LmlabError(f"train.gradient_checkpointing recomputes the blocks of a Transformer decoder (gpt, "
                             f"llama); a {cfg.model.family} model has none.")
        model.checkpoint_blocks = True
    trainer = Trainer(model, data, cfg, run_dir, tokenizer_path=Path(cfg.data.dir) / "tokenizer.json",
                      progress=progress)
    if resume:
        trainer.resume()
    summary = trainer.fit()
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    return summary


def add_lora(model: torch.nn.Module, t: TrainConfig, resumed_run: Path | None = None,
             init: str | Path | None = None) -> None:
    """LoRA adapters on the layers train.lora_targets names (lmlab.lora); only they train. The base's hash and
    directory (`init`), which each checkpoint's adapter files carry, are taken once: from the weights and `init`,
    or from the run being resumed (whose base weights only arrive with its checkpoint)."""
    from .lora import BASE_PATH, HASH_KEY, apply_lora, record_base_hash

    saved = resumed_run / "adapter_config.json" if resumed_run is not None else None
    if saved is not None and saved.is_file():
        config = read_json(saved)
        setattr(model, HASH_KEY, config.get(HASH_KEY))
        setattr(model, BASE_PATH, config.get("base_model_name_or_path"))
    else:
        record_base_hash(model)
        setattr(model, BASE_PATH, str(Path(init).resolve()) if init is not None else None)
    apply_lora(model, *lora_arguments(t))


def lora_arguments(t: TrainConfig) -> tuple:
    """apply_lora's (targets, rank, alpha, dropout, base_dtype) from the train.lora_* settings."""
    if t.strategy == "fsdp":
        raise LmlabError("LoRA trains with DDP (only the small adapters learn, and a checkpoint merges them in one "
                         "process); use --train.strategy ddp.")
    targets = [x.strip() for x in t.lora_targets.split(",") if x.strip()]
    return targets, t.lora_rank, t.lora_alpha, t.lora_dropout, None if t.lora_base_dtype == "fp32" else t.lora_base_dtype


def require_family(cfg: Config, family: str) -> None:
    """A verb that trains one family (`lmlab seq2seq train`) refuses a config of another."""
    if cfg.model.family != family:
        raise LmlabError(f"the config's model.family is {cfg.model.family!r}; lmlab {family} trains model.family "
                         f"{family} (use `lmlab train` for other families).")


def train_command(config=None, out=None, resume=None, init=None, nproc: int | None = None, quiet: bool = False,
                  overrides: dict | None = None, family: str | None = None) -> None:
    """`lmlab train` (and `lmlab seq2seq train`, for `family`): train or resume a run, in `nproc` processes through
    torchrun when asked (lmlab.distributed.launch); SIGINT / SIGTERM save a checkpoint and exit with 128 + signal."""
    if nproc not in (None, 1):
        distributed.check_nproc(nproc)
    cfg, run_dir = command_config(config, out, resume, init, overrides)  # a bad config is reported once, here
    if family is not None:
        require_family(cfg, family)
    if nproc not in (None, 1) and "LOCAL_RANK" not in os.environ:
        options = {"config": config, "out": out, "resume": resume, "init": init}
        argv = ["train", *(f"--{k}={v}" for k, v in options.items() if v), *(["--quiet"] if quiet else [])]
        distributed.launch(argv + [f"--{k}={v}" for k, v in (overrides or {}).items()], nproc)
        return
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for every process
    try:
        summary = train(cfg, run_dir, resume=bool(resume), progress=not quiet, init=init)
    except Interrupted as e:  # the checkpoint is saved: say so and exit with 128 + signal
        if speaks:
            print(f"lmlab train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    if speaks:
        print(f"done: step {summary['step']}, best val loss {summary['best_val_loss']:.4f}, "
              f"{summary['tokens_per_sec']:,.0f} tokens/s; run saved in {run_dir} (loss curve: {run_dir / 'loss.png'})")
