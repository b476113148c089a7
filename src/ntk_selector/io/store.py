"""On-disk row store for features and embeddings: preallocated rows plus a per-row done mask.

Layout of a store folder:
- ``features.npy``  [rows, dim] (``numpy.load(path, mmap_mode="r")``), row i = input row i
- ``status.npy``    [rows] uint8: 0 = not computed, 1 = done, 2 = done but the row has no
  response tokens (its features are zeros and it is never selected)
- ``checksums.npy`` [rows] uint32: CRC-32 of each written row's bytes, synced with the row before
  its status byte. Opening a store to resume verifies every done row and recomputes the rows whose
  checksum fails (a zeroed, corrupted or truncated ``features.npy`` is repaired, not reused);
  opening it to read (``open_store``) refuses a store with failing rows.
- ``meta.json``     the definition (everything that determines the numbers), counts, completion,
  and ``work_seconds``: the wall time the store was open for writing, summed over every run that
  wrote it (saved at least once a minute while rows are written, so a crashed run's time counts too)

Rows are written with positioned writes (``pwrite``) and synced before their status bytes, so
after a crash a row marked done is always complete, and processes (also on other machines that
share the filesystem) can write disjoint rows of one store without touching each other's bytes.
Reopening with the same definition resumes the missing rows; another definition is refused with
a message listing what differs (``overwrite=True`` starts over). An exclusive lock refuses a
second writer; the workers of a distributed run attach without it while their rank 0 holds it.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.errors import UserError
from ntk_selector.io.definitions import describe_differences
from ntk_selector.io.files import LOCK, disk_full, release_lock, take_lock, temporary_beside, write_json_atomic

PENDING, DONE, EMPTY = 0, 1, 2
FEATURES, STATUS, META, CHECKSUMS = "features.npy", "status.npy", "meta.json", "checksums.npy"
FORMAT = 1
WORK_SECONDS_EVERY = 60.0  # how often a writer saves its running work_seconds while rows are written

__all__ = [
    "PENDING",
    "DONE",
    "EMPTY",
    "FEATURES",
    "STATUS",
    "META",
    "CHECKSUMS",
    "LOCK",
    "RowStore",
    "open_store",
    "read_meta",
    "write_json_atomic",
    "describe_differences",
    "iter_row_blocks",
    "check_same_features",
]


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{path}: cannot be read as a store's meta.json ({e}); rerun its stage with --overwrite"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a store's meta.json (expected an object); rerun its stage with --overwrite")
    return meta


def row_checksums(block: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (a row = one input row's features)."""
    block = np.ascontiguousarray(block)
    flat = block.reshape(len(block), -1).view(np.uint8)
    return np.fromiter((zlib.crc32(r) for r in flat), dtype=np.uint32, count=len(block))


def _array_geometry(path: Path) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(data offset, shape, dtype) from a .npy header, or None when the header is unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            return fh.tell(), tuple(shape), np.dtype(dtype)
    except (OSError, ValueError, EOFError):
        return None


def _expected_size(geometry: tuple[int, tuple[int, ...], np.dtype]) -> int:
    offset, shape, dtype = geometry
    return offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def bad_rows(features: np.ndarray, status: np.ndarray, checksums: np.ndarray, block_rows: int = 4096) -> np.ndarray:
    """Rows marked written whose bytes no longer match their checksum."""
    bad: list[np.ndarray] = []
    for start, block in iter_row_blocks(features, block_rows):
        written = status[start : start + len(block)] != PENDING
        if not written.any():
            continue
        mismatch = written & (row_checksums(block) != checksums[start : start + len(block)])
        bad.append(start + np.flatnonzero(mismatch))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


# Definition fields that must agree between a domain store and a pool store scored together:
# everything that shapes the feature space, not the data.
FEATURE_SPACE_FIELDS = (
    "stage",
    "model",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "adapter_fingerprint",
    "lora",
    "compute_dtype",
    "objective",
    "logits_mode",
    "projection",
    "proj_dim",
    "projection_dtype",
    "seed",
    "dim",
    "chat_template",
    "store_format",
)


