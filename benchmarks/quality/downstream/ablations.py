"""NTK-Selector variants for the downstream benchmark: the choices the paper leaves open, one at a time.

Each variant changes one thing against the method of the main table (mean inner product of the
response-mean summed-logit gradients, M = 4N pre-selected, 1 warm-up epoch at lr 1e-4) and goes
through the same fine-tune (seed 0) and evaluation. Settings are judged on ``domain_valid``; the
test accuracy is reported next to it and chooses nothing.

- ``cosine``: mean cosine instead of mean inner product (``select --cosine``).
- ``sum-tokens``: no length normalisation, f(x) = Σ_{t∈R} Σ_k z (not the mean over R); since the
  gradient is linear, each stored feature of the main run times its |R| is exactly that feature.
- ``task-cap``: the main run's ranking with at most N/2 rows from any one pool task.
- ``all-positions``: the objective over every position that predicts a real token, prompt included
  (``select --objective ntk-all``), instead of the response positions only.
- ``m-2n`` / ``m-all``: M = 2N, and M = |C| (no pre-selection) (``select --m``).
- ``warmup-none``: kernel of the untrained LoRA (``--lr 0``; embeddings then come from the base model).
- ``warmup-3ep``: 3 warm-up epochs instead of 1 (``--epochs 3``).

Not a variant of the method but of the benchmark: the main table's D is balanced over the three
labels while domain_valid and test are mostly positive, so ``natural-prior`` reruns base, domain
only, random and ntk with a D drawn uniformly from the train split (its own domain_valid too), with
every seed of the main table.

Variants that change the warm-up run in their own work folder; the others share the main run's
warm-up, embeddings and features through ``select --work-dir``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "ntk+"  # method name of a variant: ntk+<variant>
FT_SEED = re.compile(r"_ft\d+_")  # a fine-tuned run's seed in its key; variants run seed 0 only


@dataclass(frozen=True)
class Variant:
    name: str  # no underscores: run keys are split on them
    what: str  # one line for the table
    settings: Mapping[str, Any] = field(default_factory=dict)  # extra `select` settings; "{m2n}", "{pool}" filled in
    own_work_dir: bool = False  # the warm-up changes, so nothing downstream of it can be shared
    rescore: str | None = None  # computed from the main ntk run's outputs instead of a `select` run


VARIANTS: tuple[Variant, ...] = (
    Variant("cosine", "mean cosine instead of mean inner product", settings={"cosine": True}),
    Variant("sum-tokens", "summed (not mean) logits over response positions", rescore="sum-tokens"),
    Variant("task-cap", "at most N/2 rows from one pool task", rescore="task-cap"),
    Variant(
        "all-positions",
        "summed logits over every position, prompt too (not only the response)",
        settings={"objective": "ntk-all"},
    ),
    Variant("m-2n", "M = 2N pre-selected", settings={"m": "{m2n}"}),
    Variant("warmup-none", "no warm-up (lr 0: the untrained LoRA's kernel)", settings={"lr": 0.0}, own_work_dir=True),
    Variant("warmup-3ep", "3 warm-up epochs instead of 1", settings={"epochs": 3.0}, own_work_dir=True),
    Variant("m-all", "M = the whole pool: no pre-selection", settings={"m": "{pool}"}),
)
BY_NAME = {v.name: v for v in VARIANTS}
# base, domain only, random and ntk again (every seed) with D drawn with the train split's label mix
NATURAL = "natural-prior"
NATURAL_METHODS = ("base", "domain", "random", "ntk")
# run order: the variants that reuse the main run's features first, then the D with the natural label
# mix (the main D is balanced, valid and test are 65-72% positive), then the ones that featurize again
PLAN = ("cosine", "sum-tokens", "task-cap", NATURAL, "all-positions", "m-2n", "warmup-none", "warmup-3ep", "m-all")
assert set(PLAN) == set(BY_NAME) | {NATURAL}


def variant_of(method: str) -> Variant:
    if not method.startswith(PREFIX) or method[len(PREFIX) :] not in BY_NAME:
        raise ValueError(f"not an ntk variant: {method}")
    return BY_NAME[method[len(PREFIX) :]]


def select_variant(bench: Any, d: int, n: int, method: str, out: Path) -> dict[str, Any]:
    """Run or compute one variant's selection of N pool rows; the same summary as a `select` unit."""
    v = variant_of(method)
    if v.rescore:
        base = bench.selection(d, n, "ntk", 0)
        chosen = {"sum-tokens": _sum_tokens, "task-cap": _task_cap}[v.rescore](
            bench, d, n, Path(base["selected_file"]).parent
        )
        return {**bench.write_selection(d, chosen, out), "stage_seconds": {"rescore": 0.0}}
    work = bench.cache / "work" / (f"d{d}_{method}" if v.own_work_dir else f"d{d}")
    fill = {"{m2n}": 2 * n, "{pool}": bench.s.pool_size}
    settings = {k: fill.get(value, value) if isinstance(value, str) else value for k, value in v.settings.items()}
    return bench.run_select(d, n, "ntk", out, {"seed": 0, "work_dir": str(work), **settings})


