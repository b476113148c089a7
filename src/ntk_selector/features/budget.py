"""Token budgets: how many padded tokens (rows x longest row) one batch may hold (``--token-budget``).

A number is used as given. ``auto`` (the default) is ``CPU_BUDGET`` on a CPU. On a CUDA device it is
sized per stage from the stage's own work, so whatever the stage keeps on the device (the model in its
dtype, the LoRA layout, the per-sample gradient buffers, the projection's sign cache) is counted:
the longest rows of the first chunk, at most ``PROBE_TOKENS`` padded tokens, are run once (which
allocates the lazily built caches) and once more with the device's peak-memory counter reset. The
peak over what was allocated before, divided by the batch's padded tokens, is the memory a token
costs; the budget is ``MEMORY_SHARE`` of the memory still free (the rest is the safety margin)
divided by that. Activations and per-sample gradients grow linearly with a batch's tokens, and the
probe's rows are the longest, whose per-token cost is the highest, so the estimate errs on the safe
side. Under torchrun every rank measures and all take the smallest budget, so every rank plans the
same batches.

A batch that still runs out of device memory is not fatal: ``TokenBudget.run`` halves the budget and
computes the batch in smaller pieces (and every later batch too). Batches are only a way to share
work: the numbers a stage writes do not depend on how rows are batched (tests check it), so a
backed-off or resumed run with another budget writes the same rows. Only a single row that does not
fit alone is an error, with a message saying what to lower.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ntk_selector import distributed
from ntk_selector.errors import UserError

AUTO = "auto"
CPU_BUDGET = 2048  # padded tokens a batch on a CPU: ~1 MB of backward activations a token for a 135M model
PROBE_TOKENS = 2048  # padded tokens of the measured batch (it must fit before the budget is known)
MEMORY_SHARE = 0.7  # share of the free device memory a batch may use; the rest is the safety margin
MAX_BUDGET = 1 << 20  # beyond this, batches are capped by --max-batch-size long before memory


# ----------------------------------------------------------------------------- device memory
# One function per query, so the tests can fake a device's memory on the CPU.


def free_bytes(device: torch.device) -> int:
    """Memory a batch can still use: free on the device plus what torch holds cached but unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def allocated_bytes(device: torch.device) -> int:
    return int(torch.cuda.memory_allocated(device))


def reset_peak(device: torch.device) -> None:
    torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device))


