"""The bad-input case table: what a new user might type or feed, and what must happen.

Each case builds its inputs in a fresh folder, runs the CLI in this process and classifies the
outcome (``run_case``):

- ``clear``: the expected exit code; on an error exactly one ``ntk-selector: error:`` line on
  stderr holding the expected fragment and no traceback; on success the fragment (a warning)
  when one is expected; and the case's own check of the outputs passed.
- ``wrong``: exit 0 where an error was due, or outputs that are not what was asked for.
- ``lost``: a file the user had (or a user field of a record) changed or disappeared.
- ``unclear``: anything else (another exit code, a message without the fragment, a traceback).

``tests/test_bad_inputs_table.py`` asserts every case is clear; ``bad_inputs.py`` beside this file
counts the outcomes for BENCHMARKS.md.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tiny import synthetic_rows, write_jsonl


@dataclass
class Ctx:
    """A case's folder and the tiny model; helpers to write inputs."""

    root: Path
    model: Path
    notes: dict[str, Any] = field(default_factory=dict)

    def jsonl(self, name: str, rows: list[dict]) -> Path:
        return write_jsonl(self.root / name, rows)

    def raw(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def domain(self) -> Path:
        return self.jsonl("domain.jsonl", synthetic_rows(8, 1, ("dom",)))

    def pool(self, rows: list[dict] | None = None) -> Path:
        return self.jsonl("pool.jsonl", rows if rows is not None else synthetic_rows(24, 2))

    def yaml(self, text: str) -> Path:
        return self.raw("c.yaml", text)


@dataclass
class Case:
    id: str
    group: str  # "loss", "setting", "data", "store", "message"
    argv: Callable[[Ctx], list[Any]]
    rc: int
    fragment: str
    check: Callable[[Ctx], tuple[str, str] | None] | None = None  # ("lost" | "wrong", why) when the outputs are bad
    fault: Callable[[Ctx], Any] | None = None  # a context manager active while the command runs
    call: Callable[[Ctx], tuple[int, str]] | None = None  # (exit code, stderr) of a library call, instead of the CLI


TINY = ["--proj-dim", "16", "--rank", "4", "--quiet"]


def _main(argv: list[Any]) -> tuple[int, str, str]:
    from ntk_selector.cli.commands import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def run_case(case: Case, root: Path, model: Path) -> tuple[str, str]:
    """(outcome, detail) of one case, run in a fresh folder ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(root, model)
    argv = case.argv(ctx)
    try:
        run: Callable[[], tuple[int, str]] = (
            (lambda: case.call(ctx))
            if case.call is not None  # type: ignore[misc]
            else (lambda: _main(argv)[::2])
        )
        if case.fault is not None:
            with case.fault(ctx):
                rc, err = run()
        else:
            rc, err = run()
    except BaseException as e:  # noqa: BLE001 - an escaped exception is itself the finding
        return "unclear", f"raised {type(e).__name__}: {e}"
    try:
        problem = case.check(ctx) if case.check is not None else None
    except Exception as e:  # noqa: BLE001 - outputs the check cannot even read are wrong outputs
        problem = ("wrong", f"outputs unreadable: {type(e).__name__}: {e}")
    if problem is not None and problem[0] == "lost":
        return "lost", problem[1]
    if case.rc != 0 and rc == 0:
        return "wrong", "exit 0 where an error was due"
    if problem is not None:
        return problem
    errors = [line for line in err.splitlines() if line.startswith("ntk-selector: error:")]
    if "Traceback" in err:
        return "unclear", "traceback on stderr"
    if rc != case.rc:
        return "unclear", f"exit {rc}, expected {case.rc}: {err.strip()[-300:]}"
    if case.rc != 0:
        if len(errors) != 1 or case.fragment not in errors[0]:
            return "unclear", f"message {errors!r} lacks {case.fragment!r}"
    elif case.fragment and case.fragment not in err:
        return "unclear", f"no warning with {case.fragment!r} on stderr: {err.strip()[-300:]}"
    return "clear", ""


# ----------------------------------------------------------------------------- helpers for cases


def featurize(ctx: Ctx, data: Path, out: Path, *extra: Any) -> list[Any]:
    return ["featurize", "--data", data, "--out", out, "--model", ctx.model, *TINY, *extra]


def ensure(argv: list[Any]) -> None:
    rc, _, err = _main(argv)
    assert rc == 0, err


def unchanged(ctx: Ctx, *names: str) -> Callable[[Ctx], tuple[str, str] | None]:
    """Remember files now (call in argv) and check later that they are byte-identical."""
    before = {n: (ctx.root / n).read_bytes() for n in names}

    def check(c: Ctx) -> tuple[str, str] | None:
        for n, data in before.items():
            p = c.root / n
            if not p.exists() or p.read_bytes() != data:
                return "lost", f"{n} changed or removed"
        return None

    return check


def with_check(ctx: Ctx, check: Callable[[Ctx], tuple[str, str] | None]) -> None:
    ctx.notes.setdefault("checks", []).append(check)


def run_checks(ctx: Ctx) -> tuple[str, str] | None:
    for check in ctx.notes.get("checks", []):
        problem = check(ctx)
        if problem is not None:
            return problem
    return None


def settings_case(id: str, argv_tail: list[Any], fragment: str, command: str = "featurize") -> Case:
    """A wrong setting: refused before any work, so the output folder is never even created."""

    def argv(ctx: Ctx) -> list[Any]:
        data = ctx.domain()
        if command == "featurize":
            return ["featurize", "--data", data, "--out", ctx.root / "o", "--model", ctx.model, "--quiet", *argv_tail]
        if command == "train":
            return [
                "train",
                "--data",
                data,
                "--out",
                ctx.root / "o",
                "--model",
                ctx.model,
                "--quiet",
                "--rank",
                "4",
                "--epochs",
                "1",
                *argv_tail,
            ]
        return [
            "select",
            "--domain",
            data,
            "--pool",
            ctx.pool(),
            "--out",
            ctx.root / "o",
            "--n",
            "4",
            "--model",
            ctx.model,
            "--quiet",
            "--proj-dim",
            "16",
            "--rank",
            "4",
            *argv_tail,
        ]

    return Case(
        id,
        "setting",
        argv,
        2,
        fragment,
        check=lambda c: ("wrong", "the run went ahead") if (c.root / "o").exists() else None,
    )


def yaml_case(id: str, text: str, fragment: str, command: str = "featurize") -> Case:
    case = settings_case(id, [], fragment, command)
    inner = case.argv
    case.argv = lambda ctx: inner(ctx) + ["--config", ctx.yaml(text)]
    return case


def data_case(id: str, name: str, content: bytes | str | Callable[[Ctx], Path], fragment: str) -> Case:
    def argv(ctx: Ctx) -> list[Any]:
        path = content(ctx) if callable(content) else ctx.raw(name, content)
        return ["featurize", "--data", path, "--out", ctx.root / "o", "--model", ctx.model, *TINY]

    return Case(id, "data", argv, 2, fragment)


def hf_folder(ctx: Ctx, state: str | None, arrow_name: str = "data-00000-of-00001.arrow") -> Path:
    import pyarrow as pa

    folder = ctx.root / "hf"
    folder.mkdir()
    table = pa.table({"prompt": ["a", "b"], "response": ["x", "y"]})
    with pa.OSFile(str(folder / arrow_name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    if state is not None:
        (folder / "state.json").write_text(state)
    return folder


# ----------------------------------------------------------------------------- data-loss cases


def _train_into_folder_with(ctx: Ctx, files: dict[str, str], *extra: Any, command: str = "train") -> list[Any]:
    out = ctx.root / "adapter"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with_check(ctx, unchanged(ctx, *(f"adapter/{n}" for n in files)))
    data = ctx.domain()
    flag = "--data" if command == "train" else "--domain"
    return [command, flag, data, "--out", out, "--model", ctx.model, "--rank", "4", "--quiet", "--epochs", "1", *extra]


def _outputs_into_folder_with(ctx: Ctx, files: dict[str, str], command: str, *extra: Any) -> list[Any]:
    """select / evaluate into a folder where the user keeps files of the names the command writes."""
    out = ctx.root / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with_check(ctx, unchanged(ctx, *(f"out/{n}" for n in files)))
    if command == "select":
        return [
            "select",
            "--domain",
            ctx.domain(),
            "--pool",
            ctx.pool(),
            "-n",
            "4",
            "--out",
            out,
            "--model",
            ctx.model,
            "--method",
            "random",
            "--quiet",
            *extra,
        ]
    if command == "predict":
        return [
            "predict",
            "--domain",
            ctx.domain(),
            "--test",
            ctx.domain(),
            "--out",
            out,
            "--model",
            ctx.model,
            "--rank",
            "4",
            "--proj-dim",
            "16",
            "--quiet",
            *extra,
        ]
    if command == "diagnose":
        return [
            "diagnose",
            "--domain",
            ctx.domain(),
            "--pool",
            ctx.pool(),
            "--out",
            out,
            "--model",
            ctx.model,
            "--rank",
            "4",
            "--quiet",
            *extra,
        ]
    return ["evaluate", "--data", ctx.domain(), "--out", out, "--model", ctx.model, "--quiet", *extra]


def _adapter_written(ctx: Ctx) -> tuple[str, str] | None:
    problem = run_checks(ctx)
    if problem is None and not (ctx.root / "adapter" / "adapter_model.safetensors").exists():
        return "wrong", "no adapter written"
    return problem


def _sibling_kept(ctx: Ctx) -> list[Any]:
    sibling = ctx.root / "adapter.tmp"
    sibling.mkdir()
    (sibling / "mine.txt").write_text("keep me")
    with_check(ctx, unchanged(ctx, "adapter.tmp/mine.txt"))
    return [
        "train",
        "--data",
        ctx.domain(),
        "--out",
        ctx.root / "adapter",
        "--model",
        ctx.model,
        "--rank",
        "4",
        "--quiet",
        "--epochs",
        "1",
    ]


COLLIDING_POOL = [
    {**r, **extra}
    for r, extra in zip(
        synthetic_rows(24, 2),
        [
            {"pool_index": "mine", "ntk_score": [1, 2]},
            {"__line__": 7},
            {"ntk_selector": {"x": 1}, "pool_index": 0},
            {"ntk_score": None},
        ]
        * 6,
        strict=True,
    )
]


def _select_keeps_user_fields(method: str) -> Callable[[Ctx], list[Any]]:
    def argv(ctx: Ctx) -> list[Any]:
        ctx.pool(COLLIDING_POOL)
        return [
            "select",
            "--domain",
            ctx.domain(),
            "--pool",
            ctx.root / "pool.jsonl",
            "--out",
            ctx.root / "o",
            "--n",
            "8",
            "--model",
            ctx.model,
            "--method",
            method,
            *TINY,
        ]

    return argv


def _user_fields_intact(ctx: Ctx) -> tuple[str, str] | None:
    try:
        from ntk_selector.io.outputs import our_fields, user_record
    except ImportError:  # versions before selected_records.py wrote our fields at the top level

        def our_fields(obj: dict) -> dict:
            return {"pool_index": obj["pool_index"]}

        def user_record(obj: dict) -> dict:
            return {k: v for k, v in obj.items() if k not in ("pool_index", "ntk_score")}

    path = ctx.root / "o" / "selected.jsonl"
    if not path.exists():
        return "wrong", "no selected.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if len(lines) != 8:
        return "wrong", f"{len(lines)} selected rows, expected 8"
    for obj in lines:
        i = our_fields(obj)["pool_index"]
        if user_record(obj) != COLLIDING_POOL[i]:
            return "lost", f"pool row {i} came out as {user_record(obj)}"
    return None


def _yaml_overwrite_false(ctx: Ctx) -> list[Any]:
    data = ctx.domain()
    ensure(featurize(ctx, data, ctx.root / "store"))
    with_check(ctx, unchanged(ctx, "store/features.npy", "store/meta.json"))
    return featurize(ctx, data, ctx.root / "store", "--seed", "1", "--config", ctx.yaml("overwrite: 'false'\n"))


def _planted_symlink(ctx: Ctx) -> list[Any]:
    victim = ctx.raw("victim.txt", "precious")
    out = ctx.root / "o"
    out.mkdir()
    for name in ("selected.jsonl.tmp", "scores.csv.tmp", "run.json.tmp", ".lock.tmp"):
        os.symlink(victim, out / name)
    with_check(ctx, unchanged(ctx, "victim.txt"))
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(),
        "--out",
        out,
        "--n",
        "4",
        "--model",
        ctx.model,
        "--method",
        "random",
        "--quiet",
    ]


# ----------------------------------------------------------------------------- store cases


def _two_stores(ctx: Ctx, *pool_extra: Any) -> list[Any]:
    ensure(featurize(ctx, ctx.domain(), ctx.root / "dom"))
    ensure(featurize(ctx, ctx.pool(), ctx.root / "pool", *pool_extra))
    return [
        "score",
        "--domain-features",
        ctx.root / "dom",
        "--pool-features",
        ctx.root / "pool",
        "--out",
        ctx.root / "s",
    ]


def _damaged_then_rerun(damage: Callable[[Path], None]) -> Callable[[Ctx], list[Any]]:
    def argv(ctx: Ctx) -> list[Any]:
        data = ctx.domain()
        ensure(featurize(ctx, data, ctx.root / "ref"))
        shutil.copytree(ctx.root / "ref", ctx.root / "store")
        (ctx.root / "store" / ".lock").unlink(missing_ok=True)
        damage(ctx.root / "store" / "features.npy")
        return featurize(ctx, data, ctx.root / "store")

    return argv


def _same_as_reference(ctx: Ctx) -> tuple[str, str] | None:
    ref, got = (np.load(ctx.root / n / "features.npy") for n in ("ref", "store"))
    return None if np.array_equal(ref, got) else ("wrong", "features differ from a clean run")


def _truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) - 100)


def _zero(path: Path) -> None:
    arr = np.load(path, mmap_mode="r+")
    arr[:] = 0
    arr.flush()


def _flip(path: Path) -> None:
    arr = np.load(path, mmap_mode="r+")
    arr[3, 5] += 1.0
    arr.flush()


def _score_damaged(damage: Callable[[Path], None]) -> Callable[[Ctx], list[Any]]:
    def argv(ctx: Ctx) -> list[Any]:
        args = _two_stores(ctx)
        damage(ctx.root / "pool" / "features.npy")
        return args

    return argv


@contextmanager
def _hold_lock(folder: Path) -> Iterator[None]:
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@contextmanager
def _disk_full() -> Iterator[None]:
    real = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    os.pwrite = full
    try:
        yield
    finally:
        os.pwrite = real


def _disk_full_then_rerun(ctx: Ctx) -> list[Any]:
    data = ctx.domain()
    ensure(featurize(ctx, data, ctx.root / "ref"))
    ctx.notes["data"] = data
    return featurize(ctx, data, ctx.root / "store")


def _rerun_after_disk_full(ctx: Ctx) -> tuple[str, str] | None:
    rc, _, err = _main(featurize(ctx, ctx.notes["data"], ctx.root / "store"))
    if rc != 0:
        return "wrong", f"rerun after the disk was freed failed: {err.strip()}"
    return _same_as_reference(ctx)


# ----------------------------------------------------------------------------- message cases


def _domain_long_responses(ctx: Ctx, keep: int) -> list[Any]:
    """Responses longer than --max-length leaves: prompts are cut first, then the responses' ends (a warning)."""
    rows = [{"prompt": "long " * 40, "response": "the answer is " * 8} for _ in range(12 - keep)]
    rows += [{"prompt": "short", "response": "the answer"} for _ in range(keep)]
    domain = ctx.jsonl("d.jsonl", rows)
    pool = ctx.pool([{"prompt": f"q{i} good", "response": "fine"} for i in range(12)])
    return [
        "select",
        "--domain",
        domain,
        "--pool",
        pool,
        "--out",
        ctx.root / "o",
        "--n",
        "4",
        "--model",
        ctx.model,
        "--max-length",
        "48",
        *TINY,
    ]


def _domain_empty_responses(ctx: Ctx) -> list[Any]:
    domain = ctx.jsonl("d.jsonl", [{"prompt": f"p{i}", "response": " " * (i % 2)} for i in range(12)])
    pool = ctx.pool([{"prompt": f"q{i} good", "response": "fine"} for i in range(12)])
    return [
        "select",
        "--domain",
        domain,
        "--pool",
        pool,
        "--out",
        ctx.root / "o",
        "--n",
        "4",
        "--model",
        ctx.model,
        *TINY,
    ]


def _odd_task_names(ctx: Ctx) -> list[Any]:
    rows = [
        {**r, "task": t}
        for r, t in zip(synthetic_rows(24, 2), ["50% off $$", "$x^2$ \\frac{", "_under_", "a"] * 6, strict=True)
    ]
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(rows),
        "--out",
        ctx.root / "o",
        "--n",
        "4",
        "--model",
        ctx.model,
        *TINY,
    ]


