"""Data-parallel training under ``torchrun`` (DistributedDataParallel), or a single process.

``torchrun --nproc_per_node=N stages/train.py <variant>`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; each rank then trains on its share of every global batch (the configured
``batch_size`` split across ranks), DDP averages the gradients, and rank 0 alone logs to MLflow
and writes outputs. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bplab.errors import ParamsError


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, saves and reports progress."""
        return self.rank == 0

    def shard(self, start: int, size: int) -> tuple[int, int]:
        """This rank's contiguous part (offset, length) of the global batch ``[start, start + size)``."""
        lower = start + size * self.rank // self.world
        upper = start + size * (self.rank + 1) // self.world
        return lower, upper - lower


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a params error."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParamsError("device: 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    return torch.device("cuda", local_rank)


def start(device_setting: str) -> Placement:
    """Join the process group when launched by torchrun; otherwise a single process on its own."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    if world == 1:
        return Placement(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Placement(dist.get_rank(), dist.get_world_size(), device)


def stop(placement: Placement) -> None:
    """Leave the process group, after every rank has finished."""
    if placement.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """``model`` on its device, inside DistributedDataParallel when there are several ranks."""
    model = model.to(placement.device)
    if placement.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [placement.device.index] if placement.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(tensor: torch.Tensor, placement: Placement) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (itself in a single process)."""
    if placement.world > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(data: bytes | None, placement: Placement) -> bytes | None:
    """Rank 0's ``data`` on every rank (the others' own is ignored), so all ranks decide alike.

    Ranks on other nodes have other disks: a checkpoint read there may be missing or stale.
    """
    if placement.world == 1:
        return data
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=placement.device)
    dist.broadcast(size, src=0)
    if size.item() <= 0:
        return None if size.item() < 0 else b""
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if placement.is_main
              else torch.empty(int(size.item()), dtype=torch.uint8))
    buffer = buffer.to(placement.device)
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().tobytes()
