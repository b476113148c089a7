"""Streaming NTK scores: ``s(c) = mean_d <g(c), g(d)> = <g(c), mean_d g(d)>`` (or mean cosine),
read from the feature stores block by block so memory does not grow with the pool."""

from __future__ import annotations

import numpy as np

from ntk_selector.store import DONE

BLOCK_ROWS = 65_536


def _row_norms(block: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-30)


def domain_direction(domain_features: np.ndarray, domain_status: np.ndarray, cosine: bool,
                     block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Mean domain feature (of unit-normalized rows when ``cosine``), float64."""
    total = np.zeros(domain_features.shape[1], dtype=np.float64)
    count = 0
    for start in range(0, domain_features.shape[0], block_rows):
        ok = domain_status[start : start + block_rows] == DONE
        block = np.asarray(domain_features[start : start + block_rows], dtype=np.float64)[ok]
        if cosine:
            block = block / _row_norms(block)
        total += block.sum(0)
        count += int(ok.sum())
    if count == 0:
        raise ValueError("no domain row has response tokens: nothing to score against")
    return total / count


def score_rows(pool_features: np.ndarray, pool_status: np.ndarray, direction: np.ndarray, cosine: bool,
               block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Score of every pool row (NaN for rows without response tokens), float64."""
    scores = np.full(pool_features.shape[0], np.nan, dtype=np.float64)
    for start in range(0, pool_features.shape[0], block_rows):
        block = np.asarray(pool_features[start : start + block_rows], dtype=np.float64)
        s = block @ direction
        if cosine:
            s = s / _row_norms(block)[:, 0]
        ok = pool_status[start : start + block_rows] == DONE
        scores[start : start + block_rows] = np.where(ok, s, np.nan)
    return scores


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best finite scores, best first; ties by index."""
    valid = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((valid, -scores[valid]))
    return valid[order[:n]]