def _report_written(ctx: Ctx) -> tuple[str, str] | None:
    return None if (ctx.root / "o" / "report.html").exists() else ("wrong", "no report.html")


def _state_is(key: str, expected: Any, store: str = "o") -> Callable[[Ctx], tuple[str, str] | None]:
    def check(ctx: Ctx) -> tuple[str, str] | None:
        meta = ctx.root / store / "meta.json"
        if not meta.exists():
            return "wrong", "no store written"
        value: Any = json.loads(meta.read_text())["definition"]
        for part in key.split("."):
            value = value[part]
        return None if value == expected else ("wrong", f"{key} = {value!r}, expected {expected!r}")

    return check


def _trained_lr(ctx: Ctx) -> tuple[str, str] | None:
    state = ctx.root / "o" / "training_state.json"
    if not state.exists():
        return "wrong", "no training_state.json"
    lr = json.loads(state.read_text())["definition"]["train"]["lr"]
    return None if lr == 1e-4 else ("wrong", f"lr = {lr!r}")


CASES: list[Case] = [
    # --- data loss
    Case(
        "train --out folder holding the user's selected.jsonl",
        "loss",
        lambda c: _train_into_folder_with(c, {"selected.jsonl": '{"prompt": "a"}\n'}),
        2,
        "holds files ntk-selector did not write (selected.jsonl)",
        check=run_checks,
    ),
    Case(
        "warmup --out folder holding notes.txt",
        "loss",
        lambda c: _train_into_folder_with(c, {"notes.txt": "mine"}, command="warmup"),
        2,
        "holds files ntk-selector did not write (notes.txt)",
        check=run_checks,
    ),
    Case(
        "train --out with foreign files and --overwrite keeps them",
        "loss",
        lambda c: _train_into_folder_with(c, {"selected.jsonl": "x\n", "README.md": "mine"}, "--overwrite"),
        0,
        "",
        check=_adapter_written,
    ),
    Case("train next to a user folder named OUT.tmp", "loss", _sibling_kept, 0, "", check=run_checks),
    Case(
        "select --out folder holding the user's selected.jsonl (no run.json)",
        "loss",
        lambda c: _outputs_into_folder_with(c, {"selected.jsonl": '{"prompt": "mine"}\n'}, "select"),
        2,
        "already holds selected.jsonl, not written by an earlier run",
        check=run_checks,
    ),
    Case(
        "predict --out folder holding the user's predict.json",
        "loss",
        lambda c: _outputs_into_folder_with(c, {"predict.json": '{"mine": 1}'}, "predict"),
        2,
        "already holds predict.json, not written by an earlier run",
        check=run_checks,
    ),
    Case(
        "diagnose --out folder holding the user's report.html",
        "loss",
        lambda c: _outputs_into_folder_with(c, {"report.html": "<p>mine</p>"}, "diagnose"),
        2,
        "already holds report.html, not written by an earlier run",
        check=run_checks,
    ),
    Case(
        "evaluate --out folder holding the user's predictions.jsonl",
        "loss",
        lambda c: _outputs_into_folder_with(c, {"predictions.jsonl": "mine\n", "notes.txt": "x"}, "evaluate"),
        2,
        "already holds predictions.jsonl, not written by an earlier run",
        check=run_checks,
    ),
    Case(
        "train --out is a file",
        "loss",
        lambda c: ["train", "--data", c.domain(), "--out", c.raw("f.txt", "x"), "--model", c.model],
        2,
        "is a file",
    ),
    Case(
        "YAML overwrite: 'false' does not replace a store",
        "loss",
        _yaml_overwrite_false,
        2,
        "holds another run",
        check=run_checks,
    ),
    Case(
        "record fields pool_index / ntk_score / __line__ (random)",
        "loss",
        _select_keeps_user_fields("random"),
        0,
        "",
        check=_user_fields_intact,
    ),
    Case(
        "record fields pool_index / ntk_score / __line__ (ntk)",
        "loss",
        _select_keeps_user_fields("ntk"),
        0,
        "",
        check=_user_fields_intact,
    ),
    Case("symlinks planted at temporary names", "loss", _planted_symlink, 0, "", check=run_checks),
    # --- settings, command line
    settings_case("--m smaller than --n", ["--m", "2"], "--m 2 is smaller than --n 4", "select"),
    settings_case("--store-dtype int8", ["--store-dtype", "int8"], "--store-dtype must be one of float32, float16"),
    settings_case("--max-length -1", ["--max-length", "-1"], "--max-length must be at least 2"),
    settings_case("--k -2", ["--k", "-2"], "--k must be at least 1", "select"),
    settings_case("--epochs 0", ["--epochs", "0"], "--epochs must be greater than 0", "train"),
    settings_case("--epochs -1", ["--epochs", "-1"], "--epochs must be greater than 0", "train"),
    settings_case("--batch-size 0", ["--batch-size", "0"], "--batch-size must be at least 1", "train"),
    settings_case("--max-batch-size 0", ["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
    settings_case("--token-budget 0", ["--token-budget", "0"], "--token-budget must be at least 1"),
    settings_case("--proj-dim -5", ["--proj-dim", "-5"], "--proj-dim must be at least 0"),
    settings_case("--lr nan", ["--lr", "nan"], "--lr must be a finite number", "train"),
    settings_case("--lr -1", ["--lr", "-1"], "--lr must be at least 0", "train"),
    settings_case("--seed -1", ["--seed", "-1"], "--seed must be at least 0"),
    settings_case("--lora-dropout 1.5", ["--lora-dropout", "1.5"], "--lora-dropout must be less than 1"),
    settings_case("--rank 0", ["--rank", "0"], "--rank must be at least 1"),
    settings_case("--warmup-ratio 2", ["--warmup-ratio", "2"], "--warmup-ratio must be at most 1", "train"),
    settings_case("--dtype float8", ["--dtype", "float8"], "--dtype must be one of auto, float32, bfloat16, float16"),
    settings_case("--device gpu", ["--device", "gpu"], "--device must match"),
    settings_case("--objective nkt", ["--objective", "nkt"], "(did you mean 'ntk'?)"),
    settings_case(
        "--knn-search foo", ["--knn-search", "foo"], "--knn-search must be one of auto, flat, hnsw, ivf", "select"
    ),
    settings_case(
        "--index-mode fast", ["--index-mode", "fast"], "--index-mode must be one of features, preselect", "select"
    ),
    settings_case("--embedder bert", ["--embedder", "bert"], "--embedder must be one of model, minilm", "select"),
    settings_case("--loss-mean row", ["--loss-mean", "row"], "--loss-mean must be one of token, example", "train"),
    settings_case("--proj-dim abc", ["--proj-dim", "abc"], "invalid int value: 'abc'"),
    settings_case("--n 0", ["--n", "0"], "--n must be a positive number", "select"),
    settings_case("--method bogus", ["--method", "bogus"], "unknown method 'bogus'", "select"),
    settings_case(
        "--checkpoint-every -1", ["--checkpoint-every", "-1"], "--checkpoint-every must be at least 0", "train"
    ),
    # --- settings, YAML
    yaml_case(
        "YAML proj_dim: sixty-four",
        "proj_dim: sixty-four\n",
        "c.yaml: proj_dim must be a whole number, got 'sixty-four'",
    ),
    yaml_case("YAML max_length: [1, 2]", "max_length: [1, 2]\n", "c.yaml: max_length must be a single number"),
    yaml_case("YAML unknown key", "proj_dimm: 64\n", "unknown setting 'proj_dimm' (did you mean 'proj_dim'?)"),
    yaml_case("YAML unknown section", "trian:\n  lr: 0.001\n", "section 'trian' (did you mean 'train'?)"),
    yaml_case("YAML list at the top", "- proj_dim\n", "expected a mapping of settings"),
    yaml_case("YAML syntax error", "proj_dim: [1,\n", "not valid YAML"),
    yaml_case("YAML rank: null", "rank: null\n", "c.yaml: rank needs a value"),
    yaml_case("YAML quiet: maybe", "quiet: maybe\n", "c.yaml: quiet must be true or false"),
    yaml_case(
        "YAML store_dtype: int8", "feature:\n  store_dtype: int8\n", "c.yaml: feature.store_dtype must be one of"
    ),
    yaml_case("YAML epochs: 0", "epochs: 0\n", "c.yaml: epochs must be greater than 0", "train"),
    yaml_case("YAML m < n", "m: 2\nn: 4\n", "--m 2 is smaller than --n 4", "select"),
    yaml_case("YAML target_modules: 5", "target_modules: [q_proj, 5]\n", "c.yaml: target_modules must be text"),
    Case(
        "YAML rank: '4' is read as 4",
        "setting",
        lambda c: (
            featurize(c, c.domain(), c.root / "o")[:-5]
            + ["--proj-dim", "16", "--quiet", "--config", c.yaml("rank: '4'\n")]
        ),
        0,
        "",
        check=_state_is("lora.rank", 4),
    ),
    Case(
        "YAML target_modules: q_proj is one module",
        "setting",
        lambda c: featurize(c, c.domain(), c.root / "o", "--config", c.yaml("target_modules: q_proj\n")),
        0,
        "",
        check=_state_is("lora.target_modules", ["q_proj"]),
    ),
    Case(
        "YAML lr: 1e-4 (a string to PyYAML) is a float",
        "setting",
        lambda c: [
            "train",
            "--data",
            c.domain(),
            "--out",
            c.root / "o",
            "--model",
            c.model,
            "--rank",
            "4",
            "--quiet",
            "--config",
            c.yaml("lr: 1e-4\nepochs: 1\n"),
        ],
        0,
        "",
        check=_trained_lr,
    ),
    # --- data: errors that name the place
    data_case(
        "messages starting with the assistant",
        "x.jsonl",
        '{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}\n',
        "x.jsonl:1: field 'messages' starts with the assistant turn",
    ),
    data_case(
        "lone surrogate",
        "x.jsonl",
        '{"prompt": "a", "response": "b"}\n{"prompt": "x\\ud800y", "response": "b"}\n',
        "x.jsonl:2: field 'prompt' holds a lone surrogate",
    ),
    data_case(
        "lone surrogate in messages",
        "x.jsonl",
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\udfff"}]}\n',
        "x.jsonl:1: field 'messages' holds a lone surrogate",
    ),
    data_case("state.json not JSON", "", lambda c: hf_folder(c, "{not json"), "state.json: not a valid HF state.json"),
    data_case("state.json without _data_files", "", lambda c: hf_folder(c, '{"x": 1}'), "not a valid HF state.json"),
    data_case(
        "state.json data file outside the folder",
        "",
        lambda c: hf_folder(c, '{"_data_files": [{"filename": "../../elsewhere.arrow"}]}'),
        "is outside the dataset folder",
    ),
    data_case(
        "state.json data file missing",
        "",
        lambda c: hf_folder(c, '{"_data_files": [{"filename": "nope.arrow"}]}'),
        "data file 'nope.arrow' not found",
    ),
    data_case(
        "malformed JSON line", "x.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": \n', "x.jsonl:2: malformed JSON"
    ),
    data_case("missing response field", "x.jsonl", '{"prompt": "a"}\n', "x.jsonl:1: missing field 'response'"),
    data_case(
        "response not a string",
        "x.jsonl",
        '{"prompt": "a", "response": 3}\n',
        "x.jsonl:1: field 'response' must be a string",
    ),
    data_case("CSV not UTF-8", "x.csv", b"prompt,response\na,b\nc,\xe9t\xe9\n", "x.csv:3: bytes that are not UTF-8"),
    data_case("empty file", "x.jsonl", "", "no records (empty file)"),
    data_case("unknown format", "x.txt", "hello\n", "unknown format '.txt'"),
    data_case("JSON array line", "x.jsonl", "[1, 2]\n", "x.jsonl:1: expected a JSON object"),
    # --- stores
    Case("score stores of different seeds", "store", lambda c: _two_stores(c, "--seed", "1"), 2, "seed: 0 -> 1"),
    Case(
        "score stores of different projection dims",
        "store",
        lambda c: _two_stores(c, "--proj-dim", "8"),
        2,
        "proj_dim: 16 -> 8",
    ),
    Case(
        "score stores of different objectives",
        "store",
        lambda c: _two_stores(c, "--objective", "ce"),
        2,
        "objective: 'ntk' -> 'ce'",
    ),
    Case(
        "score stores of different LoRA ranks", "store", lambda c: _two_stores(c, "--rank", "2"), 2, "lora.rank: 4 -> 2"
    ),
    Case(
        "featurize resumes a truncated features.npy",
        "store",
        _damaged_then_rerun(_truncate),
        0,
        "",
        check=_same_as_reference,
    ),
    Case(
        "featurize resumes a zeroed features.npy", "store", _damaged_then_rerun(_zero), 0, "", check=_same_as_reference
    ),
    Case(
        "featurize --overwrite rebuilds a truncated store",
        "store",
        lambda c: _damaged_then_rerun(_truncate)(c) + ["--overwrite"],
        0,
        "",
        check=_same_as_reference,
    ),
    Case("score a corrupted store", "store", _score_damaged(_flip), 2, "rows fail their checksum (first: row 3)"),
    Case("score a truncated store", "store", _score_damaged(_truncate), 2, "truncated or resized"),
    Case(
        "featurize while another process writes the store",
        "store",
        lambda c: featurize(c, c.domain(), c.root / "o"),
        2,
        "is being written by another process",
        fault=lambda c: _hold_lock(c.root / "o"),
    ),
    Case(
        "warmup while another process writes it",
        "store",
        lambda c: ["warmup", "--domain", c.domain(), "--out", c.root / "o", "--model", c.model, "--quiet"],
        2,
        "is being written by another process",
        fault=lambda c: _hold_lock(c.root / "o"),
    ),
    Case(
        "select while another select runs on the folder",
        "store",
        lambda c: [
            "select",
            "--domain",
            c.domain(),
            "--pool",
            c.pool(),
            "--out",
            c.root / "o",
            "--n",
            "4",
            "--model",
            c.model,
            *TINY,
        ],
        2,
        "is being written by another process",
        fault=lambda c: _hold_lock(c.root / "o"),
    ),
    Case(
        "disk full while featurizing, then a rerun",
        "store",
        _disk_full_then_rerun,
        2,
        "features.npy: no space left on the device",
        fault=lambda c: _disk_full(),
        check=_rerun_after_disk_full,
    ),
    # --- messages
    Case(
        "10 of 12 domain rows have responses longer than --max-length leaves",
        "message",
        lambda c: _domain_long_responses(c, 2),
        0,
        "10 of 12 rows of",
    ),
    Case(
        "every domain row has an empty response",
        "message",
        _domain_empty_responses,
        2,
        "no example has response tokens left",
    ),
    Case("pool task named '50% off $$'", "message", _odd_task_names, 0, "", check=_report_written),
]


# ----------------------------------------------------------------------------- second round: helpers
# Every stage's outputs, settings given twice or in the wrong shape, folders of mixed files, records
# laid out as one JSON document, pool rows that repeat each other or the domain, file permissions,
# read-only outputs, and records handed to the library rather than the command line.


def _embed_stores(ctx: Ctx) -> tuple[Path, Path]:
    for name, data in (("ed", ctx.domain()), ("ep", ctx.pool())):
        ensure(["embed", "--data", data, "--out", ctx.root / name, "--model", ctx.model, "--quiet"])
    return ctx.root / "ed", ctx.root / "ep"


def _preselect(ctx: Ctx, out: Path, *extra: Any) -> list[Any]:
    ed, ep = ctx.root / "ed", ctx.root / "ep"
    return ["preselect", "--domain-store", ed, "--pool-store", ep, "--out", out, "--n", "4", "--quiet", *extra]


def _preselect_over_user_file(ctx: Ctx) -> list[Any]:
    _embed_stores(ctx)
    ctx.raw("victim.jsonl", '{"prompt": "mine", "response": "keep"}\n')
    with_check(ctx, unchanged(ctx, "victim.jsonl"))
    return _preselect(ctx, ctx.root / "victim.jsonl")


def _preselect_rerun_other_settings(ctx: Ctx) -> list[Any]:
    _embed_stores(ctx)
    ensure(_preselect(ctx, ctx.root / "pre.npz"))
    with_check(ctx, unchanged(ctx, "pre.npz"))
    return _preselect(ctx, ctx.root / "pre.npz", "--m", "6")


def _preselect_same_rerun(ctx: Ctx) -> list[Any]:
    _embed_stores(ctx)
    ensure(_preselect(ctx, ctx.root / "pre.npz"))
    ctx.notes["first"] = (ctx.root / "pre.npz").read_bytes()
    return _preselect(ctx, ctx.root / "pre.npz")


def _same_preselection(ctx: Ctx) -> tuple[str, str] | None:
    with np.load(io.BytesIO(ctx.notes["first"])) as a, np.load(ctx.root / "pre.npz") as b:
        same = all(np.array_equal(a[k], b[k]) for k in ("votes", "order"))
    return None if same else ("wrong", "a rerun of the same settings gave another pre-selection")


def _score_into_folder_with(ctx: Ctx, files: dict[str, str]) -> list[Any]:
    args = _two_stores(ctx)
    out = ctx.root / "s"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with_check(ctx, unchanged(ctx, *(f"s/{n}" for n in files)))
    return args


def _score_rerun_other_settings(ctx: Ctx) -> list[Any]:
    args = _two_stores(ctx)
    ensure(args)
    with_check(ctx, unchanged(ctx, "s/scores.csv", "s/top.txt"))
    return args + ["--cosine"]


def _store_folder_with(ctx: Ctx, files: dict[str, str], command: str = "featurize") -> list[Any]:
    out = ctx.root / "o"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with_check(ctx, unchanged(ctx, *(f"o/{n}" for n in files)))
    if command == "index":
        return ["index", "--pool", ctx.pool(), "--out", out, "--model", ctx.model, *TINY]
    return featurize(ctx, ctx.domain(), out)


def _out_is(kind: str, command: str) -> Callable[[Ctx], list[Any]]:
    """--out that is an existing file or a symlink to nothing, for one command."""

    def argv(ctx: Ctx) -> list[Any]:
        out = ctx.root / "out"
        if kind == "file":
            out.write_text("mine")
        else:
            os.symlink(ctx.root / "gone", out)
        with_check(
            ctx, lambda c: None if (out.is_symlink() or out.read_text() == "mine") else ("lost", "--out changed")
        )
        if command == "select":
            return [
                "select",
                "--domain",
                ctx.domain(),
                "--pool",
                ctx.pool(),
                "--out",
                out,
                "--n",
                "4",
                "--model",
                ctx.model,
                *TINY,
            ]
        if command == "score":
            return _two_stores(ctx)[:-1] + [out]
        if command == "index":
            return ["index", "--pool", ctx.pool(), "--out", out, "--model", ctx.model, *TINY]
        return featurize(ctx, ctx.domain(), out)

    return argv


def _preselect_into_folder(ctx: Ctx) -> list[Any]:
    _embed_stores(ctx)
    (ctx.root / "pre_dir").mkdir()
    (ctx.root / "pre_dir" / "mine.txt").write_text("keep")
    with_check(ctx, unchanged(ctx, "pre_dir/mine.txt"))
    return _preselect(ctx, ctx.root / "pre_dir")


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """The filesystem under ``folder`` refuses new files and folders (EROFS), as a read-only mount
    does; the tests run as any user, so permissions alone cannot stand for it."""
    real_open, real_mkdir = os.open, os.mkdir
    root = str(folder.resolve())

    def inside(path: Any) -> bool:
        return str(Path(os.fspath(path)).resolve()).startswith(root)

    def ro_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & os.O_CREAT and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *a, **k)

    def ro_mkdir(path: Any, *a: Any, **k: Any) -> None:
        if inside(path):
            if os.path.isdir(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fspath(path))
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        real_mkdir(path, *a, **k)

    os.open, os.mkdir = ro_open, ro_mkdir  # type: ignore[assignment]
    try:
        yield
    finally:
        os.open, os.mkdir = real_open, real_mkdir  # type: ignore[assignment]


def _read_only_out(command: str) -> Callable[[Ctx], list[Any]]:
    def argv(ctx: Ctx) -> list[Any]:
        out = ctx.root / "ro"
        out.mkdir()
        if command == "select":
            return [
                "select",
                "--domain",
                ctx.domain(),
                "--pool",
                ctx.pool(),
                "--out",
                out,
                "--n",
                "4",
                "--model",
                ctx.model,
                *TINY,
            ]
        if command == "train":
            return [
                "train",
                "--data",
                ctx.domain(),
                "--out",
                out,
                "--model",
                ctx.model,
                "--rank",
                "4",
                "--epochs",
                "1",
                "--quiet",
            ]
        return featurize(ctx, ctx.domain(), out)

    return argv


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes_follow_umask(ctx: Ctx) -> tuple[str, str] | None:
    """Under umask 027 every file we leave is 0640 and every folder 0750 (what open() and mkdir give)."""
    out = ctx.root / "o"
    if not (out / "run.json").exists():
        return "wrong", "no run.json"
    for path in [out, *out.rglob("*")]:
        want = 0o750 if path.is_dir() else 0o640
        got = path.stat().st_mode & 0o777
        if got != want:
            return "wrong", f"{path.relative_to(ctx.root)} has mode {got:o}, expected {want:o}"
    return None


def _yaml_text_case(id: str, text: str, fragment: str, name: str = "c.yaml") -> Case:
    case = settings_case(id, [], fragment)
    inner = case.argv
    case.argv = lambda ctx: inner(ctx) + ["--config", ctx.raw(name, text)]
    return case


def _n_above_rows_with_responses(ctx: Ctx) -> list[Any]:
    rows = [{"prompt": f"q{i}", "response": "fine" if i < 3 else " "} for i in range(12)]
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(rows),
        "--out",
        ctx.root / "o",
        "--n",
        "5",
        "--model",
        ctx.model,
        *TINY,
    ]