def _main_scores(folder: Path) -> np.ndarray:
    """The ntk score of every pool row in the main run's scores.csv (NaN where not scored)."""
    from ntk_selector.selection.report import read_scores

    return read_scores(folder / "scores.csv")["score"]


def _task_cap(bench: Any, d: int, n: int, folder: Path) -> np.ndarray:
    """The main run's ranking, skipping rows of a task that already has N/2."""
    from ntk_selector.io.records import read_records
    from ntk_selector.selection.score import top_n

    score = _main_scores(folder)
    pool = read_records(bench.data(d)["pool"])
    cap, taken, chosen = max(1, n // 2), {}, []
    for i in top_n(score, int(np.isfinite(score).sum())):
        task = str(pool[int(i)].get("task"))
        if taken.get(task, 0) < cap:
            taken[task] = taken.get(task, 0) + 1
            chosen.append(int(i))
            if len(chosen) == n:
                break
    return np.array(chosen, dtype=np.int64)


def _sum_tokens(bench: Any, d: int, n: int, folder: Path) -> np.ndarray:
    """Rescore the main run's stored features with every row scaled by its number of response positions."""
    from ntk_selector.config import DataConfig, ModelConfig
    from ntk_selector.io.formats import to_conversation
    from ntk_selector.io.records import read_records
    from ntk_selector.io.store import DONE, open_store
    from ntk_selector.io.tokens import encode
    from ntk_selector.model.loading import load_tokenizer, model_path
    from ntk_selector.selection.score import domain_direction, score_rows, top_n
    from ntk_selector.selection.stages import load_preselect

    work = bench.cache / "work" / f"d{d}"
    order = load_preselect(work / "preselect.npz").order
    stores = sorted(work.glob("features_pool_*"))
    pool_store = next((p for p in stores if open_store(p)[0].shape[0] == len(order)), None)
    if pool_store is None:
        raise RuntimeError(f"no pool feature store in {work} matches its pre-selection of {len(order)} rows")
    p_feat, p_status, _ = open_store(pool_store)
    d_feat, d_status, _ = open_store(work / "features_domain")
    main_scores = _main_scores(folder)
    check = score_rows(p_feat, p_status, domain_direction(d_feat, d_status, False), False)
    ok = p_status == DONE
    if not np.allclose(check[ok], main_scores[order][ok], rtol=1e-6, atol=0):
        raise RuntimeError(f"{pool_store} does not reproduce the main run's scores: its pre-selection changed")

    cfg = DataConfig(max_length=bench.s.max_length)
    tok = load_tokenizer(model_path(ModelConfig(model=bench.s.model), quiet=True))

    def response_tokens(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
        records = read_records(path)
        if rows is not None:
            records = [records[int(i)] for i in rows]
        return np.array(
            [e.n_response_tokens for e in encode([to_conversation(r, cfg) for r in records], tok, cfg)],
            dtype=np.float64,
        )

    d_len = response_tokens(bench.data(d)["domain"])
    p_len = response_tokens(bench.data(d)["pool"], order)
    direction = domain_direction(np.asarray(d_feat, dtype=np.float64) * d_len[:, None], d_status, False)
    scores = score_rows(np.asarray(p_feat, dtype=np.float64) * p_len[:, None], p_status, direction, False)
    return order[top_n(scores, n)]


def overlap(a: list[int], b: list[int]) -> int:
    return len(set(a) & set(b))


def ablation_table(
    results: Path,
    d: int,
    n: int,
    key_of: Callable[..., str],
    selection_of: Callable[..., str],
    metric_groups: dict[str, dict],
    mean_std: Callable[[list[float]], str],
) -> list[str]:
    """Markdown rows: each variant's picks, overlap with the main ntk selection, valid and test scores.

    ``key_of(method, prior="balanced")`` is the main table's run key of a method (seeds stripped),
    ``selection_of(method, prior="balanced")`` the name of its seed-0 selection;
    ``mean_std`` formats a list of seeds' scores (the main table's formatter)."""
    sel_dir = results / "select"
    main = sel_dir / f"{selection_of('ntk')}.json"
    if not main.exists():
        return []
    main_idx = json.loads(main.read_text())["pool_index"]
    acc, bal = metric_groups["accuracy"], metric_groups["balanced_accuracy"]

    def cell(group: str, groups: dict, split: str) -> str:
        vals = [a for key, a in groups.get((group, split), []) if FT_SEED.search(key) is None or "_ft0_" in key]
        return f"{100 * np.mean(vals):.1f}" if vals else "–"

    def cells(group: str) -> str:
        return " | ".join(cell(group, g, split) for split in ("valid", "test") for g in (acc, bal))

    ntk_tests = sorted(a for key, a in acc.get((key_of("ntk"), "test"), []))
    spread = (
        f" The main table's ntk gave {', '.join(f'{100 * a:.1f}' for a in ntk_tests)}% test accuracy over its "
        "fine-tune seeds on the same rows: a one-seed difference smaller than that spread is noise."
        if len(ntk_tests) > 1
        else ""
    )
    lines = [
        "NTK-Selector variants (`benchmarks/quality/downstream/ablations.py`; one change each against the main "
        "table's ntk; fine-tune seed 0, ntk's row too; chosen on domain_valid, test shown but not used to "
        f"choose).{spread}",
        "",
        "| variant | change | top pool tasks picked | same rows as ntk | valid acc % | valid bal. acc % | "
        "test acc % | test bal. acc % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        (
            "ntk",
            "the paper's method (main table's selection)",
            main_idx,
            json.loads(main.read_text())["selected_per_task"],
        )
    ]
    for v in VARIANTS:
        path = sel_dir / f"{selection_of(PREFIX + v.name)}.json"
        if path.exists():
            u = json.loads(path.read_text())
            rows.append((PREFIX + v.name, v.what, u["pool_index"], u["selected_per_task"]))
        else:
            rows.append((PREFIX + v.name, v.what, None, None))
    for method, what, idx, per_task in rows:
        same = f"{overlap(idx, main_idx)}/{n}" if idx is not None else "–"
        scores = cells(key_of(method))
        if method != "ntk" and idx is not None and set(idx) == set(main_idx):
            scores = " | ".join(["= ntk"] * 4)  # not fine-tuned again: the same rows
        lines.append(f"| {method} | {what} | {_top_tasks(per_task)} | {same} | {scores} |")
    lines += [
        "",
        f"D drawn with the train split's label mix instead of balanced (`{NATURAL}`; its own domain_valid; "
        "the main table's seeds: mean ± std over the fine-tune seeds, random drawn with each seed, ntk selecting "
        "once):",
        "",
        "| method | top pool tasks picked | seeds | valid acc % | valid bal. acc % | test acc % | test bal. acc % |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in NATURAL_METHODS:
        key = key_of(m, "natural")
        sel = sel_dir / f"{selection_of(m, 'natural')}.json"
        picks = (
            _top_tasks(json.loads(sel.read_text())["selected_per_task"])
            if sel.exists()
            else ("–" if m in ("base", "domain") else "pending")
        )
        seeds = len(acc.get((key, "test"), []))
        lines.append(
            f"| {m} | {picks} | {seeds} | "
            + " | ".join(
                mean_std([a for _, a in g.get((key, split), [])]) for split in ("valid", "test") for g in (acc, bal)
            )
            + " |"
        )
    return lines + [""]


def _top_tasks(per_task: dict[str, int] | None) -> str:
    top = sorted(per_task.items(), key=lambda kv: (-kv[1], kv[0]))[:3] if per_task else []
    return ", ".join(f"{t} {c}" for t, c in top) if top else "pending"
