"""Records in: hub ids, local files and folders, and ``datasets.Dataset`` objects, all read through
the ``datasets`` library as memory-mapped Arrow, so a pool costs disk, not Python objects.

A source is opened once (``open_source``), its record format resolved from its fields (formats.py),
and every record checked in one streamed pass so errors come before any model work. Rows become
``Conversation`` objects only a chunk at a time (``ConversationView``). When the ``datasets``
reader rejects a local JSONL or CSV file, a line-by-line scan names the file, line and problem.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.config import DataConfig
from ntk_selector.errors import DataError
from ntk_selector.io.formats import (
    CONVERTERS,
    Conversation,
    RecordError,
    format_fields,
    resolve_format,
    to_conversation,
)

LOCAL_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CHUNK_ROWS = 4096  # rows turned into Python objects at a time
log = logging.getLogger(__name__)


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a data file (or of every file of a dataset folder)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def datasets_quiet(bars: bool = False) -> Iterator[None]:
    """Hide the ``datasets`` library's log lines (and, unless ``bars``, its progress bars) while it
    loads or saves for us."""
    import datasets

    log = logging.getLogger("datasets")
    old_level = log.level
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    log.setLevel(logging.CRITICAL)
    if not bars:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        log.setLevel(old_level)
        if not bars and not bars_were_off:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- opening a source


@dataclass
class Source:
    """An opened dataset and how to name its rows in messages."""

    name: str
    dataset: Any  # datasets.Dataset, memory-mapped
    fingerprint: str
    kind: str = "rows"  # "jsonl" / "csv": rows are named by file line; otherwise by 1-based row
    path: Path | None = None

    def where(self, row: int) -> str:
        if self.kind == "jsonl" and self.path is not None:
            return f"{self.name}:{_jsonl_line_of(self.path, row)}"
        if self.kind == "csv" and self.path is not None:
            return f"{self.name}:{_csv_line_of(self.path, row)}"
        return f"{self.name}:{row + 1}"


def open_source(source: Any, cfg: DataConfig, name: str | None = None) -> Source:
    """A ``datasets.Dataset`` / ``DatasetDict`` object, a local file or folder, or a hub id."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        source = pick_split(source, cfg.split, name or "<DatasetDict>")
    if isinstance(source, datasets.Dataset):
        return Source(name or "<datasets.Dataset>", source, source._fingerprint)
    text = str(source)
    path = Path(text)
    if path.is_file():
        return _open_file(path, cfg)
    if path.is_dir():
        return _open_folder(path, cfg)
    if path.suffix.lower() in LOCAL_BUILDERS or not HUB_ID.match(text):
        raise DataError(f"{path}: file not found")
    return _open_hub(text, cfg)


def pick_split(dd: Any, split: str | None, name: str, flag: str = "--split") -> Any:
    """One split of a ``DatasetDict``: the one named, or its only one."""
    names = list(dd.keys())
    if split is None:
        if len(names) == 1:
            return dd[names[0]]
        raise DataError(f"{name} has splits {', '.join(names)}: choose one with {flag}")
    if split not in dd:
        raise DataError(f"{name} has no split '{split}' (it has {', '.join(names)})")
    return dd[split]


def _open_file(path: Path, cfg: DataConfig) -> Source:
    import datasets

    suffix = path.suffix.lower()
    builder = LOCAL_BUILDERS.get(suffix)
    if builder is None:
        raise DataError(
            f"{path}: unknown format '{suffix}' (use .jsonl, .json, .csv, .parquet, .arrow, an HF save_to_disk "
            f"folder, a folder of data files or a hub id)"
        )
    kwargs: dict[str, Any] = {}
    kind = "rows"
    if builder == "json":
        # a .json file may hold one JSON array instead of one object a line
        kind = "rows" if suffix == ".json" and _first_char(path) == "[" else "jsonl"
        if kind == "jsonl":
            _prescan_jsonl(path, cfg)
    elif builder == "csv":
        kind = "csv"
        _scan_csv(path)  # the csv module streams the file: UTF-8, column counts, quoting
        header = _csv_header(path)
        # every CSV value is text: no numbers guessed from "1", no NaN from an empty cell
        kwargs = {
            "features": datasets.Features({c: datasets.Value("string") for c in header}),
            "keep_default_na": False,
        }
    try:
        with datasets_quiet():
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # the datasets library raises many types for a bad file
        if builder == "json":
            _scan_jsonl(path, cfg)
        elif builder == "csv":
            _scan_csv(path)
        raise DataError(f"{path}: cannot read as {builder} ({_first_line(e)})") from None
    return Source(str(path), ds, file_fingerprint(path), kind, path)