def _no_model_work(ctx: Ctx) -> tuple[str, str] | None:
    return (
        ("wrong", "the warm-up ran before --n was checked") if (ctx.root / "o" / "stages" / "warmup").exists() else None
    )


def _large_m(ctx: Ctx) -> list[Any]:
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(),
        "--out",
        ctx.root / "o",
        "--n",
        "4",
        "--m",
        "100",
        "--model",
        ctx.model,
        *TINY,
    ]


def _replay_other_release(ctx: Ctx) -> list[Any]:
    first = [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(),
        "--out",
        ctx.root / "first",
        "--n",
        "4",
        "--model",
        ctx.model,
        "--method",
        "random",
        "--quiet",
    ]
    ensure(first)
    run = json.loads((ctx.root / "first" / "run.json").read_text())
    run["versions"]["ntk_selector"] = "0.0.1"
    replay = ctx.raw("old_run.json", json.dumps(run))
    return ["select", "--config", replay, "--out", ctx.root / "o", "--quiet"]


def _same_selection_as_first(ctx: Ctx) -> tuple[str, str] | None:
    a, b = ((ctx.root / n / "selected.jsonl").read_text() for n in ("first", "o"))
    return None if a == b else ("wrong", "the replay selected other rows")


def _mixed_folder(files: dict[str, str]) -> Callable[[Ctx], Path]:
    def make(ctx: Ctx) -> Path:
        for name, text in files.items():
            ctx.raw(f"pool_dir/{name}", text)
        return ctx.root / "pool_dir"

    return make


