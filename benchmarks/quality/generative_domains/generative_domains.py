"""Generative-domain benchmark: does the selection help when the answers are free text?

The real-domain benchmark (``benchmarks/quality/real_domains/real_domains.py``) on domains whose
answers are sentences, not labels: ``pubmedqa_long`` (a biomedical question and abstract -> the
study's conclusion) and ``samsum`` (a chat conversation -> its summary), as
``benchmarks/quality/real_domains/prepare_real_domains.py`` writes them under ``DATA/generative/``,
with the shared P3 pool ``DATA/pool.jsonl``.

Arms: domain only, random, embedding, preselect-random, LESS, ntk; N = n_factor·|D|; 3 epochs on
D ∪ S. The learning rate is chosen on ``valid`` by domain-only NLL per response token, before any
test number, the same for every arm of a domain. **Primary metric, fixed in advance: test NLL per
response token** (pooled over the test set's response tokens); also ROUGE-L, chrF and exact match of
greedy answers (``evaluate --generate``). Seeds 0-2 for domain, random, LESS and ntk (seed 0 for the
rest); a paired bootstrap 95% interval over test rows for ntk − each other arm.

Phases (``PHASES`` is the default order): ``seed0`` (domain; ntk, random; embedding, preselect-random, LESS),
``seeds`` (1-2), ``ncurve`` (ntk and random at N = |D| and 20·|D| on the first domain; 5·|D| is the
main setting), ``index`` (ntk against an index of the pool built once, seed 0), ``variants`` (beside the
paper's method, seed 0: ``ntk-cosine``, ntk's stored features scored by the mean cosine; ``random-longest``, N
drawn at random from the 2N pool rows with the longest answers, a check of the pool). Every unit is cached
under ``--results`` (committed) and ``--cache`` (ignored), as in ``real_domains.py``; a rerun resumes.

    python -m benchmarks.quality.real_domains.prepare_real_domains --out DATA
    python -m benchmarks.quality.generative_domains.generative_domains --data DATA --estimate
    OMP_NUM_THREADS=1 python -m benchmarks.quality.generative_domains.generative_domains --data DATA --commit-every 1 &
    OMP_NUM_THREADS=1 python -m benchmarks.quality.generative_domains.generative_domains --data DATA --commit-every 1 \\
        --domains samsum pubmedqa_long &
    python -m benchmarks.quality.generative_domains.generative_domains --data DATA --only-table
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE, RESULTS
from benchmarks.common import (
    count_units,
    exit_cleanly_on_sigterm,
    git_commit,
    log,
    read_jsonl,
    run_select,
    write_json,
    write_jsonl,
)
from benchmarks.quality.real_domains.real_domains import (
    COSINE_METHOD,
    INDEX_METHOD,
    SELECTION_METHODS,
    Bench,
    Domain,
    Run,
    Settings,
    add_settings_arguments,
    index_cost_share,
    load,
    pick_cells,
    row_token_counter,
    selection_seconds,
    selection_seed,
    settings_from_arguments,
)

METHODS = ("domain", "random", "embedding", "preselect-random", "less", "ntk")
SEEDED_METHODS = ("domain", "random", "less", "ntk")  # seeds 1-2 for these
SEED0_ORDER = (("domain",), ("ntk", "random"), ("embedding", "preselect-random", "less"))
NCURVE_FACTORS = (1, 20)  # with the main setting's 5: N = |D|, 5·|D|, 20·|D|
NCURVE_METHODS = ("ntk", "random")
# beside the paper's method, never in its place: ntk's features scored by the mean cosine with D, which
# ranked closer to the exact eNTK than the mean inner product on long answers (kernel_length.py)
# and a question about the pool rather than the selection: N rows drawn at random from the 2N pool rows
# with the longest answers (in words). Pool answers are mostly far shorter than a generative D's; if length
# drives the harm of auxiliary rows, this arm shows it without any model work.
LONGEST_METHOD = "random-longest"
VARIANT_METHODS = (COSINE_METHOD, LONGEST_METHOD)
BESIDE_METHODS = (INDEX_METHOD,) + VARIANT_METHODS  # the table's rows below the paper's arms
PHASES = ("seed0", "variants", "seeds", "ncurve", "index")


@dataclass
class GenSettings(Settings):
    """The real-domain settings with longer rows and the free-text evaluation."""

    max_length: int = 384
    eval_max_length: int = 384
    max_new_tokens: int = 160  # greedy answers on the test split; the longest gold answers are about this long
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class GenRun(Run):
    """A cell; ``n_factor`` other than the main setting's is a point of the N curve."""

    n_factor: int = 0  # 0: the main setting

    @property
    def sel_key(self) -> str:
        tail = f"_n{self.n_factor}" if self.n_factor else ""
        return f"{self.domain}_{self.d_variant}_{self.method}_sel{self.sel}{tail}"


