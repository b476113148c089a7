"""Crash safety of the stages: kill -9 a featurize at random points, rerun, and get the features
of an uninterrupted run; the store's definition; refusal and --overwrite through the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import synthetic_rows, write_jsonl

from ntk_selector.cli.commands import main
from ntk_selector.features.runner import DELAY_ENV
from ntk_selector.io.store import DONE, PENDING, read_status

pytestmark = pytest.mark.usefixtures("one_thread")


def featurize_args(model, data, out, *extra):
    return [
        "featurize",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        str(model),
        "--proj-dim",
        "32",
        "--max-batch-size",
        "3",
        "--quiet",
        *extra,
    ]


def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", synthetic_rows(90, 7))
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(featurize_args(tiny_model_dir, data, ref)) == 0
    rng = np.random.default_rng(int(time.time()))
    env = {**os.environ, DELAY_ENV: "0.05", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ntk_selector", *featurize_args(tiny_model_dir, data, out)]
    kills = 0
    for _attempt in range(3):
        before = (read_status(out) != PENDING).sum() if (out / "status.npy").exists() else 0
        target = before + int(rng.integers(1, 25))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                if (read_status(out) != PENDING).sum() >= target:
                    break
            except (FileNotFoundError, ValueError, OSError):
                pass  # not created yet
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            assert (read_status(out) == PENDING).any(), "killed after the last row"
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
        proc.stderr.close()
    assert kills >= 2
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"]
    pending = int((read_status(out) == PENDING).sum())
    capsys.readouterr()
    assert main(featurize_args(tiny_model_dir, data, out)[:-1]) == 0
    # the rerun computed exactly the rows that were missing
    assert f"{pending} computed now" in capsys.readouterr().out
    a = np.load(ref / "features.npy")
    b = np.load(out / "features.npy")
    assert (read_status(out) == read_status(ref)).all() and (read_status(out) != PENDING).all()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    assert json.loads((out / "meta.json").read_text())["complete"]


def test_meta_holds_the_definition_and_mismatch_is_refused(tiny_model_dir, small_files, tmp_path, capsys):
    domain, _ = small_files
    out = tmp_path / "store"
    assert main(featurize_args(tiny_model_dir, domain, out)) == 0
    meta = json.loads((out / "meta.json").read_text())
    d = meta["definition"]
    for key in (
        "model",
        "model_fingerprint",
        "tokenizer_fingerprint",
        "adapter_fingerprint",
        "lora",
        "objective",
        "logits",
        "logits_mode",
        "projection",
        "proj_dim",
        "seed",
        "store_dtype",
        "compute_dtype",
        "max_length",
        "data_fingerprint",
        "data_rows",
        "chat_template",
    ):
        assert key in d, key
    assert d["objective"] == "ntk" and d["logits_mode"] == "shortcut" and d["proj_dim"] == 32 and d["max_length"] == 512
    assert d["lora"]["rank"] == 8 and meta["complete"] and meta["counts"]["done"] == 8
    before = np.load(out / "features.npy")
    capsys.readouterr()
    assert main(featurize_args(tiny_model_dir, domain, out, "--max-length", "64", "--objective", "ce")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds another run" in err and "max_length: 512 -> 64" in err and "objective: 'ntk' -> 'ce'" in err
    assert np.array_equal(np.load(out / "features.npy"), before)
    # the same definition resumes with nothing to do
    assert main(featurize_args(tiny_model_dir, domain, out)[:-1]) == 0
    assert "0 computed now" in capsys.readouterr().out
    assert main(featurize_args(tiny_model_dir, domain, out, "--max-length", "64", "--overwrite")) == 0
    assert json.loads((out / "meta.json").read_text())["definition"]["max_length"] == 64


def test_rerun_recomputes_only_rows_marked_missing(tiny_model_dir, small_files, tmp_path, capsys):
    domain, _ = small_files
    out = tmp_path / "store"
    assert main(featurize_args(tiny_model_dir, domain, out)) == 0
    full = np.load(out / "features.npy")
    status = np.load(out / "status.npy", mmap_mode="r+")
    status[[1, 5, 6]] = PENDING
    status.flush()
    del status
    feats = np.load(out / "features.npy", mmap_mode="r+")
    feats[[1, 5, 6]] = 0.0
    feats[0] = 123.0  # a done row changed on disk fails its checksum and is recomputed too
    feats.flush()
    del feats
    capsys.readouterr()
    assert main(featurize_args(tiny_model_dir, domain, out)[:-1]) == 0
    assert "4 computed now" in capsys.readouterr().out
    got = np.load(out / "features.npy")
    assert np.array_equal(got, full)
    assert (read_status(out) == DONE).all()


def test_select_rerun_skips_finished_stages(tiny_model_dir, small_files, tmp_path, monkeypatch):
    from ntk_selector.selection import pipeline

    domain, pool = small_files
    args = [
        "select",
        "--domain",
        str(domain),
        "--pool",
        str(pool),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_model_dir),
        "--n",
        "4",
        "--proj-dim",
        "16",
        "--quiet",
        "--rank",
        "4",
    ]
    assert main(args) == 0
    first = (tmp_path / "o" / "selected.jsonl").read_text()
    calls = []
    for name in ("train_lora",):
        monkeypatch.setattr("ntk_selector.selection.stages." + name, lambda *a, _name=name, **k: calls.append(_name))
    monkeypatch.setattr("ntk_selector.selection.stages.reverse_knn", lambda *a, **k: calls.append("reverse_knn"))
    from ntk_selector.selection import stages

    real_rows = stages.run_rows

    def counting_rows(*a, **k):
        computed = real_rows(*a, **k)
        if computed:
            calls.append(("rows computed", computed))
        return computed

    monkeypatch.setattr(stages, "run_rows", counting_rows)
    real = pipeline.preselect
    monkeypatch.setattr(pipeline, "preselect", lambda *a, **k: calls.append("preselect") or real(*a, **k))
    assert main(args) == 0
    assert calls == []
    assert (tmp_path / "o" / "selected.jsonl").read_text() == first
    assert not list((tmp_path / "o").glob("*.tmp"))


def test_stores_of_prompt_response_data_keep_the_definition_they_had_before_formats(
    tiny_model_dir, small_files, tmp_path, capsys
):
    """Stores and warm-ups written before record formats existed (all prompt/response) must still
    resume: their data definition is unchanged for prompt/response data, and names the format only
    for the newer formats, so a chat file's store is never taken for a prompt/response one."""
    domain, _ = small_files
    before_formats = {
        "data_fingerprint",
        "data_rows",
        "max_length",
        "chat_template",
        "prompt_field",
        "response_field",
        "messages_field",
        "response_tokens",
    }
    out = tmp_path / "store"
    assert main(featurize_args(tiny_model_dir, domain, out)) == 0
    d = json.loads((out / "meta.json").read_text())["definition"]
    assert before_formats <= set(d) and "format" not in d
    rows = [json.loads(line) for line in domain.read_text().splitlines()]
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            for r in rows
        ],
    )
    assert main(featurize_args(tiny_model_dir, chat, tmp_path / "chat_store")) == 0
    assert json.loads((tmp_path / "chat_store" / "meta.json").read_text())["definition"]["format"] == "messages"


