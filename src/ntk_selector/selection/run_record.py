"""What a select run records about itself: its configs (SelectConfigs), the seconds of each stage,
the checks of its output folder against an earlier run, and run.json (the summary, with every
resolved setting so that ``select --config run.json`` replays it). Shared by the pipeline and the
index mode (index_select.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    to_dict,
)
from ntk_selector.errors import UserError
from ntk_selector.features import budget
from ntk_selector.io.definitions import describe_differences
from ntk_selector.io.files import refuse_replacing, write_json_atomic
from ntk_selector.io.formats import OUTPUT_FILES
from ntk_selector.io.outputs import write_scores, write_selected, write_trl_rows
from ntk_selector.io.records import Records
from ntk_selector.io.store import EMPTY, META, read_meta
from ntk_selector.selection.answer_mix import answer_mix, with_constraint
from ntk_selector.selection.filters import PoolFilter
from ntk_selector.version import __version__

log = logging.getLogger(__name__)


# The files select writes into --out: never replacing same-named files a user put there.
SELECT_OUTPUTS = (
    "selected.jsonl",
    "scores.csv",
    "run.json",
    "report.html",
    "report_scores.png",
    "report_votes.png",
    "report_tasks.png",
    "report_seconds.png",
)

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
    def from_sections(cls, configs: Mapping[type, Any], method: str = "ntk") -> SelectConfigs:
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


def finish_run(out: Path, summary: dict[str, Any], clock: StageClock) -> dict[str, Any]:
    """run.json last: its presence marks a finished run (a crashed run leaves none). The report comes
    after it and cannot fail the run: a report error is a warning. It records the token budget each
    stage that ran here planned its batches with (``--token-budget auto`` chooses per stage)."""
    setting = summary.get("config", {}).get("data", {}).get("token_budget")
    summary["token_budget"] = {"setting": setting, "stages": budget.recorded()}
    write_json_atomic(out / "run.json", summary)
    try:
        from ntk_selector.selection.report import write_report

        with clock("report"):
            write_report(out)
    except Exception as e:  # noqa: BLE001 - the selection is written; a plot must not undo that
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"WARNING: the report could not be written ({type(e).__name__}: {first}); the selection in {out} is "
            f"complete",
            file=sys.stderr,
            flush=True,
        )
    return summary


def write_outputs(
    out: Path,
    cfg: SelectConfigs,
    domain: Records,
    pool: Records,
    filt: PoolFilter,
    clock: StageClock,
    *,
    score_name: str,
    chosen: np.ndarray,
    votes: np.ndarray,
    preselected: np.ndarray,
    scores: np.ndarray,
    empty: np.ndarray,
    domain_status: np.ndarray | None = None,
    mix_record: dict[str, Any] | None = None,
    stages: Path | None = None,
    stores: list[str] | None = None,
    warm_stats: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every output of a select run, whichever way it chose (pipeline.py, index_select.py): ``selected.jsonl``,
    the rows in ``--output-format``, ``scores.csv``, then run.json and the report (finish_run).

    ``votes``, ``preselected`` and ``scores`` cover every pool row; ``empty``: pool rows without response
    tokens. The optional parts of run.json: ``domain_status`` (the domain store's row status) gives
    ``counts.domain_no_response_tokens``, ``mix_record`` the ``--answer-mix`` constraint, ``stages`` with
    ``stores`` the ``store_seconds``, ``warm_stats`` the ``warmup`` record (its losses left out), and ``extra``
    more top-level entries (``index`` for a run against an index). Returns the run summary."""
    with clock("write outputs"):
        write_selected(out / "selected.jsonl", pool, chosen, scores, score_name)
        write_trl_rows(out, pool, chosen, cfg.output.output_format)
        write_scores(out / "scores.csv", votes, preselected, scores, score_name)
    summary = run_summary(cfg, domain, pool, chosen, empty, int(preselected.sum()), clock.seconds, out, filt)
    if domain_status is not None:
        summary["counts"]["domain_no_response_tokens"] = int((domain_status == EMPTY).sum())
    summary["answer_mix"] = with_constraint(summary["answer_mix"], cfg.score.answer_mix, mix_record)
    summary.update(extra or {})
    if stages is not None:
        summary["store_seconds"] = store_seconds(stages, stores or [])
    if warm_stats is not None:
        summary["warmup"] = {k: v for k, v in warm_stats.items() if k != "losses"}
    return finish_run(out, summary, clock)


def store_seconds(stages: Path, names: list[str]) -> dict[str, float]:
    """Each named store's ``work_seconds``: its wall time over every run that wrote it, so a stage
    resumed across several runs reports its whole cost (run.json's ``seconds`` are this run's)."""
    out = {}
    for name in names:
        if (stages / name / "meta.json").exists():
            out[name] = float(read_meta(stages / name).get("work_seconds", 0.0))
    return out


