"""Streams records through a per-batch function into a RowStore: tokenize a chunk, pack it into
length-sorted token-budget batches, compute, write. Memory stays flat in the number of rows, and
only rows not yet done are computed, so a rerun resumes."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ntk_selector.config import DataConfig
from ntk_selector.data import Batch, Conversation, collate, encode, plan_batches
from ntk_selector.store import RowStore

CHUNK_ROWS = 4096


def run_rows(conversations: Sequence[Conversation], tokenizer: Any, data_cfg: DataConfig, store: RowStore,
             compute: Callable[[Batch], torch.Tensor], *, rows: np.ndarray | None = None,
             desc: str = "rows", quiet: bool = False) -> int:
    """Compute ``compute(batch) -> [B, dim]`` for every pending row (of ``rows``); return rows done now."""
    todo = store.pending(rows)
    pad_id = tokenizer.pad_token_id
    with tqdm(total=len(todo), desc=desc, unit="row", disable=quiet, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), CHUNK_ROWS):
            chunk = todo[start : start + CHUNK_ROWS]
            encoded = encode([conversations[i] for i in chunk], tokenizer, data_cfg)
            lengths = [e.length for e in encoded]
            for members in plan_batches(lengths, data_cfg.token_budget, data_cfg.max_batch_size):
                items = [encoded[j] for j in members]
                empty = np.array([e.n_response_tokens == 0 for e in items])
                values = compute(collate(items, pad_id)).detach().float().cpu().numpy()
                values[empty] = 0.0
                store.write(chunk[members], values, empty=empty)
                bar.update(len(members))
    return len(todo)
