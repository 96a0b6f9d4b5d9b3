"""A run's resume point, trainer_state.pt: what it holds, and how the processes of a run write and restore it.

It holds step, elapsed (training seconds), best_val, model and optimizer (one process's full state, FSDP shards
gathered: see distributed.Parallel), config (the whole run config), world_size, strategy, global_batch (sequences
per optimizer step) and the RNG state: rng_cpu (rank 0's); with several processes rng_cpu_ranks, and
rng_cuda_ranks on GPUs; with one process on a CUDA machine rng_cuda (every GPU's). Then scaler (fp16's
GradScaler), and carried (carried_ranks with several processes) for a model that CarriesState.

A save writes trainer_state.pt (weights included: one atomic file), then model.safetensors: a kill between the two
renames leaves a consistent trainer_state.pt, and the resume brings model.safetensors level with it. Rank 0 alone
writes; a failed write (full disk, no permission) is one clear error on every rank, and keeps the previous file.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from .checkpoint import BEST, STATE, WEIGHTS, load_trainer_state, save_trainer_state, save_weights, weights_step
from .config import Config
from .distributed import Parallel
from .errors import LmlabError
from .files import remove_stale_temp_files
from .models.base import CarriesState


class Checkpoints:
    """The checkpoints of the run in `run_dir`. Every process calls save, save_best and restore at the same point
    (they gather state from all of them); rank 0 writes the files."""

    def __init__(self, run_dir: Path, cfg: Config, parallel: Parallel, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None, device: torch.device):
        self.run_dir, self.cfg, self.parallel, self.dist = run_dir, cfg, parallel, parallel.dist
        self.optimizer, self.scaler, self.device = optimizer, scaler, device
        self.global_batch = cfg.train.batch_size * cfg.train.grad_accum * self.dist.world
        self.saved_step: int | None = None  # step of the checkpoint on disk, for error messages

    def write(self, what, path: Path) -> None:
        """Run a write on rank 0; a failure (disk full, no permission) becomes one clear error on every rank,
        and the file it was replacing stays as it was (atomic_open)."""
        message = None
        if self.dist.main:
            try:
                what()
            except OSError as e:
                kept = (f"the previous checkpoint (step {self.saved_step}) is kept" if self.saved_step is not None
                        else "no earlier checkpoint exists")
                message = (f"could not write {path} ({e.strerror or e}); {kept}. Free some disk space or make "
                           f"{self.run_dir} writable, then continue with `lmlab train --resume {self.run_dir}`.")
        message = self.dist.broadcast_object(message)
        if message:
            raise LmlabError(message)

    def _save_weights(self, tensors: dict, path: Path, step: int) -> None:  # on rank 0, inside write()
        """The weights as a plain run holds them. A LoRA run's are merged (every verb loads them as they are),
        and model.safetensors comes with the adapters alone in PEFT's format (lmlab.lora)."""
        from .lora import HASH_KEY, lora_layers, merged_state_dict, save_adapter

        model = self.parallel.model
        if lora_layers(model):
            tensors = merged_state_dict(model)
            if path.name == WEIGHTS:
                save_adapter(model, self.run_dir, getattr(model, HASH_KEY), {"step": step})
        save_weights(tensors, path, step, dataclasses.asdict(self.cfg.model))

    def save(self, step: int, elapsed: float, best_val: float) -> None:
        """trainer_state.pt (the whole resume point), then model.safetensors."""
        state = self._gather(step, elapsed, best_val)  # None on ranks other than 0, which write nothing
        weights = self.run_dir / WEIGHTS
        self.write(lambda: save_trainer_state(state, self.run_dir / STATE), self.run_dir / STATE)
        self.write(lambda: self._save_weights(state["model"], weights, step), weights)
        self.saved_step = step

    def save_best(self, step: int) -> None:
        """best.safetensors: the weights at `step`, the lowest validation loss so far (train.keep_best)."""
        tensors, best = self.parallel.model_state(), self.run_dir / BEST
        self.write(lambda: self._save_weights(tensors, best, step), best)

    def _gather(self, step: int, elapsed: float, best_val: float) -> dict | None:
        """The resume point on rank 0 (None elsewhere). Every rank takes part: FSDP shards are gathered, and each
        rank's RNG state and carried state collected, so the run resumes with any number of processes."""
        model_state, optimizer_state = self.parallel.model_state(), self.parallel.optimizer_state(self.optimizer)
        world = self.dist.world
        rng = self.dist.gather_objects(torch.get_rng_state())
        multi_gpu = world > 1 and self.device.type == "cuda"
        rng_gpu = self.dist.gather_objects(torch.cuda.get_rng_state(self.device).cpu()) if multi_gpu else None
        model = self.parallel.model
        carried = model.carried_state() if isinstance(model, CarriesState) else None
        carried_ranks = self.dist.gather_objects(carried) if carried is not None else None
        if not self.dist.main:
            return None
        state = {"step": step, "elapsed": elapsed, "best_val": best_val,
                 "model": model_state, "optimizer": optimizer_state, "rng_cpu": rng[0],
                 "config": self.cfg.to_dict(), "world_size": world, "strategy": self.dist.strategy,
                 "global_batch": self.global_batch}
        if world > 1:
            state["rng_cpu_ranks"] = rng
        if torch.cuda.is_available() and world == 1:
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        if rng_gpu is not None:
            state["rng_cuda_ranks"] = rng_gpu  # each process's GPU (dropout on the GPU draws from it)
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if carried is not None:  # e.g. an RNN's hidden state carried into the next batch
            state["carried"] = carried
            if world > 1:
                state["carried_ranks"] = carried_ranks
        return state

    def restore(self) -> tuple[int, float, float]:
        """Load the last checkpoint into model, optimizer, RNG, scaler and carried state, on every rank; return
        its (step, elapsed, best_val)."""
        if self.dist.main:
            remove_stale_temp_files(self.run_dir)  # a kill -9 during a save leaves its temp file behind
        self.dist.barrier()
        path = self.run_dir / STATE
        state = load_trainer_state(path)
        self.parallel.load_model_state(state["model"], path, self.cfg.model)
        self.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
        self._restore_rng(state)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        model = self.parallel.model
        if isinstance(model, CarriesState):
            carried = state.get("carried_ranks", [state.get("carried", {})])
            # The streams are laid out per process count: another count starts them from zero state.
            same = state.get("world_size", 1) == self.dist.world
            model.load_carried_state(carried[self.dist.rank] if same else {})
        step = self.saved_step = state["step"]
        # A kill between the two renames of a save leaves model.safetensors a step behind: bring it level now.
        weights = self.run_dir / WEIGHTS
        self.write(lambda: weights_step(weights) == step or self._save_weights(state["model"], weights, step), weights)
        if self.dist.main:
            self._note_batch_change(state, path)
        return step, state["elapsed"], state["best_val"]

    def _restore_rng(self, state: dict) -> None:
        rank, world = self.dist.rank, self.dist.world
        rank_rngs = state.get("rng_cpu_ranks", [state["rng_cpu"]])
        if rank < len(rank_rngs):
            torch.set_rng_state(rank_rngs[rank])
        else:  # more processes than the run had: a fresh, distinct stream for this rank
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * rank + state["step"])
        if "rng_cuda" in state and torch.cuda.is_available() and world == 1:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        gpu_rngs = state.get("rng_cuda_ranks", [])
        if self.device.type == "cuda" and world > 1 and rank < len(gpu_rngs):
            torch.cuda.set_rng_state(gpu_rngs[rank], self.device)

    def _note_batch_change(self, state: dict, path: Path) -> None:
        """Say so when another process count changed the sequences per optimizer step."""
        saved_world, now = state.get("world_size", 1), self.dist.world
        before = state.get("global_batch", self.global_batch)
        if saved_world != now and before != self.global_batch:
            print(f"note: {path} was written by {saved_world} process(es) with {before} sequences per step; "
                  f"{now} process(es) now take {self.global_batch}. Set --train.grad_accum so that "
                  f"batch_size x grad_accum x processes = {before} to keep the same training.", file=sys.stderr)