ROWS_A = "".join(json.dumps(r) + "\n" for r in synthetic_rows(15, 2))
ROWS_B = "prompt,response\n" + "".join(f"b{i},r{i}\n" for i in range(15))
PRETTY_ARRAY = json.dumps(synthetic_rows(3, 2), indent=2) + "\n"
PRETTY_OBJECTS = "".join(json.dumps(r, indent=2) + "\n" for r in synthetic_rows(3, 2))


def _selected(ctx: Ctx) -> list[dict]:
    from ntk_selector.io.outputs import user_record

    path = ctx.root / "o" / "selected.jsonl"
    return [user_record(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


def _content(r: dict) -> tuple[str, str]:
    return r["prompt"], r["response"]


def _pool_with_domain(ctx: Ctx, *extra: Any, method: str = "ntk", n: int = 8) -> list[Any]:
    domain_rows = synthetic_rows(8, 1, ("dom",))
    pool = ctx.pool(synthetic_rows(24, 2) + [{**r, "task": "copied"} for r in domain_rows])
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        pool,
        "--out",
        ctx.root / "o",
        "--n",
        n,
        "--model",
        ctx.model,
        "--method",
        method,
        *TINY,
        *extra,
    ]


def _no_domain_rows_selected(ctx: Ctx) -> tuple[str, str] | None:
    domain = {_content(r) for r in synthetic_rows(8, 1, ("dom",))}
    back = [r for r in _selected(ctx) if _content(r) in domain]
    if back:
        return "wrong", f"{len(back)} domain rows selected back"
    run = json.loads((ctx.root / "o" / "run.json").read_text())
    return None if run["counts"].get("pool_domain_copies") == 8 else ("wrong", "run.json does not count the 8 copies")


def _domain_rows_kept(ctx: Ctx) -> tuple[str, str] | None:
    domain = {_content(r) for r in synthetic_rows(8, 1, ("dom",))}
    back = [r for r in _selected(ctx) if _content(r) in domain]
    return None if len(back) == 8 else ("wrong", f"--keep-domain-copies: {len(back)} of the 8 copies selectable")


def _pool_with_duplicates(ctx: Ctx, *extra: Any, n: int = 24) -> list[Any]:
    rows = synthetic_rows(24, 2)
    pool = ctx.pool(rows + [dict(r) for r in rows[:6]])
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        pool,
        "--out",
        ctx.root / "o",
        "--n",
        n,
        "--model",
        ctx.model,
        "--method",
        "random",
        "--quiet",
        *extra,
    ]