def test_bf16_projection_is_part_of_the_definition(tiny_model_dir, small_files, tmp_path, capsys):
    """--projection-dtype bfloat16 is named in the store's definition (float32, the default, is not, so
    older stores resume); a store of one is never resumed or scored with the other."""
    from ntk_selector.errors import UserError
    from ntk_selector.io.store import check_same_features

    domain, _ = small_files
    fp, bf = tmp_path / "fp32", tmp_path / "bf16"
    assert main(featurize_args(tiny_model_dir, domain, fp)) == 0
    meta_fp = json.loads((fp / "meta.json").read_text())
    assert "projection_dtype" not in meta_fp["definition"]
    capsys.readouterr()
    assert main(featurize_args(tiny_model_dir, domain, fp, "--projection-dtype", "bfloat16")) == 2
    assert "projection_dtype: None -> 'bfloat16'" in capsys.readouterr().err
    assert main(featurize_args(tiny_model_dir, domain, bf, "--projection-dtype", "bfloat16")) == 0
    meta_bf = json.loads((bf / "meta.json").read_text())
    assert meta_bf["definition"]["projection_dtype"] == "bfloat16"
    a, b = np.load(fp / "features.npy"), np.load(bf / "features.npy")
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 1e-2, rel
    with pytest.raises(UserError, match="projection_dtype"):
        check_same_features(fp, meta_fp, bf, meta_bf)