def _open_folder(path: Path, cfg: DataConfig) -> Source:
    import datasets

    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception:
            loaded = _read_arrow_streams(path)
        if isinstance(loaded, datasets.DatasetDict):
            split = cfg.split if cfg.split is not None else (list(loaded)[0] if len(loaded) == 1 else None)
            ds = pick_split(loaded, split, str(path))
            return Source(str(path), ds, file_fingerprint(path / split), "rows", path)
        return Source(str(path), loaded, file_fingerprint(path), "rows", path)
    # a folder of data files, read like a hub dataset (the same load_dataset code path)
    check_data_folder(path)
    ds = _load_hub_like(str(path), cfg)
    extra = f"{cfg.subset}/{cfg.split}".encode()
    return Source(str(path), ds, hashlib.sha256(file_fingerprint(path).encode() + extra).hexdigest()[:16], "rows", path)


# files a dataset folder may hold beside its records (the dataset card, licence), never read as records
FOLDER_EXTRAS = {"readme.md", "license", "license.md", "license.txt", "dataset_infos.json"}


def check_data_folder(path: Path) -> None:
    """A folder of data files is read like a hub dataset, which takes one format and skips the rest
    without a word: refuse a folder where files would be skipped, naming them and why."""
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    kinds: dict[str, list[str]] = {}
    other: list[str] = []
    for p in files:
        rel = str(p.relative_to(path))
        builder = LOCAL_BUILDERS.get(p.suffix.lower())
        if builder is not None and p.name.lower() not in FOLDER_EXTRAS:
            kinds.setdefault(builder, []).append(rel)
        elif p.name.lower() not in FOLDER_EXTRAS:
            other.append(rel)

    def shown(names):
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    if len(kinds) > 1:
        groups = "; ".join(f"{b}: {shown(n)}" for b, n in sorted(kinds.items()))
        raise DataError(
            f"{path}: holds record files of several formats ({groups}); a folder is read as one format, so "
            f"the others would be skipped: convert them to one format, or pass the files one at a time"
        )
    if other:
        raise DataError(
            f"{path}: holds files that are not record files and would be skipped ({shown(other)}); move them "
            f"out of the folder (record files: .jsonl, .json, .csv, .parquet, .arrow; a README.md may stay)"
        )
    if not kinds:
        raise DataError(f"{path}: no record files in the folder (.jsonl, .json, .csv, .parquet, .arrow)")


def _read_arrow_streams(path: Path) -> Any:
    """A save_to_disk folder written without dataset_info.json: the Arrow streams listed in state.json."""
    import datasets

    state = path / "state.json"
    try:
        files = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
        if not all(isinstance(f, str) and f for f in files):
            raise TypeError("filename is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f'{state}: not a valid HF state.json (needs "_data_files": [{{"filename": ...}}]; {e}); '
            f"save the dataset again with save_to_disk"
        ) from None
    root = path.resolve()
    parts = []
    for name in files:
        data_file = (path / name).resolve()
        if root not in data_file.parents:
            raise DataError(f"{state}: data file '{name}' is outside the dataset folder {path}; refusing to read it")
        if not data_file.is_file():
            raise DataError(f"{state}: data file '{name}' not found in {path}")
        try:
            parts.append(datasets.Dataset.from_file(str(data_file), in_memory=False))
        except Exception as e:
            raise DataError(f"{path / name}: not a readable Arrow stream ({_first_line(e)})") from None
    return datasets.concatenate_datasets(parts) if len(parts) != 1 else parts[0]


def _open_hub(hub_id: str, cfg: DataConfig) -> Source:
    ds = _load_hub_like(hub_id, cfg)
    return Source(hub_id, ds, ds._fingerprint)


def _load_hub_like(source: str, cfg: DataConfig) -> Any:
    import datasets

    try:
        with datasets_quiet(bars=True):
            loaded = datasets.load_dataset(source, name=cfg.subset, split=cfg.split)
    except Exception as e:
        if Path(source).exists():
            raise DataError(f"{source}: cannot load this folder as a dataset ({_first_line(e)})") from None
        raise DataError(
            f"{source}: not a local file, and the hub dataset cannot be loaded ({_first_line(e)})"
        ) from None
    return pick_split(loaded, cfg.split, source) if isinstance(loaded, datasets.DatasetDict) else loaded


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return head[:1].decode("latin-1")


# ----------------------------------------------------------------------------- line numbers and scans


def _jsonl_line_of(path: Path, row: int) -> int | str:
    """File line of the row-th record (the reader skips blank lines)."""
    seen = -1
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                seen += 1
                if seen == row:
                    return lineno
    return "?"


def _bad_utf8_line(path: Path) -> tuple[int, int] | None:
    """(line, byte offset) of the first bytes that are not UTF-8, or None."""
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, offset + e.start
            offset += len(raw)
    return None


