"""RowStore: resume, refusal of another definition, overwrite, the writer lock, write order,
attaching workers, and block reads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ntk_selector.errors import UserError
from ntk_selector.io.store import (
    DONE,
    EMPTY,
    PENDING,
    RowStore,
    describe_differences,
    iter_row_blocks,
    open_store,
    read_status,
)

DEF = {"model": "m", "seed": 0, "lora": {"rank": 8}}


def test_resume_keeps_done_rows_and_fills_missing(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(10, 3)).astype(np.float32)
    with RowStore(tmp_path, 10, 3, "float32", DEF) as s:
        s.write(np.array([7, 2, 3]), values[[7, 2, 3]], empty=np.array([False, True, False]))
        assert not s.finish()
    with pytest.raises(UserError, match="incomplete \\(7 rows missing\\)"):
        open_store(tmp_path)
    with RowStore(tmp_path, 10, 3, "float32", DEF) as s:
        todo = s.pending()
        assert todo.tolist() == [0, 1, 4, 5, 6, 8, 9]
        s.write(todo[::-1], values[todo[::-1]])
        assert s.finish()
    feats, status, meta = open_store(tmp_path)
    assert np.array_equal(feats, values)
    assert status[2] == EMPTY and (np.delete(status, 2) == DONE).all()
    assert meta["complete"] and meta["counts"] == {"rows": 10, "done": 9, "no_response_tokens": 1, "pending": 0}
    assert np.load(tmp_path / "features.npy", mmap_mode="r").shape == (10, 3)


def test_other_definition_is_refused_with_the_difference_then_overwrite(tmp_path):
    with RowStore(tmp_path, 4, 2, "float32", DEF) as s:
        s.write(np.array([0]), np.ones((1, 2)))
    with pytest.raises(UserError) as e:
        RowStore(tmp_path, 4, 2, "float32", {**DEF, "seed": 1, "lora": {"rank": 4}})
    msg = str(e.value)
    assert "holds another run" in msg and "seed: 0 -> 1" in msg and "lora.rank: 8 -> 4" in msg and "--overwrite" in msg
    with pytest.raises(UserError, match="store_dtype: 'float32' -> 'float16'"):
        RowStore(tmp_path, 4, 2, "float16", DEF)
    # refusal released the lock, and left the old rows alone
    assert read_status(tmp_path).tolist() == [DONE, PENDING, PENDING, PENDING]
    with RowStore(tmp_path, 4, 2, "float32", {**DEF, "seed": 1}, overwrite=True) as s:
        assert s.pending().tolist() == [0, 1, 2, 3]


def test_second_writer_is_refused_in_process_and_from_another_process(tmp_path):
    code = (
        "import sys; from ntk_selector.io.store import RowStore; from ntk_selector.errors import UserError\n"
        "try:\n    RowStore(sys.argv[1], 4, 2, 'float32', {'model': 'm', 'seed': 0, 'lora': {'rank': 8}})\n"
        "except UserError as e:\n    print(e); sys.exit(3)\n"
    )
    with RowStore(tmp_path, 4, 2, "float32", DEF):
        with pytest.raises(UserError, match="being written by another process"):
            RowStore(tmp_path, 4, 2, "float32", DEF)
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert proc.returncode == 3 and "lock held" in proc.stdout
    # released on close: the other process may now write
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rows_are_synced_before_they_are_marked_done(tmp_path, monkeypatch):
    """A crash between writing a row and marking it done leaves it pending, never half-done."""
    with RowStore(tmp_path, 4, 2, "float32", DEF) as s:

        def crash(fd):
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fdatasync", crash)
        with pytest.raises(KeyboardInterrupt):
            s.write(np.array([1]), np.ones((1, 2)))
        monkeypatch.undo()
        assert s.pending().tolist() == [0, 1, 2, 3]


def test_workers_attach_without_the_lock_and_write_disjoint_rows(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    with pytest.raises(UserError, match="no store to attach to"):
        RowStore(tmp_path / "none", 6, 2, "float32", DEF, writer=False)
    with RowStore(tmp_path, 6, 2, "float32", DEF) as main:
        with pytest.raises(UserError, match="definition changed"):
            RowStore(tmp_path, 6, 2, "float32", {**DEF, "seed": 5}, writer=False)
        with RowStore(tmp_path, 6, 2, "float32", DEF, writer=False) as worker:
            worker.write(np.array([1, 3, 5]), values[[1, 3, 5]])
        main.write(np.array([0, 2, 4]), values[[0, 2, 4]])
        assert main.finish()
    assert np.array_equal(open_store(tmp_path)[0], values)


def test_write_checks_shape(tmp_path):
    with RowStore(tmp_path, 4, 2, "float32", DEF) as s:
        with pytest.raises(ValueError):
            s.write(np.array([0, 1]), np.ones((2, 3)))


@pytest.mark.parametrize("rows", [1, 3, 7, 100])
def test_iter_row_blocks_matches_the_array(tmp_path, rows):
    data = np.random.default_rng(1).normal(size=(23, 5)).astype(np.float16)
    np.save(tmp_path / "x.npy", data)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for arr in (mm, data, mm[3:]):
        blocks = list(iter_row_blocks(arr, rows))
        assert [s for s, _ in blocks] == list(range(0, len(arr), rows))
        assert np.array_equal(np.concatenate([b for _, b in blocks]), np.asarray(arr))


def test_describe_differences_is_readable():
    assert (
        describe_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": "x"})
        == "b.c: 2 -> 3; d: None -> 'x'"
    )
    assert json.dumps(describe_differences({}, {})) == '""'


def test_work_seconds_add_up_over_runs_and_survive_a_crash(tmp_path, monkeypatch):
    """meta.json's work_seconds is the store's writing time over every run; a run that dies before
    finish() still counts up to its last periodic save; another definition starts from zero."""
    import time

    import ntk_selector.io.store as store_mod

    clock = {"now": 1000.0}
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(store_mod, "WORK_SECONDS_EVERY", 10.0)
    values = np.ones((6, 2), np.float32)
    s = RowStore(tmp_path, 6, 2, "float32", DEF)
    clock["now"] += 15.0
    s.write(np.array([0, 1]), values[:2])  # 15 s open: saved (>= 10 s since the last save)
    clock["now"] += 4.0
    s.write(np.array([2]), values[:1])  # 19 s, not saved yet
    s.close()  # the run dies here: no finish()
    assert json.loads((tmp_path / "meta.json").read_text())["work_seconds"] == 15.0
    with RowStore(tmp_path, 6, 2, "float32", DEF) as s:
        clock["now"] += 30.0
        s.write(s.pending(), values[:3])
        assert s.work_seconds == 45.0
        assert s.finish()
    assert open_store(tmp_path)[2]["work_seconds"] == 45.0
    with RowStore(tmp_path, 6, 2, "float32", DEF) as s:  # a rerun that finds nothing to do adds no time
        clock["now"] += 7.0
        assert s.work_seconds == 45.0 and s.finish()
    assert open_store(tmp_path)[2]["work_seconds"] == 45.0
    with RowStore(tmp_path, 6, 2, "float32", {**DEF, "seed": 1}, overwrite=True) as s:
        clock["now"] += 2.0
        s.write(np.arange(6), values)
        s.finish()
    assert open_store(tmp_path)[2]["work_seconds"] == 2.0
    with RowStore(tmp_path, 6, 2, "float32", {**DEF, "seed": 2}, overwrite=True) as s:  # a quick store is not 0 s
        clock["now"] += 0.004
        s.write(np.arange(6), values)
        s.finish()
    assert open_store(tmp_path)[2]["work_seconds"] == 0.004
    assert time.monotonic() == clock["now"]
