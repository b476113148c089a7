"""Smoke test of benchmarks/quality/generative_domains/generative_domains.py on the tiny model: the
learning rate chosen on valid by NLL per token, every arm and the N curve end to end, the table with
its bootstrap intervals, and a rerun that recomputes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_rows, write_jsonl


def free_text(n: int, seed: int) -> list[dict]:
    return [
        {"prompt": "Q: " + r["prompt"][:40], "response": f"summary {seed} {i} " + r["response"][:20]}
        for i, r in enumerate(synthetic_rows(n, seed, ("dom",)))
    ]


def test_generative_benchmark_end_to_end_and_resumes(tiny_model_dir, tmp_path, one_thread):
    data = tmp_path / "data"
    (data / "generative" / "toy").mkdir(parents=True)
    for part, n, seed in (("domain", 6, 1), ("valid", 6, 2), ("test", 10, 3)):
        write_jsonl(data / "generative" / "toy" / f"{part}.jsonl", free_text(n, seed))
    write_jsonl(data / "pool.jsonl", synthetic_rows(150, 4))
    results, cache = tmp_path / "results", tmp_path / "cache"
    args = [
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--seeds",
        "0",
        "1",
        "--lrs",
        "1e-3",
        "3e-3",
        "--epochs",
        "1",
        "--max-length",
        "96",
        "--proj-dim",
        "32",
        "--rank",
        "4",
        "--n-factor",
        "2",
        "--max-new-tokens",
        "6",
        "--results",
        str(results),
        "--cache",
        str(cache),
        "--phases",
        "seed0",
        "variants",
        "seeds",
        "ncurve",
    ]
    from benchmarks.quality.generative_domains import generative_domains as mod

    assert mod.main(args) == 0
    evals = {p.stem: json.loads(p.read_text()) for p in (results / "eval").glob("*.json")}
    valid = {lr: evals[f"toy_natural_domain_ft0_lr{lr:g}_token__valid"]["nll_per_token"] for lr in (1e-3, 3e-3)}
    lr = min((v, k) for k, v in valid.items())[1]
    for m in mod.METHODS:
        arm = mod.arm_evals(evals, "toy", m, "test", lr)
        assert len(arm) == (2 if m in mod.SEEDED_METHODS else 1), (m, len(arm))
        for e in arm:
            assert (
                e["task"] == "generation" and e["n"] == 10 and len(e["row_nll"]) == 10 and len(e["row_rouge_l"]) == 10
            )
            assert e["nll_per_token"] == pytest.approx(sum(e["row_nll"]) / sum(e["row_tokens"]), rel=1e-4)
    for factor in mod.NCURVE_FACTORS:
        for m in mod.NCURVE_METHODS:
            assert len(mod.arm_evals(evals, "toy", m, "test", lr, factor)) == 1
    sels = {p.stem: json.loads(p.read_text()) for p in (results / "select").glob("*.json")}
    assert (
        len(sels["toy_natural_ntk_sel0"]["pool_index"]) == 12
        and len(sels["toy_natural_ntk_sel0_n20"]["pool_index"]) == 120
    )
    assert len(sels["toy_natural_random_sel0_n1"]["pool_index"]) == 6
    # the cosine variant, seed 0 only, on valid and test: ntk's stored features scored by the mean cosine
    for split in ("valid", "test"):
        assert len(mod.arm_evals(evals, "toy", mod.COSINE_METHOD, split, lr)) == 1
    cosine, paper = sels["toy_natural_ntk-cosine_sel0"], sels["toy_natural_ntk_sel0"]
    assert cosine["store_seconds"] == paper["store_seconds"] and cosine["preselected"] == paper["preselected"]
    assert cosine["preselected_scores"] != paper["preselected_scores"] and len(cosine["pool_index"]) == 12
    # random-longest: N rows at random among the 2N pool rows with the longest answers, seed 0 only
    pool = [json.loads(line) for line in (data / "pool.jsonl").read_text().splitlines()]
    longest = sels["toy_natural_random-longest_sel0"]
    words = [len(r["response"].split()) for r in pool]
    threshold = sorted(words, reverse=True)[2 * 12 - 1]
    assert len(longest["pool_index"]) == 12 and len(set(longest["pool_index"])) == 12
    assert all(words[i] >= threshold for i in longest["pool_index"])
    assert longest["drawn_from"] == {"rows": 24, "min_answer_words": threshold}
    assert "toy_natural_random-longest_sel1" not in sels and "preselected" not in longest
    for split in ("valid", "test"):
        assert len(mod.arm_evals(evals, "toy", mod.LONGEST_METHOD, split, lr)) == 1
    trained = json.loads((results / "train" / f"toy_natural_random-longest_sel0_ft0_lr{lr:g}_token.json").read_text())
    assert len(trained["definition"]["files"]) == 2  # D and the drawn rows
    # the bootstrap of an arm against itself is exactly zero; against another arm it brackets the pooled difference
    ntk, rnd = mod.arm_evals(evals, "toy", "ntk", "test", lr), mod.arm_evals(evals, "toy", "random", "test", lr)
    assert mod.paired_bootstrap_nll(ntk, ntk) == (0.0, 0.0, 0.0)
    d, lo, hi = mod.paired_bootstrap_nll(ntk, rnd)
    tokens = np.array(ntk[0]["row_tokens"], dtype=float)
    want = (
        np.mean([r["row_nll"] for r in ntk], 0).sum() - np.mean([r["row_nll"] for r in rnd], 0).sum()
    ) / tokens.sum()
    assert d == pytest.approx(want) and lo <= d <= hi
    table = (results / "table.md").read_text()
    assert f"## toy (lr {lr:g}" in table and "| ntk | 2 |" in table and "N = 20·|D|" in table
    assert "| ntk-cosine | 1 |" in table and "| random-longest | 1 |" in table
    # what each arm picked: the selected answers' mean length from the pool rows, the overlap with ntk
    pool = [json.loads(line) for line in (data / "pool.jsonl").read_text().splitlines()]
    picked = sels["toy_natural_ntk-cosine_sel0"]["pool_index"]
    words = np.mean([len(pool[i]["response"].split()) for i in picked])
    shared = len(set(picked) & set(paper["pool_index"])) / len(picked)
    # the greedy answers' mean length in words, from the unit's own record
    words_ntk = np.mean([np.mean(r["row_generated_words"]) for r in ntk])
    ntk_row = next(line for line in table.splitlines() if line.startswith("| ntk | 2 |"))
    assert [c.strip() for c in ntk_row.strip("|").split("|")][6].startswith(f"{words_ntk:.1f} ± ")
    assert all(len(r["row_generated_words"]) == 10 for r in ntk)
    section = table.split("what each arm picked")[1]
    row = next(line for line in section.splitlines() if line.startswith("| ntk-cosine | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{words:.1f}" and cells[4] == f"{shared:.2f}"
    # a rerun finds every unit cached
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if p.name != "settings.json"}
    assert mod.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if p.name != "settings.json"} == before


def test_generated_words_of_older_units_come_from_the_cached_predictions(tmp_path):
    from benchmarks.quality.generative_domains import generative_domains as mod

    preds = [{"response": "a b c d", "prediction": "x y"}, {"response": "a b", "prediction": ""}]
    (tmp_path / "eval" / "old__test").mkdir(parents=True)
    write_jsonl(tmp_path / "eval" / "old__test" / "predictions.jsonl", preds)
    evals = {
        "old__test": {"n": 2, "row_rouge_l": [0.1, 0.0]},  # written before units kept the lengths
        "kept__test": {"n": 2, "row_rouge_l": [0.1, 0.0], "row_generated_words": [5, 1]},
        "nogen__valid": {"n": 2},  # no greedy answers on valid
    }
    mod.add_generated_words(evals, tmp_path)
    assert evals["old__test"]["row_generated_words"] == [2, 0] and evals["old__test"]["gold_words"] == 3.0
    assert evals["kept__test"]["row_generated_words"] == [5, 1] and "gold_words" not in evals["kept__test"]
    assert "row_generated_words" not in evals["nogen__valid"]
    mod.add_generated_words(evals := {"old__test": {"n": 2, "row_rouge_l": [0, 0]}}, None)
    assert "row_generated_words" not in evals["old__test"]