def _jsonl_records_at(path: Path, rows: np.ndarray) -> list[dict[str, Any]]:
    """The records of these rows (0-based, blank lines skipped), parsed from their lines, in the order given."""
    wanted = {int(r): None for r in rows}
    found: dict[int, dict[str, Any]] = {}
    seen = -1
    last = max(wanted)
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            seen += 1
            if seen in wanted:
                found[seen] = json.loads(raw)
            if seen >= last:
                break
    return [found[int(r)] for r in rows]


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of each CSV row, streamed; malformed rows raise with their line."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more values than header columns")
                yield reader.line_num, row
        except UnicodeDecodeError:
            bad = _bad_utf8_line(path)
            line, at = bad if bad else ("?", "?")
            raise DataError(f"{path}:{line}: bytes that are not UTF-8 (at byte {at})") from None
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _prescan_jsonl(path: Path, cfg: DataConfig, block_bytes: int = 1 << 22) -> None:
    """Cheap checks the Arrow JSON reader does not make (UTF-8, one object a line), a block at a time;
    on a finding, the full line-by-line scan names the line."""
    not_object = re.compile(rb"(?m)^[ \t\r]*[^{\s]")
    tail = b""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(block_bytes), b""):
            block = tail + block
            cut = block.rfind(b"\n") + 1
            whole, tail = (block[:cut], block[cut:]) if cut else (b"", block)
            if _block_bad(whole, not_object):
                _scan_jsonl(path, cfg)
            if LONE_SURROGATE.search(whole):
                _refuse_lone_surrogate(path, cfg)
    if tail and _block_bad(tail, not_object):
        _scan_jsonl(path, cfg)
    if tail and LONE_SURROGATE.search(tail):
        _refuse_lone_surrogate(path, cfg)


# a \\uD800-\\uDFFF escape that is not half of a surrogate pair: not Unicode text, and the Arrow JSON
# reader does not keep the record intact around it
LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _refuse_lone_surrogate(path: Path, cfg: DataConfig) -> None:
    _scan_jsonl(path, cfg)  # names the field when it is one we read
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if LONE_SURROGATE.search(raw):
                raise DataError(
                    f"{path}:{lineno}: a lone surrogate escape ({LONE_SURROGATE.search(raw).group().decode()}), "
                    f"not valid Unicode text; fix or drop the record"
                )


def _block_bad(block: bytes, not_object: re.Pattern[bytes]) -> bool:
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return not_object.search(block) is not None


def _csv_line_of(path: Path, row: int) -> int | str:
    for i, (lineno, _) in enumerate(_csv_rows(path)):
        if i == row:
            return lineno
    return "?"


def _csv_header(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        return next(csv.reader([first.decode("utf-8-sig")]), [])
    except UnicodeDecodeError:
        _scan_csv(path)
        raise DataError(f"{path}:1: bytes that are not UTF-8") from None


def _scan_csv(path: Path) -> None:
    """Raise the first problem of a CSV file the reader rejected (or 'no records')."""
    if not any(True for _ in _csv_rows(path)):
        raise DataError(f"{path}: no records (empty file)")


def _layout_hint(path: Path, records_before: int) -> str:
    """Why a JSONL file's first record is malformed, when the file is laid out as one JSON document."""
    if records_before or path.suffix.lower() == ".json":
        return ""
    first = _first_char(path)
    if first == "[":
        return (
            f"; the file looks like one JSON array (it starts with '['), not one object a line: "
            f"name it {path.with_suffix('.json').name}"
        )
    if first == "{":
        return "; a record spread over several lines (pretty-printed)? JSONL needs one whole JSON object a line"
    return ""


def _scan_jsonl(path: Path, cfg: DataConfig) -> None:
    """Raise the first problem of a JSONL file the reader rejected (or 'no records')."""
    count = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: bytes that are not UTF-8 (at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}){_layout_hint(path, count)}"
                ) from None
            if not isinstance(obj, dict):
                hint = ""
                if count == 0 and isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
                    hint = f"; the file holds one JSON array of records: name it {path.with_suffix('.json').name}"
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}{hint}")
            to_conversation(obj, cfg, path, line=lineno)
            count += 1
    if count == 0:
        raise DataError(f"{path}: no records (empty file)")


# ----------------------------------------------------------------------------- conversations, a chunk at a time