class GenBench(Bench):
    def _train_inputs(self, run: Run) -> list[Path]:
        files = super()._train_inputs(run)
        if run.method == LONGEST_METHOD:  # not one of the real-domain benchmark's selecting arms
            files.append(Path(self.selection(run)["selected_file"]))
        return files

    def _select(self, run: Run, d_file: Path, n: int) -> dict[str, Any]:
        if run.method != LONGEST_METHOD:
            return super()._select(run, d_file, n)
        dom = self.domains[run.domain]
        pool = self.pool_rows(dom.pool)
        words = np.array([len(r["response"].split()) for r in pool])
        longest = np.argsort(-words, kind="stable")[: 2 * n]  # equal lengths: the earlier row first
        subset = self.cache / "pools" / f"{run.sel_key}_longest.jsonl"
        write_jsonl(subset, [pool[i] for i in longest])
        out = self.cache / "select" / run.sel_key
        chosen, info = run_select(
            d_file,
            subset,
            out,
            n,
            "random",
            model=self.s.model or None,
            seed=run.sel,
            decontaminate=str(dom.test),
            max_length=self.s.max_length,
            overwrite=True,
        )
        in_pool = [int(longest[i]) for i in chosen]
        return {
            **self._describe_selection(run, in_pool, out, with_scores=False),
            "stage_seconds": info.get("seconds", {}),
            "drawn_from": {"rows": int(len(longest)), "min_answer_words": int(words[longest].min())},
        }

    def selection(self, run: Run) -> dict[str, Any]:
        factor = getattr(run, "n_factor", 0)
        if not factor:
            return super().selection(run)
        saved = self.s
        self.s = replace(saved, n_factor=factor)  # the N of this point of the curve
        try:
            return super().selection(run)
        finally:
            self.s = saved

    def evaluate(self, run: Run, split: str) -> dict[str, Any]:
        dom = self.domains[run.domain]
        trained = self.train(run)
        path = dom.test if split == "test" else dom.valid
        generate = split == "test"
        definition = {
            "kind": "evaluate",
            "task": "generation",
            "split": split,
            "data": str(path),
            "model": self.s.model,
            "adapter": trained["adapter"],
            "train_finished": trained["finished"],
            "max_length": self.s.eval_max_length,
            "generate": generate,
            "max_new_tokens": self.s.max_new_tokens if generate else None,
        }
        return self.unit(
            "eval", f"{run.key}__{split}", definition, lambda: self._evaluate_text(trained, path, run, split, generate)
        )

    def _evaluate_text(
        self, trained: dict[str, Any], path: Path, run: Run, split: str, generate: bool
    ) -> dict[str, Any]:
        from ntk_selector.analysis.evaluate import run_evaluate
        from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig
        from ntk_selector.model.session import Session

        self._ensure_adapter(run, trained)
        model_cfg = ModelConfig(model=self.s.model, adapter=trained["adapter"])
        if self._session is None:
            self._session = Session(model_cfg, LoraSettings(), RunConfig(quiet=True))
        out = self.cache / "eval" / f"{run.key}__{split}"
        summary = run_evaluate(
            path,
            out,
            model_cfg,
            DataConfig(max_length=self.s.eval_max_length, token_budget=self.s.token_budget),
            RunConfig(quiet=True, overwrite=True),
            task="generation",
            generate=generate,
            max_new_tokens=self.s.max_new_tokens if generate else None,
            session=self._session,
        )
        preds = read_jsonl(out / "predictions.jsonl")
        keep = (
            "task",
            "n",
            "nll_per_token",
            "perplexity",
            "mean_row_nll_per_token",
            "response_tokens",
            "truncated_prompts",
            "cut_responses",
            "seconds",
            "rouge_l",
            "chrf",
            "chrf_sentence_mean",
            "exact_match",
            "max_new_tokens",
        )
        result = {k: summary[k] for k in keep if k in summary}
        # per row, for paired bootstrap intervals over test rows
        result["row_nll"] = [round(p["nll"], 5) for p in preds]
        result["row_tokens"] = [p["response_tokens"] for p in preds]
        if generate:
            result["row_rouge_l"] = [round(p["rouge_l"], 5) for p in preds]
            result["row_chrf"] = [round(p["chrf"], 4) for p in preds]
            result["examples"] = [{"response": p["response"], "prediction": p["prediction"]} for p in preds[:3]]
            result.update(answer_lengths(preds))
        return result

    def chosen_lr(self, name: str) -> float:
        """Lowest domain-only NLL per response token on valid (ties: the smaller rate)."""
        scored = [
            (round(self.evaluate(Run(name, "domain", 0, 0, lr), "valid")["nll_per_token"], 6), lr) for lr in self.s.lrs
        ]
        return min(scored)[1]

    def main_runs(
        self, name: str, seeds: tuple[int, ...], lr: float, methods: tuple[str, ...] = METHODS
    ) -> Iterator[Run]:
        for seed in seeds:
            for m in methods:
                if seed != self.s.seeds[0] and m not in SEEDED_METHODS:
                    continue
                yield Run(name, m, selection_seed(m, seed), seed, lr)

    def plan(self, phases: list[str]) -> Iterator[tuple[Run, tuple[str, ...]]]:
        lrs = {name: self.chosen_lr(name) for name in self.domains}
        for name, lr in lrs.items():
            log(f"{name}: learning rate chosen on valid (domain-only NLL per token): {lr:g}")
        first = next(iter(self.domains))
        for phase in phases:
            if phase == "seed0":
                for methods in SEED0_ORDER:
                    for name in self.domains:
                        yield from (
                            (r, ("test", "valid")) for r in self.main_runs(name, self.s.seeds[:1], lrs[name], methods)
                        )
            elif phase == "seeds":
                for name in self.domains:
                    yield from (
                        (r, ("test", "valid"))
                        for r in self.main_runs(name, self.s.seeds[1:], lrs[name], SEEDED_METHODS)
                    )
            elif phase == "ncurve":
                for factor in NCURVE_FACTORS:
                    for m in NCURVE_METHODS:
                        yield GenRun(first, m, 0, self.s.seeds[0], lrs[first], n_factor=factor), ("test",)
            elif phase in ("index", "variants"):
                for name in self.domains:
                    for m in (INDEX_METHOD,) if phase == "index" else VARIANT_METHODS:
                        yield Run(name, m, 0, self.s.seeds[0], lrs[name]), ("valid", "test")

    def publish(self, commit: bool) -> None:
        try:
            pool = next(iter(self.domains.values())).pool if self.domains else None
            text = build_table(self.results, self.s, self.pool_rows(pool) if pool else None, self.cache)
            (self.results / "table.md").write_text(text)
        except Exception as e:  # a table bug must never stop the runs
            log(f"table failed: {type(e).__name__}: {e}")
        if commit:
            git_commit(
                [self.results], f"generative-domain benchmark: results so far ({count_units(self.results)} units)"
            )


