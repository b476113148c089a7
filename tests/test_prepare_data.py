"""benchmarks/quality/real_domains/prepare_real_domains.py rebuilds every real domain and the shared pool from lasting
sources (../shared/data and the packaged tokenizer): a small slice, with the documented counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# the counts docs/benchmarks/generative_domains.md and docs/benchmarks/real_domains.md document
DOMAINS = {"fpb": 970, "tfns": 2388, "pubmedqa": 500}
GENERATIVE = {"pubmedqa_long": (100, 100, 500), "samsum": (102, 103, 362)}
DISTINCT_TEST_ANSWERS = {"pubmedqa_long": 500, "samsum": 117}  # samsum: a dialogue comes in up to six templates


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.skipif(not (SHARED / "p3_t0" / "pool.jsonl").exists(), reason="needs ../shared/data")
def test_a_slice_rebuilds_with_the_documented_counts(tmp_path, capsys):
    from benchmarks.quality.real_domains import prepare_real_domains as mod

    out = tmp_path / "data"
    assert mod.main(["--out", str(out), "--pool-size", "300", "--skip-mmlu"]) == 0
    printed = capsys.readouterr().out
    for name, test_rows in DOMAINS.items():
        assert len(rows(out / name / "domain.jsonl")) == len(rows(out / name / "valid.jsonl")) == 100
        assert len(rows(out / name / "test.jsonl")) == test_rows
        assert f"{name}: domain 100" in printed
    for name, (d, v, t) in GENERATIVE.items():
        parts = {p: rows(out / "generative" / name / f"{p}.jsonl") for p in ("domain", "valid", "test")}
        assert (len(parts["domain"]), len(parts["valid"]), len(parts["test"])) == (d, v, t)
        assert len({r["response"] for r in parts["test"]}) == DISTINCT_TEST_ANSWERS[name]  # free text, not labels
    # samsum: split by dialogue (one summary, one dialogue): no summary in two parts
    summaries = {
        p: {r["response"].lower() for r in rows(out / "generative" / "samsum" / f"{p}.jsonl")}
        for p in ("domain", "valid", "test")
    }
    assert not (summaries["domain"] & summaries["test"]) and not (summaries["valid"] & summaries["test"])
    # PubMedQA: the official test ids, the same in both forms of the domain
    official = set(json.loads((SHARED / "pubmedqa" / "test_ground_truth.json").read_text()))
    assert {r["id"] for r in rows(out / "generative" / "pubmedqa_long" / "test.jsonl")} == official
    # the pool: the size asked, evenly over templates, no held-out template, no 13-gram shared with a test set
    pool = rows(out / "pool.jsonl")
    per_template = Counter(r["task"] for r in pool)
    assert len(pool) == 300 and max(per_template.values()) - min(per_template.values()) <= 1
    assert not any(t.startswith("samsum") for t in per_template)
    from ntk_selector.selection.filters import ngrams

    tests = [rows(out / n / "test.jsonl") for n in DOMAINS] + [
        rows(out / "generative" / n / "test.jsonl") for n in GENERATIVE
    ]
    banned = set().union(*(ngrams(r["prompt"] + " " + r["response"], 13) for t in tests for r in t))
    assert not any(ngrams(r["prompt"] + " " + r["response"], 13) & banned for r in pool)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pool"]["rows"] == 300 and summary["pool"]["source"] == "p3"