class ConversationView(Sequence):
    """The rows of a source as ``Conversation`` objects, made on access (a slice at a time), never all at once."""

    def __init__(self, source: Source, fmt: str, cfg: DataConfig, rows: np.ndarray | None = None) -> None:
        self.source, self.fmt, self.cfg = source, fmt, cfg
        self.rows = rows
        cols = [c for c in dict.fromkeys(format_fields(fmt, cfg)) if c in source.dataset.column_names]
        ds = source.dataset.select_columns(cols)
        self._ds = ds if rows is None else ds.select(rows)
        self._cols = cols
        self._convert_one = CONVERTERS[fmt]

    def __len__(self) -> int:
        return len(self._ds)

    def _convert(self, start: int, stop: int) -> list[Conversation]:
        if stop <= start:
            return []
        batch = self._ds[start:stop]
        out = []
        for j in range(stop - start):
            try:
                out.append(self._convert_one({c: batch[c][j] for c in self._cols}, self.cfg))
            except RecordError as e:
                row = start + j if self.rows is None else int(self.rows[start + j])
                raise DataError(f"{self.source.where(row)}: {e}") from None
        return out

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._convert(start, stop)
            return [self[i] for i in range(start, stop, step)]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(index)
        return self._convert(i, i + 1)[0]

    def __iter__(self) -> Iterator[Conversation]:
        for start in range(0, len(self), CHUNK_ROWS):
            yield from self._convert(start, min(len(self), start + CHUNK_ROWS))

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, list[Conversation]]]:
        size = size or CHUNK_ROWS
        for start in range(0, len(self), size):
            yield start, self._convert(start, min(len(self), start + size))


@dataclass
class Records:
    """A data source opened as memory-mapped Arrow, its format resolved and every record checked up front."""

    path: Path  # the file or folder; a hub id or "<datasets.Dataset>" as a Path too (str() gives it back)
    source: Source
    conversations: ConversationView
    fingerprint: str
    format: str

    @classmethod
    def load(cls, source: Any, data_cfg: DataConfig, name: str | None = None) -> Records:
        src = open_source(source, data_cfg, name)
        if len(src.dataset) == 0:
            raise DataError(f"{src.name}: no records (empty file)")
        fmt = resolve_format(src.dataset.column_names, data_cfg, src.name)
        view = ConversationView(src, fmt, data_cfg)
        for _ in view.chunks():  # validate every record now, a chunk at a time
            pass
        log.info("%s: %d records, format %s, fingerprint %s", src.name, len(view), fmt, src.fingerprint)
        return cls(Path(src.name), src, view, src.fingerprint, fmt)

    def __len__(self) -> int:
        return len(self.conversations)

    def subset(self, rows: np.ndarray, fingerprint: str) -> Records:
        rows = np.asarray(rows, dtype=np.int64)
        base = self.conversations.rows
        absolute = rows if base is None else base[rows]
        return Records(
            self.path,
            self.source,
            ConversationView(self.source, self.format, self.conversations.cfg, absolute),
            fingerprint,
            self.format,
        )

    def line(self, row: int) -> int | str:
        """The file line (or 1-based row) of row ``row``, for messages."""
        where = self.source.where(int(self._absolute([row])[0]))
        return where.rsplit(":", 1)[1]

    def _absolute(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self.conversations.rows is None else self.conversations.rows[rows]

    def rows_at(self, rows: Any) -> list[dict[str, Any]]:
        """The original records of these rows, in the order given, exactly as the user wrote them.

        For JSONL the lines are read again from the file (one pass, keeping only these rows): the
        Arrow table unifies every row to one schema (absent fields become null, keys reordered), which
        is not what the user wrote. Other sources already have a schema, so their Arrow rows are the records.
        """
        rows = self._absolute(rows)
        if len(rows) == 0:
            return []
        if self.source.kind == "jsonl" and self.source.path is not None:
            return _jsonl_records_at(self.source.path, rows)
        return self.source.dataset.select(rows).to_list()

    def field_values(self, name: str, rows: Any = None) -> Iterator[Any]:
        """Values of one field for these rows (all rows when None), read a chunk at a time; None where absent."""
        ds = self.source.dataset
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if name not in ds.column_names:
            yield from (None for _ in range(len(rows)))
            return
        col = ds.select_columns([name])
        absolute = self._absolute(rows)
        contiguous = len(absolute) == len(ds) and bool((absolute == np.arange(len(ds))).all())
        for start in range(0, len(absolute), CHUNK_ROWS):
            part = (
                col[start : start + CHUNK_ROWS] if contiguous else col.select(absolute[start : start + CHUNK_ROWS])[:]
            )
            yield from part[name]


def read_records(source: Any, cfg: DataConfig | None = None) -> list[dict[str, Any]]:
    """Every record of a (small) source as a plain dict, in order: for test sets and tools, not pools."""
    src = open_source(source, cfg or DataConfig())
    if len(src.dataset) == 0:
        raise DataError(f"{src.name}: no records (empty file)")
    return src.dataset.to_list()


def iter_record_chunks(source: Any, cfg: DataConfig | None = None) -> Iterator[list[dict[str, Any]]]:
    """The records of a source as plain dicts, a chunk at a time."""
    src = open_source(source, cfg or DataConfig())
    ds = src.dataset
    for start in range(0, len(ds), CHUNK_ROWS):
        yield ds.select(range(start, min(len(ds), start + CHUNK_ROWS))).to_list()
