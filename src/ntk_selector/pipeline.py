"""``select``: warm-up -> embed -> reverse-kNN pre-selection -> NTK features -> scores -> top N,
plus the baselines users compare against (random, embedding, preselect-random, LESS-style).

Every stage writes under ``OUT/stages`` and is skipped or resumed on a rerun; the final files
(``selected.jsonl``, ``scores.csv``, ``run.json``) are written atomically at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ntk_selector import __version__
from ntk_selector.config import (DataConfig, FeatureConfig, LoraSettings, ModelConfig, PreselectConfig, RunConfig,
                                 ScoreConfig, TrainConfig, to_dict)
from ntk_selector.data import clean_record, encode
from ntk_selector.errors import UserError
from ntk_selector.models import load_tokenizer, model_path
from ntk_selector.stages import (Records, Session, embed, featurize, load_preselect, max_cosine_scores, ntk_scores,
                                 preselect, save_preselect, warmup)
from ntk_selector.score import top_n
from ntk_selector.store import EMPTY, open_store, write_json_atomic

METHODS = ("ntk", "random", "embedding", "preselect-random", "less")


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


class StageClock:
    """Seconds per stage, for run.json and the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def empty_rows_by_tokenizing(records: Records, tokenizer: Any, data_cfg: DataConfig) -> np.ndarray:
    """Rows with no response tokens after truncation (for methods that never run the model)."""
    empty = np.zeros(len(records), dtype=bool)
    for start in range(0, len(records), 4096):
        enc = encode(records.conversations[start : start + 4096], tokenizer, data_cfg)
        empty[start : start + len(enc)] = [e.n_response_tokens == 0 for e in enc]
    return empty


def select(domain_path: str | Path, pool_path: str | Path, out_dir: str | Path, cfg: SelectConfigs) -> dict[str, Any]:
    """Run the whole selection; return the run summary (also written to run.json)."""
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
    n = cfg.preselect.n
    if n <= 0:
        raise UserError("--n must be a positive number of examples to select")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Path(cfg.run.work_dir) if cfg.run.work_dir else out / "stages"
    clock = StageClock()
    with clock("load data"):
        domain = Records.load(domain_path, cfg.data)
        pool = Records.load(pool_path, cfg.data)
    _check_output_folder(out, domain, pool, cfg)
    rng = np.random.default_rng(cfg.run.seed)
    votes = np.zeros(len(pool), dtype=np.int64)
    preselected = np.zeros(len(pool), dtype=bool)
    scores = np.full(len(pool), np.nan)
    session = Session(cfg.model, cfg.lora, cfg.run)

    if cfg.method == "random":
        with clock("tokenize"):
            empty = empty_rows_by_tokenizing(pool, load_tokenizer(model_path(cfg.model, cfg.run.quiet)), cfg.data)
        valid = np.flatnonzero(~empty)
        _check_n(n, len(valid), pool_path)
        chosen = np.sort(rng.choice(valid, size=n, replace=False))
        chosen = rng.permutation(chosen)
    else:
        with clock("warmup"):
            warm_stats = warmup(session, domain, stages / "warmup", cfg.data, cfg.train)
        adapter = str(stages / "warmup")
        with clock("load model"):
            session.load(adapter)
        with clock("embed"):
            embed(session, domain, stages / "embed_domain", cfg.data, desc="embed domain")
            embed(session, pool, stages / "embed_pool", cfg.data, desc="embed pool")
        _, pool_status, _ = open_store(stages / "embed_pool")
        empty = pool_status == EMPTY
        _check_n(n, int((~empty).sum()), pool_path)
        with clock("preselect"):
            pre = preselect(stages / "embed_domain", stages / "embed_pool", cfg.preselect, cfg.run.seed)
            save_preselect(pre, stages / "preselect.npz")
        votes = pre.votes
        preselected[pre.order] = True
        if cfg.method == "embedding":
            chosen = pre.order[:n]
            scores[pre.order] = pre.votes[pre.order]
        elif cfg.method == "preselect-random":
            chosen = rng.choice(pre.order, size=min(n, len(pre.order)), replace=False)
        else:
            feat_cfg = cfg.feature if cfg.method == "ntk" else replace(cfg.feature, objective="ce")
            cand = pool.subset(pre.order, _subset_fingerprint(pool.fingerprint, pre.order))
            tag = "features" if cfg.method == "ntk" else "less_features"
            pool_tag = f"{tag}_pool" if not cfg.run.work_dir else f"{tag}_pool_{cand.fingerprint[:8]}"
            with clock("featurize"):
                featurize(session, domain, stages / f"{tag}_domain", cfg.data, feat_cfg, desc="featurize domain")
                featurize(session, cand, stages / pool_tag, cfg.data, feat_cfg, desc="featurize pool")
            with clock("score"):
                if cfg.method == "ntk":
                    cand_scores = ntk_scores(stages / f"{tag}_domain", stages / pool_tag, cfg.score)
                else:
                    cand_scores = max_cosine_scores(stages / f"{tag}_domain", stages / pool_tag)
                scores[pre.order] = cand_scores
                chosen = pre.order[top_n(cand_scores, n)]
    with clock("write outputs"):
        _write_selected(out / "selected.jsonl", pool, chosen, scores)
        _write_scores(out / "scores.csv", votes, preselected, scores)
    summary = _summary(cfg, domain, pool, chosen, empty, int(preselected.sum()), clock.seconds, out)
    if cfg.method != "random":
        summary["warmup"] = {k: v for k, v in warm_stats.items() if k != "losses"}
    write_json_atomic(out / "run.json", summary)
    try:
        from ntk_selector.report import write_report
    except ImportError:
        pass
    else:
        with clock("report"):
            write_report(out)
    return summary


