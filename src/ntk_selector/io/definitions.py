"""A result's definition (what it was made from and with) and the one rule for reruns: reuse a
finished result of the same definition, rebuild when asked to, and otherwise refuse, naming every
setting that differs. Warm-ups, trained adapters, training checkpoints, select output folders and
indexes all follow it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ntk_selector.errors import UserError


def canonical(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition as it reads back from JSON (tuples as lists, paths and dtypes as text), so a
    freshly built one compares equal to the saved copy."""
    return json.loads(json.dumps(definition, default=str))


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for every differing key (nested dicts flattened with dots)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    return "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def read_state(path: str | Path) -> dict[str, Any] | None:
    """A JSON state file as a dict; None when absent, damaged (outside our atomic writes) or not an object."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (ValueError, UnicodeDecodeError):
        return None
    return state if isinstance(state, dict) else None


def reuse_or_refuse(
    saved: dict[str, Any] | None,
    definition: dict[str, Any],
    refusal: str,
    *,
    ready: bool = True,
    overwrite: bool = False,
) -> bool:
    """True: ``saved`` (the definition read back; None when nothing was saved) equals ``definition``
    and the result is ``ready``, so reuse it. False: nothing to reuse, or ``overwrite``; build.
    Otherwise raise a UserError that starts with ``refusal`` and names what differs."""
    if saved is None:
        return False
    same = canonical(saved) == canonical(definition)
    if same and ready:
        return True
    if same or overwrite:
        return False
    raise UserError(
        f"{refusal} ({describe_differences(canonical(saved), canonical(definition))}); "
        f"use --overwrite or another output folder"
    )
