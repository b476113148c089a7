"""Safe file writing: exclusive temporaries, atomic renames, folder locks and disk-full messages.

Every output is written to a temporary created with ``O_CREAT | O_EXCL`` (``tempfile.mkstemp``)
beside its final name and renamed over it: the name is unpredictable and an existing file or
symlink at a guessable name is never opened, so a link planted in the output folder cannot make
us write elsewhere. ``folder_lock`` is the one lock every stage takes on its output folder, so two
runs on one folder give a clear error instead of two writers. ``disk_full`` turns ENOSPC, which
Python reports without a path, into a message that names the file and says what to do.
Temporaries get the permissions ``open()`` would give (0666 / 0777 less the umask), not
``mkstemp``'s private 0600 / 0700, so outputs on a shared filesystem stay readable by others.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ntk_selector.errors import UserError

LOCK = ".lock"


class DiskFullError(UserError):
    """No space left while writing a named file."""


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def disk_full(path: str | Path, error: OSError) -> UserError:
    """The error to raise for a failed write: disk full and a folder that cannot be written name the
    path (never our temporary's name); anything else is re-raised as is."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{path}: no space left on the device while writing; free some space and rerun "
            f"the same command (finished work is kept)"
        )
    if error.errno in NOT_WRITABLE:
        return not_writable(Path(path).parent, error)
    raise error


def not_writable(folder: str | Path, error: OSError) -> UserError:
    """A write refused by the filesystem (read-only, no permission): a user error naming the folder."""
    why = "the filesystem is read-only" if error.errno == errno.EROFS else "permission denied"
    return UserError(f"cannot write into {folder}: {why}; choose an --out folder you can write to")


def umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder path that is a file or a symlink to nothing, saying what to give instead."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(
            f"{flag} {path} is a symbolic link to a missing target ({os.readlink(path)}); remove the link "
            f"or give a new folder path"
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a new folder path (or an earlier run's folder)")


def ensure_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an existing folder (created with its parents), or a one-line error saying why not."""
    path = Path(path)
    check_out_folder(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise not_writable(path.parent if not path.exists() else path, e) from None
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            raise UserError(
                f"{flag} {path}: a part of the path is a file, not a folder; give another folder path"
            ) from None
        raise disk_full(path / "x", e) from None
    return path


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """Create (exclusively) an empty temporary file in ``path``'s folder and return its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # what open() gives, not mkstemp's private 0600
    finally:
        os.close(fd)
    return Path(name)


def temporary_folder_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    folder.chmod(0o777 & ~umask())
    return folder


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
    ensure_folder(folder)
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink; remove it") from None
        if e.errno in NOT_WRITABLE:
            raise not_writable(folder, e) from None
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


def refuse_replacing(
    out: str | Path, names: tuple[str, ...], records: tuple[tuple[str, str], ...], overwrite: bool, flag: str = "--out"
) -> None:
    """Refuse to write ``names`` into ``out`` when any of them is there but not from an earlier run of ours.

    An earlier run is recognised by one of its ``records``: (file, key) pairs, a JSON file holding
    that key. Files of the same names that the user put there are never replaced unless
    ``overwrite``; other files in the folder are never touched at all.
    """
    out = Path(out)
    check_out_folder(out, flag)
    present = [n for n in names if (out / n).exists()]
    if not present or overwrite:
        return
    for record, key in records:
        try:
            if key in json.loads((out / record).read_text(encoding="utf-8")):
                return
        except (OSError, ValueError, UnicodeDecodeError, TypeError):
            continue
    raise UserError(
        f"{flag} {out} already holds {', '.join(present)}, not written by an earlier run of this "
        f"command; choose another folder, or --overwrite to replace them"
    )