# ----------------------------------------------------------------------------- table


def pooled_nll(nll: np.ndarray, tokens: np.ndarray) -> float:
    return float(nll.sum() / tokens.sum())


def paired_bootstrap_nll(
    a: list[dict[str, Any]], b: list[dict[str, Any]], reps: int = 2000, seed: int = 0
) -> tuple[float, float, float] | None:
    """NLL per token of arm a − arm b (each row's NLL averaged over the arm's seeds), pooled over test
    rows, with a 95% interval from resampling the rows (the same rows for both arms)."""
    if not a or not b:
        return None
    tokens = np.asarray(a[0]["row_tokens"], dtype=np.float64)
    na = np.mean([r["row_nll"] for r in a], axis=0)
    nb = np.mean([r["row_nll"] for r in b], axis=0)
    diff = pooled_nll(na, tokens) - pooled_nll(nb, tokens)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tokens), size=(reps, len(tokens)))
    boots = (na[idx].sum(1) - nb[idx].sum(1)) / tokens[idx].sum(1)
    return diff, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def arm_evals(
    evals: dict[str, dict[str, Any]], domain: str, method: str, split: str, lr: float, n_factor: int = 0
) -> list[dict[str, Any]]:
    """The evaluations of one arm (every seed) at the chosen learning rate, matched on the unit key
    that ``Run.key`` / ``GenRun.sel_key`` write."""
    arm = "domain" if method == "domain" else rf"{re.escape(method)}_sel\d+" + (f"_n{n_factor}" if n_factor else "")
    key = re.compile(rf"{re.escape(domain)}_natural_{arm}_ft\d+_lr{re.escape(f'{lr:g}')}_token__{re.escape(split)}")
    return [r for k, r in evals.items() if key.fullmatch(k)]


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    m = scale * float(np.mean(values))
    return f"{m:.{digits}f}" + (f" ± {scale * float(np.std(values)):.{digits}f}" if len(values) > 1 else "")