def check_same_features(
    domain_path: str | Path, domain_meta: dict[str, Any], pool_path: str | Path, pool_meta: dict[str, Any]
) -> None:
    """Refuse two stores whose rows live in different feature spaces, naming every differing field."""
    a = {**domain_meta.get("definition", {}), "logits_mode": domain_meta.get("logits_mode")}
    b = {**pool_meta.get("definition", {}), "logits_mode": pool_meta.get("logits_mode")}
    a = {k: a.get(k) for k in FEATURE_SPACE_FIELDS}
    b = {k: b.get(k) for k in FEATURE_SPACE_FIELDS}
    if a != b:
        raise UserError(
            f"{domain_path} and {pool_path} were made differently and cannot be scored together "
            f"({describe_differences(a, b)}); build both with the same settings"
        )


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
    yield from zip(starts.tolist(), (ends - starts).tolist(), strict=True)


class RowStore:
    """A resumable [rows, dim] store; use as a context manager while writing.

    ``writer=True`` (the default) takes the lock, creates, checks or (``overwrite``) wipes the
    store. ``writer=False`` attaches to a store another process of the same run created and
    locked: it checks the definition and writes its own rows, nothing else.
    """

    def __init__(
        self,
        path: str | Path,
        rows: int,
        dim: int,
        dtype: str,
        definition: dict[str, Any],
        overwrite: bool = False,
        writer: bool = True,
    ):
        self.path = Path(path)
        self.rows, self.dim, self.dtype = rows, dim, np.dtype(dtype)
        self.definition = json.loads(
            json.dumps(
                {**definition, "rows": rows, "dim": dim, "store_dtype": str(self.dtype), "store_format": FORMAT},
                default=str,
            )
        )
        self.writer = writer
        self._opened = self._meta_saved = time.monotonic()
        self._work_before = 0.0  # work_seconds of earlier runs on this store (0 for a new one)
        self._idle = False  # opened complete and nothing written since: this run adds no work time
        self._lock_fh = None
        self._fds: dict[str, int] = {}
        self.repaired = 0  # rows found damaged when opening (their checksum failed) and queued again
        if writer:
            self._lock_fh = take_lock(self.path)  # creates the folder, or says why it cannot
        try:
            self._open_or_create(overwrite)
            for name in (FEATURES, STATUS, CHECKSUMS):
                self._fds[name] = os.open(self.path / name, os.O_RDWR | os.O_NOFOLLOW)
            self._offsets = {name: _data_offset(self.path / name) for name in (FEATURES, STATUS, CHECKSUMS)}
            if writer:
                self._idle = not self._verify_and_requeue()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------
    def _files_intact(self) -> bool:
        """The three arrays exist with the expected shapes, and are no shorter than their headers say
        (a short features.npy is extended with zeros here: the checksums then requeue its lost rows)."""
        expected = {FEATURES: ((self.rows, self.dim), self.dtype), STATUS: ((self.rows,), np.dtype(np.uint8))}
        for name, (shape, dtype) in expected.items():
            geometry = _array_geometry(self.path / name)
            if geometry is None or geometry[1] != shape or geometry[2] != dtype:
                return False
            size = os.path.getsize(self.path / name)
            if size != _expected_size(geometry):
                if name == STATUS:
                    return False
                os.truncate(self.path / name, _expected_size(geometry))
        if not (self.path / CHECKSUMS).exists():
            self._create_checksums_from_data()  # a store written before checksums existed: trust its rows once
        geometry = _array_geometry(self.path / CHECKSUMS)
        if (
            geometry is None
            or geometry[1] != (self.rows,)
            or os.path.getsize(self.path / CHECKSUMS) != _expected_size(geometry)
        ):
            self._create_array(CHECKSUMS, (self.rows,), np.dtype(np.uint32))  # all rows then fail and are recomputed
        return True

    def _create_checksums_from_data(self) -> None:
        features = np.load(self.path / FEATURES, mmap_mode="r")
        sums = np.zeros(self.rows, dtype=np.uint32)
        for start, block in iter_row_blocks(features, 4096):
            sums[start : start + len(block)] = row_checksums(block)
        del features
        tmp = temporary_beside(self.path / CHECKSUMS, ".npy")
        np.save(tmp, sums)
        os.replace(tmp, self.path / CHECKSUMS)

    def _verify_and_requeue(self) -> bool:
        """Mark pending again every written row whose bytes fail their checksum. Returns whether
        any row is pending afterwards (the run has work to do)."""
        status = self.status()
        if not (status != PENDING).any():
            return len(status) > 0
        features = np.load(self.path / FEATURES, mmap_mode="r")
        checksums = np.load(self.path / CHECKSUMS)
        bad = bad_rows(features, status, checksums)
        del features
        if len(bad):
            self._pwrite(STATUS, np.sort(bad), np.zeros(len(bad), dtype=np.uint8))
            os.fsync(self._fds[STATUS])
            self.repaired = int(len(bad))
        return bool(len(bad)) or bool((status == PENDING).any())

    def _refuse_foreign(self, overwrite: bool) -> None:
        """Files of a store's names that no store of ours wrote (no meta.json of ours beside them) are
        the user's: refused unless ``overwrite``, never replaced silently."""
        if overwrite or not self.writer:
            return
        present = [n for n in (META, FEATURES, STATUS, CHECKSUMS) if (self.path / n).exists()]
        if not present:
            return
        if (self.path / META).exists():
            try:
                if isinstance(read_meta(self.path).get("definition"), dict):
                    return
            except UserError:
                return  # a damaged meta.json of ours: _open_or_create says so
        raise UserError(
            f"{self.path} holds {', '.join(present)}, not written by ntk-selector as a store; choose another "
            f"folder, or --overwrite to replace them"
        )

    def _open_or_create(self, overwrite: bool) -> None:
        self._refuse_foreign(overwrite)
        meta_path = self.path / META
        whole = meta_path.exists() and (self.path / FEATURES).exists() and (self.path / STATUS).exists()
        if whole:
            try:
                saved = read_meta(self.path)
                old = saved.get("definition", {})
            except UserError:
                if not (self.writer and overwrite):
                    raise
                old, whole = self.definition, False  # unreadable meta.json: --overwrite rebuilds
            if whole and old == self.definition:
                self._work_before = float(saved.get("work_seconds", 0.0))
            if whole and old != self.definition:
                if not self.writer:
                    raise UserError(
                        f"{self.path}: store definition changed under a running job "
                        f"({describe_differences(old, self.definition)})"
                    )
                if not overwrite:
                    raise UserError(
                        f"{self.path} holds another run ({describe_differences(old, self.definition)}); "
                        f"use --overwrite to start over, or another output folder"
                    )
                whole = False
        if whole and self.writer and not self._files_intact():
            whole = False  # unreadable or reshaped arrays of this definition: rebuild the store
        if whole:
            return
        if not self.writer:
            raise UserError(f"{self.path}: no store to attach to (rank 0 did not create it)")
        self._create()

    def _create(self) -> None:
        self._work_before = 0.0
        for name in (FEATURES, STATUS, CHECKSUMS):
            (self.path / name).unlink(missing_ok=True)
        # meta.json first (replaced atomically): a crash below leaves a store of ours to rebuild, never bare arrays
        self._write_meta(complete=False, status=np.zeros(self.rows, np.uint8))
        for name, shape, dt in (
            (FEATURES, (self.rows, self.dim), self.dtype),
            (STATUS, (self.rows,), np.dtype(np.uint8)),
            (CHECKSUMS, (self.rows,), np.dtype(np.uint32)),
        ):
            self._create_array(name, shape, dt)
        self._write_meta(complete=False, status=np.zeros(self.rows, np.uint8))

    def _create_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        try:
            tmp = temporary_beside(self.path / name, ".npy")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            arr.flush()
            del arr
            os.replace(tmp, self.path / name)
        except OSError as e:
            raise disk_full(self.path / name, e) from None

    def _write_meta(self, complete: bool, status: np.ndarray, extra: dict[str, Any] | None = None) -> None:
        counts = {
            "rows": self.rows,
            "done": int((status == DONE).sum()),
            "no_response_tokens": int((status == EMPTY).sum()),
            "pending": int((status == PENDING).sum()),
        }
        meta = {
            "definition": self.definition,
            "counts": counts,
            "complete": complete,
            "status_file": STATUS,
            "status_codes": {"pending": PENDING, "done": DONE, "no_response_tokens": EMPTY},
            "work_seconds": self.work_seconds,
        }
        if extra:
            meta.update(extra)
        write_json_atomic(self.path / META, meta)

    def close(self) -> None:
        for fd in self._fds.values():
            os.fsync(fd)
            os.close(fd)
        self._fds = {}
        release_lock(self._lock_fh)
        self._lock_fh = None

    def __enter__(self) -> RowStore:
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
                try:
                    written = os.pwrite(fd, buf, offset)
                except OSError as e:
                    raise disk_full(self.path / name, e) from None
                buf, offset = buf[written:], offset + written

    def write(self, rows: np.ndarray, values: np.ndarray, empty: np.ndarray | None = None) -> None:
        """Store rows, sync them, then mark them done (EMPTY where ``empty``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if values.shape != (len(rows), self.dim):
            raise ValueError(f"expected values of shape {(len(rows), self.dim)}, got {values.shape}")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        stored = np.ascontiguousarray(np.asarray(values)[order].astype(self.dtype, copy=False))
        self._pwrite(FEATURES, rows, stored)
        self._pwrite(CHECKSUMS, rows, row_checksums(stored))
        for name in (FEATURES, CHECKSUMS):
            try:
                os.fdatasync(self._fds[name])
            except OSError as e:
                raise disk_full(self.path / name, e) from None
        codes = np.full(len(rows), DONE, dtype=np.uint8)
        if empty is not None:
            codes[np.asarray(empty, dtype=bool)[order]] = EMPTY
        self._pwrite(STATUS, rows, codes)
        self._idle = False
        if self.writer and time.monotonic() - self._meta_saved >= WORK_SECONDS_EVERY:
            self._write_meta(complete=False, status=self.status())  # keeps work_seconds if the run dies
            self._meta_saved = time.monotonic()

    @property
    def work_seconds(self) -> float:
        """Seconds this store has been open for writing, over every run (this one so far included), to
        the millisecond. A run that finds the store complete and writes nothing (a resume with nothing
        left to do) adds nothing: rerunning a finished stage leaves its recorded cost as it was."""
        if self._idle:
            return self._work_before
        return round(self._work_before + time.monotonic() - self._opened, 3)

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


def open_store(path: str | Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read-only view of a finished store: (features memmap, status, meta).

    With ``verify`` every row is checked against its checksum first: a store whose bytes are not
    what was computed is refused (rerunning its stage recomputes the damaged rows).
    """
    path = Path(path)
    if not (path / META).exists():
        raise UserError(f"{path}: not a feature store (no meta.json)")
    meta = read_meta(path)
    rows = meta.get("definition", {}).get("rows")
    for name in (STATUS, FEATURES):
        geometry = _array_geometry(path / name)
        if geometry is None:
            raise UserError(
                f"{path / name}: missing or not a .npy array; rerun its stage with --overwrite to rebuild the store"
            )
        if os.path.getsize(path / name) != _expected_size(geometry) or geometry[1][:1] != (rows,):
            raise UserError(
                f"{path / name}: truncated or resized ({os.path.getsize(path / name)} bytes, header says "
                f"{_expected_size(geometry)}); rerun its stage to repair the store"
            )
    status = read_status(path)
    if not meta.get("complete") or (status == PENDING).any():
        raise UserError(
            f"{path}: store is incomplete ({int((status == PENDING).sum())} rows missing); rerun its stage to resume"
        )
    features = np.load(path / FEATURES, mmap_mode="r")
    if verify and (path / CHECKSUMS).exists():
        sums = np.load(path / CHECKSUMS)
        if sums.shape != status.shape:
            raise UserError(f"{path / CHECKSUMS}: wrong shape {sums.shape}; rerun its stage to repair the store")
        bad = bad_rows(features, status, sums)
        if len(bad):
            raise UserError(
                f"{path / FEATURES}: {len(bad)} rows fail their checksum (first: row {int(bad[0])}), the file "
                f"changed after it was written; rerun its stage to recompute them"
            )
    return features, status, meta


def read_exactly_at(fh: Any, position: int, view: memoryview, path: Any) -> None:
    """Fill ``view`` from an unbuffered file at ``position`` (reads may return short); a file that ends
    early is a damaged store."""
    fh.seek(position)
    got = 0
    while got < len(view):
        r = fh.readinto(view[got:])
        if not r:
            raise UserError(f"{path}: file is shorter than its header says")
        got += r


def iter_row_blocks(features: np.ndarray, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) blocks of a [rows, dim] array. Memmapped stores are read with plain file reads
    so the pages do not stay mapped in this process: memory stays one block, whatever the pool."""
    path = getattr(features, "filename", None)
    offset = getattr(features, "offset", None)
    whole = (
        isinstance(features, np.memmap)
        and path is not None
        and offset is not None
        and features.flags.c_contiguous
        and os.path.exists(path)
        and os.path.getsize(path) == offset + features.nbytes
    )
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
            read_exactly_at(fh, offset + start * row_bytes, memoryview(out.reshape(-1).view(np.uint8)), path)
            yield start, out
