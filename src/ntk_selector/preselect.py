"""Coarse pre-selection by reverse kNN: each domain row votes for its K nearest pool rows (cosine);
the M pool rows with the most votes go on to the NTK stage. Ties: best similarity, then index."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

EXACT_MAX_ROWS = 200_000
BLOCK_ROWS = 65_536


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


def _normalized(block: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(block, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def build_index(pool_emb: np.ndarray, ids: np.ndarray, kind: str, seed: int = 0) -> faiss.Index:
    """Inner-product index over normalized pool rows ``ids`` (exact, HNSW or IVF)."""
    d = pool_emb.shape[1]
    n = len(ids)
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_ROWS else "hnsw"
    if kind == "flat":
        base = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
        base.hnsw.efSearch = 128
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        base = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(ids, size=min(n, 64 * nlist), replace=False))
        base.train(_normalized(pool_emb[sample]))
        base.nprobe = max(1, nlist // 8)
    else:
        raise ValueError(f"unknown index '{kind}' (auto, flat, hnsw, ivf)")
    index = faiss.IndexIDMap2(base) if kind != "flat" else faiss.IndexIDMap(base)
    for start in range(0, n, BLOCK_ROWS):
        chunk = ids[start : start + BLOCK_ROWS]
        index.add_with_ids(_normalized(pool_emb[chunk]), chunk.astype(np.int64))
    return index


def reverse_knn(domain_emb: np.ndarray, pool_emb: np.ndarray, m: int, k: int, *, pool_valid: np.ndarray | None = None,
                domain_valid: np.ndarray | None = None, index_kind: str = "auto", seed: int = 0) -> PreselectResult:
    """Votes of each (valid) domain row for its K nearest (valid) pool rows; the top M pool rows."""
    n_pool = pool_emb.shape[0]
    pool_ids = np.flatnonzero(pool_valid) if pool_valid is not None else np.arange(n_pool)
    dom_ids = np.flatnonzero(domain_valid) if domain_valid is not None else np.arange(domain_emb.shape[0])
    votes = np.zeros(n_pool, dtype=np.int64)
    best = np.full(n_pool, -np.inf, dtype=np.float32)
    k = min(k, len(pool_ids))
    if k > 0 and len(dom_ids) > 0:
        index = build_index(pool_emb, pool_ids, index_kind, seed)
        for start in range(0, len(dom_ids), 4096):
            q = _normalized(domain_emb[dom_ids[start : start + 4096]])
            sims, nbrs = index.search(q, k)
            ok = nbrs >= 0
            nb, sm = nbrs[ok], sims[ok]
            np.add.at(votes, nb, 1)
            np.maximum.at(best, nb, sm)
    m = min(m, len(pool_ids))
    # rank valid rows by (-votes, -best similarity, index)
    cand = pool_ids
    order = np.lexsort((cand, -best[cand].astype(np.float64), -votes[cand]))
    return PreselectResult(votes=votes, best_sim=best, order=cand[order[:m]])
