"""Index queries stream: scoring candidates reads the store block by block (memory does not grow
with the pool), and gives the dense answer; the scale benchmark runs end to end at CI size."""

import tracemalloc

import numpy as np

from ntk_selector.io.store import DONE, EMPTY, RowStore, open_store
from ntk_selector.selection.score import score_rows_at


def load_bench():
    from benchmarks.index_once import index_scale

    return index_scale


def test_score_rows_at_equals_dense_and_memory_is_one_block(tmp_path):
    rows, dim = 60_000, 64
    rng = np.random.default_rng(0)
    with RowStore(tmp_path / "s", rows, dim, "float32", {"x": 1}) as s:
        for start in range(0, rows, 10_000):
            idx = np.arange(start, start + 10_000)
            empty = rng.random(len(idx)) < 0.01
            s.write(idx, rng.standard_normal((len(idx), dim), dtype=np.float32), empty=empty)
        s.finish()
    feat, status, _ = open_store(tmp_path / "s")
    direction = rng.standard_normal(dim)
    wanted = rng.choice(rows, 30_000, replace=False)  # unsorted, like a pre-selection order
    block = 1000  # 1000 x 64 float64 = 0.5 MB per block
    tracemalloc.start()
    got = score_rows_at(feat, status, wanted, direction, cosine=False, block_rows=block)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense = np.asarray(feat, dtype=np.float64)[wanted] @ direction
    ok = status[wanted] == DONE
    np.testing.assert_allclose(got[ok], dense[ok], rtol=1e-10)
    assert np.isnan(got[~ok]).all() and (status[wanted] == EMPTY).sum() == (~ok).sum() > 0
    # the store is 15 MB and the wanted rows 7.7 MB; memory is a few blocks plus the per-row arrays
    assert peak < 4 * block * dim * 8 + 40 * len(wanted), peak
    cos = score_rows_at(feat, status, wanted, direction, cosine=True, block_rows=block)
    norms = np.linalg.norm(np.asarray(feat, dtype=np.float64)[wanted], axis=1)
    np.testing.assert_allclose(cos[ok], dense[ok] / norms[ok], rtol=1e-10)


def test_index_scale_benchmark_at_ci_size(tmp_path):
    bench = load_bench()
    res = bench.main(
        [
            "--rows",
            "20000",
            "--dim",
            "64",
            "--emb-dim",
            "16",
            "--domain",
            "50",
            "-n",
            "100",
            "--store-dtype",
            "float16",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert res["query"]["candidates"] == 400 and res["query"]["selected"] == 100
    assert not (tmp_path / "w").exists()
    # the query's top rows equal a dense computation over the same synthetic index
    bench.build_index(tmp_path / "again", 20000, 64, 16, "float16")
    from ntk_selector.selection.index import open_pool_index
    from ntk_selector.selection.preselect import default_m_k, reverse_knn

    index = open_pool_index(tmp_path / "again")
    emb, feat = bench.domain_arrays(50, 64, 16)
    m, k = default_m_k(100, 20000)
    pre = reverse_knn(emb, np.asarray(index.embeddings), m, k)
    s = np.asarray(index.features, dtype=np.float64)[pre.order] @ feat.astype(np.float64).mean(0)
    top = pre.order[np.lexsort((pre.order, -s))][:10]
    assert res["query"]["top"] == top.tolist()
