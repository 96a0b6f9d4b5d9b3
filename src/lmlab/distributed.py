"""torchrun support for the Trainer: the process group, this process's rank, and the few collectives it uses.

`torchrun --nproc_per_node N -m lmlab train ...` starts N copies of the same command with RANK, LOCAL_RANK and
WORLD_SIZE in their environment; `setup` joins them into one process group (NCCL between GPUs, gloo on CPU).
Without those variables (a plain `lmlab train`) there is one process and nothing here talks to anyone.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from .errors import LmlabError

STRATEGIES = ("auto", "single", "ddp", "fsdp")


@dataclass
class Dist:
    """Where this process stands: rank, world size, the strategy in force (single, ddp or fsdp)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    strategy: str = "single"
    owns_group: bool = False  # this Dist started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the processes (float64 on the CPU for gloo, on the GPU for NCCL)."""
        if self.world == 1:
            return list(values)
        device = torch.device("cuda", torch.cuda.current_device()) if _backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def _backend() -> str:
    return torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"


def launched_world() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(strategy: str, device: str) -> Dist:
    """Join the torchrun process group if there is one; return this process's Dist.

    strategy auto = ddp under torchrun with several processes, else single; ddp or fsdp with one process runs as
    single (the same config trains on a laptop). `device` (cpu, cuda, auto) picks the backend; on CUDA each
    process takes GPU LOCAL_RANK.
    """
    if strategy not in STRATEGIES:
        raise LmlabError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    world = launched_world()
    if world == 1:
        return Dist()
    if strategy == "single":
        raise LmlabError(f"torchrun started {world} processes but train.strategy is single; use ddp or fsdp "
                         "(or auto), or launch one process.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise LmlabError(f"device {device!r} was requested but this machine has no CUDA GPU; "
                             "use --train.device cpu.")
        torch.cuda.set_device(local_rank)
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        owns = True
    return Dist(rank=rank, local_rank=local_rank, world=world, strategy="ddp" if strategy == "auto" else strategy,
                owns_group=owns)


def rank_device(device: str, dist: Dist) -> str:
    """This process's device: cuda:LOCAL_RANK for a CUDA run under torchrun, else `device` unchanged."""
    if dist.world > 1 and (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{dist.local_rank}"
    return device


class LossModule(torch.nn.Module):
    """model.loss(batch) as a forward, so DDP and FSDP see (and synchronise around) the whole loss computation."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: LossModule(model), under DDP or FSDP when several processes run.

    FSDP (fully_shard, PyTorch's FSDP2): each element of every nn.ModuleList (Transformer blocks, say) is its
    own shard group, the rest of the model is the root group; parameters become DTensors sharded over ranks.
    """
    step = LossModule(model)
    if dist.world == 1:
        return step
    if dist.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(step, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    chosen: list[str] = []  # the outermost list elements only: nested shard groups would overlap
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and not any(name.startswith(c + ".") for c in chosen):
            for i, block in enumerate(module):
                if any(p.requires_grad for p in block.parameters()):
                    chosen.append(f"{name}.{i}")
    blocks = dict(model.named_modules())
    for name in reversed(chosen):
        fully_shard(blocks[name])
    fully_shard(step)
    return step


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise LmlabError(f"--nproc must be >= 1, got {nproc}.")


def launch(argv: list[str], nproc: int) -> None:
    """Run `python -m lmlab <argv>` in nproc processes on this machine through torchrun (its Python entry point, in
    this process, --standalone), returning when every worker succeeded and otherwise exiting with their status:
    128 + signal after SIGINT / SIGTERM (each worker saved a checkpoint), a failed worker's own code (it printed its
    error) otherwise."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    check_nproc(nproc)
    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "lmlab", *argv])
    try:
        run(args)
    except SignalException as e:
        raise SystemExit(128 + int(e.sigval)) from None
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        raise SystemExit(next((c for c in codes if c > 0), 128 - min(codes))) from None