def _no_identical_rows(ctx: Ctx) -> tuple[str, str] | None:
    picked = [_content(r) for r in _selected(ctx)]
    if len(set(picked)) != len(picked):
        return "wrong", f"{len(picked) - len(set(picked))} identical rows selected twice"
    run = json.loads((ctx.root / "o" / "run.json").read_text())
    dup = run["pool_filter"]["duplicates"]
    return None if dup["rows"] == 6 and dup["excluded"] else ("wrong", f"run.json duplicates: {dup}")


def _duplicates_kept(ctx: Ctx) -> tuple[str, str] | None:
    picked = [_content(r) for r in _selected(ctx)]
    return None if len(picked) == 30 and len(set(picked)) == 24 else ("wrong", "--keep-duplicates did not keep them")


def _api(
    run: Callable[[Ctx], Any], check: Callable[[Ctx, Any], tuple[str, str] | None] | None = None
) -> Callable[[Ctx], tuple[int, str]]:
    """A library call as a case: a UserError is what a user reads (exit 2 with its message)."""

    def call(ctx: Ctx) -> tuple[int, str]:
        from ntk_selector import UserError

        try:
            result = run(ctx)
        except UserError as e:
            return 2, f"ntk-selector: error: {e}"
        if check is not None:
            ctx.notes["api_problem"] = check(ctx, result)
        return 0, ""

    return call


