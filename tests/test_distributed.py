"""torchrun with 2 CPU processes (gloo): rows sharded into one store, results equal to one process;
errors stop every rank with one line. Plus the sharding logic in-process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_rows

from ntk_selector import distributed
from ntk_selector.cli.commands import main
from ntk_selector.config import DataConfig
from ntk_selector.features.runner import run_rows
from ntk_selector.io.store import RowStore, open_store

pytestmark = pytest.mark.usefixtures("one_thread")


EXIT_PROBE = Path(__file__).with_name("torchrun_exit_probe.py")


def torchrun(*args, nproc=2, timeout=240, entry=("-m", "ntk_selector")):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *map(str, entry),
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, "OMP_NUM_THREADS": "1"})


def test_env_and_shard():
    assert distributed.current() == distributed.Dist(0, 1, 0)  # not under torchrun: one process
    d = distributed.Dist(rank=1, world=3)
    assert list(distributed.shard(list(range(8)), d)) == [1, 4, 7]
    assert sorted(sum((list(distributed.shard(range(8), distributed.Dist(r, 3))) for r in range(3)), [])) == list(
        range(8)
    )


def test_ranks_write_disjoint_rows_that_equal_one_process(tmp_path, tok):
    """run_rows as rank 0 and 1 of 2 (in turn) fills the store exactly like one process."""
    from ntk_selector.io.formats import to_conversation

    cfg = DataConfig(max_batch_size=3, token_budget=10_000)
    convs = [to_conversation(r, cfg) for r in synthetic_rows(23, 3)]

    def compute(batch):  # a deterministic per-row function of the tokens
        import torch

        ids = batch.input_ids.float() * batch.attention_mask
        return torch.stack([ids.sum(1), batch.attention_mask.sum(1).float(), batch.target_mask.sum(1).float()], 1)

    with RowStore(tmp_path / "one", len(convs), 3, "float32", {"x": 1}) as s:
        assert run_rows(convs, tok, cfg, s, compute, quiet=True) == 23
        s.finish()
    with RowStore(tmp_path / "two", len(convs), 3, "float32", {"x": 1}) as s0:
        with RowStore(tmp_path / "two", len(convs), 3, "float32", {"x": 1}, writer=False) as s1:
            n1 = run_rows(convs, tok, cfg, s1, compute, quiet=True, rank=1, world=2)
        n0 = run_rows(convs, tok, cfg, s0, compute, quiet=True, rank=0, world=2)
        assert n0 + n1 == 23 and n0 > 0 and n1 > 0
        s0.finish()
    one, two = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_torchrun_select_equals_one_process(tiny_model_dir, small_files, tmp_path, monkeypatch):
    """2 ranks: embed and featurize sharded into the same stores, bit for bit, and the same selection."""
    domain, pool = small_files
    # -n: torchrun's own parser rejects "--n" as an ambiguous abbreviation of its flags
    common = [
        "--domain",
        domain,
        "--pool",
        pool,
        "--model",
        tiny_model_dir,
        "-n",
        "5",
        "--proj-dim",
        "32",
        "--rank",
        "4",
        "--batch-size",
        "4",
        "--max-batch-size",
        "3",
        "--quiet",
    ]
    assert main(["select", *map(str, common), "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("EXIT_PROBE_DIR", str(tmp_path))
    proc = torchrun("select", *common, "--out", tmp_path / "two", entry=(EXIT_PROBE,))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the group is freed before the interpreter shuts down: no gloo thread is left to abort a finished run
    probes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(p["gloo_threads"] == [] for p in probes), probes
    for name in ("selected.jsonl", "scores.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    for store in ("embed_domain", "embed_pool", "features_domain", "features_pool"):
        one, two = open_store(tmp_path / "one" / "stages" / store), open_store(tmp_path / "two" / "stages" / store)
        assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]), store
        assert one[2]["definition"] == two[2]["definition"] and two[2]["complete"]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2


def test_torchrun_error_stops_every_rank_with_one_line(tiny_model_dir, small_files, tmp_path):
    domain, _ = small_files
    common = ["--data", domain, "--model", tiny_model_dir, "--proj-dim", "32", "--out", tmp_path / "st"]
    assert main(["featurize", *map(str, common), "--quiet"]) == 0
    bad = torchrun("featurize", *common, "--max-length", "64", timeout=120)
    assert bad.returncode != 0
    ours = [line for line in bad.stderr.splitlines() if line.startswith("ntk-selector")]
    assert len(ours) == 1, bad.stderr
    assert "holds another run" in ours[0] and "max_length: 512 -> 64" in ours[0]
    # torchrun's launcher reports the failed job in its own words; no traceback comes from our ranks
    assert "ntk_selector/" not in bad.stderr
