"""Pool hygiene before selection: rows that repeat an earlier row, and rows that overlap the
domain's test set (n-gram overlap), so a selection never trains on the test answers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ntk_selector.config import PoolFilterConfig
from ntk_selector.data import Conversation, clean_record, read_records

REPORT_ROWS = 1000  # row lists in run.json are cut to this many


def conversation_key(conv: Conversation) -> bytes:
    """Identity of a row as the model sees it: prompt turns and response, exactly."""
    text = json.dumps([conv.prompt_messages, conv.response], ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def duplicate_of(conversations: Sequence[Conversation]) -> np.ndarray:
    """[rows] int64: the first earlier row with the same prompt and response, or -1."""
    first: dict[bytes, int] = {}
    out = np.full(len(conversations), -1, dtype=np.int64)
    for i, conv in enumerate(conversations):
        j = first.setdefault(conversation_key(conv), i)
        if j != i:
            out[i] = j
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


def conversation_text(conv: Conversation) -> str:
    return " ".join([m["content"] for m in conv.prompt_messages] + [conv.response])


def read_test_ngrams(path: str | Path, n: int) -> set[str]:
    """n-grams of every test record (all its string fields, whatever they are called)."""
    grams: set[str] = set()
    for record in read_records(path):
        grams |= ngrams(" ".join(_strings(clean_record(record))), n)
    return grams


def overlapping_rows(conversations: Sequence[Conversation], grams: set[str], n: int) -> np.ndarray:
    """[rows] bool: the row shares at least one n-gram with the test set."""
    return np.array([not grams.isdisjoint(ngrams(conversation_text(c), n)) for c in conversations], dtype=bool)


@dataclass
class PoolFilter:
    """Which pool rows may be selected, and what was found (for run.json)."""

    excluded: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def pool_filter(conversations: Sequence[Conversation], cfg: PoolFilterConfig) -> PoolFilter:
    """Find duplicates (excluded with ``dedupe``) and test-set overlaps (always excluded)."""
    dup = duplicate_of(conversations)
    dup_rows = np.flatnonzero(dup >= 0)
    excluded = (dup >= 0) if cfg.dedupe else np.zeros(len(conversations), dtype=bool)
    report: dict[str, Any] = {"duplicates": {
        "rows": int(len(dup_rows)), "excluded": bool(cfg.dedupe),
        "pairs": [[int(i), int(dup[i])] for i in dup_rows[:REPORT_ROWS]],
    }}
    if cfg.decontaminate:
        grams = read_test_ngrams(cfg.decontaminate, cfg.ngram)
        hit = overlapping_rows(conversations, grams, cfg.ngram)
        excluded |= hit
        report["decontamination"] = {"test_file": str(cfg.decontaminate), "ngram": cfg.ngram, "rows": int(hit.sum()),
                                     "excluded": True, "pool_indices": np.flatnonzero(hit)[:REPORT_ROWS].tolist()}
    report["excluded_rows"] = int(excluded.sum())
    return PoolFilter(excluded, report)
