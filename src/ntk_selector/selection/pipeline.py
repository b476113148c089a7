"""``select``: warm-up -> embed -> reverse-kNN pre-selection -> NTK features -> scores -> top N,
plus the baselines users compare against (random, embedding, preselect-random, LESS-style).

Every stage writes under ``OUT/stages`` and is skipped or resumed on a rerun; the final files
(``selected.jsonl``, ``scores.csv``, ``run.json``) are written atomically at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector import distributed
from ntk_selector.config import (
    check_together,
    to_dict,
)
from ntk_selector.errors import UserError
from ntk_selector.features import budget
from ntk_selector.io.definitions import canonical, read_state
from ntk_selector.io.files import (
    release_lock,
    take_lock,
    write_json_atomic,
)
from ntk_selector.io.formats import OUTPUT_FORMATS
from ntk_selector.io.records import Records
from ntk_selector.io.store import EMPTY, open_store, read_meta
from ntk_selector.io.tokens import encode_checked
from ntk_selector.model.session import Session
from ntk_selector.selection.answer_mix import mix_target, pick_top_n
from ntk_selector.selection.filters import PoolFilter, pool_filter
from ntk_selector.selection.methods import METHODS
from ntk_selector.selection.preselect import PreselectResult
from ntk_selector.selection.run_record import (
    SelectConfigs,
    StageClock,
    check_n,
    check_output_folder,
    subset_fingerprint,
    write_outputs,
)
from ntk_selector.selection.score import top_n
from ntk_selector.selection.stages import (
    embed,
    featurize,
    load_preselect,
    max_cosine_scores,
    ntk_scores,
    preselect,
    save_preselect,
    warmup,
)


def rows_without_response(records: Records) -> np.ndarray:
    """Rows with no response tokens, found without tokenizing: a row has none exactly when its response
    text is blank, since rows longer than --max-length lose prompt tokens first and never their whole
    response (``io.tokens.fit_to_length``)."""
    return np.fromiter((not c.response.strip() for c in records.conversations), dtype=bool, count=len(records))


def check_n_with_responses(n: int, pool: Records, excluded: np.ndarray) -> None:
    """Refuse --n above the pool rows that keep response tokens, before any model work."""
    check_n(n, int((~rows_without_response(pool) & ~excluded).sum()), pool.path, "with response tokens")


def select(
    domain_path: str | Path, pool_path: str | Path | None, out_dir: str | Path, cfg: SelectConfigs
) -> dict[str, Any] | None:
    """Run the whole selection; return the run summary (also written to run.json).

    Under torchrun every rank calls this: rank 0 alone runs the warm-up, pre-selection, scoring
    and writes the outputs (and returns the summary; the others return None); embedding and
    featurizing are sharded over all ranks. A run against an index (``cfg.index.index``) is
    index_select.select_with_index's; api.select_files picks the one that fits.
    """
    if cfg.index.index:
        raise ValueError(
            "pipeline.select runs without an index; call api.select_files or index_select.select_with_index"
        )
    if pool_path is None:
        raise UserError("select needs --pool (the candidate records), or --index (an index of them)")
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
    if cfg.score.answer_mix != "off" and METHODS[cfg.method].ranking == "draw":
        raise UserError(
            f"--answer-mix {cfg.score.answer_mix} picks the top N by score, and --method {cfg.method} "
            f"draws at random: use it with ntk, less or embedding"
        )
    check_together(cfg.feature, cfg.lora)
    n = cfg.preselect.n
    if n <= 0:
        raise UserError("--n must be a positive number of examples to select")
    if cfg.output.output_format not in OUTPUT_FORMATS:
        raise UserError(
            f"unknown --output-format '{cfg.output.output_format}' (choose from {', '.join(OUTPUT_FORMATS)})"
        )
    out = Path(out_dir)
    stages = Path(cfg.run.work_dir) if cfg.run.work_dir else out / "stages"
    clock = StageClock()

    def load() -> tuple[Records, Records, PoolFilter, Any]:
        with clock("load data"):
            domain = Records.load(domain_path, cfg.data)
            pool = Records.load(pool_path, cfg.data)
        mix = mix_target(cfg.score.answer_mix, [c.response for c in domain.conversations], domain.path)
        check_n(n, len(pool), pool.path)
        check_output_folder(out, domain, pool, cfg)
        with clock("filter pool"):
            filt = pool_filter(pool.conversations, cfg.filters, domain.conversations)
        check_n(
            n,
            int((~filt.excluded).sum()),
            pool.path,
            "after leaving out duplicates, copies of domain rows and test-set overlaps",
        )
        check_n_with_responses(n, pool, filt.excluded)  # before any model work
        return domain, pool, filt, mix

    domain, pool, filt, mix = distributed.all_ranks(load)
    out.mkdir(parents=True, exist_ok=True)
    # one writer per output folder: a second select on it stops here with a clear message
    lock = distributed.on_main(lambda: take_lock(out))
    try:
        distributed.on_main(lambda: check_output_folder(out, domain, pool, cfg))  # again, now that we hold the lock
        with budget.recording():  # the token budget each stage chose, for run.json
            return _select_locked(domain, pool, filt, out, stages, cfg, clock, pool_path, mix)
    finally:
        release_lock(lock)


def _select_locked(
    domain: Records,
    pool: Records,
    filt: PoolFilter,
    out: Path,
    stages: Path,
    cfg: SelectConfigs,
    clock: StageClock,
    pool_path: str | Path,
    mix: Any = None,
) -> dict[str, Any] | None:
    """``mix``: the target label shares of ``--answer-mix`` (answer_mix.mix_target), None for the plain top N."""
    n = cfg.preselect.n
    method = METHODS[cfg.method]
    if not method.uses_model:
        return distributed.on_main(lambda: _select_random(domain, pool, out, cfg, filt, clock))

    session = Session(cfg.model, cfg.lora, cfg.run)
    with clock("warmup"):

        def warm() -> dict[str, Any]:
            # warns before any model work; the warm-up trains on these encodings (the domain is tokenized once)
            encoded = encode_checked([domain], session.load_tokenizer(), cfg.data)[0]
            return warmup(session, domain, stages / "warmup", cfg.data, cfg.train, encoded=encoded)

        warm_stats = distributed.on_main(warm)
    with clock("load model"):
        distributed.all_ranks(lambda: session.load(str(stages / "warmup")))
    with clock("embed"):
        for name, records in (("domain", domain), ("pool", pool)):
            embed(
                session,
                records,
                stages / f"embed_{name}",
                cfg.data,
                desc=f"embed {name}",
                embedder=cfg.embed.embedder,
                embed_max_length=cfg.embed.embed_max_length,
            )
    _, pool_status, _ = open_store(stages / "embed_pool")
    _, domain_status, _ = open_store(stages / "embed_domain")
    empty = pool_status == EMPTY
    check_n(n, int((~empty & ~filt.excluded).sum()), pool_path, "with response tokens")
    with clock("preselect"):
        pre = _cached_preselect(stages, cfg, filt.excluded)
    votes = pre.votes
    preselected = np.zeros(len(pool), dtype=bool)
    preselected[pre.order] = True
    scores = np.full(len(pool), np.nan)
    rng = np.random.default_rng(cfg.run.seed)
    chosen = np.zeros(0, dtype=np.int64)
    mix_record = None
    stores = ["embed_domain", "embed_pool"]
    if method.ranking == "votes":
        chosen, mix_record = pick_top_n(pre.order, n, pool, mix)
        scores[pre.order] = pre.votes[pre.order]
    elif method.ranking == "draw":
        chosen = rng.choice(pre.order, size=min(n, len(pre.order)), replace=False)
    else:
        feat_cfg = replace(cfg.feature, objective=method.objective) if method.objective else cfg.feature
        cand = pool.subset(pre.order, subset_fingerprint(pool.fingerprint, pre.order))
        tag = method.features_tag(feat_cfg.objective)
        pool_tag = f"{tag}_pool" if not cfg.run.work_dir else f"{tag}_pool_{cand.fingerprint[:8]}"
        with clock("featurize"):
            featurize(session, domain, stages / f"{tag}_domain", cfg.data, feat_cfg, desc="featurize domain")
            featurize(session, cand, stages / pool_tag, cfg.data, feat_cfg, desc="featurize pool")
        stores += [f"{tag}_domain", pool_tag]

        def score() -> np.ndarray:
            if method.score_rule == "ntk":
                return ntk_scores(stages / f"{tag}_domain", stages / pool_tag, cfg.score)
            return max_cosine_scores(stages / f"{tag}_domain", stages / pool_tag, cfg.score.score_block_mb)

        with clock("score"):
            cand_scores = distributed.on_main(score)
        if cand_scores is not None:  # rank 0: the scores and outputs are its job
            scores[pre.order] = cand_scores
            ranking = pre.order[top_n(cand_scores, n if mix is None else len(cand_scores))]
            chosen, mix_record = pick_top_n(ranking, n, pool, mix)

    def finish() -> dict[str, Any]:
        return write_outputs(
            out,
            cfg,
            domain,
            pool,
            filt,
            clock,
            score_name=method.score_name,
            chosen=chosen,
            votes=votes,
            preselected=preselected,
            scores=scores,
            empty=empty,
            domain_status=domain_status,
            mix_record=mix_record,
            stages=stages,
            stores=stores,
            warm_stats=warm_stats,
        )

    return distributed.on_main(finish)


def _select_random(
    domain: Records, pool: Records, out: Path, cfg: SelectConfigs, filt: PoolFilter, clock: StageClock
) -> dict[str, Any]:
    """Random N usable pool rows (no model run; --n was checked against them in ``select``)."""
    n = cfg.preselect.n
    empty = rows_without_response(pool)
    valid = np.flatnonzero(~empty & ~filt.excluded)
    rng = np.random.default_rng(cfg.run.seed)
    chosen = rng.permutation(np.sort(rng.choice(valid, size=n, replace=False)))
    no_votes, none_preselected, no_scores = (
        np.zeros(len(pool), np.int64),
        np.zeros(len(pool), bool),
        np.full(len(pool), np.nan),
    )
    return write_outputs(
        out,
        cfg,
        domain,
        pool,
        filt,
        clock,
        score_name=METHODS[cfg.method].score_name,
        chosen=chosen,
        votes=no_votes,
        preselected=none_preselected,
        scores=no_scores,
        empty=empty,
    )


def _cached_preselect(stages: Path, cfg: SelectConfigs, excluded: np.ndarray) -> PreselectResult:
    """Pre-selection on rank 0, reused on a rerun when its inputs and settings are unchanged."""
    path, state = stages / "preselect.npz", stages / "preselect.json"
    definition = {
        "domain": read_meta(stages / "embed_domain")["definition"],
        "pool": read_meta(stages / "embed_pool")["definition"],
        "preselect": to_dict(cfg.preselect),
        "seed": cfg.run.seed,
        "excluded": hashlib.sha256(np.packbits(excluded).tobytes()).hexdigest()[:16],
    }
    definition = canonical(definition)

    def compute() -> None:
        if path.exists() and (read_state(state) or {}).get("definition") == definition:
            return
        result = preselect(
            stages / "embed_domain", stages / "embed_pool", cfg.preselect, cfg.run.seed, exclude=excluded
        )
        save_preselect(result, path)
        write_json_atomic(state, {"definition": definition})

    distributed.on_main(compute)
    return load_preselect(path)
