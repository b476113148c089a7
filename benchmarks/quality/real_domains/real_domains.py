"""Real-domain benchmark: the paper's main table in small, on any domain that comes as files.

A domain is four files: ``domain`` (D, |D| rows, in the label mix a user's sample would have),
``valid`` (rows for choosing settings, disjoint from D), ``test``, and a shared ``pool``; optionally
``domain_balanced`` (D balanced over the labels: an ablation). ``--data DIR`` takes every domain
folder ``DIR/<name>/`` (as ``prepare_real_domains.py`` beside this file writes them) and ``DIR/pool.jsonl``;
``--name N --domain-train D --domain-valid V --domain-test T --pool P`` plugs in one domain of your own.

Methods: base (no fine-tune), domain only, random, embedding (top-N reverse-kNN votes),
preselect-random, less, ntk; N = n_factor·|D|. ntk, embedding and less select once per domain
(selection seed 0, deterministic given the warm-up) and fine-tune with seeds 0-2; random draws N
with each seed; preselect-random draws N of the seed-0 pre-selected M with each seed. Final
fine-tune: LoRA r 8 on q/k/v/o, 3 epochs on D ∪ S (the paper), batch 8, length-grouped batches.

Settings are chosen on ``valid`` before any test number is seen, the same for every arm of a
domain: the learning rate with the best domain-only balanced accuracy on valid (ties: lower gold
NLL), so a setting that only moves the label prior is not preferred. Evaluation scores each label
by log-likelihood and reports accuracy, balanced accuracy, macro-F1, the gold answer's NLL, and the
same after contextual calibration (``evaluate --calibrate``).

Every unit (selection, fine-tune, evaluation) writes one JSON under ``--results`` (committed) and its
big files under ``--cache`` (ignored); a rerun skips finished units and a fine-tune in flight resumes
from its checkpoint. Phases run most informative first: settings, seed 0 of every method on every
domain (base and domain only on all domains, then ntk and random, then the other baselines), seeds
1-2, then the ablations (per-example loss mean; balanced D), then the variants of the method (seed 0,
beside ntk, never in its place: ``ntk-content``, the NTK objective without the end-of-turn position;
``ntk-cosine``, ntk's features scored by the mean cosine), then ``answer-mix`` (beyond the paper, on the
domains with a balanced D: ntk's ranking picked under ``select --answer-mix`` with D's label shares,
``ntk-mix-keep``, or valid's, ``ntk-mix-valid``, on natural and balanced D, beside ntk and random);
``--phases ... index`` adds ntk against an index of the pool built once with the base model
(``select --index``, seed 0). ``--estimate`` prints the
predicted cost; ``--only-table`` rebuilds the table (``--results``/table.md) and plot from the JSONs.

Several workers can share one ``--results`` and ``--cache`` (a lock file per unit; a unit another
live worker holds is put off to the end of the plan): on two cores, two one-thread workers from
opposite ends of the domain list (``--domains`` in reverse for the second) keep both cores on
independent units. ``--methods`` limits a worker to some methods.

    python -m benchmarks.quality.real_domains.prepare_real_domains
    python -m benchmarks.quality.real_domains.real_domains --data benchmarks/cache/real_domains/data --commit-every 3
    OMP_NUM_THREADS=1 python -m benchmarks.quality.real_domains.real_domains --data DATA --commit-every 2 &
    OMP_NUM_THREADS=1 python -m benchmarks.quality.real_domains.real_domains --data DATA --commit-every 2 \\
        --domains tfns pubmedqa mmlu_med fpb &
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE, RESULTS
from benchmarks.common import (
    UnitBusy,
    cached_unit,
    count_units,
    counts,
    exit_cleanly_on_sigterm,
    finetune_summary,
    git_commit,
    log,
    mean_std,
    read_jsonl,
    run_ranks,
    run_select,
    task_counts,
    write_json,
    write_jsonl,
)

METHODS = ("base", "domain", "random", "embedding", "preselect-random", "less", "ntk")
SELECTING = ("random", "embedding", "preselect-random", "less", "ntk")
DETERMINISTIC = ("embedding", "less", "ntk")
ABLATION_METHODS = ("domain", "random", "ntk")
# seed 0 runs these groups in turn over every domain: the no-selection arms, ntk against random, the rest
SEED0_ORDER = (("base", "domain"), ("ntk", "random"), ("embedding", "preselect-random", "less"))
# phase "index": ntk against an index of the pool built once with the base model (select --index),
# seed 0 on every domain, beside the paper's mode; the table gives its top-N overlap with ntk's pick
INDEX_METHOD = "ntk-index"
# phase "variants": the paper's method with one change, seed 0 on every domain, reported beside ntk (never in
# its place). ntk-content: the NTK objective without the position that predicts the end-of-turn token
# (select --objective ntk-content); with D's one-word answers that position is half of D's feature.
CONTENT_METHOD = "ntk-content"
COSINE_METHOD = (
    "ntk-cosine"  # ntk's features scored by the mean cosine with D (the kernel check's better ranking on long answers)
)
VARIANT_METHODS = (CONTENT_METHOD, COSINE_METHOD)
# phase "answer-mix" (beyond the paper): ntk's stores and ranking, its top N picked under a label-mix
# constraint (select --answer-mix): D's own shares (keep), or valid's shares (the mix expected at test
# time). Seed 0, natural and balanced D, beside ntk, random and domain only in the same setting.
KEEP_METHOD = "ntk-mix-keep"
VALID_MIX_METHOD = "ntk-mix-valid"
MIX_METHODS = (KEEP_METHOD, VALID_MIX_METHOD)
MIX_COMPARED = ("domain", "random", "ntk")
TABLE_METHODS = METHODS + (INDEX_METHOD,) + VARIANT_METHODS + MIX_METHODS
SELECTION_METHODS = (
    SELECTING + (INDEX_METHOD,) + VARIANT_METHODS + MIX_METHODS
)  # the arms whose fine-tune adds selected pool rows to D
PHASES = ("seed0", "index", "seeds", "ablations", "variants", "answer-mix")


# ----------------------------------------------------------------------------- settings and keys


@dataclass
class Settings:
    """Everything that defines the numbers (stored with each unit; a changed definition recomputes it)."""

    model: str | None = None
    n_factor: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    max_length: int = 256
    eval_max_length: int = 320
    epochs: float = 3.0
    batch_size: int = 8
    rank: int = 8
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)  # 3e-3 added once 1e-3, the grid's edge, won on every domain
    proj_dim: int = 8192
    token_budget: int = 2048
    # the pool index's max length (None: max_length). A pool whose rows all fit both lengths maps the
    # same either way, so the real-domain and generative benchmarks can share one index of the P3 pool
    index_max_length: int | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    domain: Path
    valid: Path
    test: Path
    pool: Path
    domain_balanced: Path | None = None

    def d_file(self, variant: str) -> Path:
        if variant == "balanced":
            if self.domain_balanced is None:
                raise ValueError(f"{self.name}: no domain_balanced file")
            return self.domain_balanced
        return self.domain


@dataclass(frozen=True)
class Run:
    """One fine-tune-and-evaluate cell. ``variant``: ``main``, ``balanced`` (balanced D) or ``example-loss``."""

    domain: str
    method: str
    sel: int
    ft: int
    lr: float
    variant: str = "main"

    @property
    def d_variant(self) -> str:
        return "balanced" if self.variant == "balanced" else "natural"

    @property
    def loss_mean(self) -> str:
        return "example" if self.variant == "example-loss" else "token"

    @property
    def sel_key(self) -> str:
        return f"{self.domain}_{self.d_variant}_{self.method}_sel{self.sel}"

    @property
    def key(self) -> str:
        if self.method == "base":
            return f"{self.domain}_base"
        head = f"{self.domain}_{self.d_variant}_domain" if self.method == "domain" else self.sel_key
        return f"{head}_ft{self.ft}_lr{self.lr:g}_{self.loss_mean}"


def index_agreement(index_dir: Path, index_run: Path, index_top: list[int], paper: dict[str, Any]) -> dict[str, Any]:
    """How close ntk against the index comes to the paper's mode (``paper``: its cached selection) on
    one domain: top-N overlap, the share of the paper's top N among the index's M pre-selected rows,
    the overlap of the two M, and the Spearman correlation, over the paper's M candidates, of the
    paper's scores with the scores of the same rows' index features against the domain's base-model
    features (None when the paper's selection predates keeping its scores)."""
    from ntk_selector.config import ScoreConfig
    from ntk_selector.features.kernels import spearman
    from ntk_selector.io.store import open_store
    from ntk_selector.selection.index import open_pool_index
    from ntk_selector.selection.index_select import score_in_index
    from ntk_selector.selection.report import read_scores

    ours = read_scores(index_run / "scores.csv")
    assert np.array_equal(ours["pool_index"], np.arange(len(ours["pool_index"])))  # one row per pool row, in order
    paper_top, cand = paper["pool_index"], np.asarray(paper["preselected"], dtype=np.int64)
    agree: dict[str, Any] = {
        "top_n_overlap": len(set(paper_top) & set(index_top)) / len(paper_top),
        "recall_in_preselected": float(ours["preselected"][np.asarray(paper_top, dtype=np.int64)].mean()),
        "preselected_overlap": float(ours["preselected"][cand].sum() / len(cand)),
        "spearman_on_paper_candidates": None,
    }
    if paper.get("preselected_scores") is not None:
        paper_scores = np.array([np.nan if x is None else x for x in paper["preselected_scores"]], dtype=np.float64)
        d_feat, d_status, _ = open_store(index_run / "stages" / "index_features_domain")
        index_scores = score_in_index(open_pool_index(index_dir), d_feat, d_status, cand, ScoreConfig())
        ok = np.isfinite(index_scores) & np.isfinite(paper_scores)
        agree["spearman_on_paper_candidates"] = float(spearman(paper_scores[ok], index_scores[ok]))
    return agree


def selection_seconds(sel: dict[str, Any]) -> float:
    """A selection unit's cost over every run that worked on it: the stores' writing time (which
    sums over resumed runs) for the embed and featurize stages, the last run's seconds for the rest."""
    stages, stores = sel.get("stage_seconds", {}), sel.get("store_seconds", {})
    if not stores:
        return float(sum(stages.values()))
    return float(sum(v for k, v in stages.items() if k not in ("embed", "featurize")) + sum(stores.values()))


def index_cost_share(sels: dict[str, dict[str, Any]], name: str) -> str:
    """A new domain's seconds against the index as a share of the paper's mode on that domain."""
    index = sels.get(f"{name}_natural_{INDEX_METHOD}_sel0")
    paper = sels.get(f"{name}_natural_ntk_sel0")
    if index is None or paper is None or not selection_seconds(paper):
        return "no paper-mode selection to compare with"
    a, b = selection_seconds(index), selection_seconds(paper)
    return f"a new domain: {a:.0f} s, {100 * a / b:.1f}% of the paper mode's {b:.0f} s"


def pick_cells(sel: dict[str, Any], method: str, ntk_pick: set[int], top: int) -> tuple[str, str]:
    """Two cells of a "what each method picked" row: the selection's ``top`` pool tasks by count, and
    the share of its rows that ntk's pick (``ntk_pick``) also holds ("–" for ntk itself or no ntk pick)."""
    ranked = sorted(sel["tasks"].items(), key=lambda tc: (-tc[1], tc[0]))[:top]
    tasks = ", ".join(f"{t} {c}" for t, c in ranked)
    rows = sel["pool_index"]
    shared = f"{len(ntk_pick & set(rows)) / len(rows):.2f}" if ntk_pick and method != "ntk" else "–"
    return tasks, shared


def label_key(answer: str) -> str:
    """An answer compared with D's labels: any case, surrounding space and a final period ignored."""
    return answer.strip().rstrip(".!").strip().lower()


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows in order: what a selection's pool indices must point at again on a new machine."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def check_same_rows(sel: dict[str, Any], rows: list[dict[str, Any]], where: str) -> None:
    """Refuse to rewrite a selection's rows from a pool that is not the one it was made from: the indices
    would silently point at other rows. Checks the rows' fingerprint, or, for selections recorded before
    it existed, their task counts."""
    if len(rows) != len(sel["pool_index"]):
        same = False
    elif "selected_sha256" in sel:
        same = rows_fingerprint(rows) == sel["selected_sha256"]
    else:
        same = task_counts(rows) == sel["tasks"]
    if not same:
        raise RuntimeError(
            f"{where}: the pool rows at this selection's indices are not the ones it selected; the pool "
            "file changed since (prepare the data again with the same script and seeds, or delete the "
            "selection's JSON under --results to select again)"
        )


def selection_seed(method: str, seed: int) -> int:
    return 0 if method in DETERMINISTIC + MIX_METHODS else seed


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    s: Settings
    domains: dict[str, Domain]
    results: Path
    cache: Path
    commit_every: int = 0
    only_methods: tuple[
        str, ...
    ] = ()  # run only these methods' cells (empty: all); lets a second worker take a disjoint share
    # only the selections of the planned cells: they need the domain's pool embedding, which lives in
    # the cache of one sitting, while a fine-tune needs only the selection's cached pool indices
    select_only: bool = False
    ranks: int = 1  # torchrun processes (one thread each) for the model work of selections and the index build
    defer_busy: bool = False  # a cell whose unit another worker is computing is put off to the end, not waited for
    finished: int = 0
    _session: Any = None
    _pool_rows: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)

    def unit(
        self, kind: str, key: str, definition: dict[str, Any], compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The cached JSON of this unit when its definition matches; otherwise compute and store it."""
        result, computed = cached_unit(
            self.results / kind / f"{key}.json", definition, compute, f"{kind} {key}", wait=not self.defer_busy
        )
        if not computed:
            return result
        self.finished += 1
        if self.commit_every and self.finished % self.commit_every == 0:
            self.publish(commit=True)
        return result

    def pool_rows(self, path: Path) -> list[dict[str, Any]]:
        if path not in self._pool_rows:
            self._pool_rows[path] = read_jsonl(path)
        return self._pool_rows[path]

    # -- selections --------------------------------------------------------------

    def selection(self, run: Run) -> dict[str, Any]:
        dom = self.domains[run.domain]
        d_file = dom.d_file(run.d_variant)
        n = self.s.n_factor * len(read_jsonl(d_file))
        definition = {
            "kind": "select",
            "domain": str(d_file),
            "pool": str(dom.pool),
            "test": str(dom.test),
            "n": n,
            "method": run.method,
            "sel_seed": run.sel,
            "model": self.s.model,
            "max_length": self.s.max_length,
            "proj_dim": self.s.proj_dim,
            "rank": self.s.rank,
        }
        sel = self.unit("select", run.sel_key, definition, lambda: self._select(run, d_file, n))
        if not Path(sel["selected_file"]).exists():  # results outlive the cache (a new machine has none)
            log(f"select {run.sel_key}: rewriting its selected rows from the cached pool indices")
            pool = self.pool_rows(dom.pool)
            rows = [pool[i] for i in sel["pool_index"] if i < len(pool)]
            check_same_rows(sel, rows, f"{run.sel_key} (pool {dom.pool})")
            write_jsonl(Path(sel["selected_file"]), rows)
        return sel

    def _select(self, run: Run, d_file: Path, n: int) -> dict[str, Any]:
        dom = self.domains[run.domain]
        out = self.cache / "select" / run.sel_key
        if run.method == "preselect-random" and run.sel != 0:
            return self._draw_from_preselection(run, n, out)
        if run.method == INDEX_METHOD:
            index = self.pool_index(dom.pool)
            chosen, info = run_select(
                d_file,
                None,
                out,
                n,
                "ntk",
                index=index["index"],
                decontaminate=str(dom.test),
                overwrite=True,
                model=self.s.model or None,
            )
            paper = self.selection(replace(run, method="ntk"))
            agree = index_agreement(Path(index["index"]), out, chosen, paper)
            agree["minilm_recall_in_preselected"] = self.coarse_recall(
                run, d_file, n, paper["pool_index"], index["index"]
            )
            return {
                **self._describe_selection(run, chosen, out),
                "stage_seconds": info.get("seconds", {}),
                "store_seconds": info.get("store_seconds", {}),
                "agreement_with_ntk": agree,
            }
        work = self.cache / "work" / f"{run.domain}_{run.d_variant}"  # warm-up, embeddings, pre-selection shared
        method, extra = run.method, ({"work_dir": str(work)} if run.method != "random" else {})
        if run.method == CONTENT_METHOD:  # its features get their own store in the shared work folder
            method, extra = "ntk", {**extra, "objective": "ntk-content"}
        elif run.method == COSINE_METHOD:  # ntk's stores in the shared work folder, scored another way
            method, extra = "ntk", {**extra, "cosine": True}
        elif run.method in MIX_METHODS:  # ntk's stores and scores, the top N picked under a label-mix constraint
            target = "keep" if run.method == KEEP_METHOD else str(self.valid_mix_file(run, d_file))
            method, extra = "ntk", {**extra, "answer_mix": target}
        chosen, info = run_select(
            d_file,
            dom.pool,
            out,
            n,
            method,
            ranks=self.ranks,
            model=self.s.model or None,
            proj_dim=self.s.proj_dim,
            rank=self.s.rank,
            seed=run.sel,
            decontaminate=str(dom.test),
            max_length=self.s.max_length,
            token_budget=self.s.token_budget,
            overwrite=True,
            **extra,
        )
        described = {
            **self._describe_selection(run, chosen, out),
            "stage_seconds": info.get("seconds", {}),
            "store_seconds": info.get("store_seconds", {}),
        }
        if run.method in MIX_METHODS:  # the label mix before (plain top N) and after the constraint
            described["answer_mix"] = info.get("answer_mix")
        return described

    def valid_mix_file(self, run: Run, d_file: Path) -> Path:
        """valid's share of each of D's labels (answers normalised as select normalises them; valid rows
        answering otherwise left out), as a ``--answer-mix`` target file: the mix a user expects at test time."""
        from ntk_selector.selection.answer_mix import domain_labels, normalise_answer

        name = run.domain
        d_labels = domain_labels([r["response"] for r in read_jsonl(d_file)])
        if d_labels is None:
            raise ValueError(f"{name}: {d_file} is not a classification domain; no label mix to target")
        valid = [normalise_answer(r["response"]) for r in read_jsonl(self.domains[name].valid)]
        counts_in_valid = {label: valid.count(label) for label in sorted(d_labels)}
        total = sum(counts_in_valid.values())
        if total == 0:
            raise ValueError(f"{name}: no valid row answers with one of D's labels")
        path = self.cache / "answer_mix" / f"{name}_{run.d_variant}_valid.json"  # over the labels of this D
        write_json(path, {label: c / total for label, c in counts_in_valid.items()})
        return path

    def coarse_recall(self, run: Run, d_file: Path, n: int, paper_top: list[int], index_dir: str) -> float:
        """Share of ntk's top N among the M rows that packaged MiniLM embeddings pre-select (the coarse option)."""
        from benchmarks.index_once.index_once import coarse_recall

        dom = self.domains[run.domain]
        return coarse_recall(
            Path(index_dir),
            dom.pool,
            d_file,
            "minilm",
            n,
            set(paper_top),
            self.cache / "coarse" / run.sel_key,
            ["--model", self.s.model] if self.s.model else [],
            ["--max-length", str(self.s.max_length), "--token-budget", str(self.s.token_budget)],
            pool_work=self.cache / "coarse",
        )

    def pool_index(self, pool: Path) -> dict[str, Any]:
        """``ntk-selector index`` of the pool, once for every domain (same features as the selections)."""
        max_length = self.s.index_max_length or self.s.max_length
        out = self.cache / "index" / f"{pool.stem}_len{max_length}"  # one folder per build that maps rows differently
        definition = {
            "kind": "index",
            "pool": str(pool),
            "model": self.s.model,
            "max_length": max_length,
            "proj_dim": self.s.proj_dim,
            "rank": self.s.rank,
            "seed": 0,
        }

        def build() -> dict[str, Any]:
            import time

            import ntk_selector

            start = time.perf_counter()
            settings = dict(
                model=self.s.model or None,
                max_length=max_length,
                token_budget=self.s.token_budget,
                proj_dim=self.s.proj_dim,
                rank=self.s.rank,
                seed=0,
                quiet=True,
            )
            if self.ranks > 1:  # the rows under torchrun; the call below then finds the index built
                run_ranks("index", self.ranks, "--pool", str(pool), "--out", str(out), **settings)
            report = ntk_selector.index(pool, out, **settings)
            return {
                "index": str(out),
                "report": report,
                "seconds": round(time.perf_counter() - start, 1),
                "work_seconds": report["meta"].get("work_seconds"),
            }

        return self.unit("index", pool.stem, definition, build)

    def _draw_from_preselection(self, run: Run, n: int, out: Path) -> dict[str, Any]:
        """preselect-random with another seed: N uniformly from the seed-0 pre-selected M (no model work)."""
        base = self.selection(replace(run, sel=0))
        pre = np.asarray(base["preselected"], dtype=np.int64)
        chosen = np.random.default_rng(run.sel).choice(pre, size=min(n, len(pre)), replace=False).tolist()
        return {**self._describe_selection(run, chosen, out), "stage_seconds": {"draw": 0.0}}

    def _describe_selection(self, run: Run, chosen: list[int], out: Path, with_scores: bool = True) -> dict[str, Any]:
        """The selection as the table needs it: pool rows, their tasks, and the answers among D's labels."""
        dom = self.domains[run.domain]
        pool = self.pool_rows(dom.pool)
        rows = [pool[i] for i in chosen]
        selected = out / "selected_rows.jsonl"  # in selection order: what the final fine-tune reads beside D
        write_jsonl(selected, rows)
        labels = {r["response"].strip() for r in read_jsonl(dom.d_file(run.d_variant))}
        label_keys = {label_key(x) for x in labels}
        result = {
            "pool_index": [int(i) for i in chosen],
            "selected_file": str(selected),
            "selected_sha256": rows_fingerprint(rows),
            "tasks": task_counts(rows),
            "answers_in_d_labels": counts([r["response"].strip() for r in rows if r["response"].strip() in labels]),
            # the pool writes many of D's answers another way ("Yes." for yes, "C." for C)
            "answers_like_d_labels": counts(
                [label_key(r["response"]) for r in rows if label_key(r["response"]) in label_keys]
            ),
        }
        scores_csv = out / "scores.csv"
        if with_scores and scores_csv.exists():  # with_scores=False: a scores.csv over other rows than the pool
            from ntk_selector.selection.report import read_scores

            scores = read_scores(scores_csv)
            result["preselected"] = scores["pool_index"][scores["preselected"]].astype(int).tolist()
            if scores["score_name"] != "no_score":  # kept with the result: the cache does not outlive the sitting
                result["preselected_scores"] = [
                    None if not np.isfinite(x) else float(f"{x:.7g}") for x in scores["score"][scores["preselected"]]
                ]
        return result

    # -- fine-tunes and evaluations ----------------------------------------------------

    def _train_inputs(self, run: Run) -> list[Path]:
        """The fine-tune's files: D, plus the selected rows for a selecting method."""
        files = [self.domains[run.domain].d_file(run.d_variant)]
        if run.method in SELECTION_METHODS:
            files.append(Path(self.selection(run)["selected_file"]))
        return files

    def train(self, run: Run) -> dict[str, Any]:
        files = self._train_inputs(run)
        definition = {
            "kind": "train",
            "files": [str(f) for f in files],
            "model": self.s.model,
            "max_length": self.s.max_length,
            "epochs": self.s.epochs,
            "batch_size": self.s.batch_size,
            "rank": self.s.rank,
            "lr": run.lr,
            "seed": run.ft,
            "loss_mean": run.loss_mean,
        }
        return self.unit("train", run.key, definition, lambda: self._train(run, files))

    def _ensure_adapter(self, run: Run, trained: dict[str, Any]) -> None:
        """The cached train unit's adapter, refitted when the cache lost it (results outlive the cache):
        same files, seed and settings, so the same fine-tune up to float summation order."""
        if Path(trained["adapter"], "adapter_config.json").exists():
            return
        log(f"train {run.key}: adapter missing from the cache, refitting it")
        self._train(run, self._train_inputs(run))

    def _train(self, run: Run, files: list[Path]) -> dict[str, Any]:
        return finetune_summary(
            files,
            self.cache / "adapters" / run.key,
            model=self.s.model,
            max_length=self.s.max_length,
            token_budget=self.s.token_budget,
            rank=self.s.rank,
            seed=run.ft,
            epochs=self.s.epochs,
            lr=run.lr,
            batch_size=self.s.batch_size,
            group_by_length=True,
            loss_mean=run.loss_mean,
        )

    def evaluate(self, run: Run, split: str) -> dict[str, Any]:
        dom = self.domains[run.domain]
        trained = None if run.method == "base" else self.train(run)
        path = dom.test if split == "test" else dom.valid
        definition = {
            "kind": "evaluate",
            "split": split,
            "data": str(path),
            "model": self.s.model,
            "adapter": trained and trained["adapter"],
            "train_finished": trained and trained["finished"],
            "max_length": self.s.eval_max_length,
            "calibrate": True,
        }
        return self.unit("eval", f"{run.key}__{split}", definition, lambda: self._evaluate(trained, path, run, split))

    def _evaluate(self, trained: dict[str, Any] | None, path: Path, run: Run, split: str) -> dict[str, Any]:
        from ntk_selector.analysis.evaluate import run_evaluate
        from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig
        from ntk_selector.model.session import Session

        if trained is not None:
            self._ensure_adapter(run, trained)
        adapter = trained and trained["adapter"]
        model_cfg = ModelConfig(model=self.s.model, adapter=adapter)
        if self._session is None:
            self._session = Session(model_cfg, LoraSettings(), RunConfig(quiet=True))
        out = self.cache / "eval" / f"{run.key}__{split}"
        summary = run_evaluate(
            path,
            out,
            model_cfg,
            DataConfig(max_length=self.s.eval_max_length, token_budget=self.s.token_budget),
            RunConfig(quiet=True),
            calibrate=True,
            session=self._session,
        )
        labels = summary["labels"]
        preds = read_jsonl(out / "predictions.jsonl")
        keep = (
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "gold_nll",
            "n",
            "labels",
            "per_class",
            "confusion",
            "truncated_prompts",
            "seconds",
        )
        cal = summary["calibrated"]
        return {
            **{k: summary[k] for k in keep},
            "calibrated": {k: cal[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "label_prior")},
            # per-row predicted label index (one character each), for paired bootstrap intervals
            "predicted": "".join(str(labels.index(p["prediction"])) for p in preds) if len(labels) <= 10 else None,
            "truth": "".join(str(labels.index(p["response"])) for p in preds) if len(labels) <= 10 else None,
        }

    # -- phases ------------------------------------------------------------------------

    def chosen_lr(self, name: str) -> float:
        """Best domain-only balanced accuracy on valid (ties: lower gold NLL, then the smaller rate)."""
        scored = []
        for lr in self.s.lrs:
            r = self.evaluate(Run(name, "domain", 0, 0, lr), "valid")
            scored.append((-round(r["balanced_accuracy"], 6), r["gold_nll"], lr))
        return min(scored)[2]

    def main_runs(
        self, name: str, seeds: tuple[int, ...], lr: float, methods: tuple[str, ...] = METHODS
    ) -> Iterator[Run]:
        for seed in seeds:
            for m in methods:
                if m == "base" and seed != self.s.seeds[0]:
                    continue
                yield Run(name, m, selection_seed(m, seed), seed, lr)

    def ablation_runs(self, name: str, lr: float) -> Iterator[Run]:
        seed = self.s.seeds[0]
        for variant in ("example-loss", "balanced"):
            if variant == "balanced" and self.domains[name].domain_balanced is None:
                continue
            for m in ABLATION_METHODS:
                yield Run(name, m, selection_seed(m, seed), seed, lr, variant)

    def mix_runs(self, name: str, lr: float) -> Iterator[Run]:
        """Phase answer-mix: on a domain with a balanced D, the two constrained picks and the arms they are
        compared with, natural and balanced D, seed 0."""
        if self.domains[name].domain_balanced is None:
            return
        seed = self.s.seeds[0]
        for variant in ("main", "balanced"):
            for m in MIX_COMPARED + MIX_METHODS:
                yield Run(name, m, selection_seed(m, seed), seed, lr, variant)

    def plan(self, phases: list[str]) -> Iterator[tuple[Run, tuple[str, ...]]]:
        lrs = {name: self.chosen_lr(name) for name in self.domains}  # phase "settings": always first
        for name, lr in lrs.items():
            log(f"{name}: learning rate chosen on valid: {lr:g}")
        for phase in phases:
            if phase == "seed0":  # method-major, so that the key comparison exists on every domain first
                for methods in SEED0_ORDER:
                    for name in self.domains:
                        for run in self.main_runs(name, self.s.seeds[:1], lrs[name], methods):
                            yield run, ("test", "valid")
                continue
            if phase in ("index", "variants"):
                for name in self.domains:
                    for m in (INDEX_METHOD,) if phase == "index" else VARIANT_METHODS:
                        yield Run(name, m, 0, self.s.seeds[0], lrs[name]), ("valid", "test")
                continue
            for name in self.domains:
                if phase == "seeds":
                    runs = self.main_runs(name, self.s.seeds[1:], lrs[name])
                elif phase == "ablations":
                    runs = self.ablation_runs(name, lrs[name])
                elif phase == "answer-mix":
                    runs = self.mix_runs(name, lrs[name])
                else:
                    continue
                for run in runs:
                    yield run, ("test", "valid")

    def run(self, phases: list[str]) -> None:
        """Every cell of the plan in order. Cells another worker is busy with (a unit lock held) are
        put off and done, or waited for, once the rest of the plan is through."""
        deferred: list[tuple[Run, tuple[str, ...]]] = []
        for run, splits in self.plan(phases):
            if self.only_methods and run.method not in self.only_methods:
                continue
            self.defer_busy = True
            try:
                self._cell(run, splits)
            except UnitBusy as busy:
                log(f"{busy}: another worker is computing it; coming back to {run.key} later")
                deferred.append((run, splits))
            finally:
                self.defer_busy = False
        for run, splits in deferred:
            self._cell(run, splits)
        self.publish(commit=bool(self.commit_every))
        log("all requested phases done")

    def _cell(self, run: Run, splits: tuple[str, ...]) -> None:
        """One cell of the plan: only its selection under select_only, else its evaluations."""
        if self.select_only:
            if run.method in SELECTION_METHODS:
                self.selection(run)
            return
        for split in splits:
            self.evaluate(run, split)

    def publish(self, commit: bool) -> None:
        try:
            text = build_table(self.results, self.s)
            (self.results / "table.md").write_text(text)
            plot(self.results, self.s)
        except Exception as e:  # a table bug must never stop the runs
            log(f"table failed: {type(e).__name__}: {e}")
        if commit:
            git_commit([self.results], f"real-domain benchmark: results so far ({count_units(self.results)} units)")


# ----------------------------------------------------------------------------- table


def load(results: Path, kind: str) -> dict[str, dict[str, Any]]:
    folder = results / kind
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def group(
    evals: dict[str, dict[str, Any]],
    domain: str,
    method: str,
    split: str,
    variant: str = "main",
    lr: float | None = None,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """The evaluations of one arm over its seeds (``seed``: only that fine-tune seed's)."""
    out = []
    for key, r in evals.items():
        run_key, _, sp = key.partition("__")
        if sp != split or (seed is not None and method != "base" and f"_ft{seed}_" not in run_key):
            continue
        if method == "base":
            if run_key == f"{domain}_base":
                out.append(r)
            continue
        d_variant = "balanced" if variant == "balanced" else "natural"
        loss = "example" if variant == "example-loss" else "token"
        head = f"{domain}_{d_variant}_domain_ft" if method == "domain" else f"{domain}_{d_variant}_{method}_sel"
        if run_key.startswith(head) and run_key.endswith(f"_lr{lr:g}_{loss}"):
            out.append(r)
    return out


def paired_bootstrap(
    a: list[dict[str, Any]], b: list[dict[str, Any]], reps: int = 2000, seed: int = 0
) -> tuple[float, float, float] | None:
    """Mean accuracy difference a − b over test rows (each row's correctness averaged over seeds) and a
    95% bootstrap interval resampling rows (the same rows for both arms)."""
    if not a or not b or any(r.get("predicted") is None for r in a + b):
        return None
    truth = np.frombuffer(a[0]["truth"].encode(), dtype=np.uint8)

    def per_row(arm: list[dict[str, Any]]) -> np.ndarray:
        return np.mean([np.frombuffer(r["predicted"].encode(), dtype=np.uint8) == truth for r in arm], axis=0)

    diff = per_row(a) - per_row(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(reps, len(diff)))
    boots = diff[idx].mean(1)
    return float(diff.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def chosen_lrs(
    evals: dict[str, dict[str, Any]], domains: list[str], s: Settings
) -> dict[str, tuple[float, dict[float, str]]]:
    out = {}
    for name in domains:
        scored, text = [], {}
        for lr in s.lrs:
            r = evals.get(f"{name}_natural_domain_ft0_lr{lr:g}_token__valid")
            if r is None:
                break
            scored.append((-round(r["balanced_accuracy"], 6), r["gold_nll"], lr))
            text[lr] = f"bal. {100 * r['balanced_accuracy']:.1f}, NLL {r['gold_nll']:.3f}"
        else:
            out[name] = (min(scored)[2], text)
    return out


METRICS = (("accuracy", "acc"), ("balanced_accuracy", "bal. acc"), ("macro_f1", "macro-F1"))


ABLATION_SETTINGS = (
    ("main", "main (token mean, natural D)"),
    ("example-loss", "per-example loss mean"),
    ("balanced", "balanced D"),
)


def ablation_lines(evals: dict[str, dict[str, Any]], name: str, lr: float) -> list[str]:
    """The ablations' seed-0 arms beside the main setting's seed-0 runs, with ntk − random in each setting:
    an ablation reads as the change it makes to that difference."""
    rows, diffs, any_ablation = [], [], False
    for variant, label in ABLATION_SETTINGS:
        arms = {m: group(evals, name, m, "test", variant, lr, seed=0) for m in ABLATION_METHODS}
        for m, rs in arms.items():
            if rs:
                any_ablation |= variant != "main"
                rows.append(
                    f"| {label} | {m} | "
                    + " | ".join(f"{100 * rs[0][k]:.1f}" for k, _ in METRICS)
                    + f" | {rs[0]['gold_nll']:.3f} |"
                )
        bs = paired_bootstrap(arms["ntk"], arms["random"])
        if bs:
            diffs.append(
                f"{label}: ntk − random {100 * bs[0]:+.1f} points accuracy ({100 * bs[1]:+.1f} to {100 * bs[2]:+.1f})"
            )
    if not any_ablation:
        return []
    return [
        f"### {name}: ablations (fine-tune seed 0, beside the main setting's seed 0)",
        "",
        "| setting | method | acc | bal. acc | macro-F1 | gold NLL |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {d}" for d in diffs),
        "",
    ]


def predicted_mix(r: dict[str, Any]) -> str:
    """An evaluation's share of test rows predicted as each label."""
    cols, matrix = r["confusion"]["columns"], np.asarray(r["confusion"]["matrix"])
    return ", ".join(f"{c} {100 * v / r['n']:.0f}%" for c, v in zip(cols, matrix.sum(0), strict=True))


def mix_lines(evals: dict[str, dict[str, Any]], sels: dict[str, dict[str, Any]], name: str, lr: float) -> list[str]:
    """Phase answer-mix: the constrained picks beside ntk, random and domain only, natural and balanced D
    (fine-tune seed 0), with the label mix each selection gave and each model predicted."""
    rows, diffs = [], []
    for variant, label in (("main", "natural D"), ("balanced", "balanced D")):
        d_variant = "balanced" if variant == "balanced" else "natural"
        arms = {m: group(evals, name, m, "test", variant, lr, seed=0) for m in MIX_COMPARED + MIX_METHODS}
        for m, rs in arms.items():
            if not rs:
                continue
            sel = sels.get(f"{name}_{d_variant}_{m}_sel0", {})
            picked = ", ".join(f"{t} {c}" for t, c in sel.get("answers_like_d_labels", {}).items()) or "–"
            rows.append(
                f"| {label} | {m} | "
                + " | ".join(f"{100 * rs[0][k]:.1f}" for k, _ in METRICS)
                + f" | {predicted_mix(rs[0]) if rs[0].get('confusion') else '–'} | {picked} |"
            )
        for first in MIX_METHODS:
            for other in ("ntk", "random"):
                bs = paired_bootstrap(arms[first], arms[other])
                if bs:
                    diffs.append(
                        f"{label}: {first} − {other} {100 * bs[0]:+.1f} points accuracy "
                        f"({100 * bs[1]:+.1f} to {100 * bs[2]:+.1f})"
                    )
    if not any(m in row for row in rows for m in MIX_METHODS):
        return []
    return [
        f"### {name}: selection under a label-mix constraint (select --answer-mix; fine-tune seed 0)",
        "",
        "ntk-mix-keep: D's own label shares; ntk-mix-valid: valid's shares (the mix expected at test time).",
        "",
        "| D | method | acc | bal. acc | macro-F1 | predicted on test | selected rows like D's labels |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {d}" for d in diffs),
        "",
    ]


def build_table(results: Path, s: Settings) -> str:
    evals = load(results, "eval")
    sels = load(results, "select")
    trains = load(results, "train")
    domains = sorted(
        {k.split("_base")[0] for k in evals if k.endswith("_base__test")}
        | {k.split("_natural_")[0] for k in evals if "_natural_" in k}
    )
    lrs = chosen_lrs(evals, domains, s)
    lines = ["# Real domains (generated by benchmarks/quality/real_domains/real_domains.py; do not edit)", ""]
    lines += [
        "## Learning rate chosen on valid (domain only, by balanced accuracy; ties: gold NLL)",
        "",
        "| domain | " + " | ".join(f"lr {lr:g}" for lr in s.lrs) + " | chosen |",
        "|---|" + "---|" * (len(s.lrs) + 1),
    ]
    for name, (lr, text) in lrs.items():
        lines.append(f"| {name} | " + " | ".join(text.get(x, "–") for x in s.lrs) + f" | {lr:g} |")
    lines.append("")
    avg: dict[str, dict[str, list[float]]] = {}
    for name in domains:
        if name not in lrs:
            continue
        lr = lrs[name][0]
        lines += [
            f"## {name}: test (mean ± std over fine-tune seeds; %; NLL in nats)",
            "",
            "| method | seeds | acc | bal. acc | macro-F1 | gold NLL | calibrated acc | calibrated bal. acc | "
            "valid bal. acc |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in TABLE_METHODS:
            rs = group(evals, name, m, "test", lr=lr)
            vs = group(evals, name, m, "valid", lr=lr)
            if not rs:
                continue
            cells = [mean_std([r[k] for r in rs]) for k, _ in METRICS]
            cells.append(mean_std([r["gold_nll"] for r in rs], 1.0, 3))
            cells += [mean_std([r["calibrated"][k] for r in rs]) for k in ("accuracy", "balanced_accuracy")]
            cells.append(mean_std([r["balanced_accuracy"] for r in vs]))
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
            for k, _ in METRICS:
                avg.setdefault(m, {}).setdefault(k, []).append(float(np.mean([r[k] for r in rs])))
            avg[m].setdefault("gold_nll", []).append(float(np.mean([r["gold_nll"] for r in rs])))
        # ntk − preselect-random isolates the NTK score: both draw from the same pre-selected M
        for first, other in (
            ("ntk", "random"),
            ("ntk", "less"),
            ("ntk", "embedding"),
            ("ntk", "preselect-random"),
            ("ntk", "domain"),
            (INDEX_METHOD, "ntk"),
            (CONTENT_METHOD, "ntk"),
            (COSINE_METHOD, "ntk"),
        ):
            bs = paired_bootstrap(group(evals, name, first, "test", lr=lr), group(evals, name, other, "test", lr=lr))
            if bs:
                lines.append(
                    f"\n{first} − {other}: {100 * bs[0]:+.1f} points accuracy (paired bootstrap 95% interval over "
                    f"test rows {100 * bs[1]:+.1f} to {100 * bs[2]:+.1f})"
                )
        lines.append("")
        mixes = []
        for m in TABLE_METHODS:
            rs = group(evals, name, m, "test", lr=lr)
            if rs and rs[0].get("confusion"):
                cols = rs[0]["confusion"]["columns"]
                shares = np.mean([np.asarray(r["confusion"]["matrix"]).sum(0) / r["n"] for r in rs], axis=0)
                mixes.append(
                    f"| {m} | " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in zip(cols, shares, strict=True)) + " |"
                )
        if mixes:
            truth = (
                np.asarray(group(evals, name, "base", "test", lr=lr)[0]["confusion"]["matrix"]).sum(1)
                if group(evals, name, "base", "test", lr=lr)
                else None
            )
            head = f"### {name}: share of test rows predicted as each label (mean over seeds)"
            if truth is not None:
                head += " — test set: " + ", ".join(
                    f"{c} {100 * v / truth.sum():.0f}%" for c, v in zip(cols, truth, strict=True)
                )
            lines += [head, "", "| method | predicted |", "|---|---|", *mixes, ""]
        lines += [
            f"### {name}: what each method picked (selection seed 0)",
            "",
            "| method | top pool tasks | answers like D's labels (any case, final period ignored) | selection s | "
            "shared with ntk |",
            "|---|---|---|---|---|",
        ]
        ntk_pick = set(sels.get(f"{name}_natural_ntk_sel0", {}).get("pool_index", []))
        for m in SELECTION_METHODS:
            r = sels.get(f"{name}_natural_{m}_sel0")
            if r is None:
                continue
            tasks, shared = pick_cells(r, m, ntk_pick, top=4)
            answers = (
                ", ".join(f"{t} {c}" for t, c in r.get("answers_like_d_labels", r["answers_in_d_labels"]).items())
                or "none"
            )
            secs = selection_seconds(r)
            lines.append(f"| {m} | {tasks} | {answers} | {secs:.0f} | {shared} |")
        index = load(results, "index")
        if index and f"{name}_natural_{INDEX_METHOD}_sel0" in sels:
            built = next(iter(index.values()))
            agree = sels[f"{name}_natural_{INDEX_METHOD}_sel0"].get("agreement_with_ntk", {})
            rows, computed = built["report"]["meta"]["rows"], built["report"]["computed"]
            cost = f"{built['seconds']:.0f} s"
            if built.get("work_seconds"):  # the build over every run that worked on it
                cost = f"{built['work_seconds']:.0f} s"
            elif 0 < computed < rows:  # resumed, before builds recorded their time: the last run's share
                cost += (
                    f" for the last {computed} of its {rows} rows (about {built['seconds'] * rows / computed:.0f} s "
                    "for all at that rate)"
                )
            lines.append(
                f"\n{INDEX_METHOD}: the pool's index was built once in {cost} for every domain "
                f"(not in its selection seconds; {index_cost_share(sels, name)}). Against ntk's pick: "
                + ", ".join(
                    f"{k.replace('_', ' ')} " + ("not kept" if v is None else f"{v:.3f}") for k, v in agree.items()
                )
                + "."
            )
        lines.append("")
        lines += ablation_lines(evals, name, lr)
        lines += mix_lines(evals, sels, name, lr)
    complete = [
        m
        for m in TABLE_METHODS
        if m in avg and all(len(v) == len([d for d in domains if d in lrs]) for v in avg[m].values())
    ]
    if complete and len(lrs) > 1:
        lines += [
            "## Average over the domains (test, %)",
            "",
            "| method | acc | bal. acc | macro-F1 | gold NLL |",
            "|---|---|---|---|---|",
        ]
        for m in complete:
            lines.append(
                f"| {m} | "
                + " | ".join(f"{100 * np.mean(avg[m][k]):.1f}" for k, _ in METRICS)
                + f" | {np.mean(avg[m]['gold_nll']):.3f} |"
            )
        lines.append("")
    ft_seconds = [t["seconds"] for t in trains.values()]
    if ft_seconds:
        lines.append(f"Fine-tunes so far: {len(ft_seconds)}, {sum(ft_seconds) / 3600:.1f} h in all.")
    return "\n".join(lines) + "\n"


def plot(results: Path, s: Settings) -> None:
    """Test balanced accuracy per method and domain (mean and std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = load(results, "eval")
    domains = sorted({k.split("_base")[0] for k in evals if k.endswith("_base__test")})
    lrs = chosen_lrs(evals, domains, s)
    if not lrs:
        return
    fig, axes = plt.subplots(1, len(lrs), figsize=(4 * len(lrs), 3.5), squeeze=False)
    for ax, (name, (lr, _)) in zip(axes[0], lrs.items(), strict=True):
        arms = [
            (m, [100 * r["balanced_accuracy"] for r in group(evals, name, m, "test", lr=lr)]) for m in TABLE_METHODS
        ]
        arms = [(m, v) for m, v in arms if v]
        ax.bar(
            range(len(arms)),
            [np.mean(v) for _, v in arms],
            yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for _, v in arms],
            color="#4878a8",
        )
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([m for m, _ in arms], rotation=45, ha="right")
        ax.set_title(name)
        ax.set_ylabel("test balanced accuracy %")
    fig.tight_layout()
    fig.savefig(results / "balanced_accuracy.png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- estimate


def row_token_counter(model: str | None, max_length: int) -> Callable[[Path], np.ndarray]:
    """A function giving the token count of every row of a records file (cached per file), as the
    stages tokenize them: for the cost estimates."""
    from ntk_selector.config import DataConfig, ModelConfig
    from ntk_selector.io.formats import to_conversation
    from ntk_selector.io.tokens import encode
    from ntk_selector.model.loading import load_tokenizer, model_path

    tok = load_tokenizer(model_path(ModelConfig(model=model), quiet=True))
    cfg = DataConfig(max_length=max_length)
    cache: dict[Path, np.ndarray] = {}

    def tokens(path: Path) -> np.ndarray:
        if path not in cache:
            rows = [to_conversation(r, cfg) for r in read_jsonl(path)]
            cache[path] = np.array([e.length for e in encode(rows, tok, cfg)])
        return cache[path]

    return tokens


def estimate(bench: Bench, rate_train: float, rate_fwd: float, phases: list[str]) -> dict[str, float]:
    """Predicted hours per phase from token counts and measured tokens/s (forward+backward, forward)."""
    tokens = row_token_counter(bench.s.model, bench.s.max_length)
    hours: dict[str, float] = {}
    for dom in bench.domains.values():
        pool = tokens(dom.pool)
        d = tokens(dom.domain)
        n = bench.s.n_factor * len(d)
        mean_sel = pool.mean()

        def ft(rows_tokens):
            return bench.s.epochs * rows_tokens / rate_train

        test_fwd = tokens(dom.test).sum() / rate_fwd  # the prompt once plus every label's few tokens
        valid_fwd = tokens(dom.valid).sum() / rate_fwd
        sel = pool.sum() / rate_fwd + 2 * 4 * n * mean_sel / rate_train  # pool embedding, ntk + less candidates
        settings = len(bench.s.lrs) * (ft(d.sum()) + valid_fwd)
        arm = ft(d.sum() + n * mean_sel) + test_fwd + valid_fwd
        domain_arm = ft(d.sum()) + test_fwd + valid_fwd
        hours["settings"] = hours.get("settings", 0) + settings / 3600
        hours["seed0"] = hours.get("seed0", 0) + (sel + 5 * arm + domain_arm + test_fwd) / 3600
        hours["seeds"] = hours.get("seeds", 0) + 2 * (5 * arm + domain_arm) / 3600
        hours["ablations"] = hours.get("ablations", 0) + (sel + 2 * (2 * arm + domain_arm)) / 3600
        # a variant: one arm each; ntk-content also its features of D and the M = 4N pre-selected
        # candidates (ntk-cosine scores ntk's stored features)
        hours["variants"] = (
            hours.get("variants", 0) + (4 * n * mean_sel / rate_train + len(VARIANT_METHODS) * arm) / 3600
        )
        # answer-mix (a domain with a balanced D): two constrained arms on each D, and on the balanced D
        # its ntk selection and the compared arms (the ablations phase's units when it ran)
        if dom.domain_balanced is not None:
            hours["answer-mix"] = hours.get("answer-mix", 0) + (4 * arm + sel + 2 * arm + domain_arm) / 3600
        # the index: every pool row forward+backward once (shared by the domains); per domain one arm
        hours["index"] = (
            hours.get("index", 0) + (0 if "index" in hours else pool.sum() / rate_train / 3600) + arm / 3600
        )
    hours = {k: v for k, v in hours.items() if k in ["settings", *phases]}
    hours["total"] = sum(hours.values())
    return hours


# ----------------------------------------------------------------------------- main


def domains_from_args(args: argparse.Namespace) -> dict[str, Domain]:
    if args.data:
        data = Path(args.data)
        pool = data / "pool.jsonl"
        out = {}
        for folder in sorted(p for p in data.iterdir() if p.is_dir() and (p / "domain.jsonl").exists()):
            if args.domains and folder.name not in args.domains:
                continue
            bal = folder / "domain_balanced.jsonl"
            out[folder.name] = Domain(
                folder.name,
                folder / "domain.jsonl",
                folder / "valid.jsonl",
                folder / "test.jsonl",
                pool,
                bal if bal.exists() else None,
            )
        if args.domains:
            out = {n: out[n] for n in args.domains if n in out}
        return out
    needed = (args.name, args.domain_train, args.domain_valid, args.domain_test, args.pool)
    if not all(needed):
        raise SystemExit("give --data DIR, or --name, --domain-train, --domain-valid, --domain-test and --pool")
    return {
        args.name: Domain(
            args.name,
            Path(args.domain_train),
            Path(args.domain_valid),
            Path(args.domain_test),
            Path(args.pool),
            Path(args.domain_balanced) if args.domain_balanced else None,
        )
    }


def add_settings_arguments(ap: argparse.ArgumentParser, d: Settings) -> None:
    """The flags of the settings this benchmark and the generative one share, defaulting to ``d``."""
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    ap.add_argument("--lrs", type=float, nargs="+", default=list(d.lrs))
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--proj-dim", type=int, default=d.proj_dim)
    ap.add_argument("--rank", type=int, default=d.rank)
    ap.add_argument("--n-factor", type=int, default=d.n_factor)


def settings_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Settings`` fields that ``add_settings_arguments``'s flags set."""
    return {
        "model": args.model,
        "seeds": tuple(args.seeds),
        "lrs": tuple(args.lrs),
        "epochs": args.epochs,
        "max_length": args.max_length,
        "proj_dim": args.proj_dim,
        "rank": args.rank,
        "n_factor": args.n_factor,
    }


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder of domain folders and pool.jsonl (prepare_real_domains.py)")
    ap.add_argument("--domains", nargs="*", default=None, help="only these domains of --data, in this order")
    ap.add_argument("--name", help="one domain of your own: its name ...")
    ap.add_argument("--domain-train", help="... D (records with prompt/response) ...")
    ap.add_argument("--domain-valid", help="... rows for choosing settings ...")
    ap.add_argument("--domain-test", help="... the test set ...")
    ap.add_argument("--domain-balanced", help="... optionally D balanced over the labels (ablation) ...")
    ap.add_argument("--pool", help="... and the pool")
    add_settings_arguments(ap, d)
    ap.add_argument("--results", default=str(RESULTS / "quality" / "real_domains"))
    ap.add_argument("--cache", default=str(CACHE / "real_domains"))
    ap.add_argument(
        "--phases",
        nargs="+",
        default=list(PHASES),
        choices=PHASES,
    )
    ap.add_argument("--commit-every", type=int, default=0, help="git-commit the results every K units (0: never)")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[],
        choices=TABLE_METHODS,
        help="run only these methods' cells (default: all); two workers with disjoint methods can share "
        "--results and --cache",
    )
    ap.add_argument(
        "--select-only",
        action="store_true",
        help="compute only the selections of the planned cells, no fine-tunes: a selection needs its "
        "domain's pool embedding from the cache, a fine-tune only the selection's cached indices",
    )
    ap.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="torchrun processes of one thread each for the model work of selections and the index build "
        "(on a 2-core CPU, 2 ranks beat one 2-thread process); fine-tunes stay in this process",
    )
    ap.add_argument(
        "--index-max-length",
        type=int,
        default=None,
        help="max length of the pool index (default: --max-length); 384 shares the generative benchmark's "
        "index of the same pool when --cache is shared (the P3 pool's rows fit 256 tokens, so they map the same)",
    )
    ap.add_argument("--only-table", action="store_true")
    ap.add_argument("--estimate", action="store_true", help="print the predicted hours per phase and stop")
    ap.add_argument(
        "--rate-train",
        type=float,
        default=180.0,
        help="tokens/s of a LoRA forward+backward (estimate; the default is a 2-core CPU with 2 threads, "
        "about 112 with one thread)",
    )
    ap.add_argument(
        "--rate-forward",
        type=float,
        default=575.0,
        help="tokens/s of a forward pass (estimate; 2-core CPU, 2 threads; about 275 with one thread)",
    )
    args = ap.parse_args(argv)
    s = Settings(**settings_from_arguments(args), index_max_length=args.index_max_length)
    results, cache = Path(args.results), Path(args.cache)
    if args.only_table:
        results.mkdir(parents=True, exist_ok=True)
        (results / "table.md").write_text(build_table(results, s))
        plot(results, s)
        print((results / "table.md").read_text())
        return 0
    bench = Bench(
        s,
        domains_from_args(args),
        results,
        cache,
        args.commit_every,
        tuple(args.methods),
        select_only=args.select_only,
        ranks=args.ranks,
    )
    exit_cleanly_on_sigterm()
    hours = estimate(bench, args.rate_train, args.rate_forward, args.phases)
    log("estimate (hours on this machine's measured rates): " + ", ".join(f"{k} {v:.1f}" for k, v in hours.items()))
    if args.estimate:
        return 0
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "settings.json", asdict(s))
    bench.run(args.phases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
