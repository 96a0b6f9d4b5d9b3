"""torchrun support for the Trainer: the process group, this process's rank, and the few collectives it uses.

`torchrun --nproc_per_node N -m lmlab train ...` starts N copies of the same command with RANK, LOCAL_RANK and
WORLD_SIZE in their environment; `setup` joins them into one process group (NCCL between GPUs, gloo on CPU).
Without those variables (a plain `lmlab train`) there is one process and nothing here talks to anyone.
`Parallel` is the model as the training step runs it (DDP or FSDP), and its state gathered to rank 0 for a checkpoint.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WEIGHTS, check_shapes, load_state_into, unique_state_dict, weights_step
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


class Parallel:
    """The model as this process trains it: `module` (LossModule(model), under DDP or FSDP with several processes),
    and the model and optimizer state as one process would hold it, gathered from FSDP's shards to rank 0 and
    loaded back into them, so a checkpoint resumes with any number of processes and either strategy."""

    def __init__(self, model: torch.nn.Module, dist: Dist, device: torch.device):
        self.model, self.dist = model, dist
        self.module = wrap(model, dist, device)
        self.fsdp = dist.world > 1 and dist.strategy == "fsdp"

    def no_sync(self, skip: bool):
        """Skip the gradient all-reduce of the micro-batches before the last one of a step."""
        if not skip or self.dist.world == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(self.module)
        return self.module.no_sync()

    def model_state(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors (tied ones once) on rank 0; under FSDP gathered from the shards (every rank
        must call this; ranks other than 0 get {})."""
        if not self.fsdp:
            return unique_state_dict(self.model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        keep = unique_state_dict(self.model, keep_device=True).keys()
        return {k: v for k, v in full.items() if k in keep} if self.dist.main else {}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """optimizer.state_dict() as one process would write it (parameters numbered in group order); under FSDP
        gathered from the shards, so any number of processes with any strategy can load it."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.main:
            return {}
        index, groups = {}, []
        for group in full["param_groups"]:
            ids = [index.setdefault(fqn, len(index)) for fqn in group["params"]]
            groups.append({**group, "params": ids})
        return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups}

    def load_model_state(self, tensors: dict, source: Path, model_cfg) -> None:
        """Load one process's full state dict (a checkpoint's) into the model, or into this rank's FSDP shards."""
        if not self.fsdp:
            load_state_into(self.model, tensors, source)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        check_shapes(tensors, model_cfg, source, None, "the config")
        set_model_state_dict(self.model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in self.model.named_parameters()}
        fqn = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        full = {"state": {fqn[i]: v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, optimizer, full, options=StateDictOptions(full_state_dict=True))

    def close(self) -> None:
        """Leave the process group. DDP's reducer goes first: were it the last holder of the gloo process group,
        its destructor would join gloo's threads while holding the GIL, and a thread still freeing a finished
        collective's Python tensors would wait for that GIL forever (a rare hang seen at exit)."""
        if self.dist.world > 1 and not self.fsdp:
            import gc

            self.module = LossModule(self.model)
            gc.collect()
        self.dist.close()


@contextlib.contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


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


def check_launcher(nproc: int, verb: str) -> None:
    """A verb that prepares data and then trains (`lmlab classify train`, `lmlab finetune`) starts its own training
    processes: refuse a bad --nproc, and being started under torchrun itself."""
    check_nproc(nproc)
    if launched_world() > 1:
        raise LmlabError(f"{verb} prepares its data once, then starts the training processes: run it with --nproc N "
                         "rather than under torchrun.")


def train_processes(argv: list[str], nproc: int, run: Path, progress: bool) -> dict:
    """`lmlab <argv>` (a train command) in nproc processes (launch); the summary of what they trained."""
    launch(argv + ([] if progress else ["--quiet"]), nproc)
    return {"step": weights_step(Path(run) / WEIGHTS)}