def check_n(n: int, usable: int, pool_path: str | Path, which: str = "") -> None:
    if n > usable:
        raise UserError(
            f"--n {n} is larger than the pool ({usable} usable rows in {pool_path}{' ' + which if which else ''})"
        )


def subset_fingerprint(base: str, rows: np.ndarray) -> str:
    return hashlib.sha256(base.encode() + np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


# settings that change how a run goes, not what it selects
RUN_ONLY = {
    "quiet",
    "debug",
    "overwrite",
    "device",
    "work_dir",
    "dist_timeout",
    "token_budget",
    "max_batch_size",
    "score_block_mb",
    "checkpoint_every",
    "projection_cache_mb",
    "output_format",
    "log_level",
}


def settings_record(cfg: SelectConfigs) -> dict[str, Any]:
    flat = to_dict(*[v for k, v in vars(cfg).items() if k != "method"])
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in RUN_ONLY}, default=str))


def default_settings() -> dict[str, Any]:
    """Every setting's default, as settings_record writes it."""
    from ntk_selector.config import SECTIONS

    flat = to_dict(*[section() for section in SECTIONS])
    return json.loads(json.dumps(flat, default=str))


def check_output_folder(out: Path, domain: Records, pool: Records, cfg: SelectConfigs) -> None:
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
        raise UserError(
            f"{run_json} cannot be read as an earlier run's record; use --overwrite or another --out folder"
        ) from None
    mine = {
        "domain_fingerprint": domain.fingerprint,
        "pool_fingerprint": pool.fingerprint,
        "method": cfg.method,
        "settings": settings_record(cfg),
    }
    theirs = {k: old.get("inputs", {}).get(k) for k in mine}
    if theirs["settings"] is None:
        theirs["settings"] = mine["settings"]  # written before settings were recorded
    elif isinstance(theirs["settings"], dict):  # a setting added since that run, at its default, is the same run
        defaults = default_settings()
        theirs["settings"] = {
            **{
                k: v
                for k, v in mine["settings"].items()
                if k not in theirs["settings"] and k in defaults and defaults[k] == v
            },
            **theirs["settings"],
        }
    if theirs != mine:
        raise UserError(
            f"{out} holds another run ({describe_differences(theirs, mine)}); use --overwrite or another --out folder"
        )


def task_counts(
    records: Records | list[dict[str, Any]], rows: np.ndarray | None = None, field: str = "task"
) -> dict[str, int]:
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


def run_summary(
    cfg: SelectConfigs,
    domain: Records,
    pool: Records,
    chosen: np.ndarray,
    empty: np.ndarray,
    n_pre: int,
    seconds: dict[str, float],
    out: Path,
    filt: PoolFilter,
) -> dict[str, Any]:
    import torch
    import transformers

    empty_rows = np.flatnonzero(empty)
    return {
        "method": cfg.method,
        "inputs": {
            "domain": str(domain.path),
            "pool": str(pool.path),
            "domain_fingerprint": domain.fingerprint,
            "pool_fingerprint": pool.fingerprint,
            "method": cfg.method,
            "settings": settings_record(cfg),
        },
        # every resolved setting plus the inputs, sectioned: `select --config run.json --out NEW` replays the run
        "config": {
            **{k: to_dict(v) for k, v in vars(cfg).items() if k != "method"},
            "select": {"domain": replayable(domain.path), "pool": replayable(pool.path), "method": cfg.method},
        },
        "record_formats": {"domain": domain.format, "pool": pool.format},
        "world_size": distributed.current().world,
        "counts": {
            "domain": len(domain),
            "pool": len(pool),
            "selected": int(len(chosen)),
            "pool_no_response_tokens": int(len(empty_rows)),
            "pool_duplicates": filt.report["duplicates"]["rows"],
            "pool_test_overlap": filt.report.get("decontamination", {}).get("rows", 0),
            "pool_domain_copies": filt.report.get("domain_copies", {}).get("rows", 0),
            "pool_excluded": filt.report["excluded_rows"],
            "preselected": n_pre,
        },
        "pool_filter": filt.report,
        "pool_rows_without_response_tokens": empty_rows[:1000].tolist(),
        "selected_per_task": task_counts(pool, chosen),
        "answer_mix": answer_mix(
            [c.response for c in domain.conversations], [c.response for c in pool.subset(chosen, "").conversations]
        ),
        "pool_per_task": task_counts(pool),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": {
            "ntk_selector": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "outputs": {
            "selected": str(out / "selected.jsonl"),
            "scores": str(out / "scores.csv"),
            **(
                {"trl_rows": str(out / OUTPUT_FILES[cfg.output.output_format])}
                if cfg.output.output_format in OUTPUT_FILES
                else {}
            ),
        },
    }


def replayable(name: str | Path) -> str:
    """A local path made absolute (so a replay works from any folder); hub ids as given."""
    return str(Path(name).resolve()) if Path(name).exists() else name
