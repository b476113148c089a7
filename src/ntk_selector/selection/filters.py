"""Pool hygiene before selection: rows that repeat an earlier row (folded: only the first copy can
be selected), rows that are exact copies of a domain row (left out: the domain is trained on
anyway), and rows that overlap the domain's test set (n-gram overlap), so a selection never trains
on the test answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.config import PoolFilterConfig
from ntk_selector.io import records
from ntk_selector.io.formats import Conversation, conversation_text
from ntk_selector.io.records import iter_record_chunks

REPORT_ROWS = 1000  # row lists in run.json are cut to this many


def conversation_key(conv: Conversation) -> bytes:
    """Identity of a row as the model sees it: prompt turns and response, exactly."""
    text = json.dumps([conv.prompt_messages, conv.response], ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def conversation_keys(conversations: Sequence[Conversation]) -> np.ndarray:
    """[rows, 16] uint8 row identities, made a chunk of conversations at a time."""
    chunk_rows = records.CHUNK_ROWS
    keys = np.empty((len(conversations), 16), dtype=np.uint8)
    for start in range(0, len(conversations), chunk_rows):
        part = conversations[start : start + chunk_rows]
        keys[start : start + len(part)] = np.frombuffer(
            b"".join(conversation_key(c) for c in part), dtype=np.uint8
        ).reshape(-1, 16)
    return keys


def duplicate_of(conversations: Sequence[Conversation], keys: np.ndarray | None = None) -> np.ndarray:
    """[rows] int64: the first earlier row with the same prompt and response, or -1.

    Arrays only (about 50 bytes a row): the 16-byte keys are sorted (stably, so each group of equal
    keys starts at its first row), and every later member of a group points at that first row.
    """
    n = len(conversations)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    halves = (conversation_keys(conversations) if keys is None else keys).view(np.uint64)  # [rows, 2]
    order = np.lexsort((halves[:, 1], halves[:, 0]))  # stable: equal keys keep row order
    sorted_keys = halves[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    del sorted_keys, halves
    group_first = order[np.maximum.accumulate(np.where(new_group, np.arange(n), 0))]
    later = ~new_group
    out[order[later]] = group_first[later]
    return out


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def ngrams(text: str, n: int) -> set[str]:
    """Lower-cased whitespace-token n-grams; a text shorter than n tokens is one gram (itself)."""
    tokens = text.lower().split()
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def read_test_ngrams(path: str | Path, n: int) -> set[str]:
    """n-grams of every test record (all its string fields, whatever they are called)."""
    grams: set[str] = set()
    for chunk in iter_record_chunks(path):
        for record in chunk:
            grams |= ngrams(" ".join(_strings(record)), n)
    return grams


def overlapping_rows(conversations: Sequence[Conversation], grams: set[str], n: int) -> np.ndarray:
    """[rows] bool: the row shares at least one n-gram with the test set."""
    hit = np.zeros(len(conversations), dtype=bool)
    for start in range(0, len(conversations), records.CHUNK_ROWS):
        part = conversations[start : start + records.CHUNK_ROWS]
        hit[start : start + len(part)] = [not grams.isdisjoint(ngrams(conversation_text(c), n)) for c in part]
    return hit


@dataclass
class PoolFilter:
    """Which pool rows may be selected, and what was found (for run.json)."""

    excluded: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def copies_of(keys: np.ndarray, other: Sequence[Conversation]) -> np.ndarray:
    """[rows] bool: the row (by its conversation key) is exactly one of the ``other`` conversations."""
    theirs = {bytes(k) for k in conversation_keys(other)}
    return np.fromiter((bytes(k) in theirs for k in keys), dtype=bool, count=len(keys))


def pool_filter(
    conversations: Sequence[Conversation], cfg: PoolFilterConfig, domain: Sequence[Conversation] | None = None
) -> PoolFilter:
    """Find duplicates (later copies excluded with ``dedupe``, the default), exact copies of a domain
    row (excluded unless ``keep_domain_copies``) and test-set overlaps (always excluded)."""
    keys = conversation_keys(conversations)
    dup = duplicate_of(conversations, keys)
    dup_rows = np.flatnonzero(dup >= 0)
    excluded = (dup >= 0) if cfg.dedupe else np.zeros(len(conversations), dtype=bool)
    report: dict[str, Any] = {
        "duplicates": {
            "rows": int(len(dup_rows)),
            "excluded": bool(cfg.dedupe),
            "pairs": [[int(i), int(dup[i])] for i in dup_rows[:REPORT_ROWS]],
        }
    }
    if domain is not None:
        copies = copies_of(keys, domain)
        if not cfg.keep_domain_copies:
            excluded |= copies
        report["domain_copies"] = {
            "rows": int(copies.sum()),
            "excluded": not cfg.keep_domain_copies,
            "pool_indices": np.flatnonzero(copies)[:REPORT_ROWS].tolist(),
        }
    if cfg.decontaminate:
        grams = read_test_ngrams(cfg.decontaminate, cfg.ngram)
        hit = overlapping_rows(conversations, grams, cfg.ngram)
        excluded |= hit
        report["decontamination"] = {
            "test_file": str(cfg.decontaminate),
            "ngram": cfg.ngram,
            "rows": int(hit.sum()),
            "excluded": True,
            "pool_indices": np.flatnonzero(hit)[:REPORT_ROWS].tolist(),
        }
    report["excluded_rows"] = int(excluded.sum())
    return PoolFilter(excluded, report)
