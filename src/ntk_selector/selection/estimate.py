"""``select --estimate``: before a long run, time a few batches of each stage on the user's model and
data, and predict rows, tokens, seconds and disk per stage (nothing is written).

The cost model: a stage's seconds are (seconds a padded token) x (padded tokens the stage will run).
A forward or forward+backward is dominated by work that grows with a batch's padded tokens (rows x
longest row: the matrix products of every layer, the hooks' per-sample products), and the planner
fills every batch to about the token budget, so the fixed cost of a batch is nearly the same share
of every batch and folds into the per-token rate. Rows, by contrast, are a poor unit: a row of 400
tokens costs ten rows of 40, and the planner's batches run longest rows first, so timing the first
batches and scaling by rows (what this did before) over-predicted the demo's stages 1.3-3.3x.

Padded tokens come from the stage's own batch plan, simulated on an evenly spaced sample of rows:
each sampled row stands for an equal share of the data, the sample's lengths are stretched to one
chunk of rows (runner.CHUNK_ROWS, the unit the stages plan in) and planned with the stage's budget,
which gives padded tokens a row (padding included) for any number of rows. The rate comes from
timing ``batches`` batches of that simulated plan at evenly spaced places in it, from the longest
rows to the shortest (so the timed work spans the length distribution), after one untimed call
that pays one-off costs. The warm-up is the same with its own batches: random batches of
``--batch-size`` rows (padded to the longest of each), simulated with the training loop's own
shuffles, and timed steps after a first untimed one. With ``--embedder minilm`` the embed stage reads
fixed batches of consecutive rows (no length sort, so every batch is a random draw of rows): there
seconds a row, timed on batches spread over the sample, scale by rows. Pre-selection and scoring are streamed matrix
products whose cost grows with domain x pool rows and with the scored rows, timed on random
matrices and scaled the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ntk_selector.errors import UserError
from ntk_selector.features.budget import TokenBudget
from ntk_selector.features.embed import mean_pooled
from ntk_selector.features.runner import CHUNK_ROWS
from ntk_selector.io.records import Records
from ntk_selector.io.tokens import Encoded, collate, encode, plan_batches
from ntk_selector.selection.methods import METHODS
from ntk_selector.selection.preselect import default_m_k, reverse_knn

SAMPLE_ROWS = 1024  # rows whose lengths stand for the data (tokenized only; a few of them are timed)
clock: Callable[[], float] = time.perf_counter  # the timer (a test replaces it with a fake one)


def _sample(records: Records, rows: int) -> Records:
    idx = np.unique(np.linspace(0, len(records) - 1, min(rows, len(records))).astype(np.int64))
    return records.subset(idx, "")


# ----------------------------------------------------------------------------- the cost model


def padded(members: Sequence[int], lengths: Sequence[int] | np.ndarray, cap: int = 0) -> int:
    """Padded tokens of a batch: rows x its longest row (at most ``cap`` tokens a row when cap > 0)."""
    longest = max((int(lengths[i]) for i in members), default=0)
    return len(members) * (min(longest, cap) if cap > 0 else longest)


@dataclass
class PlanProfile:
    """A stage's batch plan simulated from a sample: ``lengths`` of the simulated rows, ``source`` the
    sample row each stands for, their ``batches``, and the padded tokens a row the plan costs."""

    lengths: np.ndarray
    source: np.ndarray
    batches: list[list[int]]
    padded_per_row: float


def plan_profile(
    sample_lengths: Sequence[int], rows: int, token_budget: int, max_batch_size: int, cap: int = 0
) -> PlanProfile:
    """The plan of ``min(rows, CHUNK_ROWS)`` rows whose lengths follow the sample (each sampled row
    repeated for an equal share), as the stage plans each chunk."""
    n = len(sample_lengths)
    m = max(1, min(int(rows), CHUNK_ROWS))
    source = (np.arange(m, dtype=np.int64) * n) // m
    lengths = np.asarray(sample_lengths, dtype=np.int64)[source]
    batches = plan_batches(lengths.tolist(), token_budget, max_batch_size)
    total = sum(padded(b, lengths, cap) for b in batches)
    return PlanProfile(lengths, source, batches, total / m)


def spread(count: int, k: int) -> list[int]:
    """``k`` positions evenly spaced over ``count`` batches (their middles), first to last."""
    k = max(1, min(k, count))
    return sorted({min(count - 1, int((j + 0.5) * count / k)) for j in range(k)})


def seconds_per_padded_token(
    fn: Callable[[Any], Any], profile: PlanProfile, encoded: Sequence[Encoded], pad_id: int, batches: int, cap: int = 0
) -> float:
    """Wall seconds a padded token of ``fn`` over ``batches`` batches spread over the simulated plan
    (the first of them run once untimed first, for one-off costs)."""
    picks = [profile.batches[i] for i in spread(len(profile.batches), batches)]

    def batch(members: list[int]) -> Any:
        return collate([encoded[int(profile.source[i])] for i in members], pad_id)

    fn(batch(picks[0]))
    spent, tokens = 0.0, 0
    for members in picks:
        b = batch(members)
        start = clock()
        fn(b)
        spent += clock() - start
        tokens += padded(members, profile.lengths, cap)
    return spent / max(tokens, 1)


def expected_longest(sample_lengths: Sequence[int], rows: int) -> float:
    """Expected longest of ``rows`` rows drawn at random from the sample's lengths."""
    ordered = np.sort(np.asarray(sample_lengths, dtype=np.float64))
    n = len(ordered)
    below = (np.arange(n + 1) / n) ** rows  # P(longest <= the j-th shortest)
    return float((ordered * np.diff(below)).sum())


