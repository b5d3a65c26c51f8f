"""Data parallelism for the stages that generate: which items this process owns, and putting results together.

Every generating stage (GRPO rollouts, MPO pairs, iterative SFT's judge pass, distill, rejection-sample,
reward-model scoring, `r1v eval`) follows one pattern on N processes:

    rank, world = world_info()
    mine = shard(items, rank, world)                 # a contiguous, balanced slice per process
    results = [work(x) for x in mine]                # each item handled by exactly one process
    everything = gather(results, world)              # all processes get the list in the original order

Contiguous slices keep a GRPO group (one prompt's `num_generations` completions) on one process. With one
process (or no `torch.distributed` process group) every function is the identity. The process group is the
one `accelerate` / `torchrun` set up (gloo on CPU, NCCL on GPU); objects travel with `all_gather_object`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from r1v.errors import ConfigError

T = TypeVar("T")


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else of the launcher's environment
    (`RANK`/`WORLD_SIZE`, set by torchrun and accelerate before a group exists), else (0, 1)."""
    if _initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def ensure_process_group() -> tuple[int, int]:
    """Initialise the process group of a torchrun/accelerate launch when nothing has yet (through
    accelerate's `PartialState`, which picks gloo on CPU and NCCL on GPU); returns (rank, world)."""
    if not _initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    return world_info()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of process `rank`'s contiguous slice of `n` items; sizes differ by at most one, the
    first `n % world` processes take one more."""
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside a world of {world} processes")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Process `rank`'s contiguous slice of `items` (see `shard_bounds`)."""
    start, stop = shard_bounds(len(items), rank, world)
    return list(items[start:stop])


def even_shard(n: int, world: int, what: str) -> int:
    """Items per process when `n` must split evenly (a global batch); ConfigError naming `what` otherwise."""
    if n % world:
        raise ConfigError(f"{what} is {n}, which does not split over {world} processes; make it a multiple of "
                          f"{world} (e.g. {max(world, n - n % world)} or {n + world - n % world})")
    return n // world


def gather(local: list[Any], world: int | None = None) -> list[Any]:
    """Every process's `local` list concatenated in rank order, on every process (identity for one)."""
    world = world if world is not None else world_info()[1]
    if world == 1 or not _initialized():
        return list(local)
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, list(local))
    return [x for part in parts for x in part]


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` of process `src` on every process (identity for one)."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over the processes, added in rank order (so every process gets the
    same float, whatever the backend's reduction order; identity for one)."""
    local = [float(v) for v in values]
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return [sum(col) for col in zip(*parts, strict=True)]


def barrier() -> None:
    if _initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
