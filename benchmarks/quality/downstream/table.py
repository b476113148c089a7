"""The downstream benchmark's report: ``downstream.md`` (in ``--results``) built from the cached unit JSONs alone
(no model work), so ``--only-table`` can rebuild it at any time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import counts, mean_std, read_jsonl

from . import ablations
from .plots import write_plots
from .settings import METHODS, SELECTING, Settings, d_tag, group_key, selection_key, strip_seeds

SHARED_STAGES = ("warmup", "load model", "embed")  # computed once per |D| in the shared work dir


def load_units(results: Path, kind: str) -> list[dict[str, Any]]:
    folder = results / kind
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def accuracies(results: Path, metric: str = "accuracy") -> dict[tuple[str, str], list[tuple[str, float]]]:
    """(run-without-seed, split) -> [(run key, metric)], grouping seeds.

    ``metric``: accuracy, balanced_accuracy or macro_f1 (the latter two recomputed from the per-class
    counts, so results cached before they were written still have them)."""
    from ntk_selector.analysis.evaluate import class_balanced_scores

    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for u in load_units(results, "eval"):
        key = u["definition"]["run"]
        split = u["definition"]["split"]
        group = strip_seeds(key)
        value = u["accuracy"] if metric == "accuracy" else class_balanced_scores(u["per_class"])[metric]
        groups.setdefault((group, split), []).append((key, value))
    return groups


def mean_counts(counts: list[dict[str, int]]) -> dict[str, float]:
    """Mean count per key over several seeds' counts (a key missing from one counts 0), keys in first-seen order."""
    keys = list(dict.fromkeys(k for c in counts for k in c))
    return {k: float(np.mean([c.get(k, 0) for c in counts])) for k in keys}


