"""The pool index: its features and embeddings equal featurize/embed of the same rows with no
adapter; select --index equals scoring the index by hand; a crashed index resumes to the
uninterrupted one; mismatched model, seed, projection or LoRA settings are refused."""

import csv
import json

import numpy as np
import pytest
from conftest import make_model, make_tokenizer, synthetic_rows, write_jsonl

from ntk_selector.cli.commands import main
from ntk_selector.io.store import DONE, open_store
from ntk_selector.selection.index import PairStore, open_pool_index
from ntk_selector.selection.preselect import default_m_k, reverse_knn

pytestmark = pytest.mark.usefixtures("one_thread")

EMB = ["--rank", "4", "--max-batch-size", "3", "--quiet"]
SPACE = ["--proj-dim", "32", *EMB]
API_EMB = {"rank": 4, "max_batch_size": 3}  # EMB as API settings


@pytest.fixture(scope="module")
def pool_and_index(tiny_model_dir, tmp_path_factory):
    """A pool (with one row whose response is empty) and its index, built once for the module."""
    tmp = tmp_path_factory.mktemp("index")
    rows = synthetic_rows(40, 2)
    rows[7]["response"] = ""
    pool = write_jsonl(tmp / "pool.jsonl", rows)
    domain = write_jsonl(tmp / "domain.jsonl", synthetic_rows(8, 1, ("dom",)))
    assert main(["index", "--pool", str(pool), "--out", str(tmp / "idx"), "--model", str(tiny_model_dir), *SPACE]) == 0
    return tmp, pool, domain


def test_index_equals_featurize_and_embed_of_the_base_model(tiny_model_dir, pool_and_index):
    tmp, pool, _ = pool_and_index
    common = ["--data", str(pool), "--model", str(tiny_model_dir), *SPACE]
    assert main(["featurize", *common, "--out", str(tmp / "feat")]) == 0
    assert main(["embed", "--data", str(pool), "--model", str(tiny_model_dir), *EMB, "--out", str(tmp / "emb")]) == 0
    index = open_pool_index(tmp / "idx")
    feat, f_status, f_meta = open_store(tmp / "feat")
    emb, e_status, _ = open_store(tmp / "emb")
    assert np.array_equal(index.status, f_status) and np.array_equal(index.status, e_status)
    assert index.status[7] != DONE and (index.status != DONE).sum() == 1
    assert np.abs(np.asarray(feat)).max() > 0
    np.testing.assert_allclose(index.features, feat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(index.embeddings, emb, rtol=1e-5, atol=1e-6)
    # the index's feature store is defined exactly like featurize's (so the two are interchangeable)
    idx_def = open_store(tmp / "idx" / "features")[2]["definition"]
    assert idx_def == f_meta["definition"]


def test_select_index_equals_scoring_the_index_by_hand(tiny_model_dir, pool_and_index):
    tmp, pool, domain = pool_and_index
    out = tmp / "sel"
    assert (
        main(["select", "--index", str(tmp / "idx"), "--domain", str(domain), "-n", "5", "--out", str(out), "--quiet"])
        == 0
    )
    # by hand: the domain through featurize / embed with the same settings, votes, mean inner product
    common = ["--data", str(domain), "--model", str(tiny_model_dir), *SPACE]
    assert main(["featurize", *common, "--out", str(tmp / "dfeat")]) == 0
    assert main(["embed", "--data", str(domain), "--model", str(tiny_model_dir), *EMB, "--out", str(tmp / "demb")]) == 0
    index = open_pool_index(tmp / "idx")
    d_feat, d_status, _ = open_store(tmp / "dfeat")
    d_emb, _, _ = open_store(tmp / "demb")
    valid = index.status == DONE
    m, k = default_m_k(5, int(valid.sum()))
    pre = reverse_knn(np.asarray(d_emb), np.asarray(index.embeddings), m, k, pool_valid=valid)
    direction = np.asarray(d_feat, dtype=np.float64)[d_status == DONE].mean(0)
    expected = np.asarray(index.features, dtype=np.float64)[pre.order] @ direction
    expected_top = pre.order[np.lexsort((pre.order, -expected))][:5]
    with open(out / "scores.csv") as fh:
        table = list(csv.DictReader(fh))
    got = {int(r["pool_index"]): float(r["ntk_score"]) for r in table if r["ntk_score"]}
    assert sorted(got) == sorted(pre.order.tolist())
    np.testing.assert_allclose([got[i] for i in pre.order], expected, rtol=1e-6)
    assert [int(r["votes"]) for r in table] == pre.votes.tolist()
    selected = [json.loads(line)["pool_index"] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert selected == expected_top.tolist()
    run = json.loads((out / "run.json").read_text())
    assert run["index"]["mode"] == "features" and run["index"]["pool_rows_through_model"] == 0


def test_preselect_mode_featurizes_the_index_candidates_with_the_warm_model(pool_and_index):
    tmp, _, domain = pool_and_index
    args = ["select", "--index", str(tmp / "idx"), "--domain", str(domain), "-n", "5", "--quiet", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp / "pre"), "--index-mode", "preselect"]) == 0
    assert main([*args, "--out", str(tmp / "feat_mode")]) == 0

    def read(d):
        return list(csv.DictReader(open(tmp / d / "scores.csv")))

    pre_rows, feat_rows = read("pre"), read("feat_mode")
    # the same candidates (the index pre-selects in both modes), scored by other features
    assert [r["preselected"] for r in pre_rows] == [r["preselected"] for r in feat_rows]
    cand = [i for i, r in enumerate(pre_rows) if r["preselected"] == "1"]
    a = np.array([float(pre_rows[i]["ntk_score"]) for i in cand])
    b = np.array([float(feat_rows[i]["ntk_score"]) for i in cand])
    assert not np.allclose(a, b)
    # and the warm model's candidate features are those of featurize with the warm adapter
    stores = [p for p in (tmp / "pre" / "stages").iterdir() if p.name.startswith("features_pool_")]
    assert len(stores) == 1 and open_store(stores[0])[0].shape[0] == len(cand)
    pre_run, feat_run = (json.loads((tmp / d / "run.json").read_text()) for d in ("pre", "feat_mode"))
    assert pre_run["index"]["pool_rows_through_model"] == len(cand)
    # what each run's own stores cost, and the index build's cost once
    assert set(pre_run["store_seconds"]) == {"index_embed_domain", "features_domain", stores[0].name}
    assert set(feat_run["store_seconds"]) == {"index_embed_domain", "index_features_domain"}
    assert feat_run["index"]["build_work_seconds"] > 0


