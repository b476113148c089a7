"""``select --index``: a new domain against an index of the pool (index.py).

Modes (``--index-mode``):
- ``features``: the domain is embedded and featurized with the index's base model, seeded LoRA
  initialisation and projection; its votes pre-select M rows among the index's embeddings and the
  index's features of those rows are scored. No warm-up, no pool row through the model.
- ``preselect``: the index pre-selects; then, as in the paper's mode, a warm-up LoRA on the
  domain featurizes the domain and the M candidates (M rows through the model instead of the pool).
The paper's mode (no ``--index``) warms up first and embeds the whole pool with the warm model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector import distributed
from ntk_selector.errors import UserError
from ntk_selector.features import budget
from ntk_selector.io.definitions import canonical
from ntk_selector.io.records import Records
from ntk_selector.io.store import DONE, EMPTY, open_store
from ntk_selector.model.session import Session
from ntk_selector.selection.answer_mix import mix_target, pick_top_n
from ntk_selector.selection.filters import pool_filter
from ntk_selector.selection.index import EMBEDDINGS, FEATURES, PoolIndex, open_pool_index, space_differences
from ntk_selector.selection.methods import METHODS
from ntk_selector.selection.preselect import PreselectResult, default_m_k, reverse_knn, warn_clamped
from ntk_selector.selection.run_record import (
    StageClock,
    check_n,
    check_output_folder,
    subset_fingerprint,
    write_outputs,
)
from ntk_selector.selection.score import block_rows_for, domain_direction, score_rows_at, top_n
from ntk_selector.selection.stages import embed, embedding_definition, feature_definition, featurize, ntk_scores, warmup

INDEX_MODES = ("features", "preselect")


def select_with_index(
    domain_path: str | Path, pool_path: str | Path | None, out_dir: str | Path, cfg: Any
) -> dict[str, Any] | None:
    """``pipeline.select`` against ``cfg.index.index``; same outputs. Under torchrun every rank calls it.
    Rank 0 holds the output folder's lock throughout (one writer per folder)."""
    from ntk_selector.io.files import release_lock, take_lock

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    lock = distributed.on_main(lambda: take_lock(Path(out_dir)))
    try:
        with budget.recording():  # the token budget each stage chose, for run.json
            return _select_with_index_locked(domain_path, pool_path, out_dir, cfg)
    finally:
        release_lock(lock)


def _select_with_index_locked(
    domain_path: str | Path, pool_path: str | Path | None, out_dir: str | Path, cfg: Any
) -> dict[str, Any] | None:

    mode = cfg.index.index_mode
    if mode not in INDEX_MODES:
        raise UserError(f"unknown --index-mode '{mode}' (choose from {', '.join(INDEX_MODES)})")
    if cfg.method != "ntk":
        raise UserError(f"--index supports --method ntk only (got '{cfg.method}')")
    if cfg.model.adapter:
        raise UserError("--index maps the domain like the index, with the base model; --adapter is not used")
    n = cfg.preselect.n
    if n <= 0:
        raise UserError("--n must be a positive number of examples to select")
    out = Path(out_dir)
    stages = Path(cfg.run.work_dir) if cfg.run.work_dir else out / "stages"
    clock = StageClock()
    with clock("open index"):
        index: PoolIndex = distributed.all_ranks(lambda: open_pool_index(cfg.index.index))
    if cfg.model.model is None:  # the index's model unless one is named (and then it must be the same)
        cfg = replace(cfg, model=replace(cfg.model, model=index.model))
    pool_path = Path(pool_path) if pool_path else Path(index.meta["pool"])

    def load() -> tuple[Records, Records, Any]:
        with clock("load data"):
            domain = Records.load(domain_path, cfg.data)
            pool = Records.load(pool_path, cfg.data)
        if pool.fingerprint != index.meta["pool_fingerprint"] or len(pool) != len(index.status):
            raise UserError(
                f"{pool_path} is not the pool indexed in {index.path} (its contents differ); "
                f"pass the indexed pool with --pool, or build an index of this one"
            )
        mix = mix_target(cfg.score.answer_mix, [c.response for c in domain.conversations], domain.path)
        check_n(n, len(pool), pool_path)
        check_output_folder(out, domain, pool, cfg)
        with clock("filter pool"):
            filt = pool_filter(pool.conversations, cfg.filters, domain.conversations)
        return domain, pool, filt, mix

    domain, pool, filt, mix = distributed.all_ranks(load)
    empty = index.status == EMPTY
    pool_valid = (index.status == DONE) & ~filt.excluded
    check_n(n, int(pool_valid.sum()), pool_path, "with response tokens, not excluded")  # before any model work
    out.mkdir(parents=True, exist_ok=True)
    session = Session(cfg.model, cfg.lora, cfg.run)
    with clock("load model"):
        distributed.all_ranks(lambda: session.load(None))
    _check_same_space(session, domain, index, cfg)
    with clock("embed"):
        embed(
            session,
            domain,
            stages / "index_embed_domain",
            cfg.data,
            desc="embed domain",
            embedder=cfg.embed.embedder,
            embed_max_length=cfg.embed.embed_max_length,
        )
    if mode == "features":
        with clock("featurize"):
            featurize(session, domain, stages / "index_features_domain", cfg.data, cfg.feature, desc="featurize domain")

    def preselect_rows() -> PreselectResult:
        d_emb, d_status, _ = open_store(stages / "index_embed_domain")
        if not (d_status == DONE).any():
            raise UserError(f"{domain.path}: no domain row has response tokens: nothing to vote with")
        return preselect_in_index(index, d_emb, d_status, n, cfg.preselect, pool_valid, cfg.run.seed)

    with clock("preselect"):
        pre = distributed.on_main(preselect_rows)
    scores = np.full(len(pool), np.nan)
    warm_stats = None
    stores = ["index_embed_domain"] + (["index_features_domain"] if mode == "features" else [])
    if mode == "features":

        def score() -> np.ndarray:
            d_feat, d_status, _ = open_store(stages / "index_features_domain")
            if not (d_status == DONE).any():
                raise UserError(f"{domain.path}: no domain row has response tokens: nothing to score against")
            return score_in_index(index, d_feat, d_status, pre.order, cfg.score)

        with clock("score"):
            cand_scores = distributed.on_main(score)
    else:
        with clock("warmup"):
            warm_stats = distributed.on_main(lambda: warmup(session, domain, stages / "warmup", cfg.data, cfg.train))
        with clock("load model"):
            distributed.all_ranks(lambda: session.load(str(stages / "warmup")))
        order = _broadcast_order(pre, stages)
        cand = pool.subset(order, subset_fingerprint(pool.fingerprint, order))
        cand_store = f"features_pool_{cand.fingerprint[:8]}"
        with clock("featurize"):
            featurize(session, domain, stages / "features_domain", cfg.data, cfg.feature, desc="featurize domain")
            featurize(session, cand, stages / cand_store, cfg.data, cfg.feature, desc="featurize candidates")
        stores += ["features_domain", cand_store]
        with clock("score"):
            cand_scores = distributed.on_main(
                lambda: ntk_scores(stages / "features_domain", stages / cand_store, cfg.score)
            )

    def finish() -> dict[str, Any]:
        scores[pre.order] = cand_scores
        ranking = pre.order[top_n(cand_scores, n if mix is None else len(cand_scores))]
        chosen, mix_record = pick_top_n(ranking, n, pool, mix)
        preselected = np.zeros(len(pool), dtype=bool)
        preselected[pre.order] = True
        _, d_status, _ = open_store(stages / "index_embed_domain")
        about_index = {
            "path": str(index.path),
            "mode": mode,
            "embedder": index.meta["embedder"],
            "embed_max_length": index.meta["embed_max_length"],
            "pool_rows_through_model": 0 if mode == "features" else int(len(pre.order)),
            "build_work_seconds": index.meta.get("work_seconds"),
        }
        return write_outputs(
            out,
            cfg,
            domain,
            pool,
            filt,
            clock,
            score_name=METHODS[cfg.method].score_name,
            chosen=chosen,
            votes=pre.votes,
            preselected=preselected,
            scores=scores,
            empty=empty,
            domain_status=d_status,
            mix_record=mix_record,
            stages=stages,
            stores=stores,
            warm_stats=warm_stats,
            extra={"index": about_index},
        )

    return distributed.on_main(finish)


