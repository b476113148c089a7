"""The lines of ``selected.jsonl``: the user's pool record, unchanged, plus our fields where they cannot collide."""

from __future__ import annotations

import json
from typing import Any

OUR_FIELDS = ("ntk_score", "pool_index")
NESTED_KEY = "ntk_selector"


def with_our_fields(record: dict[str, Any], score: float | None, pool_index: int) -> dict[str, Any]:
    """The user's record unchanged, followed by our fields as its last key(s).

    Normally ``ntk_score`` and ``pool_index`` are added at the top level. When the record already
    has a field of either name, both of ours go instead into one object
    ``{"ntk_score": ..., "pool_index": ...}`` under the first of ``ntk_selector``, ``_ntk_selector``,
    ``__ntk_selector``, ... that the record does not have. Either way ours come last on the line.
    """
    ours = {"ntk_score": score, "pool_index": pool_index}
    if not any(k in record for k in OUR_FIELDS):
        return {**record, **ours}
    key = NESTED_KEY
    while key in record:
        key = "_" + key
    return {**record, key: ours}


def our_fields(line_obj: dict[str, Any]) -> dict[str, Any]:
    """``{"ntk_score", "pool_index"}`` of a selected.jsonl object, wherever with_our_fields put them."""
    last = next(reversed(line_obj)) if line_obj else None
    if last == "pool_index":
        return {k: line_obj[k] for k in OUR_FIELDS}
    return dict(line_obj[last])


def user_record(line_obj: dict[str, Any]) -> dict[str, Any]:
    """The pool record as the user wrote it, from a selected.jsonl object."""
    last = next(reversed(line_obj)) if line_obj else None
    drop = set(OUR_FIELDS) if last == "pool_index" else {last}
    return {k: v for k, v in line_obj.items() if k not in drop}


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
