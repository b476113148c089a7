"""The data stages' memory does not grow with the pool beyond their own arrays: allocation tracking
(tracemalloc, which sees Python objects and numpy arrays, not the memory-mapped Arrow file) at two
pool sizes; the growth per added row must stay under 200 bytes. Holding the pool as Python dicts,
as a reference, grows by well over that, so the check can fail. benchmarks/scale/data_scale.py runs the
same stages at 10^7 rows and measures process memory."""

from __future__ import annotations

import tracemalloc

import pytest

SMALL, LARGE = 4_000, 20_000
CHUNK = 512  # rows per chunk in these tests (4096 in a run), so the pools span many chunks
BOUND = 200  # bytes a pool row


@pytest.fixture(scope="module")
def bench():
    from benchmarks.scale import data_scale

    return data_scale


@pytest.fixture(scope="module")
def pools(bench, tmp_path_factory):
    work = tmp_path_factory.mktemp("pools")
    out = {}
    for rows in (SMALL, LARGE):
        folder = work / str(rows)
        folder.mkdir()
        bench.write_pool(folder / "pool.jsonl", rows)
        bench.write_test_set(folder / "test.jsonl")
        bench.write_embedding_store(folder / "emb_pool", rows, 8, 2)
        bench.write_embedding_store(folder / "emb_domain", 100, 8, 1)
        out[rows] = folder
    return out


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


def growth_per_row(make_fn) -> float:
    small, large = traced_peak(make_fn(SMALL)), traced_peak(make_fn(LARGE))
    return (large - small) / (LARGE - SMALL)


def test_holding_the_pool_as_dicts_would_fail_the_bound(pools):
    """The reference: the old reader kept every record as a dict (about 1 KB a row here)."""
    import json

    def old_way(rows):
        return lambda: [json.loads(line) for line in open(pools[rows] / "pool.jsonl")]

    assert growth_per_row(old_way) > 3 * BOUND


@pytest.mark.parametrize("stage", ["load", "filter", "tokenize", "preselect"])
def test_stage_memory_does_not_grow_with_the_pool(bench, pools, stage, one_thread, monkeypatch):
    import ntk_selector.selection.preselect

    tok = bench.make_tokenizer()
    # blocks of the pre-selection's streamed search small enough that these pools span many of them
    # (at full size a block is a fixed few hundred MB, however large the pool)
    monkeypatch.setattr(ntk_selector.selection.preselect, "BLOCK_MB", 1)
    for module in ("io.records", "features.runner"):
        monkeypatch.setattr(f"ntk_selector.{module}.CHUNK_ROWS", CHUNK)

    def make(rows):
        folder = pools[rows]
        return {
            "load": lambda: bench.stage_load(folder / "pool.jsonl"),
            "filter": lambda: bench.stage_filter(folder / "pool.jsonl", folder / "test.jsonl"),
            # prompt + response + EOS tokens: the chat template's path streams the same way, several times slower
            "tokenize": lambda: bench.stage_tokenize(
                folder / "pool.jsonl", folder / "tok_store", tok, chat_template=False
            ),
            "preselect": lambda: bench.stage_preselect(folder / "emb_domain", folder / "emb_pool", 50),
        }[stage]

    for rows in (SMALL, LARGE):  # convert each file to the Arrow cache first (the conversion is bounded too, untracked)
        bench.stage_load(pools[rows] / "pool.jsonl")
    per_row = growth_per_row(make)
    assert per_row < BOUND, f"{stage}: {per_row:.0f} bytes a row"
