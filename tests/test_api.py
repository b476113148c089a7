"""The Python API: the same files as the command line for the same settings, records given as
lists or datasets, settings checked like flags, a temporary folder that goes away, and the
README's example as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_rows, write_jsonl

import ntk_selector
from ntk_selector import Selection, UserError, load_features, select
from ntk_selector.cli.commands import main

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--proj-dim", "64", "--rank", "4", "--batch-size", "4", "--lr", "1e-3", "--quiet"]
SETTINGS = {"proj_dim": 64, "rank": 4, "batch_size": 4, "lr": 1e-3, "quiet": True}
N = 5


@pytest.fixture(scope="module")
def rows() -> tuple[list[dict], list[dict]]:
    return synthetic_rows(8, 1, ("dom",)), synthetic_rows(40, 2)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_model_dir, rows) -> Path:
    """select through the command line on JSONL files of ``rows``."""
    tmp = tmp_path_factory.mktemp("cli")
    domain, pool = write_jsonl(tmp / "domain.jsonl", rows[0]), write_jsonl(tmp / "pool.jsonl", rows[1])
    out = tmp / "out"
    assert (
        main(
            [
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
                str(N),
                *FLAGS,
            ]
        )
        == 0
    )
    return out


def cli_selected(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]


def test_api_writes_the_same_files_as_the_cli(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "api"
    sel = select(
        cli_run.parent / "domain.jsonl", cli_run.parent / "pool.jsonl", N, model=tiny_model_dir, out=out, **SETTINGS
    )
    assert (out / "selected.jsonl").read_bytes() == (cli_run / "selected.jsonl").read_bytes()
    assert (out / "scores.csv").read_bytes() == (cli_run / "scores.csv").read_bytes()
    assert (
        json.loads((out / "run.json").read_text())["inputs"] == json.loads((cli_run / "run.json").read_text())["inputs"]
    )
    # the Selection holds what the files say
    want = cli_selected(cli_run)
    assert sel.out == out and len(sel) == N
    assert sel.indices.tolist() == [r["pool_index"] for r in want]
    assert sel.scores.tolist() == pytest.approx([r["ntk_score"] for r in want])
    assert sel.records == [{k: v for k, v in r.items() if k not in ("ntk_score", "pool_index")} for r in want]
    assert sel.summary == json.loads((out / "run.json").read_text())
    table = np.genfromtxt(out / "scores.csv", delimiter=",", skip_header=1)
    assert np.array_equal(sel.pool_scores, table[:, 3], equal_nan=True)
    assert sel.votes.tolist() == table[sel.indices, 1].astype(int).tolist()
    assert sel.preselected.sum() == 4 * N  # M = 4N


def test_lists_of_dicts_and_a_temporary_folder(cli_run, tiny_model_dir, rows, tmp_path):
    domain, pool = rows
    sel = select(list(domain), list(pool), N, model=str(tiny_model_dir), **SETTINGS)
    want = cli_selected(cli_run)
    assert sel.indices.tolist() == [r["pool_index"] for r in want]
    assert sel.scores.tolist() == pytest.approx([r["ntk_score"] for r in want])
    assert sel.records == [pool[r["pool_index"]] for r in want]  # the records as given
    # the run's folder is gone; what the Selection holds stays usable
    run_folder = Path(sel.summary["outputs"]["selected"]).parent
    assert sel.out is None and not run_folder.exists()
    path = sel.to_jsonl(tmp_path / "sel.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == sel.records


def test_a_dataset_as_the_pool(cli_run, tiny_model_dir, rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    domain, pool = rows
    out = tmp_path / "ds"
    sel = select(domain, datasets.Dataset.from_list(pool), N, model=tiny_model_dir, out=out, **SETTINGS)
    assert (out / "selected.jsonl").read_bytes() == (cli_run / "selected.jsonl").read_bytes()
    assert sel.records == [pool[i] for i in sel.indices]
    assert sel.to_dataset().to_list() == sel.records
    # the Dataset went to the pipeline as a saved Arrow folder, not rewritten as JSON lines
    assert not sel.summary["inputs"]["pool"].endswith(".jsonl")
    # a view (select / shuffle) is read as its rows in its order
    view = datasets.Dataset.from_list(pool).select(list(reversed(range(len(pool)))))
    rev = select(domain, view, N, model=tiny_model_dir, **SETTINGS)
    assert rev.records == [pool[len(pool) - 1 - i] for i in rev.indices]


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"proj_dimm": 64}, "proj_dimm"),  # unknown name
        ({"proj_dim": "many"}, "proj_dim"),  # not a number
        ({"rank": 2.5}, "rank"),  # not a whole number
        ({"quiet": "yes"}, "quiet"),  # not True / False
        ({"target_modules": 3}, "target_modules"),
        ({"max_length": None}, "max_length"),
    ],
)
def test_a_bad_setting_is_a_user_error_naming_it(tmp_path, settings, name):
    with pytest.raises(UserError, match=re.escape(f"'{name}'")):
        select(["unused"], ["unused"], 3, out=tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_settings_are_read_like_flags(tmp_path):
    """Text numbers as argparse reads them; the last word from the keyword over the YAML file."""
    from ntk_selector.config import FeatureConfig, LoraSettings, TrainConfig
    from ntk_selector.settings import configs_from_settings

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("proj_dim: 1024\nrank: 4\n")
    c = configs_from_settings({"config": yaml_file, "rank": "16", "lr": "1e-3"}, "train")
    assert c[FeatureConfig].proj_dim == 1024 and c[LoraSettings].rank == 16 and c[TrainConfig].lr == 1e-3
    assert c[TrainConfig].epochs == 3.0  # train's own default, as on the command line


def test_public_names():
    for name in ntk_selector.__all__:
        assert hasattr(ntk_selector, name), name
    import importlib

    from ntk_selector import api

    # loading the stage modules does not replace the API's functions on the package
    assert importlib.import_module("ntk_selector.analysis.evaluate").run_evaluate and importlib.import_module(
        "ntk_selector.selection.score"
    )
    assert ntk_selector.evaluate is api.evaluate and ntk_selector.score is api.score and callable(ntk_selector.score)
    assert {
        "select",
        "Selection",
        "embed",
        "featurize",
        "load_features",
        "score",
        "train",
        "evaluate",
        "UserError",
        "FeatureConfig",
        "TrainConfig",
    } <= set(ntk_selector.__all__)


def test_featurize_load_features_and_score_match_the_cli(tiny_model_dir, rows, tmp_path):
    domain, pool = rows
    dom_file, pool_file = write_jsonl(tmp_path / "d.jsonl", domain), write_jsonl(tmp_path / "p.jsonl", pool[:12])
    common = ["--model", str(tiny_model_dir), "--proj-dim", "32", "--quiet"]
    for name, data in (("cli_d", dom_file), ("cli_p", pool_file)):
        assert main(["featurize", "--data", str(data), "--out", str(tmp_path / name), *common]) == 0
    assert (
        main(
            [
                "score",
                "--domain-features",
                str(tmp_path / "cli_d"),
                "--pool-features",
                str(tmp_path / "cli_p"),
                "--out",
                str(tmp_path / "cli_s"),
                "--quiet",
            ]
        )
        == 0
    )
    info = ntk_selector.featurize(domain, tmp_path / "api_d", model=tiny_model_dir, proj_dim=32, quiet=True)
    ntk_selector.featurize(pool_file, tmp_path / "api_p", model=tiny_model_dir, proj_dim=32, quiet=True)
    features, meta = load_features(tmp_path / "api_d")
    assert isinstance(features, np.memmap) and features.shape == (len(domain), 32) == (
        meta["counts"]["rows"],
        info["dim"],
    )
    assert np.array_equal(features, np.load(tmp_path / "cli_d" / "features.npy"))
    scores = ntk_selector.score(tmp_path / "api_d", tmp_path / "api_p")
    want = [float(line.split(",")[1]) for line in (tmp_path / "cli_s" / "scores.csv").read_text().splitlines()[1:]]
    assert scores.tolist() == pytest.approx(want, rel=1e-12)
    # the mean inner product with the domain rows, from the features themselves
    pool_features, _ = load_features(tmp_path / "api_p")
    assert scores == pytest.approx(
        np.asarray(pool_features, np.float64) @ np.asarray(features, np.float64).mean(0), rel=1e-5
    )


def test_embed_matches_the_cli(tiny_model_dir, rows, tmp_path):
    domain, _ = rows
    dom_file = write_jsonl(tmp_path / "d.jsonl", domain)
    for embedder in ("model", "minilm"):
        cli_out, api_out = tmp_path / f"cli_{embedder}", tmp_path / f"api_{embedder}"
        assert (
            main(
                [
                    "embed",
                    "--data",
                    str(dom_file),
                    "--out",
                    str(cli_out),
                    "--model",
                    str(tiny_model_dir),
                    "--embedder",
                    embedder,
                    "--quiet",
                ]
            )
            == 0
        )
        assert ntk_selector.embed(domain, api_out, model=tiny_model_dir, embedder=embedder, quiet=True) == len(domain)
        emb, meta = load_features(api_out)
        want = np.load(cli_out / "features.npy")
        assert emb.shape == want.shape and np.array_equal(emb, want), embedder
        # a rerun resumes: nothing left to compute
        assert ntk_selector.embed(dom_file, api_out, model=tiny_model_dir, embedder=embedder, quiet=True) == 0
    with pytest.raises(ntk_selector.UserError, match="embedder"):
        ntk_selector.embed(domain, tmp_path / "bad", model=tiny_model_dir, embedder="word2vec", quiet=True)


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_example_runs_as_written(tiny_model_dir, tmp_path, monkeypatch):
    """The README's example, verbatim, on the tiny model (the packaged model is too slow for a test)."""
    code = readme_python_example()
    n = int(re.search(r"\bn=(\d+)", code).group(1))
    write_jsonl(tmp_path / "domain.jsonl", synthetic_rows(6, 1, ("dom",)))
    write_jsonl(tmp_path / "pool.jsonl", synthetic_rows(n + 10, 2))
    monkeypatch.chdir(tmp_path)
    real_select = ntk_selector.select
    monkeypatch.setattr(
        ntk_selector,
        "select",
        lambda *a, **k: real_select(*a, **{"model": tiny_model_dir, "proj_dim": 16, "rank": 2, "quiet": True, **k}),
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    sel = scope["sel"]
    assert isinstance(sel, Selection) and len(sel) == n
    assert (tmp_path / sel.out / "selected.jsonl").exists()


def test_train_and_evaluate_match_the_cli(cli_run, tiny_model_dir, rows, tmp_path):
    """train on the domain plus a Selection, then evaluate: the same adapter and eval.json as the commands."""
    from safetensors.numpy import load_file

    domain, pool = rows
    dom_file = write_jsonl(tmp_path / "d.jsonl", domain)
    test_file = write_jsonl(tmp_path / "test.jsonl", pool[:6])
    common = ["--model", str(tiny_model_dir), "--rank", "2", "--batch-size", "4", "--epochs", "1", "--quiet"]
    assert (
        main(
            [
                "train",
                "--data",
                str(dom_file),
                "--data",
                str(cli_run / "selected.jsonl"),
                "--out",
                str(tmp_path / "cli_a"),
                *common,
            ]
        )
        == 0
    )
    sel = Selection(
        indices=np.array([0]),
        scores=np.array([0.0]),
        votes=np.array([0]),
        records=cli_selected(cli_run),
        summary={},
        out=None,
        pool_scores=np.array([0.0]),
        pool_votes=np.array([0]),
        preselected=np.array([True]),
    )
    state = ntk_selector.train(
        [domain, sel], tmp_path / "api_a", model=tiny_model_dir, rank=2, batch_size=4, epochs=1, quiet=True
    )
    cli_state = json.loads((tmp_path / "cli_a" / "training_state.json").read_text())
    assert state["losses"] == cli_state["losses"] and state["steps"] == cli_state["steps"] > 0
    a, b = (load_file(tmp_path / f / "adapter_model.safetensors") for f in ("cli_a", "api_a"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(test_file),
                "--adapter",
                str(tmp_path / "cli_a"),
                "--out",
                str(tmp_path / "cli_e"),
                "--model",
                str(tiny_model_dir),
                "--quiet",
            ]
        )
        == 0
    )
    result = ntk_selector.evaluate(
        pool[:6], tmp_path / "api_e", model=tiny_model_dir, adapter=tmp_path / "api_a", quiet=True
    )
    want = json.loads((tmp_path / "cli_e" / "eval.json").read_text())
    assert result["task"] == want["task"]
    for key in ("accuracy", "gold_nll", "nll_per_token"):
        assert result.get(key) == want.get(key)
    assert (tmp_path / "api_e" / "predictions.jsonl").read_text() == (
        tmp_path / "cli_e" / "predictions.jsonl"
    ).read_text()


def test_the_api_loads_on_first_use_not_with_every_module():
    """Importing one module (the projection) leaves the API, and the datasets library it reads records
    with, unloaded; the public names still resolve, also through dir() and ``import *``."""
    import subprocess
    import sys

    code = (
        "import sys, ntk_selector.features.projection as p, ntk_selector as n\n"
        "assert 'ntk_selector.api' not in sys.modules and 'datasets' not in sys.modules, sorted(sys.modules)\n"
        "assert 'select' in dir(n) and n.select.__module__ == 'ntk_selector.api'\n"
        "ns = {}\nexec('from ntk_selector import *', ns)\n"
        "assert set(n.__all__) <= set(ns) and ns['Selection'] is n.Selection\n"
        "try:\n    n.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