def _api_problem(ctx: Ctx) -> tuple[str, str] | None:
    return ctx.notes.get("api_problem")


def _api_missing_field(ctx: Ctx) -> Any:
    import ntk_selector

    pool = synthetic_rows(24, 2)
    del pool[10]["response"]
    return ntk_selector.select(synthetic_rows(8, 1), pool, n=4, method="random", model=str(ctx.model), quiet=True)


def _dataset_dict(ctx: Ctx, split: str | None) -> Any:
    import datasets

    import ntk_selector

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(synthetic_rows(24, 2)),
            "test": datasets.Dataset.from_list(synthetic_rows(6, 3)),
        }
    )
    kw = {} if split is None else {"split": split}
    return ntk_selector.select(synthetic_rows(8, 1), dd, n=5, method="random", model=str(ctx.model), quiet=True, **kw)


def _from_train_split(ctx: Ctx, sel: Any) -> tuple[str, str] | None:
    train = synthetic_rows(24, 2)
    if len(sel) != 5 or any(r != train[int(i)] for r, i in zip(sel.records, sel.indices, strict=True)):
        return "wrong", "the selection is not rows of the train split"
    return None


CASES += [
    # --- data loss: every stage refuses an output it did not write, or a run of other settings
    Case(
        "preselect --out a user's file",
        "loss",
        _preselect_over_user_file,
        2,
        "already exists and was not written by preselect",
        check=run_checks,
    ),
    Case(
        "preselect rerun with other settings on one --out",
        "loss",
        _preselect_rerun_other_settings,
        2,
        "holds a pre-selection of other settings (preselect.m: None -> 6)",
        check=run_checks,
    ),
    Case("preselect rerun with the same settings", "loss", _preselect_same_rerun, 0, "", check=_same_preselection),
    Case(
        "score --out folder holding the user's scores.csv",
        "loss",
        lambda c: _score_into_folder_with(c, {"scores.csv": "mine\n"}),
        2,
        "already holds scores.csv",
        check=run_checks,
    ),
    Case(
        "score rerun with other settings on one --out",
        "loss",
        _score_rerun_other_settings,
        2,
        "holds scores of other stores or settings (cosine: False -> True)",
        check=run_checks,
    ),
    Case(
        "featurize --out folder holding the user's features.npy",
        "loss",
        lambda c: _store_folder_with(c, {"features.npy": "mine", "notes.txt": "x"}),
        2,
        "holds features.npy, not written by ntk-selector as a store",
        check=run_checks,
    ),
    Case(
        "featurize --out folder holding the user's meta.json",
        "loss",
        lambda c: _store_folder_with(c, {"meta.json": '{"mine": true}'}),
        2,
        "holds meta.json, not written by ntk-selector as a store",
        check=run_checks,
    ),
    Case(
        "index --out folder holding the user's index.json",
        "loss",
        lambda c: _store_folder_with(c, {"index.json": '{"mine": true}'}, "index"),
        2,
        "already holds index.json, not written by an earlier run",
        check=run_checks,
    ),
    # --- settings given twice, in the wrong shape, or to no effect
    _yaml_text_case(
        "YAML the same key twice", "proj_dim: 64\nproj_dim: 32\n", "setting 'proj_dim' is given twice (lines 1 and 2)"
    ),
    _yaml_text_case(
        "YAML a key twice inside a section",
        "feature:\n  proj_dim: 64\n  proj_dim: 32\n",
        "setting 'proj_dim' is given twice (lines 2 and 3)",
    ),
    _yaml_text_case(
        "YAML a key flat and under its section",
        "proj_dim: 64\nfeature:\n  proj_dim: 32\n",
        "setting 'proj_dim' is given twice",
    ),
    _yaml_text_case(
        "JSON config with a key twice",
        '{"proj_dim": 64, "proj_dim": 32}',
        "setting 'proj_dim' is given twice",
        name="c.json",
    ),
    _yaml_text_case("YAML rank and lora_rank", "rank: 4\nlora_rank: 2\n", "setting 'rank' is given twice"),
    _yaml_text_case(
        "YAML section given as a list",
        "feature:\n  - proj_dim: 64\n",
        "section 'feature' must be a mapping of settings",
    ),
    settings_case(
        "--rank 4 --lora-rank 2", ["--rank", "4", "--lora-rank", "2"], "--rank 4 and --lora-rank 2 set the same setting"
    ),
    settings_case("-n 4 --n 5", ["-n", "5"], "--n 4 and -n 5 set the same setting", "select"),
    settings_case(
        "--index-mode preselect without --index",
        ["--index-mode", "preselect"],
        "--index-mode preselect needs --index",
        "select",
    ),
    Case(
        "--n above the pool rows that keep a response",
        "setting",
        _n_above_rows_with_responses,
        2,
        "--n 5 is larger than the pool (3 usable rows",
        check=_no_model_work,
    ),
    # --- data: folders of mixed files, a JSON document in a .jsonl, pool rows repeating rows
    data_case(
        "pool folder of a.jsonl, b.csv, notes.txt, README.md",
        "",
        _mixed_folder({"a.jsonl": ROWS_A, "b.csv": ROWS_B, "notes.txt": "notes", "README.md": "# card"}),
        "holds record files of several formats (csv: b.csv; json: a.jsonl)",
    ),
    data_case(
        "pool folder of a.jsonl and notes.txt",
        "",
        _mixed_folder({"a.jsonl": ROWS_A, "notes.txt": "notes", "README.md": "# card"}),
        "holds files that are not record files and would be skipped (notes.txt)",
    ),
    data_case(
        "pretty-printed JSON array saved as .jsonl",
        "x.jsonl",
        PRETTY_ARRAY,
        "x.jsonl:1: malformed JSON (Expecting value at column 1); the file looks like one JSON array",
    ),
    data_case(
        "one-line JSON array of records saved as .jsonl",
        "x.jsonl",
        json.dumps(synthetic_rows(3, 2)) + "\n",
        "the file holds one JSON array of records: name it x.json",
    ),
    data_case("pretty-printed records in a .jsonl", "x.jsonl", PRETTY_OBJECTS, "a record spread over several lines"),
    Case(
        "pretty-printed JSON array saved as .json is read",
        "data",
        lambda c: featurize(c, c.raw("x.json", PRETTY_ARRAY), c.root / "o"),
        0,
        "",
        check=lambda c: (
            None
            if json.loads((c.root / "o" / "meta.json").read_text())["counts"]["rows"] == 3
            else ("wrong", "not 3 rows")
        ),
    ),
    Case(
        "domain rows copied into the pool are not selected back",
        "data",
        _pool_with_domain,
        0,
        "",
        check=_no_domain_rows_selected,
    ),
    Case(
        "--keep-domain-copies lets them be selected",
        "data",
        lambda c: _pool_with_domain(c, "--keep-domain-copies", method="random", n=32),
        0,
        "",
        check=_domain_rows_kept,
    ),
    Case(
        "identical pool rows are never selected twice", "data", _pool_with_duplicates, 0, "", check=_no_identical_rows
    ),
    Case(
        "--keep-duplicates lets every copy be selected",
        "data",
        lambda c: _pool_with_duplicates(c, "--keep-duplicates", n=30),
        0,
        "",
        check=_duplicates_kept,
    ),
    Case(
        "API records missing a field",
        "data",
        lambda c: [],
        2,
        "pool[10]: missing field 'response'",
        call=_api(_api_missing_field),
    ),
    Case(
        "API DatasetDict of two splits without split=",
        "data",
        lambda c: [],
        2,
        "pool has splits train, test: choose one with split=",
        call=_api(lambda c: _dataset_dict(c, None)),
    ),
    Case(
        "API DatasetDict with split='train'",
        "data",
        lambda c: [],
        0,
        "",
        call=_api(lambda c: _dataset_dict(c, "train"), _from_train_split),
        check=_api_problem,
    ),
    # --- outputs: a file or a dangling link as --out, a folder for a file, read-only, permissions
    *[
        Case(
            f"{command} --out is an existing file",
            "store",
            _out_is("file", command),
            2,
            "is a file, not a folder",
            check=run_checks,
        )
        for command in ("select", "featurize", "score", "index")
    ],
    *[
        Case(
            f"{command} --out is a dangling symlink",
            "store",
            _out_is("link", command),
            2,
            "is a symbolic link to a missing target",
            check=run_checks,
        )
        for command in ("select", "featurize", "score")
    ],
    Case(
        "preselect --out is an existing folder",
        "store",
        _preselect_into_folder,
        2,
        "is a folder; preselect writes one .npz file",
        check=run_checks,
    ),
    *[
        Case(
            f"{command} --out on a read-only filesystem",
            "store",
            _read_only_out(command),
            2,
            "the filesystem is read-only",
            fault=lambda c: _read_only(c.root / "ro"),
        )
        for command in ("select", "featurize", "train")
    ],
    Case(
        "outputs follow the umask (027)",
        "store",
        lambda c: [
            "select",
            "--domain",
            c.domain(),
            "--pool",
            c.pool(),
            "--out",
            c.root / "o",
            "--n",
            "4",
            "--model",
            c.model,
            *TINY,
        ],
        0,
        "",
        check=_modes_follow_umask,
        fault=lambda c: _umask(0o027),
    ),
    # --- messages
    Case("--m 100 on a 24-row pool", "message", _large_m, 0, "--m 100 is more than the 24 pool rows"),
    Case(
        "a replayed run.json of another release",
        "message",
        _replay_other_release,
        0,
        "was written by ntk-selector 0.0.1; this is",
        check=_same_selection_as_first,
    ),
]