def preselect_in_index(
    index: PoolIndex,
    domain_emb: np.ndarray,
    domain_status: np.ndarray,
    n: int,
    pre_cfg: Any,
    pool_valid: np.ndarray,
    seed: int = 0,
) -> PreselectResult:
    """Reverse-kNN votes of the domain embeddings over the index's (M = 4N, K = M/4 by default)."""
    warn_clamped(int(pool_valid.sum()), pre_cfg.m, pre_cfg.k)
    m, k = default_m_k(n, int(pool_valid.sum()), pre_cfg.m, pre_cfg.k)
    return reverse_knn(
        domain_emb,
        index.embeddings,
        m,
        k,
        pool_valid=pool_valid,
        domain_valid=domain_status == DONE,
        knn_search=pre_cfg.knn_search,
        seed=seed,
    )


def score_in_index(
    index: PoolIndex, domain_features: np.ndarray, domain_status: np.ndarray, rows: np.ndarray, score_cfg: Any
) -> np.ndarray:
    """NTK scores of the index's ``rows`` against the domain's features, read block by block."""
    if domain_features.shape[1] != index.features.shape[1]:
        raise UserError(f"domain features have {domain_features.shape[1]} dims, the index {index.features.shape[1]}")
    block = block_rows_for(domain_features.shape[1], score_cfg.score_block_mb)
    direction = domain_direction(domain_features, domain_status, score_cfg.cosine, block)
    return score_rows_at(index.features, index.status, rows, direction, score_cfg.cosine, block)


def _broadcast_order(pre: Any, stages: Path) -> np.ndarray:
    """The candidates, from rank 0 to every rank (through a file: ranks exchange no tensors)."""
    path = stages / "index_preselect.npy"

    def save() -> None:
        from ntk_selector.io.files import atomic_open

        with atomic_open(path, "wb") as fh:  # an exclusive temporary, renamed into place
            np.save(fh, pre.order)

    distributed.on_main(save)
    return distributed.all_ranks(lambda: np.load(path))


def _check_same_space(session: Session, domain: Records, index: PoolIndex, cfg: Any) -> None:
    """The domain must be mapped exactly as the index mapped the pool: same model, LoRA, seed,
    projection, objective, tokenization and embedder; anything else is refused, naming what differs."""
    defs = index.meta["definitions"]
    feat_def = {
        **feature_definition(session, domain, cfg.data, cfg.feature),
        "logits_mode": defs[FEATURES]["logits_mode"],
    }
    emb_def = embedding_definition(session, domain, cfg.data, cfg.embed.embedder, cfg.embed.embed_max_length)
    diffs: list[str] = []
    for d in (
        space_differences(canonical(defs[FEATURES]), canonical(feat_def)),
        space_differences(canonical(defs[EMBEDDINGS]), canonical(emb_def)),
    ):
        diffs += [x for x in d.split("; ") if x and x not in diffs]
    if diffs:
        raise UserError(
            f"{index.path} was built with other settings ({'; '.join(diffs)}); "
            f"select with the index's settings, or build another index"
        )
