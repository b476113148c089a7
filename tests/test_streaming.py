"""Pool-scale streaming: scores and exact neighbour search read the pool in blocks (memory stays
one block), and agree with direct computations."""

import tracemalloc

import faiss
import numpy as np
import pytest

from ntk_selector.config import ScoreConfig
from ntk_selector.io.store import DONE, EMPTY, RowStore
from ntk_selector.selection import preselect
from ntk_selector.selection.preselect import exact_search, reverse_knn
from ntk_selector.selection.score import block_rows_for, score_rows, top_n
from ntk_selector.selection.stages import ntk_scores


def make_store(path, values, status=None):
    with RowStore(path, len(values), values.shape[1], str(values.dtype), {"t": 1}) as s:
        for start in range(0, len(values), 5000):
            rows = np.arange(start, min(len(values), start + 5000))
            empty = None if status is None else status[rows] == EMPTY
            s.write(rows, values[rows], empty=empty)
        assert s.finish()


def test_scores_from_stores_in_blocks_equal_direct(tmp_path):
    rng = np.random.default_rng(0)
    dom = rng.normal(size=(30, 64)).astype(np.float16)
    pool = rng.normal(size=(12_345, 64)).astype(np.float16)
    status = np.full(len(pool), DONE, np.uint8)
    status[[3, 777]] = EMPTY
    make_store(tmp_path / "d", dom)
    make_store(tmp_path / "p", pool, status)
    got = ntk_scores(tmp_path / "d", tmp_path / "p", ScoreConfig(score_block_mb=1))
    p64 = pool.astype(np.float64)
    expect = (p64 @ dom.astype(np.float64).T).mean(1)
    ok = status == DONE
    assert np.isnan(got[~ok]).all() and np.allclose(got[ok], expect[ok], rtol=1e-10, atol=1e-10)
    assert block_rows_for(64, 1) < len(pool)  # really several blocks
    assert top_n(got, 5).tolist() == [int(i) for i in np.argsort(-np.where(ok, expect, -np.inf), kind="stable")[:5]]


def test_score_memory_does_not_grow_with_the_pool(tmp_path):
    """Scoring a 100 MB fp16 pool store with 1 MB blocks allocates about a block plus the scores."""
    rows, dim = 200_000, 256
    path = tmp_path / "p"
    with RowStore(path, rows, dim, "float16", {"t": 1}) as s:
        rng = np.random.default_rng(1)
        for start in range(0, rows, 50_000):
            s.write(np.arange(start, start + 50_000), rng.normal(size=(50_000, dim)).astype(np.float16))
        s.finish()
    feats = np.load(path / "features.npy", mmap_mode="r")
    status = np.load(path / "status.npy")
    direction = np.ones(dim)
    tracemalloc.start()
    scores = score_rows(feats, status, direction, cosine=False, block_rows=block_rows_for(dim, 1))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * (1 << 20) + scores.nbytes + status.nbytes, peak  # the file is 100 MB
    check = np.asarray(feats[-1000:], dtype=np.float64).sum(1)
    assert np.allclose(scores[-1000:], check)


def test_exact_search_over_blocks_equals_brute_force():
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(70_000, 8)).astype(np.float32)
    valid = rng.random(len(pool)) > 0.1
    q = rng.normal(size=(25, 8)).astype(np.float32)
    faiss.normalize_L2(q)
    sims, ids = exact_search(q, pool, valid, k=40, block_mb=1)  # 1 MB = 32768 rows: three blocks
    normed = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    full = q @ normed.T
    full[:, ~valid] = -np.inf
    expect = np.argsort(-full, axis=1)[:, :40]
    assert (np.sort(ids, 1) == np.sort(expect, 1)).all()
    assert np.allclose(np.sort(sims, 1), np.sort(np.take_along_axis(full, expect, 1), 1), atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "auto"])
def test_reverse_knn_votes_equal_a_faiss_brute_force_reference(kind):
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(3000, 16)).astype(np.float32)
    dom = rng.normal(size=(2100, 16)).astype(np.float32)  # more than one block of queries
    res = reverse_knn(dom, pool, m=200, k=30, knn_search=kind)
    p, d = pool.copy(), dom.copy()
    faiss.normalize_L2(p)
    faiss.normalize_L2(d)
    index = faiss.IndexFlatIP(16)
    index.add(p)
    _, nbrs = index.search(d, 30)
    votes = np.bincount(nbrs.ravel(), minlength=len(pool))
    assert (res.votes == votes).all()
    assert sorted(res.order.tolist()) == sorted(
        np.lexsort((np.arange(len(pool)), -res.best_sim, -votes))[:200].tolist()
    )


def test_auto_picks_exact_for_small_and_ivf_for_large_products():
    assert preselect.choose_knn_search("auto", 1000, 1_000_000) == "flat"
    assert preselect.choose_knn_search("auto", 10_000, 1_000_000) == "ivf"
    with pytest.raises(ValueError):
        preselect.choose_knn_search("annoy", 1, 1)
