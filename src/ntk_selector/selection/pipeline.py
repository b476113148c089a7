"""``select``: warm-up -> embed -> reverse-kNN pre-selection -> NTK features -> scores -> top N,
plus the baselines users compare against (random, embedding, preselect-random, LESS-style).

Every stage writes under ``OUT/stages`` and is skipped or resumed on a rerun; the final files
(``selected.jsonl``, ``scores.csv``, ``run.json``) are written atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ntk_selector import distributed
from ntk_selector.config import (
    DataConfig,
    EmbedConfig,
    FeatureConfig,
    IndexConfig,
    LoraSettings,
    ModelConfig,
    OutputConfig,
    PoolFilterConfig,
    PreselectConfig,
    RunConfig,
    ScoreConfig,
    TrainConfig,
    check_together,
    to_dict,
)
from ntk_selector.errors import UserError
from ntk_selector.io.definitions import canonical
from ntk_selector.io.files import (
    refuse_replacing,
    release_lock,
    take_lock,
    write_json_atomic,
)
from ntk_selector.io.formats import OUTPUT_FILES, OUTPUT_FORMATS
from ntk_selector.io.outputs import write_scores, write_selected, write_trl_rows
from ntk_selector.io.records import Records
from ntk_selector.io.store import EMPTY, META, describe_differences, open_store, read_meta
from ntk_selector.io.tokens import check_response_tokens, encode
from ntk_selector.model.loading import load_tokenizer, model_path
from ntk_selector.model.session import Session
from ntk_selector.selection.answer_mix import answer_mix
from ntk_selector.selection.filters import PoolFilter, pool_filter
from ntk_selector.selection.methods import METHODS
from ntk_selector.selection.preselect import PreselectResult
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
from ntk_selector.version import __version__

# The files select writes into --out: never replacing same-named files a user put there.
SELECT_OUTPUTS = ("selected.jsonl", "scores.csv", "run.json", "report.html", "report_scores.png", "report_votes.png",
                  "report_tasks.png", "report_seconds.png")

log = logging.getLogger(__name__)


@dataclass
class SelectConfigs:
    model: ModelConfig
    data: DataConfig
    lora: LoraSettings
    run: RunConfig
    train: TrainConfig
    feature: FeatureConfig
    preselect: PreselectConfig
    score: ScoreConfig
    method: str = "ntk"
    filters: PoolFilterConfig = field(default_factory=PoolFilterConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def from_sections(cls, configs: Mapping[type, Any], method: str = "ntk") -> "SelectConfigs":
        """From settings.build_configs' sections: each field takes the section of its type."""
        by_name = {section.__name__: config for section, config in configs.items()}
        return cls(method=method, **{f.name: by_name[str(f.type)] for f in fields(cls) if str(f.type) in by_name})


