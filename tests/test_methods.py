"""The method registry: every method select accepts is one entry, and its fields drive what select runs."""

from __future__ import annotations

import json

from ntk_selector.cli.commands import main
from ntk_selector.selection.methods import METHODS, method_help


def test_registry_fields_decide_the_stages(tiny_model_dir, small_files, tmp_path, one_thread):
    """A method that uses no model runs no warm-up; a votes method featurizes nothing; a features method
    stores features under its own tag (so methods can share a --work-dir). The score column and field
    are named by what they hold: votes for embedding, a cosine in [-1, 1] for less, nothing for random."""
    domain, pool = small_files
    work = tmp_path / "work"
    seen = {}
    for name in ("random", "embedding", "less"):
        out = tmp_path / name
        assert (
            main(
                [
                    "select",
                    "--domain",
                    str(domain),
                    "--pool",
                    str(pool),
                    "-n",
                    "4",
                    "--out",
                    str(out),
                    "--method",
                    name,
                    "--model",
                    str(tiny_model_dir),
                    "--proj-dim",
                    "16",
                    "--rank",
                    "4",
                    "--quiet",
                    "--work-dir",
                    str(work),
                ]
            )
            == 0
        )
        seen[name] = set(json.loads((out / "run.json").read_text())["seconds"])
        header, *lines = (out / "scores.csv").read_text().splitlines()
        score_name = METHODS[name].score_name
        assert header.split(",") == ["pool_index", "votes", "preselected", score_name]
        table = [line.split(",") for line in lines]
        selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
        assert all(list(r)[-2:] == [score_name, "pool_index"] for r in selected)
        if name == "embedding":  # the score is the vote count
            assert all(float(row[3]) == float(row[1]) for row in table if row[3])
            assert [r[score_name] for r in selected] == [float(table[r["pool_index"]][1]) for r in selected]
        elif name == "less":
            assert all(-1 - 1e-6 <= float(row[3]) <= 1 + 1e-6 for row in table if row[3])
        else:
            assert all(row[3] == "" for row in table) and all(r[score_name] is None for r in selected)
    assert "warmup" not in seen["random"] and "warmup" in seen["embedding"]
    assert "featurize" not in seen["embedding"] and "featurize" in seen["less"]
    assert (work / "less_features_domain").is_dir() and not (work / "features_domain").exists()
    assert all(f"{m}:" in method_help() for m in METHODS)


def test_score_names_say_what_the_column_holds():
    names = {m.name: m.score_name for m in METHODS.values()}
    assert names == {
        "ntk": "ntk_score",
        "less": "less_max_cosine",
        "embedding": "embedding_votes",
        "random": "no_score",
        "preselect-random": "no_score",
    }