# ------------------------------------------------------------------------ second round: siblings of the cases above


def _out_is_for(kind: str, command: str) -> Callable[[Ctx], list[Any]]:
    """--out that is a file or a dangling link, for the commands _out_is does not build."""

    def argv(ctx: Ctx) -> list[Any]:
        out = ctx.root / "out"
        if kind == "file":
            out.write_text("mine")
        else:
            os.symlink(ctx.root / "gone", out)
        with_check(
            ctx, lambda c: None if (out.is_symlink() or out.read_text() == "mine") else ("lost", "--out changed")
        )
        if command == "preselect":
            _embed_stores(ctx)
            return _preselect(ctx, out)
        if command in ("warmup", "train"):
            flag = "--domain" if command == "warmup" else "--data"
            return [
                command,
                flag,
                ctx.domain(),
                "--out",
                out,
                "--model",
                ctx.model,
                "--rank",
                "4",
                "--epochs",
                "1",
                "--quiet",
            ]
        if command == "evaluate":
            return ["evaluate", "--data", ctx.domain(), "--out", out, "--model", ctx.model, "--quiet"]
        return ["embed", "--data", ctx.domain(), "--out", out, "--model", ctx.model, "--quiet"]

    return argv


def _embed_folder_with(ctx: Ctx, files: dict[str, str]) -> list[Any]:
    out = ctx.root / "o"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with_check(ctx, unchanged(ctx, *(f"o/{n}" for n in files)))
    return ["embed", "--data", ctx.domain(), "--out", out, "--model", ctx.model, "--quiet"]


