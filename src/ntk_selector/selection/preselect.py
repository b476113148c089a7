"""Coarse pre-selection by reverse kNN: each domain row votes for its K nearest pool rows (cosine);
the M pool rows with the most votes go on to the NTK stage. Ties: best similarity, then pool row.

Neighbour search:
- ``flat``: exact. The pool is streamed block by block past the domain rows, keeping a running
  top K per domain row, so memory is a few blocks whatever the pool size; time grows with
  domain x pool rows (cheap for the usual ~1K-row domain).
- ``ivf`` / ``hnsw``: approximate FAISS searches (``build_ann_search``) for large domain x pool products. They hold the
  whole normalized pool in memory (4 x dim bytes per row) but search in far fewer operations.
  IVF builds much faster than HNSW on CPUs (see docs/benchmarks/scale.md), and probes enough lists to hold
  several times K candidates; HNSW searches with ef = 2K.
- ``auto``: flat up to ``EXACT_MAX_PAIRS`` domain x pool pairs, else ivf.
Votes are counted per block of domain rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from ntk_selector.io.store import iter_row_blocks

EXACT_MAX_PAIRS = 2_000_000_000
QUERY_ROWS = 1024  # domain rows searched (and their votes counted) per pass
BLOCK_MB = 64  # pool bytes read per block
KINDS = ("auto", "flat", "hnsw", "ivf")


@dataclass
class PreselectResult:
    votes: np.ndarray  # [pool] int64 votes per pool row
    best_sim: np.ndarray  # [pool] float32 best cosine to any voter (-inf when no vote)
    order: np.ndarray  # [M] pool indices, best first


def default_m_k(n: int, pool_rows: int, m: int | None = None, k: int | None = None) -> tuple[int, int]:
    """M = 4N and K = M/4, both capped at the pool size and at least 1."""
    m = min(m if m else 4 * n, pool_rows)
    k = min(k if k else max(1, m // 4), pool_rows)
    return max(1, m), max(1, k)


def warn_clamped(pool_rows: int, m: int | None, k: int | None) -> None:
    """One line when an explicit --m or --k is above the pool rows that can be pre-selected (they are capped)."""
    import sys

    for flag, value in (("--m", m), ("--k", k)):
        if value and value > pool_rows:
            print(
                f"WARNING: {flag} {value} is more than the {pool_rows} pool rows that can be pre-selected; "
                f"using {pool_rows}",
                file=sys.stderr,
                flush=True,
            )


def choose_knn_search(kind: str, domain_rows: int, pool_rows: int) -> str:
    """The neighbour search ``--knn-search`` names, with ``auto`` resolved for these row counts."""
    if kind not in KINDS:
        raise ValueError(f"unknown neighbour search '{kind}' ({', '.join(KINDS)})")
    if kind == "auto":
        return "flat" if domain_rows * pool_rows <= EXACT_MAX_PAIRS else "ivf"
    return kind


def _normalized(block: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(block, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def _valid_blocks(emb: np.ndarray, valid: np.ndarray, block_mb: int = BLOCK_MB, max_rows: int | None = None):
    """(global ids, normalized rows) of the valid rows, one block of the array at a time."""
    rows = max(1, block_mb * (1 << 20) // (4 * emb.shape[1]))
    if max_rows is not None:
        rows = max(1, min(rows, max_rows))
    for start, block in iter_row_blocks(emb, rows):
        ok = valid[start : start + len(block)]
        if ok.any():
            yield start + np.flatnonzero(ok), _normalized(block[ok])


def exact_search(
    queries: np.ndarray, pool_emb: np.ndarray, pool_valid: np.ndarray, k: int, block_mb: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of normalized ``queries`` among valid pool rows, streaming the pool.
    Returns (similarities, ids) [nq, k], ids -1 where fewer than k rows exist."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    # pool rows per block: the [nq, rows] similarities and their merge stay near BLOCK_MB x 4
    block_mb = block_mb or max(1, min(BLOCK_MB, BLOCK_MB * 4 * QUERY_ROWS // max(nq, 1) // 16))
    # and at most as many rows as keep the [nq, rows] float32 similarities near BLOCK_MB, whatever the dim
    max_rows = (BLOCK_MB << 20) // (4 * max(nq, 1))
    for ids, x in _valid_blocks(pool_emb, pool_valid, block_mb, max_rows):
        sims = queries @ x.T  # [nq, b]
        # only rows that beat a query's current k-th best can enter its list
        worst = best_s.min(axis=1, keepdims=True)
        c = int((sims > worst).sum(axis=1).max())
        if c == 0:
            continue
        if c < sims.shape[1]:
            top = np.argpartition(-sims, c - 1, axis=1)[:, :c]
            new_s, new_i = np.take_along_axis(sims, top, axis=1), ids[top]
        else:
            new_s, new_i = sims, np.broadcast_to(ids, sims.shape)
        cand_s = np.concatenate([best_s, new_s], axis=1)
        cand_i = np.concatenate([best_i, new_i], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_s, best_i


def build_ann_search(pool_emb: np.ndarray, pool_valid: np.ndarray, kind: str, k: int, seed: int = 0) -> faiss.Index:
    """Approximate inner-product neighbour search (a FAISS HNSW or IVF structure, ids = pool rows) over the
    normalized valid pool rows."""
    d = pool_emb.shape[1]
    n = int(pool_valid.sum())
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
        base.hnsw.efSearch = max(128, 2 * k)
    elif kind == "ivf":
        nlist = max(1, min(int(math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        base = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        base.cp.niter = 10
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(np.flatnonzero(pool_valid), size=min(n, 64 * nlist), replace=False))
        base.train(_normalized(pool_emb[sample]))
        # probe enough lists to hold several times k candidates, and at least an eighth of them
        base.nprobe = min(nlist, max(1, nlist // 8, math.ceil(4 * k * nlist / max(n, 1))))
    else:
        raise ValueError(f"not an approximate neighbour search: '{kind}'")
    ann = faiss.IndexIDMap2(base)
    for ids, x in _valid_blocks(pool_emb, pool_valid):
        ann.add_with_ids(x, ids.astype(np.int64))
    return ann


def reverse_knn(
    domain_emb: np.ndarray,
    pool_emb: np.ndarray,
    m: int,
    k: int,
    *,
    pool_valid: np.ndarray | None = None,
    domain_valid: np.ndarray | None = None,
    knn_search: str = "auto",
    seed: int = 0,
) -> PreselectResult:
    """Votes of each (valid) domain row for its K nearest (valid) pool rows; the top M pool rows."""
    n_pool = pool_emb.shape[0]
    pool_valid = np.ones(n_pool, dtype=bool) if pool_valid is None else np.asarray(pool_valid, dtype=bool)
    dom_ids = np.flatnonzero(domain_valid) if domain_valid is not None else np.arange(domain_emb.shape[0])
    pool_ids = np.flatnonzero(pool_valid)
    votes = np.zeros(n_pool, dtype=np.int64)
    best = np.full(n_pool, -np.inf, dtype=np.float32)
    k = min(k, len(pool_ids))
    if k > 0 and len(dom_ids) > 0:
        kind = choose_knn_search(knn_search, len(dom_ids), len(pool_ids))
        ann = build_ann_search(pool_emb, pool_valid, kind, k, seed) if kind != "flat" else None
        for start in range(0, len(dom_ids), QUERY_ROWS):
            q = _normalized(np.asarray(domain_emb[dom_ids[start : start + QUERY_ROWS]]))
            sims, nbrs = exact_search(q, pool_emb, pool_valid, k) if ann is None else ann.search(q, k)
            ok = nbrs >= 0
            nb, sm = nbrs[ok], sims[ok]
            votes += np.bincount(nb, minlength=n_pool)
            np.maximum.at(best, nb, sm.astype(np.float32))
    m = min(m, len(pool_ids))
    # rank valid rows by (-votes, -best similarity, pool row)
    order = np.lexsort((pool_ids, -best[pool_ids].astype(np.float64), -votes[pool_ids]))
    return PreselectResult(votes=votes, best_sim=best, order=pool_ids[order[:m]])
