"""select end to end on the tiny model, via the CLI."""

import csv
import json

import numpy as np
import pytest

from ntk_selector.cli.commands import main
from ntk_selector.io.records import read_records


def run_select(tiny_model_dir, domain, pool, out, *extra):
    args = [
        "select",
        "--domain",
        str(domain),
        "--pool",
        str(pool),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--n",
        "5",
        "--proj-dim",
        "64",
        "--quiet",
        "--rank",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        *extra,
    ]
    return main(args)


def test_select_end_to_end(tiny_model_dir, small_files, tmp_path):
    domain, pool = small_files
    out = tmp_path / "out"
    assert run_select(tiny_model_dir, domain, pool, out) == 0
    selected = [json.loads(line) for line in open(out / "selected.jsonl")]
    pool_rows = read_records(pool)
    assert len(selected) == 5
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["pool_index"]) for r in rows] == list(range(len(pool_rows)))
    pre = [r for r in rows if r["preselected"] == "1"]
    assert len(pre) == 20  # M = 4N
    assert all(r["ntk_score"] for r in pre) and not any(r["ntk_score"] for r in rows if r["preselected"] == "0")
    pre_scores = sorted((float(r["ntk_score"]) for r in pre), reverse=True)
    # selected rows are the top-5 scores among pre-selected, in rank order, each the original record
    assert [s["ntk_score"] for s in selected] == pytest.approx(pre_scores[:5])
    for s in selected:
        orig = {k: v for k, v in pool_rows[s["pool_index"]].items() if k != "__line__"}
        assert {k: s[k] for k in orig} == orig
        assert float(rows[s["pool_index"]]["ntk_score"]) == pytest.approx(s["ntk_score"])
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["selected"] == 5 and run["counts"]["pool"] == 40
    assert set(run["seconds"]) >= {"warmup", "embed", "preselect", "featurize", "score"}
    # every store's writing time over all runs (one run here), each within this run's stage seconds
    assert set(run["store_seconds"]) == {"embed_domain", "embed_pool", "features_domain", "features_pool"}
    assert run["store_seconds"]["embed_pool"] <= run["seconds"]["embed"] + 0.1
    assert run["store_seconds"]["features_pool"] <= run["seconds"]["featurize"] + 0.1
    assert sum(run["selected_per_task"].values()) == 5
    # stores follow the feature-store contract
    feats = np.load(out / "stages" / "features_pool" / "features.npy", mmap_mode="r")
    assert feats.shape == (20, 64)
    meta = json.loads((out / "stages" / "features_pool" / "meta.json").read_text())
    assert meta["complete"] and meta["definition"]["proj_dim"] == 64


def test_select_same_seed_same_result_and_rerun_skips(tiny_model_dir, small_files, tmp_path):
    domain, pool = small_files
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_select(tiny_model_dir, domain, pool, a) == 0
    assert run_select(tiny_model_dir, domain, pool, b) == 0
    assert (a / "selected.jsonl").read_text() == (b / "selected.jsonl").read_text()
    assert (a / "scores.csv").read_text() == (b / "scores.csv").read_text()
    before = (a / "stages" / "features_pool" / "features.npy").stat().st_mtime_ns
    assert run_select(tiny_model_dir, domain, pool, a) == 0
    assert (a / "stages" / "features_pool" / "features.npy").stat().st_mtime_ns == before
    assert (a / "selected.jsonl").read_text() == (b / "selected.jsonl").read_text()


@pytest.mark.parametrize("method", ["random", "embedding", "preselect-random", "less"])
def test_baseline_methods(tiny_model_dir, small_files, tmp_path, method):
    domain, pool = small_files
    out = tmp_path / method
    assert run_select(tiny_model_dir, domain, pool, out, "--method", method) == 0
    selected = [json.loads(line) for line in open(out / "selected.jsonl")]
    idx = [s["pool_index"] for s in selected]
    assert len(idx) == 5 and len(set(idx)) == 5
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    if method != "random":
        pre = {int(r["pool_index"]) for r in rows if r["preselected"] == "1"}
        assert set(idx) <= pre
    if method == "embedding":
        votes = [int(rows[i]["votes"]) for i in idx]
        assert votes == sorted(votes, reverse=True)
        others = [int(r["votes"]) for r in rows if int(r["pool_index"]) not in idx]
        assert min(votes) >= max(others)


def test_featurize_command_raw_and_resume(tiny_model_dir, small_files, tmp_path):
    domain, _ = small_files
    out = tmp_path / "store"
    args = [
        "featurize",
        "--data",
        str(domain),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--proj-dim",
        "0",
        "--quiet",
    ]
    assert main(args) == 0
    feats = np.load(out / "features.npy", mmap_mode="r")
    meta = json.loads((out / "meta.json").read_text())
    assert feats.shape[0] == 8 and meta["definition"]["projection"] == "raw"
    # 2 layers x q/k/v/o x (A, B); rank 8 on a width-32 model with 2 kv heads of 8 dims
    assert len(meta["parameters"]) == 16
    assert feats.shape[1] == 2 * 8 * (32 * 4 + 32 + 16 + 16 + 32)
    # a different definition on the same store is refused with a clear message
    assert main(args[:-2] + ["16", "--quiet"]) == 2
