"""Smoke test of benchmarks/quality/downstream: every method end to end on the tiny model, a table, a resume."""

from __future__ import annotations

import json
import random

from conftest import synthetic_rows, write_jsonl

METHODS = ("base", "domain", "random", "embedding", "preselect-random", "less", "ntk")


def load_script():
    from benchmarks.quality.downstream import downstream

    return downstream


def labelled(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": r["prompt"][:40], "response": rng.choice(("yes", "no", "meh")), "task": "dom"}
        for r in synthetic_rows(n, seed, ("dom",))
    ]


def test_downstream_script_end_to_end_and_resumes(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "domain.jsonl", labelled(8, 1))
    write_jsonl(data / "domain_valid.jsonl", labelled(6, 2))
    write_jsonl(data / "test.jsonl", labelled(10, 3))
    write_jsonl(data / "pool.jsonl", synthetic_rows(48, 4))
    results, cache = tmp_path / "results", tmp_path / "cache"
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text(
        "# Benchmarks\n\n## Downstream accuracy (drug-review sentiment)\n\n(pending)\n\n## Next\n\nkept\n"
    )
    args = [
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(data),
        "--domain-size",
        "6",
        "--n-factor",
        "2",
        "--seeds",
        "0",
        "--max-length",
        "96",
        "--eval-max-length",
        "128",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--rank",
        "4",
        "--lrs",
        "1e-3",
        "--proj-dim",
        "32",
        "--curve-n-factors",
        "--curve-domain-sizes",
        "4",
        "--results",
        str(results),
        "--cache",
        str(cache),
        "--update-benchmarks-md",
        str(bench_md),
    ]
    mod = load_script()
    assert mod.main(args) == 0
    evals = {
        json.loads(p.read_text())["definition"]["run"]: json.loads(p.read_text())
        for p in (results / "eval").glob("*__test.json")
    }
    for m in METHODS:
        assert any(m in k.split("_") for k in evals), (m, sorted(evals))
    for e in evals.values():
        assert e["n"] == 10 and 0 <= e["accuracy"] <= 1 and sum(map(sum, e["confusion"]["matrix"])) == 10
    assert any(k.startswith("d4_n8_ntk") for k in evals)  # the |D| curve
    assert {
        m for m in ("domain", "random", "ntk") if any(k.startswith("d4natural_") and m in k.split("_") for k in evals)
    } == {"domain", "random", "ntk"}  # and again with D in the natural label mix
    table = (results / "downstream.md").read_text()
    for m in METHODS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {m} |"))
        assert row.split("|")[2].strip() not in ("", "–"), row
    assert "Pool tasks picked" in table and (results / "downstream_accuracy.png").exists()
    variants = [line for line in table.splitlines() if line.startswith("| ntk+")]
    assert len(variants) == len(mod.ABLATIONS.VARIANTS), variants
    for line in variants:  # every variant selected, fine-tuned and was scored on valid and test
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[2] != "pending" and "–" not in cells[3:], line
    assert "balanced accuracy" in table and "Label mix" in table
    assert "Test accuracy % over |D| with D in the train split's label mix" in table
    natural = [json.loads(p.read_text())["definition"]["run"] for p in (results / "eval").glob("d6natural_*.json")]
    for m in mod.ABLATIONS.NATURAL_METHODS:  # each rerun on the D with the natural label mix, valid and test
        assert sum(m in run.split("_") for run in natural) == 2, (m, natural)
    md = bench_md.read_text()
    assert "| ntk |" in md and "## Next\n\nkept" in md and "(pending)" not in md
    # a rerun recomputes nothing
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert mod.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == before
    assert mod.main(args + ["--only-table"]) == 0
    assert (results / "downstream.md").read_text() == table
