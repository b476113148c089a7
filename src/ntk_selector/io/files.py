"""Safe file writing: exclusive temporaries, atomic renames, folder locks and disk-full messages.

Every output is written to a temporary created with ``O_CREAT | O_EXCL`` (``tempfile.mkstemp``)
beside its final name and renamed over it: the name is unpredictable and an existing file or
symlink at a guessable name is never opened, so a link planted in the output folder cannot make
us write elsewhere. ``folder_lock`` is the one lock every stage takes on its output folder, so two
runs on one folder give a clear error instead of two writers. ``disk_full`` turns ENOSPC, which
Python reports without a path, into a message that names the file and says what to do.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from ntk_selector.errors import UserError

LOCK = ".lock"


class DiskFullError(UserError):
    """No space left while writing a named file."""


def disk_full(path: str | Path, error: OSError) -> UserError:
    """The error to raise for a failed write: disk full names the path; anything else is re-raised as is."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: no space left on the device while writing; free some space and rerun "
                             f"the same command (finished work is kept)")
    raise error


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """Create (exclusively) an empty temporary file in ``path``'s folder and return its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def temporary_folder_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kw: Any) -> Iterator[IO[Any]]:
    """Open a fresh exclusive temporary for writing; on success sync it and rename it to ``path``."""
    path = Path(path)
    try:
        tmp = temporary_beside(path)
    except OSError as e:
        raise disk_full(path, e) from None
    try:
        with open(tmp, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_full(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Readers see the old file or the new one, never half."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)


@contextmanager
def folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively for the block; a second holder gets a clear error at once."""
    if not enabled:
        yield
        return
    fh = take_lock(Path(folder))
    try:
        yield
    finally:
        release_lock(fh)


def take_lock(folder: Path) -> IO[Any]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink; remove it") from None
        raise
    fh = os.fdopen(fd, "r+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(f"{folder} is being written by another process (lock held); wait for it or stop it") from None
    return fh


def release_lock(fh: IO[Any] | None) -> None:
    if fh is not None:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def refuse_replacing(out: str | Path, names: tuple[str, ...], records: tuple[tuple[str, str], ...], overwrite: bool,
                     flag: str = "--out") -> None:
    """Refuse to write ``names`` into ``out`` when any of them is there but not from an earlier run of ours.

    An earlier run is recognised by one of its ``records``: (file, key) pairs, a JSON file holding
    that key. Files of the same names that the user put there are never replaced unless
    ``overwrite``; other files in the folder are never touched at all.
    """
    out = Path(out)
    present = [n for n in names if (out / n).exists()]
    if not present or overwrite:
        return
    for record, key in records:
        try:
            if key in json.loads((out / record).read_text(encoding="utf-8")):
                return
        except (OSError, ValueError, UnicodeDecodeError, TypeError):
            continue
    raise UserError(f"{flag} {out} already holds {', '.join(present)}, not written by an earlier run of this "
                    f"command; choose another folder, or --overwrite to replace them")