def test_crashed_index_resumes_to_the_uninterrupted_one(tiny_model_dir, pool_and_index, tmp_path, monkeypatch):
    _, pool, _ = pool_and_index
    calls = {"n": 0}
    real_write = PairStore.write

    def crashing_write(self, rows, values, empty=None):
        calls["n"] += 1
        if calls["n"] == 4:  # the embedding rows land, the feature rows never do
            self.embeddings.write(rows, values[:, self.features.dim :], empty)
            raise RuntimeError("crash")
        return real_write(self, rows, values, empty)

    monkeypatch.setattr(PairStore, "write", crashing_write)
    args = ["index", "--pool", str(pool), "--out", str(tmp_path / "idx"), "--model", str(tiny_model_dir), *SPACE]
    assert main(args) == 1
    status = open_store.__globals__["read_status"](tmp_path / "idx" / "features")
    assert 0 < (status == DONE).sum() < len(status)
    monkeypatch.setattr(PairStore, "write", real_write)
    assert main(args) == 0
    ref, got = open_pool_index(pool_and_index[0] / "idx"), open_pool_index(tmp_path / "idx")
    assert np.array_equal(ref.features, got.features) and np.array_equal(ref.embeddings, got.embeddings)
    assert np.array_equal(ref.status, got.status)


