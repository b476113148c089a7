"""Every scoring rule, streamed: the NTK score ``s(c) = mean_d <g(c), g(d)> = <g(c), mean_d g(d)>``
(or mean cosine) and the LESS-style max cosine, read from the feature stores block by block, so
memory is one block (a fixed number of megabytes) plus 8 bytes of score per pool row, whatever the
pool size."""

from __future__ import annotations

import numpy as np

from ntk_selector.io.store import DONE, iter_row_blocks, read_exactly_at

BLOCK_MB = 256


def block_rows_for(dim: int, block_mb: int = BLOCK_MB) -> int:
    """Rows per block so that one float64 block of ``dim`` columns takes about ``block_mb`` MB."""
    return max(1, int(block_mb) * (1 << 20) // (8 * max(1, dim)))


def _row_norms(block: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-30)


def domain_direction(
    domain_features: np.ndarray, domain_status: np.ndarray, cosine: bool, block_rows: int | None = None
) -> np.ndarray:
    """Mean domain feature (of unit-normalized rows when ``cosine``), float64."""
    block_rows = block_rows or block_rows_for(domain_features.shape[1])
    total = np.zeros(domain_features.shape[1], dtype=np.float64)
    count = 0
    for start, block in iter_row_blocks(domain_features, block_rows):
        ok = domain_status[start : start + len(block)] == DONE
        block = block[ok].astype(np.float64)
        if cosine:
            block = block / _row_norms(block)
        total += block.sum(0)
        count += int(ok.sum())
    if count == 0:
        raise ValueError("no domain row has response tokens: nothing to score against")
    return total / count


def score_rows(
    pool_features: np.ndarray,
    pool_status: np.ndarray,
    direction: np.ndarray,
    cosine: bool,
    block_rows: int | None = None,
) -> np.ndarray:
    """Score of every pool row (NaN for rows without response tokens), float64."""
    block_rows = block_rows or block_rows_for(pool_features.shape[1])
    scores = np.full(pool_features.shape[0], np.nan, dtype=np.float64)
    for start, block in iter_row_blocks(pool_features, block_rows):
        block = block.astype(np.float64)
        s = block @ direction
        if cosine:
            s = s / _row_norms(block)[:, 0]
        ok = pool_status[start : start + len(block)] == DONE
        scores[start : start + len(block)] = np.where(ok, s, np.nan)
    return scores


def max_cosine_rows(
    pool_features: np.ndarray,
    pool_status: np.ndarray,
    domain_features: np.ndarray,
    domain_status: np.ndarray,
    block_mb: int = BLOCK_MB,
) -> np.ndarray:
    """LESS-style rule: max over domain rows of the cosine with each pool row (NaN for rows without
    response tokens), the pool read in blocks."""
    dom = np.asarray(domain_features, dtype=np.float64)[domain_status == DONE]
    if len(dom) == 0:
        raise ValueError("no domain row has response tokens: nothing to score against")
    dom /= _row_norms(dom)
    scores = np.full(pool_features.shape[0], np.nan, dtype=np.float64)
    for start, block in iter_row_blocks(pool_features, block_rows_for(pool_features.shape[1] + len(dom), block_mb)):
        block = block.astype(np.float64)
        s = ((block / _row_norms(block)) @ dom.T).max(1)
        ok = pool_status[start : start + len(block)] == DONE
        scores[start : start + len(block)] = np.where(ok, s, np.nan)
    return scores


def read_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` for sorted row numbers. A memmapped store is read with positioned file
    reads (one per run of consecutive rows), so its pages do not stay mapped in this process."""
    path, offset = getattr(features, "filename", None), getattr(features, "offset", None)
    if not isinstance(features, np.memmap) or path is None or offset is None or not features.flags.c_contiguous:
        return np.asarray(features[rows])
    out = np.empty((len(rows), *features.shape[1:]), dtype=features.dtype)
    row_bytes = out[:1].nbytes
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [len(rows)]]).astype(np.int64)
    flat = out.reshape(len(rows), -1).view(np.uint8)
    with open(path, "rb", buffering=0) as fh:
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            read_exactly_at(fh, offset + int(rows[a]) * row_bytes, memoryview(flat[a:b].reshape(-1)), path)
    return out


def score_rows_at(
    features: np.ndarray,
    status: np.ndarray,
    rows: np.ndarray,
    direction: np.ndarray,
    cosine: bool,
    block_rows: int | None = None,
) -> np.ndarray:
    """Scores of the given rows (in the given order; NaN for rows without response tokens), read
    in blocks of sorted rows: memory is one block whatever the store's size."""
    rows = np.asarray(rows, dtype=np.int64)
    block_rows = block_rows or block_rows_for(features.shape[1])
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    sorted_scores = np.full(len(rows), np.nan, dtype=np.float64)
    for start in range(0, len(rows), block_rows):
        idx = sorted_rows[start : start + block_rows]
        block = read_rows(features, idx).astype(np.float64)
        s = block @ direction
        if cosine:
            s = s / _row_norms(block)[:, 0]
        sorted_scores[start : start + len(idx)] = np.where(status[idx] == DONE, s, np.nan)
    scores = np.empty(len(rows), dtype=np.float64)
    scores[order] = sorted_scores
    return scores


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best finite scores, best first; ties by index."""
    valid = np.flatnonzero(np.isfinite(scores))
    if n < len(valid):
        # keep every row tied with the n-th best, then order exactly
        kth = np.partition(-scores[valid], n - 1)[n - 1]
        valid = valid[-scores[valid] <= kth]
    order = np.lexsort((valid, -scores[valid]))
    return valid[order[:n]]