def seconds_per_row(fn: Callable[[list[str]], Any], texts: Sequence[str], batch_rows: int, batches: int) -> float:
    """Wall seconds a row of ``fn`` over ``batches`` fixed batches of ``batch_rows`` consecutive sampled
    texts, spread over the sample (an untimed call on the first first). For encoders that batch rows
    as they come: each batch is a random draw of rows, so a row is the unit that scales."""
    starts = list(range(0, len(texts), batch_rows))
    picks = [texts[starts[i] : starts[i] + batch_rows] for i in spread(len(starts), batches)]
    fn(list(picks[0]))
    spent, rows = 0.0, 0
    for chunk in picks:
        start = clock()
        fn(list(chunk))
        spent += clock() - start
        rows += len(chunk)
    return spent / max(rows, 1)


def training_padded_tokens(
    sample_lengths: Sequence[int], rows: int, batch_size: int, epochs: float, seed: int
) -> tuple[int, float]:
    """(optimizer steps, expected padded tokens over all of them) of a training run on ``rows`` rows
    whose lengths follow the sample: each step's rows are a random draw (the training loop shuffles
    every epoch), padded to the longest of them."""
    from ntk_selector.training.loop import epoch_batches

    if len(sample_lengths) == 0 or rows <= 0:
        return 0, 0.0
    sizes = [len(s) for s in epoch_batches(rows, batch_size, epochs, seed)]
    longest = {size: expected_longest(sample_lengths, size) for size in set(sizes)}
    return len(sizes), float(sum(size * longest[size] for size in sizes))


def _warmup_rate(model: Any, tok: Any, d_sample: Records, d_enc: list[Encoded], cfg: Any, batches: int) -> float:
    """Seconds a padded token of warm-up steps: ``batches`` steps timed after an untimed first, on rows
    taken at evenly spaced length ranks of the domain sample."""
    from ntk_selector.training.loop import epoch_batches, train_lora

    bs = cfg.train.batch_size
    usable = [i for i, e in enumerate(d_enc) if e.n_response_tokens > 0]
    if not usable:
        raise UserError(
            f"{d_sample.path}: no sampled example has response tokens left (empty responses, or all "
            f"truncated away at --max-length {cfg.data.max_length}); raise --max-length"
        )
    by_length = sorted(usable, key=lambda i: (d_enc[i].length, i))
    want = min(len(by_length), bs * (batches + 1))
    picked = sorted({by_length[int(j * len(by_length) / want)] for j in range(want)}) if want else []
    convs = [d_sample.conversations[i] for i in picked]
    enc = [d_enc[i] for i in picked]
    marks: list[float] = []
    train_lora(
        model,
        tok,
        convs,
        cfg.data,
        replace(cfg.train, epochs=1.0, warmup_ratio=0.0),
        cfg.run.seed,
        quiet=True,
        desc="estimate",
        on_step=lambda step, m: marks.append(clock()),
        encoded=enc,
    )
    steps = epoch_batches(len(enc), bs, 1.0, cfg.run.seed)
    tokens = [len(s) * max(enc[i].length for i in s) for s in steps]
    seconds = np.diff(marks)  # marks: before step 1, then after every step
    timed = slice(1, None) if len(steps) > 1 else slice(0, None)  # the first step pays one-off costs
    return float(seconds[timed].sum()) / max(1, sum(tokens[timed]))


