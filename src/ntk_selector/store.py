"""On-disk row store for features and embeddings: preallocated rows plus a per-row done mask.

Layout of a store folder:
- ``features.npy``  [rows, dim] (``numpy.load(path, mmap_mode="r")``), row i = input row i
- ``status.npy``    [rows] uint8: 0 = not computed, 1 = done, 2 = done but the row has no
  response tokens (its features are zeros and it is never selected)
- ``meta.json``     the definition (everything that determines the numbers), counts, completion

Rows are written with positioned writes (``pwrite``) and synced before their status bytes, so
after a crash a row marked done is always complete, and processes (also on other machines that
share the filesystem) can write disjoint rows of one store without touching each other's bytes.
Reopening with the same definition resumes the missing rows; another definition is refused with
a message listing what differs (``overwrite=True`` starts over). An exclusive lock refuses a
second writer; the workers of a distributed run attach without it while their rank 0 holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ntk_selector.errors import UserError

PENDING, DONE, EMPTY = 0, 1, 2
FEATURES, STATUS, META, LOCK = "features.npy", "status.npy", "meta.json", ".lock"
FORMAT = 1


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary name, sync, rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


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


def _data_offset(path: Path) -> int:
    """Byte offset of the array data in a .npy file."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        return fh.tell()


def read_status(path: str | Path) -> np.ndarray:
    """The done mask as it is on disk now (a fresh read, so other processes' writes are seen)."""
    return np.load(Path(path) / STATUS)


def _runs(sorted_rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start position, length) of runs of consecutive row numbers in a sorted index array."""
    if len(sorted_rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(sorted_rows)]])
    yield from zip(starts.tolist(), (ends - starts).tolist())


class RowStore:
    """A resumable [rows, dim] store; use as a context manager while writing.

    ``writer=True`` (the default) takes the lock, creates, checks or (``overwrite``) wipes the
    store. ``writer=False`` attaches to a store another process of the same run created and
    locked: it checks the definition and writes its own rows, nothing else.
    """

    def __init__(self, path: str | Path, rows: int, dim: int, dtype: str, definition: dict[str, Any],
                 overwrite: bool = False, writer: bool = True):
        self.path = Path(path)
        self.rows, self.dim, self.dtype = rows, dim, np.dtype(dtype)
        self.definition = json.loads(json.dumps({**definition, "rows": rows, "dim": dim, "store_dtype": str(self.dtype),
                                                 "store_format": FORMAT}, default=str))
        self.writer = writer
        self._lock_fh = None
        self._fds: dict[str, int] = {}
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fh = self._take_lock()
        try:
            self._open_or_create(overwrite)
            for name in (FEATURES, STATUS):
                self._fds[name] = os.open(self.path / name, os.O_RDWR)
            self._offsets = {name: _data_offset(self.path / name) for name in (FEATURES, STATUS)}
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------
    def _take_lock(self) -> Any:
        fh = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UserError(f"{self.path} is being written by another process (lock held); wait for it or stop it") from None
        return fh

    def _open_or_create(self, overwrite: bool) -> None:
        meta_path = self.path / META
        whole = meta_path.exists() and (self.path / FEATURES).exists() and (self.path / STATUS).exists()
        if whole:
            old = read_meta(self.path).get("definition", {})
            if old != self.definition:
                if not self.writer:
                    raise UserError(f"{self.path}: store definition changed under a running job ({describe_differences(old, self.definition)})")
                if not overwrite:
                    raise UserError(f"{self.path} holds another run ({describe_differences(old, self.definition)}); "
                                    f"use --overwrite to start over, or another output folder")
                whole = False
        if whole:
            return
        if not self.writer:
            raise UserError(f"{self.path}: no store to attach to (rank 0 did not create it)")
        self._create()

    def _create(self) -> None:
        for name in (META, FEATURES, STATUS):
            (self.path / name).unlink(missing_ok=True)
        for name, shape, dt in ((FEATURES, (self.rows, self.dim), self.dtype), (STATUS, (self.rows,), np.uint8)):
            tmp = self.path / (name + ".tmp.npy")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
            arr.flush()
            del arr
            os.replace(tmp, self.path / name)
        self._write_meta(complete=False, status=np.zeros(self.rows, np.uint8))

    def _write_meta(self, complete: bool, status: np.ndarray, extra: dict[str, Any] | None = None) -> None:
        counts = {"rows": self.rows, "done": int((status == DONE).sum()), "no_response_tokens": int((status == EMPTY).sum()),
                  "pending": int((status == PENDING).sum())}
        meta = {"definition": self.definition, "counts": counts, "complete": complete,
                "status_file": STATUS, "status_codes": {"pending": PENDING, "done": DONE, "no_response_tokens": EMPTY}}
        if extra:
            meta.update(extra)
        write_json_atomic(self.path / META, meta)

    def close(self) -> None:
        for fd in self._fds.values():
            os.fsync(fd)
            os.close(fd)
        self._fds = {}
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "RowStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- rows ------------------------------------------------------------------------------
    def status(self) -> np.ndarray:
        return read_status(self.path)

    def pending(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Row indices still to compute (optionally among ``rows``)."""
        idx = np.flatnonzero(self.status() == PENDING)
        return idx if rows is None else np.intersect1d(idx, rows)

    def _pwrite(self, name: str, rows: np.ndarray, data: np.ndarray) -> None:
        fd, base = self._fds[name], self._offsets[name]
        row_bytes = data.itemsize * int(np.prod(data.shape[1:], dtype=np.int64))
        for pos, length in _runs(rows):
            buf = np.ascontiguousarray(data[pos : pos + length]).tobytes()
            offset = base + int(rows[pos]) * row_bytes
            while buf:
                written = os.pwrite(fd, buf, offset)
                buf, offset = buf[written:], offset + written

    def write(self, rows: np.ndarray, values: np.ndarray, empty: np.ndarray | None = None) -> None:
        """Store rows, sync them, then mark them done (EMPTY where ``empty``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if values.shape != (len(rows), self.dim):
            raise ValueError(f"expected values of shape {(len(rows), self.dim)}, got {values.shape}")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        self._pwrite(FEATURES, rows, np.asarray(values)[order].astype(self.dtype, copy=False))
        os.fdatasync(self._fds[FEATURES])
        codes = np.full(len(rows), DONE, dtype=np.uint8)
        if empty is not None:
            codes[np.asarray(empty, dtype=bool)[order]] = EMPTY
        self._pwrite(STATUS, rows, codes)

    def sync(self) -> None:
        """Push this process's writes to the file system (before another process reads them)."""
        for fd in self._fds.values():
            os.fsync(fd)

    def finish(self, extra: dict[str, Any] | None = None) -> bool:
        """Sync, and record the counts (and completion once every row is done)."""
        self.sync()
        status = self.status()
        complete = bool((status != PENDING).all())
        self._write_meta(complete=complete, status=status, extra=extra)
        return complete

    @property
    def complete(self) -> bool:
        return bool((self.status() != PENDING).all())


