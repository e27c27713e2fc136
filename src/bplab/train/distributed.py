"""Data-parallel training under ``torchrun`` (DistributedDataParallel), or a single process.

``torchrun --nproc_per_node=N stages/train.py <variant>`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; each rank then trains on its share of every global batch (the configured
``batch_size`` split across ranks), DDP averages the gradients, and rank 0 alone logs to MLflow
and writes outputs. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from bplab.errors import BplabError, ParamsError

_T = TypeVar("_T")


class RankFailed(BplabError):
    """Another rank of a torchrun job failed (the message is that rank's), or left the job early."""


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


@contextmanager
def joined(device_setting: str) -> Iterator[Placement]:
    """This process's place (:func:`start`) for the block, and the process group left at its end.

    A block that ends well waits for every rank (a barrier) before leaving. One that raises leaves
    at once: a rank that failed and then waited at the barrier, while the others waited in another
    collective for it, hung the job until gloo's 30-minute timeout, and the timeout's traceback
    replaced its one-line error. Once this rank has exited, torchrun ends the others, and a rank
    blocked in a collective with it gets an error from gloo at once.
    """
    placement = start(device_setting)
    try:
        yield placement
    except BaseException:
        _leave(placement)
        raise
    if placement.world > 1:
        try:
            dist.barrier()
        except RuntimeError as exc:  # the barrier is the last collective: a rank failed after training
            _leave(placement)
            raise RankFailed(f"another rank ended without finishing ({_first_line(exc)})") from None
    _leave(placement)


def _leave(placement: Placement) -> None:
    if placement.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def together(placement: Placement, work: Callable[[], _T]) -> _T:
    """``work()`` on this rank, then every rank learns whether it failed on any.

    Every rank calls it at the same point, around work without collectives of its own (a rank's
    own data and disk, rank 0's decisions). Where ``work`` raised on some rank, every rank ends
    there: the failing ones with their own exception, the others with :class:`RankFailed` holding
    the first failing rank's one-line error. Without it the others went on to their next
    collective and waited there for a rank that never came.
    """
    try:
        result = work()
    except Exception as exc:
        with suppress(RankFailed):  # another rank gone too: this rank's own error is still the one to tell
            _failures(str(exc) if isinstance(exc, BplabError) else f"{type(exc).__name__}: {_first_line(exc)}",
                      placement)
        raise
    failures = _failures("", placement)
    if failures:
        rank, message = failures[0]
        raise RankFailed(f"rank {rank} failed: {message}")
    return result


def _failures(message: str, placement: Placement) -> list[tuple[int, str]]:
    """Every rank's failure message (``""``: none), gathered on every rank: the failed ones' ``(rank, message)``."""
    if placement.world == 1:
        return [(0, message)] if message else []
    try:
        return [(rank, text) for rank, text in enumerate(_gather_text(message, placement)) if text]
    except RuntimeError as exc:  # a rank died instead of reporting
        raise RankFailed(f"another rank left the job ({_first_line(exc)})") from None


def _gather_text(text: str, placement: Placement) -> list[str]:
    """Every rank's ``text`` on every rank: their lengths, then (only where one is not empty) the bytes."""
    data = text.encode()
    size = torch.tensor([len(data)], dtype=torch.int64, device=placement.device)
    sizes = [torch.empty_like(size) for _ in range(placement.world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    if max(lengths) == 0:  # the usual case: one gather of a number
        return [""] * placement.world
    buffer = torch.zeros(max(lengths), dtype=torch.uint8)
    if data:
        buffer[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buffer = buffer.to(placement.device)
    buffers = [torch.empty_like(buffer) for _ in range(placement.world)]
    dist.all_gather(buffers, buffer)
    return [bytes(b.cpu().numpy()[:n]).decode() for b, n in zip(buffers, lengths)]


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
