"""Many processes with ``torchrun``: rank and world size from its environment, a process group
for the few control messages (barriers, errors), and row sharding.

Ranks exchange no tensors: each writes its own rows into the one shared store (store.py), so a
gloo group serves CPU and GPU runs, one node or many. Every collective step goes through
``agree`` so that an error on any rank stops every rank with that rank's message instead of
leaving the others waiting at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ntk_selector.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """What torchrun says (RANK, WORLD_SIZE, LOCAL_RANK); single process when unset."""
    return Dist(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init(timeout_minutes: float = 360.0) -> Dist:
    """Join the process group when launched with WORLD_SIZE > 1; pin this rank's GPU.

    The timeout bounds how long ranks wait for rank 0's serial steps (warm-up, pre-selection),
    so it is long by default.
    """
    d = from_env()
    if d.enabled and not dist.is_initialized():
        _import_group_capturing_modules()
        dist.init_process_group("gloo", rank=d.rank, world_size=d.world, timeout=timedelta(minutes=timeout_minutes))
        if torch.cuda.is_available():
            torch.cuda.set_device(d.local_rank % torch.cuda.device_count())
    return current()


# torch modules whose functions take ``group=dist.group.WORLD`` as a default argument. Imported after
# the group exists (transformers imports them while loading a model), they hold the group for good:
# ``destroy_process_group`` then cannot free it, gloo's worker threads outlive it, and one of them
# releasing the last collective's tensors while the interpreter shuts down aborts the process
# ("terminate called without an active exception", exit -6) after a run that had succeeded.
# Imported before the group exists, their default is None.
GROUP_CAPTURING_MODULES = (
    "torch.distributed.nn",
    "torch.distributed.optim",
    "torch.distributed.fsdp.sharded_grad_scaler",
)


def _import_group_capturing_modules() -> None:
    import importlib

    for name in GROUP_CAPTURING_MODULES:
        importlib.import_module(name)


_solo = False


def current() -> Dist:
    """The job this process is part of (only once ``init`` has joined a group; one process inside ``solo``)."""
    return from_env() if dist.is_initialized() and not _solo else Dist()


@contextmanager
def solo() -> Iterator[None]:
    """Run as if alone: for commands that rank 0 runs by itself while the others wait."""
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shard(items: Sequence[T], d: Dist | None = None) -> Sequence[T]:
    """This rank's share: every world-th item starting at its rank."""
    d = d or current()
    return items[d.rank :: d.world]


def agree(error: BaseException | None) -> None:
    """Every rank says whether its part failed; all raise if any did (a barrier otherwise)."""
    d = current()
    if not d.enabled:
        if error is not None:
            raise error
        return
    mine = (
        None if error is None else (f"{error}" if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
    )
    messages: list[str | None] = [None] * d.world
    dist.all_gather_object(messages, mine)
    if error is not None:
        error.agreed = True  # type: ignore[attr-defined]
        raise error
    for rank, msg in enumerate(messages):
        if msg is not None:
            raise PeerError(f"rank {rank} failed: {msg}" if rank else msg)


class PeerError(UserError):
    """Another rank failed (rank 0 reports it for the job)."""

    agreed = True


def settle_after(error: BaseException) -> None:
    """After an error every rank knows about, leave together so rank 0's message gets out before
    torchrun stops the job; an error only this rank saw leaves at once."""
    if current().enabled and getattr(error, "agreed", False):
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - the job is ending anyway
            pass


def should_report(error: BaseException) -> bool:
    """An error every rank knows about is printed once, by rank 0; one only this rank saw, here."""
    return current().is_main or not getattr(error, "agreed", False)


def error_prefix(error: BaseException) -> str:
    d = current()
    return f"[rank {d.rank}] " if d.enabled and not getattr(error, "agreed", False) else ""


def all_ranks(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails anywhere, raise everywhere."""
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
        error = e
    agree(error)
    return result  # type: ignore[return-value]


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only while the others wait; rank 0's error is raised on every rank."""
    return all_ranks(fn if current().is_main else (lambda: None))