def open_store(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read-only view of a finished store: (features memmap, status, meta)."""
    path = Path(path)
    if not (path / META).exists():
        raise UserError(f"{path}: not a feature store (no meta.json)")
    meta = read_meta(path)
    status = read_status(path)
    if not meta.get("complete") or (status == PENDING).any():
        raise UserError(f"{path}: store is incomplete ({int((status == PENDING).sum())} rows missing); rerun its stage to resume")
    return np.load(path / FEATURES, mmap_mode="r"), status, meta


def iter_row_blocks(features: np.ndarray, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) blocks of a [rows, dim] array. Memmapped stores are read with plain file reads
    so the pages do not stay mapped in this process: memory stays one block, whatever the pool."""
    path = getattr(features, "filename", None)
    offset = getattr(features, "offset", None)
    whole = (isinstance(features, np.memmap) and path is not None and offset is not None
             and features.flags.c_contiguous and os.path.exists(path)
             and os.path.getsize(path) == offset + features.nbytes)
    n = features.shape[0]
    if not whole:
        for start in range(0, n, block_rows):
            yield start, np.asarray(features[start : start + block_rows])
        return
    row_bytes = features.dtype.itemsize * int(np.prod(features.shape[1:], dtype=np.int64))
    with open(path, "rb", buffering=0) as fh:
        for start in range(0, n, block_rows):
            count = min(block_rows, n - start)
            out = np.empty((count, *features.shape[1:]), dtype=features.dtype)
            fh.seek(offset + start * row_bytes)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                r = fh.readinto(view[got:])
                if not r:
                    raise UserError(f"{path}: file is shorter than its header says")
                got += r
            yield start, out


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
