"""Streams records through a per-batch function into a RowStore, resumably and across ranks.

Rows are taken in fixed chunks of input rows; each chunk is tokenized and packed into
length-sorted token-budget batches. The plan depends only on the data and the batch settings,
never on which rows are done or how many processes run, so a resumed run, an uninterrupted run
and a ``torchrun`` job all compute the same batches (identical numbers). Batch b of chunk c goes
to rank (b + c) mod world; a batch whose rows are all done is skipped, and a batch with some rows
done is computed whole but writes only its missing rows. Memory stays flat in the
number of rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ntk_selector import distributed
from ntk_selector.config import DataConfig
from ntk_selector.features.budget import TokenBudget
from ntk_selector.io.formats import Conversation
from ntk_selector.io.store import PENDING, RowStore
from ntk_selector.io.tokens import Batch, Encoded, collate, encode, encode_rows, plan_batches

CHUNK_ROWS = 4096
# Seconds to sleep after each written batch: lets the crash-safety tests kill a run mid-way.
DELAY_ENV = "NTK_SELECTOR_TEST_BATCH_DELAY"


def _pending_chunks(status: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(chunk number, first row, pending mask) of each CHUNK_ROWS-row chunk with a pending row. The
    chunk number is counted over all chunks, so batches go to the same rank on every rerun."""
    for c, start in enumerate(range(0, len(status), CHUNK_ROWS)):
        todo = status[start : start + CHUNK_ROWS] == PENDING
        if todo.any():
            yield c, start, todo


def run_rows(
    conversations: Sequence[Conversation],
    tokenizer: Any,
    data_cfg: DataConfig,
    store: RowStore,
    compute: Callable[[Batch], torch.Tensor],
    *,
    desc: str = "rows",
    quiet: bool = False,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    known: Sequence[Encoded] = (),
) -> int:
    """Compute ``compute(batch) -> [B, dim]`` for this rank's pending rows; return rows computed here.

    ``device``: where ``compute`` runs, for ``--token-budget auto`` (budget.TokenBudget): sized once,
    on the first pending chunk, and used for every chunk's plan; after an out-of-memory error this
    rank computes its planned batches in smaller pieces (the plan, and so which rank computes which
    batch, stays the same). ``known``: encodings of the first rows made earlier in the stage (the
    featurizer's probe), reused so each row is tokenized once a stage."""
    status = store.status()
    pad_id = tokenizer.pad_token_id
    delay = float(os.environ.get(DELAY_ENV) or 0.0)
    budget = TokenBudget(data_cfg.token_budget, device, desc, quiet=quiet)
    computed = 0
    with tqdm(
        total=int((status == PENDING).sum()), desc=desc, unit="row", disable=quiet or rank != 0, dynamic_ncols=True
    ) as bar:
        for c, start, todo in _pending_chunks(status):
            encoded = encode_rows(conversations, start, start + len(todo), tokenizer, data_cfg, known)
            lengths = [e.length for e in encoded]

            def run(members: list[int], encoded: list = encoded) -> torch.Tensor:
                return compute(collate([encoded[j] for j in members], pad_id))

            planned = budget.resolve(lengths, run)
            for b, members in enumerate(plan_batches(lengths, planned, data_cfg.max_batch_size)):
                missing = todo[members]
                if not missing.any():
                    continue
                if (b + c) % world == rank:
                    # the whole planned batch is computed (same numbers as any other run), its missing rows written
                    for piece, out in budget.run(members, lengths, run):
                        rows = np.asarray(piece)
                        wanted = todo[rows]
                        empty = np.array([encoded[j].n_response_tokens == 0 for j in piece])
                        values = out.detach().float().cpu().numpy()
                        values[empty] = 0.0
                        store.write(start + rows[wanted], values[wanted], empty=empty[wanted])
                        computed += int(wanted.sum())
                    if delay:
                        time.sleep(delay)
                bar.update(int(missing.sum()))
    return computed


def run_texts(
    conversations: Sequence[Conversation],
    tokenizer: Any,
    data_cfg: DataConfig,
    store: RowStore,
    compute: Callable[[list[Conversation]], np.ndarray],
    batch_rows: int,
    *,
    desc: str = "rows",
    quiet: bool = False,
    rank: int = 0,
    world: int = 1,
) -> int:
    """Like ``run_rows`` for encoders that read the records themselves (``compute(convs) -> [n, dim]``):
    fixed batches of ``batch_rows`` consecutive rows; rows with no response tokens under the
    language model's tokenizer are marked as such (zeros), as every store of a run marks them."""
    status = store.status()
    computed = 0
    with tqdm(
        total=int((status == PENDING).sum()), desc=desc, unit="row", disable=quiet or rank != 0, dynamic_ncols=True
    ) as bar:
        for c, start, todo in _pending_chunks(status):
            empty_all = np.array(
                [
                    e.n_response_tokens == 0
                    for e in encode(conversations[start : start + len(todo)], tokenizer, data_cfg)
                ]
            )
            for b, first in enumerate(range(0, len(todo), batch_rows)):
                members = np.arange(first, min(first + batch_rows, len(todo)))
                missing = todo[members]
                if not missing.any():
                    continue
                if (b + c) % world == rank:
                    values = np.asarray(compute([conversations[start + j] for j in members]), dtype=np.float32)
                    empty = empty_all[members]
                    values[empty] = 0.0
                    store.write(start + members[missing], values[missing], empty=empty[missing])
                    computed += int(missing.sum())
                bar.update(int(missing.sum()))
    return computed


def fill_store(
    path: Path,
    rows: int,
    dim: int,
    dtype: str,
    definition: dict[str, Any],
    overwrite: bool,
    work: Callable[[RowStore, distributed.Dist], int],
    extra: dict[str, Any] | None = None,
) -> int:
    """Open (or resume) a store and run ``work`` on it, on one process or every rank of a job.

    Under torchrun rank 0 creates or checks the store and holds the writer lock; the other ranks
    attach after it, each writes its own rows, and rank 0 records completion once all are done.
    Returns the rows computed by this process.
    """
    return fill_with(
        lambda writer: RowStore(path, rows, dim, dtype, definition, overwrite=overwrite and writer, writer=writer),
        work,
        extra,
    )


def fill_with(
    open_store: Callable[[bool], Any], work: Callable[[Any, distributed.Dist], int], extra: dict[str, Any] | None = None
) -> int:
    """``fill_store`` for any store-like object: ``open_store(writer)`` opens it as the writer
    (rank 0 or a lone process) or attached (the other ranks)."""
    d = distributed.current()
    if not d.enabled:
        with open_store(True) as store:
            n = work(store, d)
            store.finish(extra)
        return n
    holder: dict[str, Any] = {}

    def open_main() -> None:
        holder["store"] = open_store(True)

    def attach() -> None:
        if not d.is_main:
            holder["store"] = open_store(False)

    def compute() -> int:
        n = work(holder["store"], d)
        holder["store"].sync()
        return n

    try:
        distributed.on_main(open_main)
        distributed.all_ranks(attach)
        n = distributed.all_ranks(compute)
        distributed.on_main(lambda: holder["store"].finish(extra))
    finally:
        if "store" in holder:
            holder["store"].close()
    return n
