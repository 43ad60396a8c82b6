"""Multi-process training under torchrun (PyTorch DDP): which share of the work this process
does, and the few collectives a run needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 `glmc train` joins the
process group (NCCL on GPUs, gloo on CPUs). Every rank draws the same global batch from the
counter-based seeds and keeps its slice `[rank::world]` of each stream, so no index is
repeated across ranks and the union of the slices is the single-process batch.
Without torchrun every function here is a no-op on one process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from glmc.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share: rank `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T] | Tensor) -> Sequence[T] | Tensor:
        """This rank's items: every `world`-th one from position `rank`."""
        return items[self.rank :: self.world]


SINGLE = Shard()
GROUP_DRAIN_SECONDS = 0.1


def launched_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str) -> tuple[Shard, str]:
    """Join the torchrun process group when there is one; returns the shard and this rank's device."""
    if launched_world() <= 1:
        return SINGLE, device
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        store, rank, world = next(dist.rendezvous("env://"))
        # Keys of this attempt only: after a torchrun restart (--max-restarts) the store can still hold the
        # failed attempt's addresses, and a rank that reads one cannot connect (seen with gloo here).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=dist.PrefixStore(f"glmc/attempt-{attempt}", store),
                                rank=rank, world_size=world)
    return Shard(dist.get_rank(), dist.get_world_size()), device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def stop() -> None:
    """Leave the process group (no barrier: a rank that failed must still exit, so torchrun stops the others)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # gloo's worker threads free a finished collective's tensors after its caller has moved on, and
        # need the GIL for it; one still at it when the interpreter shuts down aborts the process
        # ("terminate called without an active exception", exit -6: 4 exits in 30 of a test here).
        # A DDP wrapper keeps the group and its threads alive past destroy_process_group, so hand
        # them the GIL for a moment instead of relying on the group's destructor to join them.
        time.sleep(GROUP_DRAIN_SECONDS)


def barrier() -> None:
    if active():
        dist.barrier()


def sum_across(tensor: Tensor) -> Tensor:
    """The element-wise sum of `tensor` over all ranks (in place; returned for chaining)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_across(tensor: Tensor) -> Tensor:
    """Every rank's `tensor`, stacked in rank order: world x ... (1 x ... in one process)."""
    if not active():
        return tensor[None]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def any_across(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank."""
    return any_across_each([flag], device)[0]


def any_across_each(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """For each flag, True on every rank when it is true on any rank (one all-reduce for all of them)."""
    if not active():
        return list(flags)
    values = sum_across(torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device))
    return [bool(value > 0) for value in values.tolist()]


def share_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), which its checkpoint holds."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def union_across(items: set) -> set:
    """The union of every rank's `items` (small sets of picklable values)."""
    if not active():
        return set(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(items))
    return set().union(*map(set, gathered))
