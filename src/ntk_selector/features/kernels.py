"""Small kernel-matrix helpers shared by the diagnostics and kernel regression: Gram matrices,
the Frobenius cosine, Spearman rank correlation, mean-kernel scores, top-N overlap, and the
features of a handful of encoded rows (in their order, not a store)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ntk_selector.features.budget import TokenBudget
from ntk_selector.io.tokens import Batch, Encoded, collate, plan_batches


def rows_features(
    compute: Callable[[Batch], torch.Tensor],
    encoded: Sequence[Encoded],
    pad_id: int,
    token_budget: int | str,
    max_batch_size: int,
    device: torch.device | None = None,
    stage: str = "rows",
    quiet: bool = False,
) -> torch.Tensor:
    """``compute`` over length-bucketed batches of ``encoded``, stacked back in input order (float32, CPU).
    ``token_budget``: a number or auto (sized on ``device``, where ``compute`` runs; see budget.TokenBudget)."""
    lengths = [e.length for e in encoded]
    budget = TokenBudget(token_budget, device, stage, quiet=quiet)

    def run(members: list[int]) -> torch.Tensor:
        return compute(collate([encoded[i] for i in members], pad_id))

    out: torch.Tensor | None = None
    for members in plan_batches(lengths, budget.resolve(lengths, run), max_batch_size):
        for piece, result in budget.run(members, lengths, run):
            values = result.detach().float().cpu()
            if out is None:
                out = torch.zeros(len(encoded), values.shape[1], dtype=torch.float32)
            out[torch.as_tensor(piece)] = values
    if out is None:
        raise ValueError("no rows to featurize")
    return out


def gram(features: torch.Tensor | np.ndarray, other: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """``F F'^T`` in float64 (the kernel matrix of feature rows)."""
    a = torch.as_tensor(np.asarray(features) if isinstance(features, np.ndarray) else features).double()
    b = a if other is None else torch.as_tensor(np.asarray(other) if isinstance(other, np.ndarray) else other).double()
    return (a @ b.T).numpy()


def frobenius_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """``<A,B>_F / (|A|_F |B|_F)``: 1 when two kernel matrices agree up to scale."""
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """``|A - E|_F / |E|_F``."""
    denom = float(np.linalg.norm(exact))
    return float(np.linalg.norm(approx - exact) / denom) if denom > 0 else float("nan")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties get their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def cosine_normalize(k: np.ndarray) -> np.ndarray:
    """``K_ij / sqrt(K_ii K_jj)``: the kernel of unit-normalized features."""
    d = np.sqrt(np.maximum(np.diag(k), 1e-300))
    return k / d[:, None] / d[None, :]


def mean_kernel_scores(k: np.ndarray, rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Score of each of ``rows``: mean kernel value with the ``reference`` rows (the method's score)."""
    return k[np.ix_(rows, reference)].mean(1)


def top_overlap(scores_a: np.ndarray, scores_b: np.ndarray, n: int) -> float:
    """Share of the top-n of ``scores_b`` that is also in the top-n of ``scores_a`` (ties by index)."""
    top_a = set(np.lexsort((np.arange(len(scores_a)), -scores_a))[:n].tolist())
    top_b = set(np.lexsort((np.arange(len(scores_b)), -scores_b))[:n].tolist())
    return len(top_a & top_b) / n if n > 0 else float("nan")


def finite(x: Any) -> Any:
    """JSON-safe float: NaN and inf become None."""
    return float(x) if x is not None and np.isfinite(x) else None