def release(device: torch.device) -> None:
    """Hand cached blocks back after an out-of-memory error, so the smaller retry finds them."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    kinds = tuple(
        k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if k
    )
    return isinstance(error, kinds)


# ----------------------------------------------------------------------------- sizing


def budget_for_memory(free: int, bytes_per_token: float, share: float = MEMORY_SHARE, floor: int = 1) -> int:
    """Padded tokens a batch may hold: ``share`` of ``free`` bytes over what a token costs, in
    [``floor``, MAX_BUDGET], rounded down to a multiple of 64 above 64."""
    if bytes_per_token <= 0:
        return MAX_BUDGET
    tokens = int(share * free / bytes_per_token)
    if tokens > 64:
        tokens -= tokens % 64
    return max(floor, min(tokens, MAX_BUDGET))


def probe_rows(lengths: Sequence[int], tokens: int = PROBE_TOKENS) -> list[int]:
    """The longest rows (ties by index), as many as fit ``tokens`` padded tokens (at least one)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if not order:
        return []
    longest = max(1, lengths[order[0]])
    return order[: max(1, min(len(order), tokens // longest))]


def padded_tokens(members: Sequence[int], lengths: Sequence[int]) -> int:
    return len(members) * max((lengths[i] for i in members), default=0)


def split_to_budget(members: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """``members`` cut, in their order, into consecutive pieces of at most ``budget`` padded tokens
    (a row longer than the budget goes alone)."""
    pieces: list[list[int]] = []
    piece: list[int] = []
    longest = 0
    for i in members:
        grown = max(longest, lengths[i])
        if piece and (len(piece) + 1) * grown > budget:
            pieces.append(piece)
            piece, grown = [], lengths[i]
        piece.append(i)
        longest = grown
    if piece:
        pieces.append(piece)
    return pieces


# ----------------------------------------------------------------------------- which budgets a run chose

_recorders: list[dict[str, int]] = []
_said: set[str] = set()


@contextlib.contextmanager
def recording() -> Iterator[dict[str, int]]:
    """Collect ``{stage: budget}`` of every budget resolved (or backed off) inside the block (for run.json)."""
    chosen: dict[str, int] = {}
    _recorders.append(chosen)
    try:
        yield chosen
    finally:
        _recorders.remove(chosen)


def recorded() -> dict[str, int]:
    """What the innermost ``recording`` block has collected so far (empty outside one)."""
    return dict(_recorders[-1]) if _recorders else {}


def resolve_setting(setting: int | str) -> int:
    """A budget without measuring: the number given, or ``auto``'s CPU value (used where a handful of
    rows is batched, and before a stage has a device)."""
    return int(setting) if setting != AUTO else CPU_BUDGET


class TokenBudget:
    """A stage's token budget: resolved once (``resolve``), lowered on out-of-memory (``run``)."""

    def __init__(
        self, setting: int | str, device: torch.device | str | None, stage: str, *, quiet: bool = False
    ) -> None:
        self.setting = setting
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.stage = stage
        self.quiet = quiet
        self.value: int | None = None if setting == AUTO else int(setting)  # the budget batches are computed with now
        self.planned: int | None = None  # the budget batches are planned with: fixed once resolved
        self.how = "--token-budget"

    def resolve(self, lengths: Sequence[int], run: Callable[[list[int]], Any]) -> int:
        """The budget: the number given, 2048 on a CPU, or measured on a CUDA device with ``run(members)``
        (the stage's own work on rows ``members`` of ``lengths``). The same on every rank."""
        if self.value is None:
            if self.device.type != "cuda":
                self.value, self.how = CPU_BUDGET, "auto on a CPU"
                self._say(f"token budget: {self.value} padded tokens a batch ({self.how})", once=True)
            else:
                value, self.how = self._measure(lengths, run)
                self.value = distributed_min(value)
                self._say(f"token budget for {self.stage}: {self.value} padded tokens a batch ({self.how})")
        if self.planned is None:
            self.planned = self.value
            self._record()
        return self.planned

    def _measure(self, lengths: Sequence[int], run: Callable[[list[int]], Any]) -> tuple[int, str]:
        members = probe_rows(lengths)
        if not members:
            return CPU_BUDGET, "auto: no rows to measure"
        while True:
            try:
                run(members)  # first call: allocates what the stage keeps (projection signs, head vector)
                release(self.device)
                base = allocated_bytes(self.device)
                reset_peak(self.device)
                run(members)
                used = peak_bytes(self.device) - base
                break
            except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled
                if not is_out_of_memory(e):
                    raise
                release(self.device)
                if len(members) == 1:
                    raise self._too_long(members[0], lengths) from None
                members = members[: len(members) // 2]
        tokens = padded_tokens(members, lengths)
        per_token = max(used, 1) / max(tokens, 1)
        free = free_bytes(self.device)
        value = budget_for_memory(free, per_token, floor=tokens)
        return value, (
            f"auto: {per_token / 2**20:.2f} MiB a token measured on {len(members)} rows, "
            f"{free / 2**30:.1f} GiB free on {self.device}, {MEMORY_SHARE:.0%} of it used"
        )

    def run(
        self, members: Sequence[int], lengths: Sequence[int], fn: Callable[[list[int]], Any]
    ) -> list[tuple[list[int], Any]]:
        """``fn(piece)`` over one planned batch, cut into pieces within the budget; on out-of-memory the
        budget halves and the failed piece is retried in smaller pieces. Returns ``(piece, fn(piece))`` pairs."""
        budget = self.value if self.value is not None else resolve_setting(self.setting)
        pending = split_to_budget(list(members), lengths, budget)
        done: list[tuple[list[int], Any]] = []
        while pending:
            piece = pending.pop(0)
            try:
                done.append((piece, fn(piece)))
            except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled
                if not is_out_of_memory(e):
                    raise
                release(self.device)
                if len(piece) == 1:
                    raise self._too_long(piece[0], lengths) from None
                self.value = max(1, min(self.value or budget, padded_tokens(piece, lengths) // 2))
                self.how = "halved after running out of device memory"
                self._say(f"token budget for {self.stage}: {self.value} padded tokens a batch ({self.how})")
                self._record()
                pending = [p for q in [piece, *pending] for p in split_to_budget(q, lengths, self.value)]
        return done

    def _too_long(self, row: int, lengths: Sequence[int]) -> UserError:
        return UserError(
            f"{self.stage}: a single row of {lengths[row]} tokens does not fit in the memory of {self.device}; "
            f"lower --max-length (or use a smaller --dtype or model)"
        )

    def _record(self) -> None:
        for chosen in _recorders:
            chosen[self.stage] = int(self.planned if self.planned is not None else self.value or 0)
            if self.planned is not None and self.value is not None and self.value < self.planned:
                chosen[f"{self.stage} (after out-of-memory)"] = int(self.value)

    def _say(self, message: str, once: bool = False) -> None:
        """Print to stderr unless quiet (rank 0 only); ``once``: once a process (the CPU default, not per stage)."""
        if self.quiet or not distributed.current().is_main or (once and message in _said):
            return
        _said.add(message)
        print(message, file=sys.stderr, flush=True)


def distributed_min(value: int) -> int:
    """The smallest of every rank's value (the value itself on one process)."""
    d = distributed.current()
    if not d.enabled:
        return value
    import torch.distributed as dist

    values: list[Any] = [None] * d.world
    dist.all_gather_object(values, int(value))
    return int(min(values))