def metric_cells(arm: list[dict[str, Any]]) -> str:
    """An arm's test NLL per token, ROUGE-L ×100, chrF, exact match % and the greedy answers' mean words,
    as table cells."""
    words = [float(np.mean(r["row_generated_words"])) for r in arm if r.get("row_generated_words")]
    return (
        f"{fmt([r['nll_per_token'] for r in arm], digits=4)} | "
        f"{fmt([r.get('rouge_l', math.nan) for r in arm], 100, 1)} | "
        f"{fmt([r.get('chrf', math.nan) for r in arm], 1, 1)} | "
        f"{fmt([r.get('exact_match', math.nan) for r in arm], 100, 1)} | "
        f"{fmt(words, 1, 1) if len(words) == len(arm) else '–'}"
    )


def answer_lengths(preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Lengths in words from an evaluation's predictions: each greedy answer's, and the gold answers' mean."""
    return {
        "row_generated_words": [len(p["prediction"].split()) for p in preds],
        "gold_words": float(np.mean([len(p["response"].split()) for p in preds])),
    }


def add_generated_words(evals: dict[str, dict[str, Any]], cache: Path | None) -> None:
    """Each test evaluation's greedy answers' length in words, per row (``row_generated_words``), read
    from its predictions in ``cache`` for units written before they kept it (in memory only)."""
    for key, r in evals.items():
        preds = cache / "eval" / key / "predictions.jsonl" if cache else None
        if "row_generated_words" in r or not r.get("row_rouge_l") or preds is None or not preds.exists():
            continue
        rows = read_jsonl(preds)
        if len(rows) == r["n"] and all("prediction" in p for p in rows):
            r.update(answer_lengths(rows))


def selection_lines(sels: dict[str, dict[str, Any]], name: str, pool: list[dict[str, Any]] | None) -> list[str]:
    """What each arm picked (selection seed 0): the pool's top tasks, the selected answers' mean length
    in words (when the pool file is at hand: the results keep only indices), the selection's seconds,
    and its overlap with ntk's pick."""
    picked = {m: sels[k] for m in SELECTION_METHODS + (LONGEST_METHOD,) if (k := f"{name}_natural_{m}_sel0") in sels}
    if not picked:
        return []
    ntk = set(picked.get("ntk", {}).get("pool_index", []))
    lines = [
        f"### {name}: what each arm picked (selection seed 0)",
        "",
        "| arm | top pool tasks | answer words (mean) | selection s | shared with ntk |",
        "|---|---|---|---|---|",
    ]
    for m, r in picked.items():
        tasks, shared = pick_cells(r, m, ntk, top=3)
        words = "–"
        if pool is not None and all(i < len(pool) for i in r["pool_index"]):
            words = f"{np.mean([len(pool[i]['response'].split()) for i in r['pool_index']]):.1f}"
        lines.append(f"| {m} | {tasks} | {words} | {selection_seconds(r):.0f} | {shared} |")
    agree = picked.get(INDEX_METHOD, {}).get("agreement_with_ntk")
    if agree:
        lines.append(
            f"\n{INDEX_METHOD} against ntk's pick ({index_cost_share(sels, name)}): "
            + ", ".join(f"{k.replace('_', ' ')} " + ("–" if v is None else f"{v:.3f}") for k, v in agree.items())
        )
    return lines + [""]


def build_table(results: Path, s: Settings, pool: list[dict[str, Any]] | None = None, cache: Path | None = None) -> str:
    """The table from the unit JSONs under ``results``; ``pool`` (the pool's rows) adds the selected
    answers' length, ``cache`` the greedy answers' length of units that did not keep it."""
    evals = load(results, "eval")
    add_generated_words(evals, cache)
    sels = load(results, "select")
    domains = sorted({k.split("_natural_")[0] for k in evals if "_natural_" in k})
    lines = [
        "# Generative domains: results so far",
        "",
        "Test NLL per response token (primary, lower is better), ROUGE-L ×100, chrF, exact match %, the greedy "
        "answers' mean length in words; "
        "mean ± std over seeds (n = seeds); valid NLL per token beside it. Δ: ntk − arm in test NLL per token "
        "with a paired bootstrap 95% interval over test rows (negative: ntk better). Below the line: the index "
        "arm and variants beside the paper's method.",
        "",
    ]
    for name in domains:
        lr_scores = {lr: evals.get(f"{name}_natural_domain_ft0_lr{lr:g}_token__valid") for lr in s.lrs}
        done = {lr: r["nll_per_token"] for lr, r in lr_scores.items() if r}
        if len(done) < len(s.lrs):
            so_far = ", ".join(f"{lr:g} → {v:.4f}" for lr, v in done.items()) or "none"
            lines += [f"## {name}", "", f"learning rate not chosen yet (valid NLL per token so far: {so_far})", ""]
            continue
        lr = min((round(v, 6), k) for k, v in done.items())[1]
        gold = next(
            (r["gold_words"] for m in METHODS for r in arm_evals(evals, name, m, "test", lr) if "gold_words" in r), None
        )
        lines += [
            f"## {name} (lr {lr:g}, chosen on valid: " + ", ".join(f"{k:g} → {v:.4f}" for k, v in done.items()) + ")",
            "",
            *([f"Test answers: {gold:.1f} words on average.", ""] if gold is not None else []),
            "| arm | n | NLL/token | ROUGE-L | chrF | exact | answer words | valid NLL/token "
            "| Δ NLL ntk − arm (95% CI) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ntk = arm_evals(evals, name, "ntk", "test", lr)
        arms = {m: arm_evals(evals, name, m, "test", lr) for m in METHODS + BESIDE_METHODS}
        for method, arm in arms.items():
            valid = fmt([r["nll_per_token"] for r in arm_evals(evals, name, method, "valid", lr)], digits=4)
            if method == BESIDE_METHODS[0] and any(arms[m] for m in BESIDE_METHODS):
                lines.append("| *beside the paper's method* | | | | | | | | |")
            if not arm:
                if method in METHODS:
                    lines.append(f"| {method} | 0 | – | – | – | – | – | {valid} | – |")
                continue
            delta = "" if method == "ntk" else paired_bootstrap_nll(ntk, arm)
            dtext = "–" if not delta else f"{delta[0]:+.4f} ({delta[1]:+.4f} to {delta[2]:+.4f})"
            lines.append(f"| {method} | {len(arm)} | {metric_cells(arm)} | {valid} | {dtext} |")
        for factor in NCURVE_FACTORS:
            for method in NCURVE_METHODS:
                arm = arm_evals(evals, name, method, "test", lr, factor)
                if arm:
                    lines.append(f"| {method}, N = {factor}·|D| | {len(arm)} | {metric_cells(arm)} | | |")
        lines.append("")
        lines += selection_lines(sels, name, pool)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def domains_from_data(data: Path, names: list[str] | None) -> dict[str, Domain]:
    folder = data / "generative"
    found = {
        p.name: Domain(p.name, p / "domain.jsonl", p / "valid.jsonl", p / "test.jsonl", data / "pool.jsonl")
        for p in sorted(folder.iterdir())
        if (p / "domain.jsonl").exists()
    }
    return {n: found[n] for n in (names or sorted(found)) if n in found}


def estimate_hours(bench: GenBench, rate_train: float, rate_fwd: float, gen_rate: float) -> dict[str, float]:
    """Predicted hours per phase from token counts, tokens/s of training and forward passes, and
    generated tokens/s (greedy, batched)."""
    tokens = row_token_counter(bench.s.model, bench.s.max_length)

    hours: dict[str, float] = {}
    pool = None
    for name, dom in bench.domains.items():
        pool = tokens(dom.pool) if pool is None else pool
        d, valid, test = tokens(dom.domain), tokens(dom.valid), tokens(dom.test)
        n = bench.s.n_factor * len(d)

        def ft(rows):
            return bench.s.epochs * rows / rate_train

        evals = (valid.sum() + test.sum()) / rate_fwd + len(test) * bench.s.max_new_tokens / gen_rate
        sel = pool.sum() / rate_fwd + 2 * 4 * n * pool.mean() / rate_train
        arm = ft(d.sum() + n * pool.mean()) + evals

        def add(k, v):
            hours[k] = hours.get(k, 0) + v / 3600

        add("settings", len(bench.s.lrs) * (ft(d.sum()) + valid.sum() / rate_fwd))
        add("seed0", sel + 5 * arm + ft(d.sum()) + evals)
        add("seeds", 2 * (3 * arm + ft(d.sum()) + evals))
        if name == next(iter(bench.domains)):
            add(
                "ncurve",
                sum(2 * (ft(d.sum() + f * len(d) * pool.mean()) + evals) for f in NCURVE_FACTORS)
                + 20 * len(d) * 4 * pool.mean() / rate_train,
            )
        add("index", arm + (pool.sum() / rate_train if "index" not in hours else 0))
        add("variants", len(VARIANT_METHODS) * arm)  # ntk's stored features, scored another way: one arm each
    hours["total"] = sum(hours.values())
    return hours


def main(argv: list[str] | None = None) -> int:
    d = GenSettings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepare_real_domains.py's output (generative/ and pool.jsonl)")
    ap.add_argument("--domains", nargs="*", default=None, help="only these generative domains, in this order")
    add_settings_arguments(ap, d)
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    ap.add_argument("--results", default=str(RESULTS / "quality" / "generative_domains"))
    ap.add_argument("--cache", default=str(CACHE / "generative_domains"))
    ap.add_argument(
        "--phases",
        nargs="+",
        default=list(PHASES),
        choices=list(PHASES),
    )
    ap.add_argument("--commit-every", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=[], choices=METHODS + (INDEX_METHOD,) + VARIANT_METHODS)
    ap.add_argument("--select-only", action="store_true")
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--only-table", action="store_true")
    ap.add_argument("--estimate", action="store_true", help="print the predicted hours per phase and stop")
    ap.add_argument("--rate-train", type=float, default=180.0, help="tokens/s of a LoRA forward+backward (estimate)")
    ap.add_argument("--rate-forward", type=float, default=575.0, help="tokens/s of a forward pass (estimate)")
    ap.add_argument("--rate-generate", type=float, default=60.0, help="generated tokens/s, batched greedy (estimate)")
    args = ap.parse_args(argv)
    s = GenSettings(
        **settings_from_arguments(args), eval_max_length=args.max_length, max_new_tokens=args.max_new_tokens
    )
    results, cache = Path(args.results), Path(args.cache)
    if args.only_table:
        results.mkdir(parents=True, exist_ok=True)
        pool = Path(args.data) / "pool.jsonl"
        (results / "table.md").write_text(
            build_table(results, s, read_jsonl(pool) if pool.exists() else None, Path(args.cache))
        )
        print((results / "table.md").read_text())
        return 0
    bench = GenBench(
        s,
        domains_from_data(Path(args.data), args.domains),
        results,
        cache,
        args.commit_every,
        tuple(args.methods),
        select_only=args.select_only,
        ranks=args.ranks,
    )
    exit_cleanly_on_sigterm()
    hours = estimate_hours(bench, args.rate_train, args.rate_forward, args.rate_generate)
    log("estimate (hours at the given rates): " + ", ".join(f"{k} {v:.1f}" for k, v in hours.items()))
    if args.estimate:
        return 0
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "settings.json", asdict(s))
    bench.run([p for p in args.phases])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