class StageClock:
    """Seconds per stage, for run.json and the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("%s ...", name)
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            log.info("%s done in %.1f s", name, took)


def empty_rows_by_tokenizing(records: Records, tokenizer: Any, data_cfg: DataConfig) -> np.ndarray:
    """Rows with no response tokens after truncation (for methods that never run the model)."""
    empty = np.zeros(len(records), dtype=bool)
    for start in range(0, len(records), 4096):
        enc = encode(records.conversations[start : start + 4096], tokenizer, data_cfg)
        empty[start : start + len(enc)] = [e.n_response_tokens == 0 for e in enc]
    return empty


def select(domain_path: str | Path, pool_path: str | Path | None, out_dir: str | Path, cfg: SelectConfigs) -> dict[str, Any] | None:
    """Run the whole selection; return the run summary (also written to run.json).

    Under torchrun every rank calls this: rank 0 alone runs the warm-up, pre-selection, scoring
    and writes the outputs (and returns the summary; the others return None); embedding and
    featurizing are sharded over all ranks. A run against an index (``cfg.index.index``) is
    index_select.select_with_index's; api.select_files picks the one that fits.
    """
    if cfg.index.index:
        raise ValueError("pipeline.select runs without an index; call api.select_files or index_select.select_with_index")
    if pool_path is None:
        raise UserError("select needs --pool (the candidate records), or --index (an index of them)")
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
    check_together(cfg.feature, cfg.lora)
    n = cfg.preselect.n
    if n <= 0:
        raise UserError("--n must be a positive number of examples to select")
    if cfg.output.output_format not in OUTPUT_FORMATS:
        raise UserError(f"unknown --output-format '{cfg.output.output_format}' (choose from {', '.join(OUTPUT_FORMATS)})")
    out = Path(out_dir)
    stages = Path(cfg.run.work_dir) if cfg.run.work_dir else out / "stages"
    clock = StageClock()

    def load() -> tuple[Records, Records, PoolFilter]:
        with clock("load data"):
            domain = Records.load(domain_path, cfg.data)
            pool = Records.load(pool_path, cfg.data)
        _check_n(n, len(pool), pool.path)
        _check_output_folder(out, domain, pool, cfg)
        with clock("filter pool"):
            filt = pool_filter(pool.conversations, cfg.filters)
        _check_n(n, int((~filt.excluded).sum()), pool.path, "after excluding duplicates / test-set overlaps")
        return domain, pool, filt

    domain, pool, filt = distributed.all_ranks(load)
    out.mkdir(parents=True, exist_ok=True)
    # one writer per output folder: a second select on it stops here with a clear message
    lock = distributed.on_main(lambda: take_lock(out))
    try:
        distributed.on_main(lambda: _check_output_folder(out, domain, pool, cfg))  # again, now that we hold the lock
        return _select_locked(domain, pool, filt, out, stages, cfg, clock, pool_path)
    finally:
        release_lock(lock)


def _select_locked(domain: Records, pool: Records, filt: PoolFilter, out: Path, stages: Path, cfg: SelectConfigs,
                   clock: StageClock, pool_path: str | Path) -> dict[str, Any] | None:
    n = cfg.preselect.n
    method = METHODS[cfg.method]
    if not method.uses_model:
        return distributed.on_main(lambda: _select_random(domain, pool, out, cfg, filt, clock))

    session = Session(cfg.model, cfg.lora, cfg.run)
    with clock("warmup"):
        def warm() -> dict[str, Any]:
            check_response_tokens([domain], session.load_tokenizer(), cfg.data)  # warns before any model work
            return warmup(session, domain, stages / "warmup", cfg.data, cfg.train, checked=True)

        warm_stats = distributed.on_main(warm)
    with clock("load model"):
        distributed.all_ranks(lambda: session.load(str(stages / "warmup")))
    with clock("embed"):
        for name, records in (("domain", domain), ("pool", pool)):
            embed(session, records, stages / f"embed_{name}", cfg.data, desc=f"embed {name}", embedder=cfg.embed.embedder,
                  embed_max_length=cfg.embed.embed_max_length)
    _, pool_status, _ = open_store(stages / "embed_pool")
    _, domain_status, _ = open_store(stages / "embed_domain")
    empty = pool_status == EMPTY
    _check_n(n, int((~empty & ~filt.excluded).sum()), pool_path, "with response tokens")
    with clock("preselect"):
        pre = _cached_preselect(stages, cfg, filt.excluded)
    votes = pre.votes
    preselected = np.zeros(len(pool), dtype=bool)
    preselected[pre.order] = True
    scores = np.full(len(pool), np.nan)
    rng = np.random.default_rng(cfg.run.seed)
    chosen = np.zeros(0, dtype=np.int64)
    if method.ranking == "votes":
        chosen = pre.order[:n]
        scores[pre.order] = pre.votes[pre.order]
    elif method.ranking == "draw":
        chosen = rng.choice(pre.order, size=min(n, len(pre.order)), replace=False)
    else:
        feat_cfg = replace(cfg.feature, objective=method.objective) if method.objective else cfg.feature
        cand = pool.subset(pre.order, _subset_fingerprint(pool.fingerprint, pre.order))
        tag = method.features_tag(feat_cfg.objective)
        pool_tag = f"{tag}_pool" if not cfg.run.work_dir else f"{tag}_pool_{cand.fingerprint[:8]}"
        with clock("featurize"):
            featurize(session, domain, stages / f"{tag}_domain", cfg.data, feat_cfg, desc="featurize domain")
            featurize(session, cand, stages / pool_tag, cfg.data, feat_cfg, desc="featurize pool")

        def score() -> np.ndarray:
            if method.score_rule == "ntk":
                return ntk_scores(stages / f"{tag}_domain", stages / pool_tag, cfg.score)
            return max_cosine_scores(stages / f"{tag}_domain", stages / pool_tag, cfg.score.score_block_mb)

        with clock("score"):
            cand_scores = distributed.on_main(score)
        if cand_scores is not None:  # rank 0: the scores and outputs are its job
            scores[pre.order] = cand_scores
            chosen = pre.order[top_n(cand_scores, n)]

    def finish() -> dict[str, Any]:
        with clock("write outputs"):
            write_selected(out / "selected.jsonl", pool, chosen, scores, method.score_name)
            write_trl_rows(out, pool, chosen, cfg.output.output_format)
            write_scores(out / "scores.csv", votes, preselected, scores, method.score_name)
        summary = _summary(cfg, domain, pool, chosen, empty, int(preselected.sum()), clock.seconds, out, filt)
        summary["counts"]["domain_no_response_tokens"] = int((domain_status == EMPTY).sum())
        if warm_stats is not None:
            summary["warmup"] = {k: v for k, v in warm_stats.items() if k != "losses"}
        return _finish_run(out, summary, clock)

    return distributed.on_main(finish)


def _select_random(domain: Records, pool: Records, out: Path, cfg: SelectConfigs, filt: PoolFilter,
                   clock: StageClock) -> dict[str, Any]:
    """Random N usable pool rows (no model run; rows without response tokens found by tokenizing)."""
    n = cfg.preselect.n
    with clock("tokenize"):
        empty = empty_rows_by_tokenizing(pool, load_tokenizer(model_path(cfg.model, cfg.run.quiet)), cfg.data)
    valid = np.flatnonzero(~empty & ~filt.excluded)
    _check_n(n, len(valid), pool.path, "with response tokens")
    rng = np.random.default_rng(cfg.run.seed)
    chosen = rng.permutation(np.sort(rng.choice(valid, size=n, replace=False)))
    with clock("write outputs"):
        score_name = METHODS[cfg.method].score_name
        write_selected(out / "selected.jsonl", pool, chosen, np.full(len(pool), np.nan), score_name)
        write_trl_rows(out, pool, chosen, cfg.output.output_format)
        write_scores(out / "scores.csv", np.zeros(len(pool), np.int64), np.zeros(len(pool), bool), np.full(len(pool), np.nan),
                     score_name)
    return _finish_run(out, _summary(cfg, domain, pool, chosen, empty, 0, clock.seconds, out, filt), clock)


def _finish_run(out: Path, summary: dict[str, Any], clock: StageClock) -> dict[str, Any]:
    """run.json last: its presence marks a finished run (a crashed run leaves none). The report comes
    after it and cannot fail the run: a report error is a warning."""
    write_json_atomic(out / "run.json", summary)
    try:
        from ntk_selector.selection.report import write_report

        with clock("report"):
            write_report(out)
    except Exception as e:  # noqa: BLE001 - the selection is written; a plot must not undo that
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"WARNING: the report could not be written ({type(e).__name__}: {first}); the selection in {out} is "
              f"complete", file=sys.stderr, flush=True)
    return summary


def _cached_preselect(stages: Path, cfg: SelectConfigs, excluded: np.ndarray) -> PreselectResult:
    """Pre-selection on rank 0, reused on a rerun when its inputs and settings are unchanged."""
    path, state = stages / "preselect.npz", stages / "preselect.json"
    definition = {"domain": read_meta(stages / "embed_domain")["definition"], "pool": read_meta(stages / "embed_pool")["definition"],
                  "preselect": to_dict(cfg.preselect), "seed": cfg.run.seed,
                  "excluded": hashlib.sha256(np.packbits(excluded).tobytes()).hexdigest()[:16]}
    definition = canonical(definition)

    def compute() -> None:
        if path.exists() and state.exists() and json.loads(state.read_text()).get("definition") == definition:
            return
        result = preselect(stages / "embed_domain", stages / "embed_pool", cfg.preselect, cfg.run.seed, exclude=excluded)
        save_preselect(result, path)
        write_json_atomic(state, {"definition": definition})

    distributed.on_main(compute)
    return load_preselect(path)


def _check_n(n: int, usable: int, pool_path: str | Path, which: str = "") -> None:
    if n > usable:
        raise UserError(f"--n {n} is larger than the pool ({usable} usable rows in {pool_path}{' ' + which if which else ''})")


def _subset_fingerprint(base: str, rows: np.ndarray) -> str:
    return hashlib.sha256(base.encode() + np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


# settings that change how a run goes, not what it selects
RUN_ONLY = {"quiet", "debug", "overwrite", "device", "work_dir", "dist_timeout", "token_budget", "max_batch_size",
            "score_block_mb", "checkpoint_every", "projection_cache_mb", "output_format", "log_level"}


def _settings(cfg: SelectConfigs) -> dict[str, Any]:
    flat = to_dict(*[v for k, v in vars(cfg).items() if k != "method"])
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in RUN_ONLY}, default=str))


def _check_output_folder(out: Path, domain: Records, pool: Records, cfg: SelectConfigs) -> None:
    """Refuse an output folder that holds another run or a store (unless --overwrite)."""
    if (out / META).exists():
        raise UserError(f"{out} holds a feature store, not a select run; choose another --out")
    refuse_replacing(out, SELECT_OUTPUTS, (("run.json", "inputs"),), cfg.run.overwrite)
    run_json = out / "run.json"
    if not run_json.exists() or cfg.run.overwrite:
        return
    try:
        old = json.loads(run_json.read_text(encoding="utf-8"))
        old.get("inputs")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise UserError(f"{run_json} cannot be read as an earlier run's record; use --overwrite or another --out folder") from None
    mine = {"domain_fingerprint": domain.fingerprint, "pool_fingerprint": pool.fingerprint, "method": cfg.method,
            "settings": _settings(cfg)}
    theirs = {k: old.get("inputs", {}).get(k) for k in mine}
    if theirs["settings"] is None:
        theirs["settings"] = mine["settings"]  # written before settings were recorded
    if theirs != mine:
        raise UserError(f"{out} holds another run ({describe_differences(theirs, mine)}); "
                        f"use --overwrite or another --out folder")


def task_counts(records: Records | list[dict[str, Any]], rows: np.ndarray | None = None,
                field: str = "task") -> dict[str, int]:
    """Rows per value of ``field`` (all rows when ``rows`` is None), read a chunk at a time."""
    if isinstance(records, Records):
        values = records.field_values(field, rows)
    else:
        values = (records[int(i)].get(field) for i in (range(len(records)) if rows is None else rows))
    counts: dict[str, int] = {}
    for value in values:
        key = "(none)" if value is None else str(value)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _summary(cfg: SelectConfigs, domain: Records, pool: Records, chosen: np.ndarray, empty: np.ndarray, n_pre: int,
             seconds: dict[str, float], out: Path, filt: PoolFilter) -> dict[str, Any]:
    import torch
    import transformers

    empty_rows = np.flatnonzero(empty)
    return {
        "method": cfg.method,
        "inputs": {"domain": str(domain.path), "pool": str(pool.path), "domain_fingerprint": domain.fingerprint,
                   "pool_fingerprint": pool.fingerprint, "method": cfg.method, "settings": _settings(cfg)},
        # every resolved setting plus the inputs, sectioned: `select --config run.json --out NEW` replays the run
        "config": {**{k: to_dict(v) for k, v in vars(cfg).items() if k != "method"},
                   "select": {"domain": _replayable(domain.path), "pool": _replayable(pool.path), "method": cfg.method}},
        "record_formats": {"domain": domain.format, "pool": pool.format},
        "world_size": distributed.current().world,
        "counts": {"domain": len(domain), "pool": len(pool), "selected": int(len(chosen)),
                   "pool_no_response_tokens": int(len(empty_rows)), "pool_duplicates": filt.report["duplicates"]["rows"],
                   "pool_test_overlap": filt.report.get("decontamination", {}).get("rows", 0),
                   "pool_excluded": filt.report["excluded_rows"], "preselected": n_pre},
        "pool_filter": filt.report,
        "pool_rows_without_response_tokens": empty_rows[:1000].tolist(),
        "selected_per_task": task_counts(pool, chosen),
        "answer_mix": answer_mix([c.response for c in domain.conversations],
                                 [c.response for c in pool.subset(chosen, "").conversations]),
        "pool_per_task": task_counts(pool),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": {"ntk_selector": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "outputs": {"selected": str(out / "selected.jsonl"), "scores": str(out / "scores.csv"),
                    **({"trl_rows": str(out / OUTPUT_FILES[cfg.output.output_format])} if cfg.output.output_format in OUTPUT_FILES else {})},
    }


def _replayable(name: str | Path) -> str:
    """A local path made absolute (so a replay works from any folder); hub ids as given."""
    return str(Path(name).resolve()) if Path(name).exists() else name
