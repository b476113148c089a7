"""What a select run writes for the user: ``selected.jsonl`` (the user's pool record, unchanged,
plus our two fields where they cannot collide), the selection as TRL rows, and ``scores.csv``.

The score field is named by what it holds (the method's ``score_name``): ``ntk_score`` for ntk,
``less_max_cosine`` for less, ``embedding_votes`` for embedding, ``no_score`` (empty) for the
random draws."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.io.files import atomic_open, write_text_atomic
from ntk_selector.io.formats import OUTPUT_FILES, to_trl_row
from ntk_selector.io.records import Records

NESTED_KEY = "ntk_selector"


def with_our_fields(
    record: dict[str, Any], score: float | None, pool_row: int, score_name: str = "ntk_score"
) -> dict[str, Any]:
    """The user's record unchanged, followed by our fields as its last key(s).

    ``pool_row``: the record's 0-based row in the pool, written as the field ``pool_index`` (a file-format
    contract). Normally ``score_name`` and ``pool_index`` are added at the top level, in that order. When the
    record already has a field of either name, both of ours go instead into one object
    ``{score_name: ..., "pool_index": ...}`` under the first of ``ntk_selector``, ``_ntk_selector``,
    ``__ntk_selector``, ... that the record does not have. Either way ours come last on the line.
    """
    ours = {score_name: score, "pool_index": pool_row}
    if not any(k in record for k in ours):
        return {**record, **ours}
    key = NESTED_KEY
    while key in record:
        key = "_" + key
    return {**record, key: ours}


def our_fields(line_obj: dict[str, Any]) -> dict[str, Any]:
    """``{score_name: ..., "pool_index": ...}`` of a selected.jsonl object, wherever with_our_fields put them."""
    keys = list(line_obj)
    if keys and keys[-1] == "pool_index":
        return {k: line_obj[k] for k in keys[-2:]}
    return dict(line_obj[keys[-1]])


def user_record(line_obj: dict[str, Any]) -> dict[str, Any]:
    """The pool record as the user wrote it, from a selected.jsonl object."""
    keys = list(line_obj)
    drop = set(keys[-2:]) if keys and keys[-1] == "pool_index" else set(keys[-1:])
    return {k: v for k, v in line_obj.items() if k not in drop}


def write_selected(path: Path, pool: Records, chosen: np.ndarray, scores: np.ndarray, score_name: str) -> None:
    """selected.jsonl: the chosen pool records in rank order, each with its score and pool row."""
    buf = io.StringIO()
    for i, record in zip(chosen, pool.rows_at(chosen), strict=True):
        score = None if not np.isfinite(scores[i]) else float(scores[i])
        buf.write(json_line(with_our_fields(record, score, int(i), score_name)))
    write_text_atomic(path, buf.getvalue())


def write_trl_rows(out: Path, pool: Records, chosen: np.ndarray, kind: str) -> None:
    """The selection as TRL rows (--output-format), in rank order, ready for an SFT trainer."""
    if kind == "records":
        return
    rows = pool.subset(chosen, "").conversations
    write_text_atomic(
        out / OUTPUT_FILES[kind], "".join(json.dumps(to_trl_row(c, kind), ensure_ascii=False) + "\n" for c in rows)
    )


SCORES_HEADER = ("pool_index", "votes", "preselected")  # then the method's score_name


def _score_text(value: float) -> str:
    """A score as scores.csv writes it: empty when not finite, else the float's shortest repr."""
    return "" if not np.isfinite(value) else repr(float(value))


def write_scores(
    path: Path, votes: np.ndarray, preselected: np.ndarray, scores: np.ndarray, score_name: str, block: int = 65536
) -> None:
    """scores.csv, one line per pool row, written in blocks to an exclusive temporary, then renamed."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join((*SCORES_HEADER, score_name)) + "\n")
        for start in range(0, len(votes), block):
            rows = range(start, min(len(votes), start + block))
            fh.write("".join(f"{i},{int(votes[i])},{int(preselected[i])},{_score_text(scores[i])}\n" for i in rows))


# Characters that are fine inside a JSON string but that str.splitlines() and some editors treat as
# line breaks: written escaped, so one record stays on one line for every reader.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(obj: dict[str, Any]) -> str:
    """One JSON line that reads back to ``obj``: readable UTF-8, with lone surrogates (not valid
    UTF-8) and the characters above escaped."""
    try:
        text = json.dumps(obj, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True) + "\n"
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text + "\n"
