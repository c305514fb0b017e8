"""Which training process this is, under torchrun (tooltune_trainer.launcher) or alone.

Only rank 0 speaks for the job: it uploads checkpoints and the final model, patches the status, writes
Events and serves /metrics. Per node, the local rank 0 fetches what every process of the node reads from
local disk (data, the built tiny model, the checkpoint to resume) while the others wait at a
torch.distributed barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """The variables torchrun sets in each worker; a process alone is rank 0 of 1."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    return Ranks(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=world,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def ddp_backend(device: str) -> str:
    """NCCL between GPUs; gloo between CPU processes (Accelerate would pick MPI where torch has it)."""
    return "nccl" if device == "cuda" else "gloo"


def join_group(ranks: Ranks, device: str) -> None:
    """Join the process group now, as the Trainer would (Accelerate's PartialState, with the arguments
    TrainingArguments gives it), so that barriers work before the Trainer exists."""
    if not ranks.distributed:
        return
    if device != "cuda":
        # Accelerate names each CPU rank's device cpu:<local rank>, which the Trainer passes to torch.load as
        # map_location when it resumes, and torch cannot restore storages to "cpu:0": plain cpu instead.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    from accelerate import PartialState

    PartialState(cpu=device != "cuda", backend=ddp_backend(device))


@contextlib.contextmanager
def local_main_first(ranks: Ranks) -> Iterator[None]:
    """The node's local rank 0 runs the block first; the node's other processes run it once it is done."""
    if not ranks.distributed:
        yield
        return
    from accelerate import PartialState

    with PartialState().local_main_process_first():
        yield


def any_rank(ranks: Ranks, flag: bool) -> bool:
    """True on every rank when flag is True on any (a collective: every rank must call it)."""
    if not ranks.distributed:
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here (a collective: every rank must call it)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave_group(ranks: Ranks) -> None:
    """Leave the process group once this rank's collectives are over, as torch asks on a normal exit. A
    process that exits still in a gloo group can abort as the interpreter shuts down ("terminate called
    without an active exception", exit 134) after it has reported success. Local: it waits for no rank."""
    if not ranks.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
        log.info("rank %d left the process group", ranks.rank)
