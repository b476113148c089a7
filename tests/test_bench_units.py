"""The benchmarks' unit cache (benchmarks/common.py): a finished unit is reused while its
definition matches, and workers sharing a results folder never compute one unit twice."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks import common


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch):
    monkeypatch.setattr(common, "UNIT_LOCK_POLL_SECONDS", 0.02)


@pytest.fixture()
def real_domains():
    """benchmarks/quality/real_domains/real_domains.py."""
    from benchmarks.quality.real_domains import real_domains

    return real_domains


def test_reused_while_the_definition_matches(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    path = tmp_path / "eval" / "a.json"
    first, computed = common.cached_unit(path, {"lr": 1e-3}, compute, "unit a")
    assert computed and first["value"] == 1 and not path.with_name("a.json.lock").exists()
    again, computed = common.cached_unit(path, {"lr": 1e-3}, compute, "unit a")
    assert not computed and again["value"] == 1 and len(calls) == 1
    changed, computed = common.cached_unit(path, {"lr": 3e-3}, compute, "unit a")
    assert computed and changed["value"] == 2


def test_a_unit_another_live_worker_holds_is_waited_for_not_computed(tmp_path):
    path = tmp_path / "train" / "b.json"
    path.parent.mkdir(parents=True)
    lock = path.with_name("b.json.lock")
    pid = __import__("os").getpid()
    lock.write_text(f"{pid} {common._process_identity(pid)} now\n")  # a live process: this one

    def other_worker_finishes():
        time.sleep(0.2)
        path.write_text(json.dumps({"value": "theirs", "definition": common.canonical({"seed": 0})}))
        lock.unlink()

    threading.Thread(target=other_worker_finishes).start()
    result, computed = common.cached_unit(path, {"seed": 0}, lambda: pytest.fail("computed twice"), "unit b")
    assert not computed and result["value"] == "theirs"


def test_a_stale_lock_is_removed_and_the_unit_computed(tmp_path):
    path = tmp_path / "select" / "c.json"
    path.parent.mkdir(parents=True)
    path.with_name("c.json.lock").write_text("999999999 long ago\n")  # no such process
    result, computed = common.cached_unit(path, {"n": 5}, lambda: {"value": "mine"}, "unit c")
    assert computed and result["value"] == "mine" and not path.with_name("c.json.lock").exists()


def test_a_lock_of_a_reused_process_number_is_stale(tmp_path):
    """The number of a live process, but another start time (a restart, or the number reused)."""
    path = tmp_path / "select" / "g.json"
    path.parent.mkdir(parents=True)
    pid = __import__("os").getpid()
    boot, _ = common._process_identity(pid).split(":")
    path.with_name("g.json.lock").write_text(f"{pid} {boot}:1 long ago\n")
    result, computed = common.cached_unit(path, {"n": 5}, lambda: {"value": "mine"}, "unit g")
    assert computed and result["value"] == "mine"


def test_the_lock_is_released_when_the_unit_fails(tmp_path):
    path = tmp_path / "eval" / "d.json"

    def broken():
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        common.cached_unit(path, {"x": 1}, broken, "unit d")
    assert not path.exists() and not path.with_name("d.json.lock").exists()


def test_wait_false_raises_busy_instead_of_waiting(tmp_path):
    path = tmp_path / "eval" / "e.json"
    path.parent.mkdir(parents=True)
    pid = __import__("os").getpid()
    path.with_name("e.json.lock").write_text(f"{pid} {common._process_identity(pid)} now\n")
    with pytest.raises(common.UnitBusy, match="unit e"):
        common.cached_unit(path, {"x": 1}, lambda: pytest.fail("computed"), "unit e", wait=False)


def test_real_domains_puts_busy_cells_off_to_the_end(monkeypatch, real_domains):
    mod = real_domains
    runs = [mod.Run("d", m, 0, 0, 1e-3) for m in ("ntk", "random", "less")]
    bench = mod.Bench(mod.Settings(), {}, Path("."), Path("."))
    done, tries = [], {}

    def evaluate(run, split):
        tries[run.method] = tries.get(run.method, 0) + 1
        if run.method == "ntk" and bench.defer_busy:  # busy while others may still run
            raise common.UnitBusy("select d_natural_ntk_sel0")
        done.append((run.method, split))

    monkeypatch.setattr(bench, "plan", lambda phases: iter([(r, ("test",)) for r in runs]))
    monkeypatch.setattr(bench, "evaluate", evaluate)
    monkeypatch.setattr(bench, "publish", lambda commit: None)
    bench.run(["seed0"])
    assert done == [("random", "test"), ("less", "test"), ("ntk", "test")] and tries["ntk"] == 2


def test_sigterm_releases_the_unit_lock(tmp_path):
    """A worker killed with SIGTERM leaves no lock behind (the unit's finally runs)."""
    import os
    import signal
    import subprocess

    path = tmp_path / "eval" / "f.json"
    code = f"""
import sys, time
from benchmarks import common
common.exit_cleanly_on_sigterm()
def slow():
    time.sleep(60)
common.cached_unit(__import__("pathlib").Path({str(path)!r}), {{"x": 1}}, slow, "unit f")
"""
    root = Path(common.__file__).resolve().parents[1]  # where `benchmarks` imports from
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, cwd=root)
    deadline = time.time() + 30
    while not path.with_name("f.json.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.with_name("f.json.lock").exists()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not path.with_name("f.json.lock").exists() and not path.exists()


def test_selection_seconds_take_the_stores_time_over_every_run(real_domains):
    mod = real_domains
    stages = {"warmup": 10.0, "embed": 5.0, "featurize": 3.0, "score": 1.0}
    stores = {"embed_domain": 2.0, "embed_pool": 100.0, "features_domain": 1.0, "features_pool_ab12": 50.0}
    # the last run embedded for 5 s of the 102 s its stores took over all runs
    assert mod.selection_seconds({"stage_seconds": stages, "store_seconds": stores}) == 10 + 1 + 153
    assert mod.selection_seconds({"stage_seconds": stages}) == 19.0  # units made before stores kept time


def test_rewriting_a_selection_refuses_a_changed_pool(real_domains):
    mod = real_domains
    pool = [{"prompt": f"q{i}", "response": "yes" if i % 2 else "no", "task": f"t{i % 3}"} for i in range(9)]
    chosen = [4, 0, 7]
    rows = [pool[i] for i in chosen]
    sel = {
        "pool_index": chosen,
        "selected_sha256": mod.rows_fingerprint(rows),
        "tasks": mod.counts([r["task"] for r in rows]),
    }
    mod.check_same_rows(sel, rows, "same pool")  # passes
    edited = [dict(rows[0], response="maybe"), *rows[1:]]  # same tasks, another answer: only the fingerprint sees it
    with pytest.raises(RuntimeError, match="not the ones it selected"):
        mod.check_same_rows(sel, edited, "edited pool")
    with pytest.raises(RuntimeError, match="not the ones it selected"):
        mod.check_same_rows(sel, rows[:2], "shorter pool")  # an index past its end
    # a selection recorded before the fingerprint existed is checked by its task counts
    old = {k: v for k, v in sel.items() if k != "selected_sha256"}
    mod.check_same_rows(old, edited, "old selection, same tasks")
    with pytest.raises(
        RuntimeError, match="old selection, other tasks: the pool rows at this selection.s indices are not"
    ):
        mod.check_same_rows(old, [pool[2], *rows[1:]], "old selection, other tasks")
