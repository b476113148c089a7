"""``select --estimate``: before a long run, time a few batches of each stage on the user's model and
data, and predict rows, tokens, seconds and disk per stage (nothing is written).

Tokens come from an evenly spaced sample of rows; seconds per row (or per optimizer step) from
timing ``batches`` real batches of that sample through the stage's own code; each stage's total is
that rate times its rows. Pre-selection and scoring are streamed matrix products whose cost grows
with domain x pool rows and with the scored rows, timed on the sample and scaled the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ntk_selector.features.embed import mean_pooled
from ntk_selector.io.records import Records
from ntk_selector.io.tokens import collate, encode, plan_batches
from ntk_selector.selection.methods import METHODS
from ntk_selector.selection.preselect import default_m_k, reverse_knn

SAMPLE_ROWS = 64


def _sample(records: Records, rows: int) -> Records:
    idx = np.unique(np.linspace(0, len(records) - 1, min(rows, len(records))).astype(np.int64))
    return records.subset(idx, "")


def _seconds_per_row(fn: Any, encoded: list, pad_id: int, data_cfg: Any, batches: int) -> float:
    """Wall seconds per row of ``fn`` over the first ``batches`` planned batches (one warm-up call first)."""
    plan = plan_batches([e.length for e in encoded], data_cfg.token_budget, data_cfg.max_batch_size)
    plan = plan[: max(1, batches)]
    fn(collate([encoded[plan[0][0]]], pad_id))  # first call pays one-off costs (allocations, kernels)
    rows, start = 0, time.perf_counter()
    for members in plan:
        fn(collate([encoded[j] for j in members], pad_id))
        rows += len(members)
    return (time.perf_counter() - start) / max(rows, 1)


def estimate(domain_source: Any, pool_source: Any, cfg: Any, batches: int = 2, sample_rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """Per-stage rows, tokens, predicted seconds and bytes on disk for ``select`` with ``cfg`` (a SelectConfigs)."""
    from ntk_selector.model.session import Session
    from ntk_selector.selection.stages import featurizer_for
    from ntk_selector.training.loop import train_lora

    t0 = time.perf_counter()
    domain = Records.load(domain_source, cfg.data)
    pool = Records.load(pool_source, cfg.data)
    load_seconds = time.perf_counter() - t0
    n = cfg.preselect.n
    m, k = default_m_k(max(n, 1), len(pool), cfg.preselect.m, cfg.preselect.k)

    session = Session(cfg.model, cfg.lora, replace(cfg.run, quiet=True)).load(None)
    tok, model = session.tokenizer, session.model
    d_sample, p_sample = _sample(domain, sample_rows), _sample(pool, sample_rows)
    d_enc = encode(list(d_sample.conversations), tok, cfg.data)
    p_enc = encode(list(p_sample.conversations), tok, cfg.data)
    d_tokens = float(np.mean([e.length for e in d_enc])) if d_enc else 0.0
    p_tokens = float(np.mean([e.length for e in p_enc])) if p_enc else 0.0

    # warm-up: a few optimizer steps on domain rows, scaled to the configured epochs
    bs = cfg.train.batch_size
    few = list(d_sample.conversations)[: bs * max(1, batches)]
    stats_start = time.perf_counter()
    probe_train = replace(cfg.train, epochs=1.0, warmup_ratio=0.0)
    stats = train_lora(model, tok, few, cfg.data, probe_train, cfg.run.seed, quiet=True, desc="estimate")
    step_seconds = (time.perf_counter() - stats_start) / max(1, stats.get("steps", 1))
    warm_steps = math.ceil(len(domain) / bs) * cfg.train.epochs

    embed_row = _seconds_per_row(lambda b: mean_pooled(model, b), p_enc, tok.pad_token_id, cfg.data, batches)
    with featurizer_for(session, p_sample, cfg.data, cfg.feature) as feat:
        feat_row = _seconds_per_row(feat.features, p_enc, tok.pad_token_id, cfg.data, batches)
        feat_dim = feat.out_dim
        lora_params = sum(p.numel() for _, p in feat.params)
    hidden = int(model.config.hidden_size)

    # pre-selection on the sample's embeddings, scaled by domain x pool pairs
    rng = np.random.default_rng(0)
    d_emb = rng.standard_normal((min(len(domain), 256), hidden)).astype(np.float32)
    p_emb = rng.standard_normal((min(len(pool), 4096), hidden)).astype(np.float32)
    start = time.perf_counter()
    sm, sk = default_m_k(max(1, min(n, len(p_emb) // 4)), len(p_emb))
    reverse_knn(d_emb, p_emb, sm, sk, index_kind="flat", seed=0)
    pre_seconds = (time.perf_counter() - start) * (len(domain) * len(pool)) / (len(d_emb) * len(p_emb))
    # scoring: one streamed pass over the candidates' features (inner products with one direction)
    block = rng.standard_normal((min(m, 4096), feat_dim)).astype(np.float32)
    direction = rng.standard_normal(feat_dim).astype(np.float32)
    start = time.perf_counter()
    _ = block @ direction
    score_seconds = (time.perf_counter() - start) * m / len(block)

    store_bytes = 2 if cfg.feature.store_dtype == "float16" else 4
    method = cfg.method
    kind = METHODS[method]
    stages = [
        {"stage": "load data", "rows": len(domain) + len(pool), "tokens": None, "seconds": load_seconds, "disk_bytes": None},
    ]
    if kind.uses_model:
        stages += [
            {"stage": "warm-up", "rows": len(domain), "tokens": round(d_tokens * len(domain)),
             "seconds": step_seconds * warm_steps, "disk_bytes": lora_params * 4},
            {"stage": "embed", "rows": len(domain) + len(pool), "tokens": round(d_tokens * len(domain) + p_tokens * len(pool)),
             "seconds": embed_row * (len(domain) + len(pool)), "disk_bytes": (len(domain) + len(pool)) * (hidden * 4 + 1)},
            {"stage": "preselect", "rows": len(pool), "tokens": None, "seconds": pre_seconds, "disk_bytes": len(pool) * 16 + m * 8},
        ]
    if kind.ranking == "features":
        stages += [
            {"stage": "featurize", "rows": len(domain) + m, "tokens": round(d_tokens * len(domain) + p_tokens * m),
             "seconds": feat_row * (len(domain) + m), "disk_bytes": (len(domain) + m) * (feat_dim * store_bytes + 1)},
            {"stage": "score", "rows": m, "tokens": None, "seconds": score_seconds, "disk_bytes": None},
        ]
    return {"method": method, "n": n, "m": m, "k": k, "domain_rows": len(domain), "pool_rows": len(pool),
            "mean_tokens": {"domain": d_tokens, "pool": p_tokens}, "feature_dim": feat_dim,
            "timed": {"warmup_step_seconds": step_seconds, "embed_row_seconds": embed_row, "featurize_row_seconds": feat_row},
            "stages": stages, "total_seconds": sum(s["seconds"] for s in stages),
            "total_disk_bytes": sum(s["disk_bytes"] or 0 for s in stages)}


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_estimate(est: dict[str, Any]) -> str:
    lines = [f"estimate for select ({est['method']}, N = {est['n']}, M = {est['m']}, K = {est['k']}): "
             f"{est['domain_rows']} domain rows, {est['pool_rows']} pool rows, "
             f"{est['mean_tokens']['domain']:.0f} / {est['mean_tokens']['pool']:.0f} tokens a row (domain / pool sample)",
             f"  {'stage':<12}{'rows':>12}{'tokens':>14}{'seconds':>12}{'disk':>12}"]
    for s in est["stages"]:
        tokens = "-" if s["tokens"] is None else str(s["tokens"])
        lines.append(f"  {s['stage']:<12}{s['rows']:>12}{tokens:>14}{_duration(s['seconds']):>12}{_size(s['disk_bytes']):>12}")
    lines.append(f"  {'total':<12}{'':>12}{'':>14}{_duration(est['total_seconds']):>12}{_size(est['total_disk_bytes']):>12}")
    lines.append("  (seconds: a few timed batches per stage on this machine, scaled to the stage's rows; one process)")
    return "\n".join(lines)