def _rows_read(n: int, store: str = "o") -> Callable[[Ctx], tuple[str, str] | None]:
    def check(ctx: Ctx) -> tuple[str, str] | None:
        meta = ctx.root / store / "meta.json"
        if not meta.exists():
            return "wrong", "no store written"
        rows = json.loads(meta.read_text())["counts"]["rows"]
        return None if rows == n else ("wrong", f"{rows} rows read, expected {n}")

    return check


def _api_dataset_missing_field(ctx: Ctx) -> Any:
    import datasets

    import ntk_selector

    rows = synthetic_rows(24, 2)
    rows[3]["response"] = None
    return ntk_selector.select(
        synthetic_rows(8, 1), datasets.Dataset.from_list(rows), n=4, method="random", model=str(ctx.model), quiet=True
    )


def _api_train_lists(ctx: Ctx) -> Any:
    import ntk_selector

    second = synthetic_rows(6, 3)
    del second[2]["response"]
    return ntk_selector.train(
        [synthetic_rows(6, 1), second], ctx.root / "adapter", model=str(ctx.model), rank=4, epochs=1, quiet=True
    )


def _api_featurize_dataset_dict(ctx: Ctx) -> Any:
    import datasets

    import ntk_selector

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(synthetic_rows(5, 2)),
            "test": datasets.Dataset.from_list(synthetic_rows(3, 3)),
        }
    )
    return ntk_selector.featurize(
        dd, ctx.root / "o", model=str(ctx.model), split="test", proj_dim=16, rank=4, quiet=True
    )


def _duplicates_ntk(ctx: Ctx) -> list[Any]:
    rows = synthetic_rows(24, 2)
    pool = ctx.pool(rows + [dict(r) for r in rows] + [dict(r) for r in rows[:4]])
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        pool,
        "--out",
        ctx.root / "o",
        "--n",
        "12",
        "--model",
        ctx.model,
        *TINY,
    ]


def _no_identical_rows_ntk(ctx: Ctx) -> tuple[str, str] | None:
    picked = [_content(r) for r in _selected(ctx)]
    if len(picked) != 12 or len(set(picked)) != 12:
        return "wrong", f"{len(picked) - len(set(picked))} identical rows among {len(picked)} selected"
    return None


def _large_k(ctx: Ctx) -> list[Any]:
    return [
        "select",
        "--domain",
        ctx.domain(),
        "--pool",
        ctx.pool(),
        "--out",
        ctx.root / "o",
        "--n",
        "4",
        "--k",
        "50",
        "--model",
        ctx.model,
        *TINY,
    ]


def _featurize_umask(ctx: Ctx) -> list[Any]:
    return featurize(ctx, ctx.domain(), ctx.root / "o")


def _store_modes(ctx: Ctx) -> tuple[str, str] | None:
    out = ctx.root / "o"
    for path in [out, *out.rglob("*")]:
        want = 0o775 if path.is_dir() else 0o664
        got = path.stat().st_mode & 0o777
        if got != want:
            return "wrong", f"{path.relative_to(ctx.root)} has mode {got:o}, expected {want:o}"
    return None


CASES += [
    # --- data loss
    Case(
        "score --out folder holding the user's top.txt",
        "loss",
        lambda c: _score_into_folder_with(c, {"top.txt": "1\n2\n"}),
        2,
        "already holds top.txt",
        check=run_checks,
    ),
    Case(
        "embed --out folder holding the user's status.npy",
        "loss",
        lambda c: _embed_folder_with(c, {"status.npy": "mine"}),
        2,
        "holds status.npy, not written by ntk-selector as a store",
        check=run_checks,
    ),
    # --- settings
    Case(
        "--rank 4 --lora-rank 4 (same value) runs",
        "setting",
        lambda c: featurize(c, c.domain(), c.root / "o", "--lora-rank", "4"),
        0,
        "",
        check=_state_is("lora.rank", 4),
    ),
    _yaml_text_case(
        "YAML section given as a number", "feature: 64\n", "section 'feature' must be a mapping of settings"
    ),
    _yaml_text_case(
        "YAML filters section given as a list",
        "filters:\n  - dedupe\n",
        "section 'filters' must be a mapping of settings",
    ),
    # --- data
    data_case(
        "pool folder of notes.txt only",
        "",
        _mixed_folder({"notes.txt": "notes"}),
        "holds files that are not record files and would be skipped (notes.txt)",
    ),
    data_case(
        "empty pool folder",
        "",
        lambda c: (c.root / "empty_dir").mkdir() or c.root / "empty_dir",
        "no record files in the folder",
    ),
    Case(
        "pool folder of a.jsonl and c.json reads both",
        "data",
        lambda c: featurize(
            c, _mixed_folder({"a.jsonl": ROWS_A, "c.json": ROWS_A, "README.md": "# card"})(c), c.root / "o"
        ),
        0,
        "",
        check=_rows_read(30),
    ),
    Case(
        "identical pool rows are never selected twice (ntk)",
        "data",
        _duplicates_ntk,
        0,
        "",
        check=_no_identical_rows_ntk,
    ),
    Case(
        "API Dataset record with a null response",
        "data",
        lambda c: [],
        2,
        "pool[3]: missing field 'response'",
        call=_api(_api_dataset_missing_field),
    ),
    Case(
        "API train on two record lists, one missing a field",
        "data",
        lambda c: [],
        2,
        "data[1][2]: missing field 'response'",
        call=_api(_api_train_lists),
    ),
    Case(
        "API featurize a DatasetDict with split='test'",
        "data",
        lambda c: [],
        0,
        "",
        call=_api(_api_featurize_dataset_dict),
        check=_rows_read(3),
    ),
    # --- outputs
    *[
        Case(
            f"{command} --out is an existing file",
            "store",
            _out_is_for("file", command),
            2,
            "is a file, not a folder",
            check=run_checks,
        )
        for command in ("embed", "warmup", "evaluate")
    ],
    *[
        Case(
            f"{command} --out is a dangling symlink",
            "store",
            _out_is_for("link", command),
            2,
            "is a symbolic link to a missing target",
            check=run_checks,
        )
        for command in ("preselect", "train")
    ],
    Case(
        "a feature store follows the umask (002)",
        "store",
        _featurize_umask,
        0,
        "",
        check=_store_modes,
        fault=lambda c: _umask(0o002),
    ),
    # --- messages
    Case("--k 50 on a 24-row pool", "message", _large_k, 0, "--k 50 is more than the 24 pool rows"),
]