@pytest.mark.parametrize(
    "change, differs",
    [
        (["--seed", "1"], "seed: 0 -> 1"),
        (["--proj-dim", "16"], "proj_dim: 32 -> 16"),
        (["--rank", "2"], "lora.rank: 4 -> 2"),
        (["--model"], "model_fingerprint"),
    ],
)
def test_reuse_with_other_settings_is_refused(
    tiny_model_dir, pool_and_index, tmp_path_factory, capsys, change, differs
):
    tmp, pool, domain = pool_and_index
    args = ["--pool", str(pool), "--out", str(tmp / "idx"), "--model", str(tiny_model_dir), *SPACE]
    if change == ["--model"]:
        other = tmp_path_factory.mktemp("other-model")
        make_model(len(make_tokenizer()), seed=5).save_pretrained(other)
        make_tokenizer().save_pretrained(other)
        change = ["--model", str(other)]
    capsys.readouterr()
    assert main(["index", *args, *change]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and differs in err, err
    # select against the index with a conflicting setting is refused too, naming it
    assert (
        main(
            [
                "select",
                "--index",
                str(tmp / "idx"),
                "--domain",
                str(domain),
                "-n",
                "3",
                "--out",
                str(tmp / "refused"),
                "--quiet",
                *change,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "built with other settings" in err and differs.split(":")[0] in err, err


def test_select_index_refuses_another_pool(pool_and_index, tmp_path, capsys):
    tmp, _, domain = pool_and_index
    other = write_jsonl(tmp_path / "other.jsonl", synthetic_rows(40, 9))
    assert (
        main(
            [
                "select",
                "--index",
                str(tmp / "idx"),
                "--pool",
                str(other),
                "--domain",
                str(domain),
                "-n",
                "3",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "is not the pool indexed" in capsys.readouterr().err


def test_embed_prefix_from_the_full_forward_equals_embedding_the_prefix(tiny_model_dir, pool_and_index, tmp_path):
    """--embed-max-length L: the index pools the first L positions of the featurizer's forward; embed
    runs the model on the L-token prefix alone. Causal attention makes them the same."""
    _, pool, _ = pool_and_index
    assert (
        main(
            [
                "index",
                "--pool",
                str(pool),
                "--out",
                str(tmp_path / "idx"),
                "--model",
                str(tiny_model_dir),
                *SPACE,
                "--embed-max-length",
                "9",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                "--data",
                str(pool),
                "--model",
                str(tiny_model_dir),
                *EMB,
                "--embed-max-length",
                "9",
                "--out",
                str(tmp_path / "emb"),
            ]
        )
        == 0
    )
    full = open_pool_index(pool_and_index[0] / "idx").embeddings
    got, emb = open_pool_index(tmp_path / "idx").embeddings, open_store(tmp_path / "emb")[0]
    np.testing.assert_allclose(got, emb, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, full, atol=1e-3)  # rows are longer than 9 tokens: the prefix matters


def test_minilm_embedder(tiny_model_dir, pool_and_index, tmp_path):
    from ntk_selector.config import DataConfig
    from ntk_selector.io.formats import conversation_text, to_conversation
    from ntk_selector.io.records import read_records
    from ntk_selector.model.sentence_encoder import SentenceEncoder

    tmp, pool, domain = pool_and_index
    assert (
        main(
            [
                "index",
                "--pool",
                str(pool),
                "--out",
                str(tmp_path / "idx"),
                "--model",
                str(tiny_model_dir),
                *SPACE,
                "--embedder",
                "minilm",
            ]
        )
        == 0
    )
    index = open_pool_index(tmp_path / "idx")
    assert index.embeddings.shape == (40, 384)
    np.testing.assert_array_equal(index.features, open_pool_index(tmp / "idx").features)  # the features do not change
    # reference: the encoder on each row alone (no batch padding), unit rows, zeros where no response
    enc = SentenceEncoder()
    convs = [to_conversation(r, DataConfig()) for r in read_records(pool)]
    ref = np.concatenate([enc.embed([conversation_text(c)]) for c in convs])
    ok = index.status == DONE
    np.testing.assert_allclose(index.embeddings[ok], ref[ok], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.embeddings[ok], axis=1), 1.0, atol=1e-5)
    assert not np.asarray(index.embeddings)[~ok].any()
    assert (
        main(
            [
                "select",
                "--index",
                str(tmp_path / "idx"),
                "--domain",
                str(domain),
                "-n",
                "4",
                "--out",
                str(tmp_path / "sel"),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "sel" / "run.json").read_text())["index"]["embedder"] == "minilm"


def two_node_run(*args, timeout=300):
    """Two torchrun launchers, one per simulated node (1 process each), meeting at 127.0.0.1."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "ntk_selector",
                *map(str, args),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    results = [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    return results


def test_two_nodes_index_and_select_equal_one_process(tiny_model_dir, pool_and_index, tmp_path):
    tmp, pool, domain = pool_and_index
    for rc, err in two_node_run("index", "--pool", pool, "--out", tmp_path / "idx", "--model", tiny_model_dir, *SPACE):
        assert rc == 0, err[-3000:]
    one, two = open_pool_index(tmp / "idx"), open_pool_index(tmp_path / "idx")
    assert np.array_equal(one.features, two.features) and np.array_equal(one.embeddings, two.embeddings)
    assert np.array_equal(one.status, two.status)
    common = ["--domain", domain, "-n", "5", "--quiet"]
    assert main(["select", "--index", str(tmp / "idx"), *map(str, common), "--out", str(tmp_path / "sel1")]) == 0
    for rc, err in two_node_run("select", "--index", tmp_path / "idx", *common, "--out", tmp_path / "sel2"):
        assert rc == 0, err[-3000:]
    for name in ("selected.jsonl", "scores.csv"):
        assert (tmp_path / "sel1" / name).read_text() == (tmp_path / "sel2" / name).read_text(), name
    assert json.loads((tmp_path / "sel2" / "run.json").read_text())["world_size"] == 2


def test_index_once_benchmark_on_the_tiny_model(tiny_model_dir, pool_and_index, tmp_path):
    from benchmarks.index_once import index_once as bench

    _, pool, domain = pool_and_index
    args = [
        "--pool",
        str(pool),
        "--domain",
        str(domain),
        "-n",
        "5",
        "--out",
        str(tmp_path),
        "--model",
        str(tiny_model_dir),
        "--modes",
        "features",
        "--coarse",
        "model:9",
        "--",
        *SPACE,
    ]
    res = bench.main(args)
    assert bench.main(args) == res  # a rerun keeps what was measured (resume after a crash)
    r = res["domains"][domain.stem]

    def sel(d):
        return {
            json.loads(x)["pool_index"]
            for x in (tmp_path / domain.stem / d / "selected.jsonl").read_text().splitlines()
        }

    assert r["features"]["top_n_overlap"] == len(sel("paper") & sel("index_features")) / 5
    assert -1.0 <= r["features"]["spearman_on_paper_candidates"] <= 1.0
    assert 0.0 <= r["coarse_recall"]["model:9"] <= 1.0 and res["index_seconds"] > 0


def test_the_api_index_equals_the_command_line_index(tiny_model_dir, pool_and_index, tmp_path):
    """``ntk_selector.index`` builds the same index as ``ntk-selector index``, and ``select`` serves a
    domain from it with the same selection as the command line."""
    import ntk_selector

    tmp, pool, domain = pool_and_index
    info = ntk_selector.index(pool, tmp_path / "idx", model=tiny_model_dir, proj_dim=32, **API_EMB, quiet=True)
    assert info["computed"] == 40
    mine, theirs = open_pool_index(tmp_path / "idx"), open_pool_index(tmp / "idx")
    assert mine.meta["definitions"] == theirs.meta["definitions"]
    assert np.array_equal(np.asarray(mine.features), np.asarray(theirs.features))
    sel = ntk_selector.select(domain, None, 5, index=str(tmp_path / "idx"), quiet=True)
    assert (
        main(
            [
                "select",
                "--index",
                str(tmp / "idx"),
                "--domain",
                str(domain),
                "-n",
                "5",
                "--out",
                str(tmp_path / "cli"),
                "--quiet",
            ]
        )
        == 0
    )
    cli_rows = [json.loads(x)["pool_index"] for x in (tmp_path / "cli" / "selected.jsonl").read_text().splitlines()]
    assert sel.indices.tolist() == cli_rows