# ----------------------------------------------------------------------------- the estimate


def estimate(
    domain_source: Any, pool_source: Any, cfg: Any, batches: int = 3, sample_rows: int = SAMPLE_ROWS
) -> dict[str, Any]:
    """Per-stage rows, tokens, predicted seconds and bytes on disk for ``select`` with ``cfg`` (a SelectConfigs)."""
    from ntk_selector.model.session import Session
    from ntk_selector.selection.stages import featurizer_for, model_device

    t0 = time.perf_counter()
    domain = Records.load(domain_source, cfg.data)
    pool = Records.load(pool_source, cfg.data)
    load_seconds = time.perf_counter() - t0
    n = cfg.preselect.n
    m, k = default_m_k(max(n, 1), len(pool), cfg.preselect.m, cfg.preselect.k)

    session = Session(cfg.model, cfg.lora, replace(cfg.run, quiet=True)).load(None)
    tok, model = session.tokenizer, session.model
    pad = tok.pad_token_id
    d_sample, p_sample = _sample(domain, sample_rows), _sample(pool, sample_rows)
    d_enc = encode(list(d_sample.conversations), tok, cfg.data)
    p_enc = encode(list(p_sample.conversations), tok, cfg.data)
    d_len, p_len = [e.length for e in d_enc], [e.length for e in p_enc]
    d_tokens = float(np.mean(d_len)) if d_enc else 0.0
    p_tokens = float(np.mean(p_len)) if p_enc else 0.0

    # warm-up: seconds a padded token of training steps x the padded tokens of the warm-up's steps
    warm_rate = _warmup_rate(model, tok, d_sample, d_enc, cfg, batches)
    usable_d = [e.length for e in d_enc if e.n_response_tokens > 0]
    usable_rows = round(len(domain) * len(usable_d) / max(1, len(d_enc)))
    warm_steps, warm_padded = training_padded_tokens(
        usable_d, usable_rows, cfg.train.batch_size, cfg.train.epochs, cfg.run.seed
    )

    def budget_for(fn: Callable[[Any], Any], stage: str) -> int:
        def run(members: list[int]) -> Any:
            return fn(collate([p_enc[i] for i in members], pad))

        return TokenBudget(cfg.data.token_budget, model_device(model), stage, quiet=True).resolve(p_len, run)

    def profiles(budget: int, pool_rows: int, cap: int = 0) -> tuple[PlanProfile, PlanProfile]:
        return (
            plan_profile(d_len, len(domain), budget, cfg.data.max_batch_size, cap),
            plan_profile(p_len, pool_rows, budget, cfg.data.max_batch_size, cap),
        )

    embed_budget: int | None = None
    if cfg.embed.embedder == "minilm":
        # the sentence encoder reads fixed batches of consecutive rows (no length sort): seconds a row
        from ntk_selector.io.formats import conversation_text
        from ntk_selector.model.sentence_encoder import BATCH_ROWS, SentenceEncoder

        encoder = SentenceEncoder(model_device(model), cfg.embed.embed_max_length)
        texts = [conversation_text(c) for c in p_sample.conversations]
        embed_rate = seconds_per_row(encoder.embed, texts, BATCH_ROWS, batches)
        embed_padded = None
        embed_seconds = embed_rate * (len(domain) + len(pool))
        embed_dim = encoder.dim
    else:
        cap = cfg.embed.embed_max_length

        def embed_fn(b: Any) -> Any:
            return mean_pooled(model, b, cap)

        embed_budget = budget_for(embed_fn, "estimate embed")
        e_dom, e_pool = profiles(embed_budget, len(pool), cap)
        embed_rate = seconds_per_padded_token(embed_fn, e_pool, p_enc, pad, batches, cap)
        embed_padded = e_dom.padded_per_row * len(domain) + e_pool.padded_per_row * len(pool)
        embed_seconds = embed_rate * embed_padded
        embed_dim = int(model.config.hidden_size)
    with featurizer_for(session, p_sample, cfg.data, cfg.feature) as feat:
        feat_budget = budget_for(feat.features, "estimate featurize")
        f_dom, f_pool = profiles(feat_budget, m)
        feat_rate = seconds_per_padded_token(feat.features, f_pool, p_enc, pad, batches)
        feat_dim = feat.out_dim
        lora_params = sum(p.numel() for _, p in feat.params)
    feat_padded = f_dom.padded_per_row * len(domain) + f_pool.padded_per_row * m

    # pre-selection on the sample's embeddings, scaled by domain x pool pairs
    rng = np.random.default_rng(0)
    d_emb = rng.standard_normal((min(len(domain), 256), embed_dim)).astype(np.float32)
    p_emb = rng.standard_normal((min(len(pool), 4096), embed_dim)).astype(np.float32)
    start = time.perf_counter()
    sm, sk = default_m_k(max(1, min(n, len(p_emb) // 4)), len(p_emb))
    reverse_knn(d_emb, p_emb, sm, sk, knn_search="flat", seed=0)
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
        {
            "stage": "load data",
            "rows": len(domain) + len(pool),
            "tokens": None,
            "seconds": load_seconds,
            "disk_bytes": None,
        },
    ]
    if kind.uses_model:
        stages += [
            {
                "stage": "warm-up",
                "rows": len(domain),
                "tokens": round(d_tokens * len(domain)),
                "padded_tokens": warm_padded,
                "seconds": warm_rate * warm_padded,
                "disk_bytes": lora_params * 4,
            },
            {
                "stage": "embed",
                "rows": len(domain) + len(pool),
                "tokens": round(d_tokens * len(domain) + p_tokens * len(pool)),
                "padded_tokens": None if embed_padded is None else round(embed_padded),
                "seconds": embed_seconds,
                "disk_bytes": (len(domain) + len(pool)) * (embed_dim * 4 + 1),
            },
            {
                "stage": "preselect",
                "rows": len(pool),
                "tokens": None,
                "seconds": pre_seconds,
                "disk_bytes": len(pool) * 16 + m * 8,
            },
        ]
    if kind.ranking == "features":
        stages += [
            {
                "stage": "featurize",
                "rows": len(domain) + m,
                "tokens": round(d_tokens * len(domain) + p_tokens * m),
                "padded_tokens": round(feat_padded),
                "seconds": feat_rate * feat_padded,
                "disk_bytes": (len(domain) + m) * (feat_dim * store_bytes + 1),
            },
            {"stage": "score", "rows": m, "tokens": None, "seconds": score_seconds, "disk_bytes": None},
        ]
    return {
        "method": method,
        "n": n,
        "m": m,
        "k": k,
        "domain_rows": len(domain),
        "pool_rows": len(pool),
        "mean_tokens": {"domain": d_tokens, "pool": p_tokens},
        "feature_dim": feat_dim,
        "token_budget": {"embed": embed_budget, "featurize": feat_budget},
        "timed": {
            "warmup_padded_token_seconds": warm_rate,
            ("embed_row_seconds" if embed_padded is None else "embed_padded_token_seconds"): embed_rate,
            "featurize_padded_token_seconds": feat_rate,
            "warmup_steps": warm_steps,
            "batches": batches,
        },
        "stages": stages,
        "total_seconds": sum(s["seconds"] for s in stages),
        "total_disk_bytes": sum(s["disk_bytes"] or 0 for s in stages),
    }


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
    lines = [
        f"estimate for select ({est['method']}, N = {est['n']}, M = {est['m']}, K = {est['k']}): "
        f"{est['domain_rows']} domain rows, {est['pool_rows']} pool rows, "
        f"{est['mean_tokens']['domain']:.0f} / {est['mean_tokens']['pool']:.0f} tokens a row (domain / pool sample)",
        f"  {'stage':<12}{'rows':>12}{'tokens':>14}{'seconds':>12}{'disk':>12}",
    ]
    for s in est["stages"]:
        tokens = "-" if s["tokens"] is None else str(s["tokens"])
        lines.append(
            f"  {s['stage']:<12}{s['rows']:>12}{tokens:>14}{_duration(s['seconds']):>12}{_size(s['disk_bytes']):>12}"
        )
    lines.append(
        f"  {'total':<12}{'':>12}{'':>14}{_duration(est['total_seconds']):>12}{_size(est['total_disk_bytes']):>12}"
    )
    lines.append(
        "  (seconds: a few batches per stage timed on this machine, from the longest rows to the shortest, scaled by "
        "the padded tokens of the stage's batch plan; one process)"
    )
    return "\n".join(lines)