def predicted_mix(results: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(run-without-seed, split) -> mean number of predictions per label over the seeds."""
    per: dict[tuple[str, str], list[dict[str, int]]] = {}
    for u in load_units(results, "eval"):
        g = (strip_seeds(u["definition"]["run"]), u["definition"]["split"])
        per.setdefault(g, []).append({c: v["predicted"] for c, v in u["per_class"].items()})
    return {g: mean_counts(lst) for g, lst in per.items()}


def label_mix(results: Path, split: str) -> dict[str, int]:
    """Rows per true label of a split, from any cached evaluation of it."""
    for u in load_units(results, "eval"):
        if u["definition"]["split"] == split:
            return {c: v["n"] for c, v in u["per_class"].items()}
    return {}


def selection_seconds(results: Path, d: int, n: int) -> dict[str, float]:
    """Seconds each method's selection takes on its own: shared stages counted at the time they took."""
    main = [
        u
        for u in load_units(results, "select")
        if u["definition"].get("prior", "balanced") == "balanced"
        and not u["definition"]["method"].startswith(ablations.PREFIX)
    ]
    units = [
        u for u in main if u["definition"]["d"] == d and u["definition"]["n"] == n and u["definition"]["sel_seed"] == 0
    ]
    shared: dict[str, float] = {}
    for u in main:
        if u["definition"]["d"] == d:
            for st in SHARED_STAGES:
                shared[st] = max(shared.get(st, 0.0), float(u["stage_seconds"].get(st, 0.0)))
    out = {}
    for u in units:
        secs = dict(u["stage_seconds"])
        if u["definition"]["method"] != "random":
            secs.update({st: shared.get(st, 0.0) for st in SHARED_STAGES})
        out[u["definition"]["method"]] = float(sum(secs.values()))
    return out


def picked_tasks(results: Path, d: int, n: int) -> dict[str, dict[str, float]]:
    """Mean number of selected rows per pool task, per method (over the selection seeds)."""
    per: dict[str, list[dict[str, int]]] = {}
    for u in load_units(results, "select"):
        if (
            u["definition"]["d"] == d
            and u["definition"]["n"] == n
            and u["definition"].get("prior", "balanced") == "balanced"
        ):
            per.setdefault(u["definition"]["method"], []).append(u["selected_per_task"])
    return {m: mean_counts(lst) for m, lst in per.items()}


def picked_answers(results: Path, cache: Path, d: int, n: int) -> dict[str, dict[str, float]]:
    """Mean number of selected rows giving each of D's labels (and other answers), per method."""
    from ntk_selector.selection.answer_mix import answer_mix

    data = cache / "data" / f"d{d}"
    if not (data / "pool.jsonl").exists():
        return {}
    domain = [r["response"] for r in read_jsonl(data / "domain.jsonl")]
    pool = [r["response"] for r in read_jsonl(data / "pool.jsonl")]
    per: dict[str, list[dict[str, int]]] = {}
    for u in load_units(results, "select"):
        if (
            u["definition"]["d"] == d
            and u["definition"]["n"] == n
            and u["definition"].get("prior", "balanced") == "balanced"
        ):
            mix = answer_mix(domain, [pool[i] for i in u["pool_index"]])
            if mix is not None:
                counts = {label: v["selected"] for label, v in mix["labels"].items()}
                per.setdefault(u["definition"]["method"], []).append({**counts, "other answers": mix["selected_other"]})
    return {m: mean_counts(lst) for m, lst in per.items()}


def chosen_lr_from(results: Path, s: Settings) -> tuple[float | None, dict[float, float]]:
    valid = {}
    for u in load_units(results, "eval"):
        k = u["definition"]["run"]
        if u["definition"]["split"] == "valid" and k.startswith(f"d{s.domain_size}_n0_domain_ft0_lr"):
            valid[float(k.rsplit("_lr", 1)[1])] = u["accuracy"]
    if not valid or any(lr not in valid for lr in s.lrs):
        return None, valid
    return min((-valid[lr], lr) for lr in s.lrs)[1], valid


def build_table(s: Settings, results: Path, cache: Path) -> str:
    """The markdown report of everything cached so far (plots written next to it)."""
    lr, valid_lrs = chosen_lr_from(results, s)
    acc = accuracies(results)
    d, n = s.domain_size, s.n_factor * s.domain_size
    lines = [
        f"Model {s.model or 'SmolLM2-135M-Instruct (packaged)'}; |D| = {d}, N = {n}, pool {s.pool_size} rows; "
        f"max length {s.max_length}, {s.epochs:g} epochs, LoRA r {s.rank}, batch {s.batch_size}"
        f"{', length-grouped batches' if s.group_by_length else ''}.",
        "",
    ]
    lines += [
        "Learning rate picked on domain_valid (domain-only fine-tune, seed 0): "
        + (", ".join(f"{k:g} → {100 * v:.1f}%" for k, v in sorted(valid_lrs.items())) or "pending")
        + (f"; chosen **{lr:g}**." if lr is not None else "."),
        "",
    ]
    if lr is None:
        return "\n".join(lines + ["(no results yet)", ""])
    secs = selection_seconds(results, d, n)
    train_secs: dict[str, list[float]] = {}
    for u in load_units(results, "train"):
        g = strip_seeds(u["definition"]["run"])
        train_secs.setdefault(g, []).append(u["seconds"])
    bal, f1 = accuracies(results, "balanced_accuracy"), accuracies(results, "macro_f1")
    predicted = predicted_mix(results)
    lines += [
        "| method | test accuracy % (mean ± std) | seeds | test balanced accuracy % | test macro-F1 % | "
        "test answers per label (mean) | valid accuracy % | selection s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plot_rows = []
    for m in METHODS:
        g = group_key(d, n, m, lr)
        test = [a for _, a in acc.get((g, "test"), [])]
        val = [a for _, a in acc.get((g, "valid"), [])]
        test_bal = [a for _, a in bal.get((g, "test"), [])]
        test_f1 = [a for _, a in f1.get((g, "test"), [])]
        ft = train_secs.get(g, [])
        sel_s = f"{secs[m]:.0f}" if m in secs else "–"
        ft_s = f"{np.mean(ft):.0f}" if ft else "–"
        answers = "/".join(f"{v:.0f}" for v in predicted[(g, "test")].values()) if (g, "test") in predicted else "–"
        lines.append(
            f"| {m} | {mean_std(test)} | {len(test)} | {mean_std(test_bal)} | {mean_std(test_f1)} | "
            f"{answers} | {mean_std(val)} | {sel_s} | {ft_s} |"
        )
        if test:
            plot_rows.append((m, test))
    mixes = {split: label_mix(results, split) for split in ("test", "valid")}
    if mixes["test"]:
        top = max(mixes["test"].values()) / sum(mixes["test"].values())
        lines += [
            "",
            "Label mix (true rows per label): D "
            + _mix_text(label_mix_of_domain(s.domain_size, cache))
            + "; domain_valid "
            + _mix_text(mixes["valid"])
            + "; test "
            + _mix_text(mixes["test"])
            + f". Always answering the test's majority label scores {100 * top:.1f}% accuracy, "
            f"{100 / len(mixes['test']):.1f}% balanced accuracy. Answers per label are in the order "
            + "/".join(mixes["test"])
            + ".",
        ]
    lines += [
        "",
        "Selection seconds: the method run alone (stages shared through --work-dir counted once, at the "
        "time they took); ntk, embedding and less select once, random and preselect-random per seed.",
        "",
    ]
    picks = picked_tasks(results, d, n)
    if picks:
        tasks = sorted({t for p in picks.values() for t in p})
        lines += [
            "Pool tasks picked (rows of N, mean over selection seeds):",
            "",
            "| method | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for m in SELECTING:
            if m in picks:
                lines.append(f"| {m} | " + " | ".join(f"{picks[m].get(t, 0):.0f}" for t in tasks) + " |")
        lines.append("")
    answers = picked_answers(results, cache, d, n)
    if answers:
        cols = list(next(iter(answers.values())))
        lines += [
            "Answers of the selected rows (rows of N giving each of D's labels, as `select` reports them in "
            "`answer_mix`; mean over selection seeds):",
            "",
            "| method | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        lines += [
            f"| {m} | " + " | ".join(f"{answers[m][c]:.0f}" for c in cols) + " |" for m in SELECTING if m in answers
        ]
        lines.append("")
    lines += ablations.ablation_table(
        results,
        d,
        n,
        lambda m, prior="balanced": group_key(d, n, m, lr, prior),
        lambda m, prior="balanced": selection_key(d, n, m, 0, prior),
        {"accuracy": acc, "balanced_accuracy": bal},
        mean_std,
    )
    curve_n = _curve(acc, [(d, f * d) for f in s.curve_n_factors], s.curve_methods, lr)
    d_points, d_methods = [(dd, s.n_factor * dd) for dd in s.curve_domain_sizes], ("domain",) + s.curve_methods
    curve_d = _curve(acc, d_points, d_methods, lr)
    if any(curve_n.values()):
        lines += _curve_table(f"N (|D| = {d})", [f * d for f in s.curve_n_factors], curve_n)
    if any(curve_d.values()):
        lines += _curve_table(f"|D| (N = {s.n_factor}·|D|)", list(s.curve_domain_sizes), curve_d)
        # D is drawn balanced only as far as the train split's rarest label allows: say what each size got
        d_mixes = {dd: label_mix_of_domain(dd, cache) for dd in s.curve_domain_sizes}
        short = [dd for dd, m in d_mixes.items() if m and min(m.values()) < dd // len(m)]
        lines += [
            "D's labels at each |D|: "
            + _mixes_text(d_mixes)
            + "."
            + (
                f" At |D| = {', '.join(map(str, short))} the train split has too few rows of some label to balance D: "
                "D holds all of them, so the label mix changes with |D| along this curve, and that D's "
                "domain_valid has no row of those labels (the test set is the same at every |D|)."
                if short
                else ""
            ),
            "",
        ]
    curve_d_natural = _curve(acc, d_points, d_methods, lr, "natural")
    new_sizes = [i for i, dd in enumerate(s.curve_domain_sizes) if dd != d]  # |D| = d is the natural-prior ablation
    if any(vals[i] for vals in curve_d_natural.values() for i in new_sizes):
        lines += _curve_table(
            f"|D| with D in the train split's label mix (N = {s.n_factor}·|D|)",
            list(s.curve_domain_sizes),
            curve_d_natural,
        )
        d_mixes = {dd: label_mix_of_domain(dd, cache, "natural") for dd in s.curve_domain_sizes}
        lines += [
            "D's labels at each |D| (a uniform draw from the train split, which every |D| can have): "
            + _mixes_text(d_mixes)
            + "."
            + (f" |D| = {d} is the natural-prior ablation's runs." if d in s.curve_domain_sizes else ""),
            "",
        ]
    write_plots(results, plot_rows, s, curve_n, curve_d, curve_d_natural)
    lines += [
        "Plots: `benchmarks/results/quality/downstream/downstream_accuracy.png`, `downstream_curve_n.png`, "
        "`downstream_curve_d.png`.",
        "",
    ]
    return "\n".join(lines)


def label_mix_of_domain(d: int, cache: Path, prior: str = "balanced") -> dict[str, int]:
    """Rows per label of the domain file D of size d drawn with ``prior`` (from the benchmark's cache folder)."""
    path = cache / "data" / d_tag(d, prior) / "domain.jsonl"
    return (
        dict(sorted(counts([str(r.get("response", "(none)")) for r in read_jsonl(path)]).items()))
        if path.exists()
        else {}
    )


def _mix_text(mix: dict[str, int]) -> str:
    return "/".join(f"{v}" for v in mix.values()) + " (" + "/".join(mix) + ")" if mix else "(unknown)"


def _mixes_text(mixes: dict[int, dict[str, int]]) -> str:
    """Each |D|'s label mix, for the curve tables."""
    return "; ".join(f"{dd}: {_mix_text(m)}" for dd, m in mixes.items() if m)


def _curve(
    acc: dict, points: list[tuple[int, int]], methods: tuple[str, ...], lr: float, prior: str = "balanced"
) -> dict[str, list[list[float]]]:
    return {
        m: [[a for _, a in acc.get((group_key(dd, nn, m, lr, prior), "test"), [])] for dd, nn in points]
        for m in methods
    }


def _curve_table(label: str, xs: list[int], curve: dict[str, list[list[float]]]) -> list[str]:
    lines = [
        f"Test accuracy % over {label}:",
        "",
        "| method | " + " | ".join(str(x) for x in xs) + " |",
        "|---|" + "---|" * len(xs),
    ]
    for m, vals in curve.items():
        lines.append(f"| {m} | " + " | ".join(f"{mean_std(v)} ({len(v)})" for v in vals) + " |")
    return lines + [""]