def _check_n(n: int, valid: int, pool_path: str | Path) -> None:
    if n > valid:
        raise UserError(f"--n {n} is larger than the pool ({valid} usable rows in {pool_path})")


def _subset_fingerprint(base: str, rows: np.ndarray) -> str:
    return hashlib.sha256(base.encode() + np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _check_output_folder(out: Path, domain: Records, pool: Records, cfg: SelectConfigs) -> None:
    """Refuse an output folder that holds a run on other data or settings (unless --overwrite)."""
    run_json = out / "run.json"
    if not run_json.exists() or cfg.run.overwrite:
        return
    old = json.loads(run_json.read_text())
    mine = {"domain_fingerprint": domain.fingerprint, "pool_fingerprint": pool.fingerprint, "method": cfg.method}
    theirs = {k: old.get("inputs", {}).get(k) for k in mine}
    if theirs != mine:
        raise UserError(f"{out} holds another run (different data or method); use --overwrite or another --out folder")


def _write_selected(path: Path, pool: Records, chosen: np.ndarray, scores: np.ndarray) -> None:
    buf = io.StringIO()
    for i in chosen:
        rec = clean_record(pool.records[int(i)])
        rec["ntk_score"] = None if not np.isfinite(scores[i]) else float(scores[i])
        rec["pool_index"] = int(i)
        buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_text_atomic(path, buf.getvalue())


def _write_scores(path: Path, votes: np.ndarray, preselected: np.ndarray, scores: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["pool_index", "votes", "preselected", "ntk_score"])
    for i in range(len(votes)):
        w.writerow([i, int(votes[i]), int(preselected[i]), "" if not np.isfinite(scores[i]) else repr(float(scores[i]))])
    write_text_atomic(path, buf.getvalue())


def task_counts(records: list[dict[str, Any]], rows: np.ndarray, field: str = "task") -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in rows:
        key = str(records[int(i)].get(field, "(none)"))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _summary(cfg: SelectConfigs, domain: Records, pool: Records, chosen: np.ndarray, empty: np.ndarray, n_pre: int,
             seconds: dict[str, float], out: Path) -> dict[str, Any]:
    import torch
    import transformers

    empty_rows = np.flatnonzero(empty)
    return {
        "method": cfg.method,
        "inputs": {"domain": str(domain.path), "pool": str(pool.path), "domain_fingerprint": domain.fingerprint,
                   "pool_fingerprint": pool.fingerprint, "method": cfg.method},
        "config": {k: to_dict(v) for k, v in vars(cfg).items() if k != "method"},
        "counts": {"domain": len(domain), "pool": len(pool), "selected": int(len(chosen)),
                   "pool_no_response_tokens": int(len(empty_rows)),
                   "preselected": n_pre},
        "pool_rows_without_response_tokens": empty_rows[:1000].tolist(),
        "selected_per_task": task_counts(pool.records, chosen),
        "pool_per_task": task_counts(pool.records, np.arange(len(pool))),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": {"ntk_selector": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "outputs": {"selected": str(out / "selected.jsonl"), "scores": str(out / "scores.csv")},
    }


def load_selected_indices(out_dir: str | Path) -> list[int]:
    with open(Path(out_dir) / "selected.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["pool_index"] for line in fh if line.strip()]
