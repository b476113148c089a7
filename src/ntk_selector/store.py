"""On-disk row store for features and embeddings: preallocated memmap rows plus a done mask.

Layout of a store folder:
- ``features.npy``  [rows, dim] (``numpy.load(path, mmap_mode="r")``), row i = input row i
- ``status.npy``    [rows] uint8: 0 = not computed, 1 = done, 2 = done but the row has no
  response tokens (its features are zeros and it is never selected)
- ``meta.json``     the definition (everything that determines the numbers), counts, completion

Rows are flushed before their status, so after a crash a row marked done is always complete.
Reopening with the same definition resumes the missing rows; another definition is refused with
a message listing what differs (``overwrite=True`` starts over). An exclusive lock refuses a
second writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.errors import UserError

PENDING, DONE, EMPTY = 0, 1, 2
FEATURES, STATUS, META, LOCK = "features.npy", "status.npy", "meta.json", ".lock"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs)


class RowStore:
    """A resumable [rows, dim] store; use as a context manager while writing."""

    def __init__(self, path: str | Path, rows: int, dim: int, dtype: str, definition: dict[str, Any],
                 overwrite: bool = False, lock: bool = True):
        self.path = Path(path)
        self.rows, self.dim, self.dtype = rows, dim, np.dtype(dtype)
        self.definition = json.loads(json.dumps({**definition, "rows": rows, "dim": dim, "dtype": str(self.dtype)},
                                                default=str))
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = self._take_lock() if lock else None
        meta_path = self.path / META
        if meta_path.exists():
            old = read_meta(self.path).get("definition", {})
            if old != self.definition:
                if not overwrite:
                    self._release_lock()
                    raise UserError(f"{self.path} holds another run ({describe_differences(old, self.definition)}); "
                                    f"use --overwrite to start over or another output folder")
                self._wipe()
        if not meta_path.exists():
            self._create()
        self.features = np.load(self.path / FEATURES, mmap_mode="r+")
        self.status = np.load(self.path / STATUS, mmap_mode="r+")

    # -- lifecycle -------------------------------------------------------------------------
    def _take_lock(self) -> Any:
        fh = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UserError(f"{self.path} is being written by another process (lock held)") from None
        return fh

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _wipe(self) -> None:
        for name in (FEATURES, STATUS, META):
            (self.path / name).unlink(missing_ok=True)

    def _create(self) -> None:
        for name, shape, dt in ((FEATURES, (self.rows, self.dim), self.dtype), (STATUS, (self.rows,), np.uint8)):
            tmp = self.path / (name + ".tmp.npy")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
            arr.flush()
            del arr
            os.replace(tmp, self.path / name)
        self._write_meta(complete=False)

    def _write_meta(self, complete: bool, extra: dict[str, Any] | None = None) -> None:
        counts = {"rows": self.rows}
        if hasattr(self, "status"):
            counts.update(done=int((self.status == DONE).sum()), empty=int((self.status == EMPTY).sum()))
        meta = {"definition": self.definition, "counts": counts, "complete": complete,
                "status_file": STATUS, "status_codes": {"pending": PENDING, "done": DONE, "no_response_tokens": EMPTY}}
        if extra:
            meta.update(extra)
        write_json_atomic(self.path / META, meta)

    def close(self) -> None:
        if hasattr(self, "features"):
            self.features.flush()
            self.status.flush()
        self._release_lock()

    def __enter__(self) -> "RowStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- rows ------------------------------------------------------------------------------
    def pending(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Row indices still to compute (optionally among ``rows``)."""
        idx = np.flatnonzero(self.status == PENDING)
        return idx if rows is None else np.intersect1d(idx, rows)

    def write(self, rows: np.ndarray, values: np.ndarray, empty: np.ndarray | None = None) -> None:
        """Store rows, flush them, then mark them done (EMPTY where ``empty``)."""
        order = np.argsort(rows)
        rows, values = np.asarray(rows)[order], values[order]
        self.features[rows] = values.astype(self.dtype, copy=False)
        self.features.flush()
        codes = np.full(len(rows), DONE, dtype=np.uint8)
        if empty is not None:
            codes[np.asarray(empty)[order]] = EMPTY
        self.status[rows] = codes
        self.status.flush()

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        """Record completion once every row is done."""
        self._write_meta(complete=bool((self.status != PENDING).all()), extra=extra)

    @property
    def complete(self) -> bool:
        return bool((self.status != PENDING).all())


def open_store(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read-only view of a finished store: (features memmap, status, meta)."""
    path = Path(path)
    if not (path / META).exists():
        raise UserError(f"{path}: not a feature store (no meta.json)")
    meta = read_meta(path)
    status = np.load(path / STATUS)
    if not meta.get("complete") or (status == PENDING).any():
        raise UserError(f"{path}: store is incomplete ({int((status == PENDING).sum())} rows missing); rerun its stage to resume")
    return np.load(path / FEATURES, mmap_mode="r"), status, meta


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
