"""--token-budget auto: sized from a (faked) device's memory, halved on a (faked) out-of-memory error,
and never a change in what a stage writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_jsonl

from ntk_selector.cli.commands import build_parser, main
from ntk_selector.config import DataConfig
from ntk_selector.errors import UserError
from ntk_selector.features import budget
from ntk_selector.features.budget import AUTO, CPU_BUDGET, MEMORY_SHARE, PROBE_TOKENS, TokenBudget, budget_for_memory
from ntk_selector.io.store import DONE, PENDING, read_status

pytestmark = pytest.mark.usefixtures("one_thread")
MiB, GiB = 1 << 20, 1 << 30


class FakeDevice:
    """Device memory as the budget module queries it: what is allocated, a peak that the fake work
    raises by ``per_token`` bytes a padded token, and a fixed amount free."""

    def __init__(self, monkeypatch, free: int, per_token: int, allocated: int = 3 * GiB) -> None:
        self.free, self.per_token, self.allocated = free, per_token, allocated
        self.peak = allocated
        self.released = 0
        monkeypatch.setattr(budget, "free_bytes", lambda device: self.free)
        monkeypatch.setattr(budget, "allocated_bytes", lambda device: self.allocated)
        monkeypatch.setattr(budget, "peak_bytes", lambda device: self.peak)
        monkeypatch.setattr(budget, "reset_peak", lambda device: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(budget, "release", lambda device: setattr(self, "released", self.released + 1))

    def work(self, tokens: int) -> None:
        self.peak = max(self.peak, self.allocated + tokens * self.per_token)


def oom(message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> BaseException:
    return torch.OutOfMemoryError(message)


def test_auto_is_the_default_and_a_number_still_wins():
    assert DataConfig().token_budget == AUTO
    assert DataConfig(token_budget="4096").token_budget == 4096
    parser = build_parser()
    from ntk_selector.cli.commands import _configs

    for given, want in (("auto", AUTO), ("AUTO", AUTO), ("512", 512)):
        args = parser.parse_args(["embed", "--data", "x", "--out", "y", "--token-budget", given])
        assert _configs(args, (DataConfig,))[DataConfig].token_budget == want
    with pytest.raises(UserError, match="--token-budget must be a whole number or auto, got 'lots'"):
        DataConfig(token_budget="lots")
    with pytest.raises(UserError, match="at least 1"):
        DataConfig(token_budget=0)


def test_budget_for_memory():
    assert budget_for_memory(10 * GiB, 1 * MiB) == int(MEMORY_SHARE * 10240) // 64 * 64
    assert budget_for_memory(10 * GiB, 2 * MiB) == int(MEMORY_SHARE * 5120) // 64 * 64
    assert budget_for_memory(1 * MiB, 1 * MiB, floor=300) == 300  # never below what was measured to fit
    assert budget_for_memory(10**15, 1) == budget.MAX_BUDGET
    assert budget_for_memory(10 * GiB, 0) == budget.MAX_BUDGET


def test_auto_budget_is_measured_on_the_longest_rows_of_a_faked_gpu(monkeypatch):
    dev = FakeDevice(monkeypatch, free=20 * GiB, per_token=2 * MiB)
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 300, size=500)]
    calls: list[list[int]] = []

    def run(members: list[int]) -> None:
        calls.append(members)
        dev.work(budget.padded_tokens(members, lengths))

    b = TokenBudget(AUTO, "cuda", "featurize pool", quiet=True)
    with budget.recording() as chosen:
        got = b.resolve(lengths, run)
    want = budget_for_memory(20 * GiB, 2 * MiB)
    assert got == want == int(0.7 * 20 * 1024 / 2) // 64 * 64
    assert chosen == {"featurize pool": got}
    # measured twice (the first call allocates caches) on the longest rows, within the probe size
    assert len(calls) == 2 and calls[0] == calls[1]
    longest = sorted(lengths, reverse=True)
    assert sorted(lengths[i] for i in calls[0]) == sorted(longest[: len(calls[0])])
    assert budget.padded_tokens(calls[0], lengths) <= PROBE_TOKENS
    # resolved once: later chunks plan with the same budget, without measuring again
    assert b.resolve(lengths, run) == got and len(calls) == 2

    # half the free memory, half the budget; twice the cost a token, half the budget
    assert TokenBudget(AUTO, "cuda", "s", quiet=True).resolve(lengths, lambda m: None) > 0
    dev.free = 10 * GiB
    assert TokenBudget(AUTO, "cuda", "s", quiet=True).resolve(lengths, run) == budget_for_memory(10 * GiB, 2 * MiB)


def test_cpu_auto_and_explicit_numbers_do_not_measure(capsys):
    def run(members):
        raise AssertionError("no measurement expected")

    assert TokenBudget(AUTO, "cpu", "embed", quiet=True).resolve([10, 20], run) == CPU_BUDGET
    assert TokenBudget(777, "cuda", "embed").resolve([10, 20], run) == 777
    budget._said.clear()
    TokenBudget(AUTO, "cpu", "embed").resolve([10], run)
    TokenBudget(AUTO, "cpu", "featurize").resolve([10], run)
    err = capsys.readouterr().err
    assert err.count("token budget: 2048 padded tokens a batch (auto on a CPU)") == 1


def test_the_measurement_backs_off_when_the_probe_does_not_fit(monkeypatch, capsys):
    dev = FakeDevice(monkeypatch, free=8 * GiB, per_token=1 * MiB)
    lengths = [100] * 40
    tried: list[int] = []

    def run(members):
        tokens = budget.padded_tokens(members, lengths)
        tried.append(tokens)
        if tokens > 500:
            raise oom()
        dev.work(tokens)

    got = TokenBudget(AUTO, "cuda", "embed pool").resolve(lengths, run)
    assert tried[0] == 2000 and max(t for t in tried if t <= 500) == 500
    assert got == budget_for_memory(8 * GiB, 1 * MiB, floor=500) and dev.released > 0
    assert "token budget for embed pool:" in capsys.readouterr().err
    # other errors are not swallowed
    with pytest.raises(ValueError):
        TokenBudget(AUTO, "cuda", "x").resolve(lengths, lambda m: (_ for _ in ()).throw(ValueError("bad")))


def test_out_of_memory_halves_the_budget_and_retries_the_batch(monkeypatch, capsys):
    FakeDevice(monkeypatch, free=8 * GiB, per_token=1 * MiB)
    lengths = [30, 30, 29, 28, 28, 20, 12, 10]
    members = list(range(8))
    seen: list[list[int]] = []

    def fn(piece):
        if budget.padded_tokens(piece, lengths) > 100:
            raise oom()
        seen.append(piece)
        return [i * 10 for i in piece]

    b = TokenBudget(240, "cuda", "featurize domain")
    b.resolve(lengths, fn)
    with budget.recording() as chosen:
        got = b.run(members, lengths, fn)
    assert [i for piece, _ in got for i in piece] == members  # every row once, in order
    assert all(out == [i * 10 for i in piece] for piece, out in got)
    assert all(budget.padded_tokens(piece, lengths) <= 100 for piece in seen)
    assert b.value == 60 and b.planned == 240  # 240 -> 120 -> 60; the plan keeps the budget it started with
    assert chosen == {"featurize domain": 240, "featurize domain (after out-of-memory)": 60}
    err = capsys.readouterr().err
    assert (
        "token budget for featurize domain: 120 padded tokens a batch (halved after running out of device memory)"
        in err
    )
    # later batches are cut to the lowered budget before they run (no second failure)
    seen.clear()
    b.run(members, lengths, fn)
    assert len(seen) == 4


def test_a_row_that_does_not_fit_alone_is_a_clear_error(monkeypatch):
    FakeDevice(monkeypatch, free=8 * GiB, per_token=1 * MiB)
    b = TokenBudget(4096, "cuda", "evaluate")
    with pytest.raises(UserError, match="evaluate: a single row of 900 tokens does not fit .* lower --max-length"):
        b.run([0, 1], [900, 10], lambda piece: (_ for _ in ()).throw(oom()))


# ----------------------------------------------------------------------------- stores and runs


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
        "64",
        *extra,
    ]


def test_store_features_do_not_depend_on_the_budget_its_back_off_or_a_resume_with_another(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """One store computed with a large budget, one with many small batches, one on a faked GPU whose
    batches over 300 padded tokens run out of memory, and one resumed with another budget: the
    same features, and no refusal (the budget is not part of a store's definition)."""
    from ntk_selector.features.gradients import GradientFeaturizer
    from ntk_selector.selection import stages

    data = write_jsonl(tmp_path / "rows.jsonl", synthetic_rows(30, 5))
    ref = tmp_path / "ref"
    assert main(featurize_args(tiny_model_dir, data, ref, "--token-budget", "100000", "--quiet")) == 0
    want = np.load(ref / "features.npy")

    small = tmp_path / "small"
    assert main(featurize_args(tiny_model_dir, data, small, "--token-budget", "40", "--quiet")) == 0
    np.testing.assert_allclose(np.load(small / "features.npy"), want, rtol=1e-4, atol=1e-6)

    dev = FakeDevice(monkeypatch, free=1 * GiB, per_token=1 * MiB)
    real = GradientFeaturizer.features
    sizes: list[int] = []

    def features(self, batch):
        tokens = int(batch.input_ids.numel())
        if tokens > 300:
            raise oom()
        sizes.append(tokens)
        dev.work(tokens)
        return real(self, batch)

    monkeypatch.setattr(GradientFeaturizer, "features", features)
    monkeypatch.setattr(stages, "model_device", lambda model: torch.device("cuda"))
    gpu = tmp_path / "gpu"
    capsys.readouterr()
    assert main(featurize_args(tiny_model_dir, data, gpu)) == 0  # --token-budget auto, the default
    err = capsys.readouterr().err
    planned = budget_for_memory(1 * GiB, 1 * MiB)
    assert f"token budget for featurize: {planned} padded tokens a batch (auto:" in err
    assert "(halved after running out of device memory)" in err
    assert max(sizes) <= 300
    np.testing.assert_allclose(np.load(gpu / "features.npy"), want, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(GradientFeaturizer, "features", real)

    status = np.load(gpu / "status.npy", mmap_mode="r+")
    status[[0, 7, 21]] = PENDING
    status.flush()
    del status
    assert main(featurize_args(tiny_model_dir, data, gpu, "--token-budget", "64", "--quiet")) == 0
    assert (read_status(gpu) == DONE).all()
    np.testing.assert_allclose(np.load(gpu / "features.npy"), want, rtol=1e-4, atol=1e-6)


def test_run_json_keeps_each_stages_budget(tiny_model_dir, small_files, tmp_path):
    domain, pool = small_files
    out = tmp_path / "sel"
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
                "4",
                "--proj-dim",
                "32",
                "--quiet",
                "--lora-rank",
                "4",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    record = json.loads((out / "run.json").read_text())["token_budget"]
    assert record == {
        "setting": "auto",
        "stages": {
            "embed domain": CPU_BUDGET,
            "embed pool": CPU_BUDGET,
            "featurize domain": CPU_BUDGET,
            "featurize pool": CPU_BUDGET,
        },
    }
    out2 = tmp_path / "sel2"
    assert (
        main(
            [
                "select",
                "--domain",
                str(domain),
                "--pool",
                str(pool),
                "--out",
                str(out2),
                "--model",
                str(tiny_model_dir),
                "--n",
                "4",
                "--proj-dim",
                "32",
                "--quiet",
                "--lora-rank",
                "4",
                "--batch-size",
                "4",
                "--token-budget",
                "300",
            ]
        )
        == 0
    )
    record = json.loads((out2 / "run.json").read_text())["token_budget"]
    assert record["setting"] == 300 and set(record["stages"].values()) == {300}


# ----------------------------------------------------------------------------- one encoding a row a stage


def test_each_row_is_tokenized_once_a_stage(tiny_model_dir, tmp_path, monkeypatch):
    """The data check before a stage and the stage's run share one encoding of every row (the
    featurizer's probe rows too): counted by the texts handed to the tokenizer."""
    import csv
    from collections import Counter

    from transformers import PreTrainedTokenizerBase

    seen: Counter = Counter()
    real = PreTrainedTokenizerBase.__call__

    def counting(self, text=None, *args, **kwargs):
        for t in [text] if isinstance(text, str) else list(text or []):
            seen[t] += 1
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    d_rows = [{"prompt": f"domain question {i} about things", "response": f"domain reply {i} zq"} for i in range(10)]
    p_rows = [{"prompt": f"pool question {i} of kind {i % 3}", "response": f"pool reply {i} zq"} for i in range(30)]
    domain = write_jsonl(tmp_path / "d.jsonl", d_rows)
    pool = write_jsonl(tmp_path / "p.jsonl", p_rows)
    common = ["--model", str(tiny_model_dir), "--quiet", "--lora-rank", "4"]

    def counts(rows):
        return [seen[r["response"]] for r in rows]

    runs = {
        "warmup": (["warmup", "--domain", str(domain), "--out", str(tmp_path / "w"), "--batch-size", "4"], d_rows),
        "train": (
            ["train", "--data", str(domain), "--data", str(pool), "--out", str(tmp_path / "t"), "--batch-size", "8"],
            d_rows + p_rows,
        ),
        "embed": (["embed", "--data", str(pool), "--out", str(tmp_path / "e")], p_rows),
        "featurize": (["featurize", "--data", str(pool), "--out", str(tmp_path / "f"), "--proj-dim", "32"], p_rows),
    }
    for name, (argv, rows) in runs.items():
        seen.clear()
        assert main(argv + common) == 0, name
        assert counts(rows) == [1] * len(rows), name

    seen.clear()
    out = tmp_path / "sel"
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
                "--n",
                "3",
                "--proj-dim",
                "32",
                "--batch-size",
                "4",
                *common,
            ]
        )
        == 0
    )
    with open(out / "scores.csv") as fh:
        pre = [row["preselected"] in ("1", "True", "true") for row in csv.DictReader(fh)]
    assert sum(pre) == 12
    assert counts(d_rows) == [3] * len(d_rows)  # warm-up, embed, featurize: once each
    assert counts(p_rows) == [1 + p for p in pre]  # embed; featurize for the pre-selected candidates


def test_evaluate_backs_off_on_out_of_memory_with_the_same_scores(lora_model, tok, capsys):
    """Label scoring whose forward runs out of memory above 150 padded tokens: the batches are
    retried in pieces and every score equals the run that never ran out."""
    import random

    from ntk_selector.analysis.evaluate import label_log_likelihoods, prompt_and_label_ids
    from ntk_selector.io.formats import Conversation

    rng = random.Random(0)
    convs = [
        Conversation(
            [{"role": "user", "content": " ".join(rng.choice("abc def ghij k".split()) for _ in range(n))}], "x"
        )
        for n in (1, 4, 9, 17, 2, 30, 6, 3)
    ]
    cfg = DataConfig(max_length=4096, token_budget=4096, max_batch_size=8)
    prompts, label_ids, _ = prompt_and_label_ids(convs, ["yes", "no"], tok, cfg)
    want = label_log_likelihoods(lora_model, prompts, label_ids, tok.pad_token_id, cfg)
    real = lora_model.forward
    sizes: list[int] = []

    def forward(*args, **kwargs):
        tokens = int(kwargs["input_ids"].numel())
        if tokens > 150:
            raise oom()
        sizes.append(tokens)
        return real(*args, **kwargs)

    lora_model.forward = forward
    try:
        got = label_log_likelihoods(lora_model, prompts, label_ids, tok.pad_token_id, cfg, quiet=False)
    finally:
        lora_model.forward = real
    assert sizes and max(sizes) <= 150
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert "token budget for evaluate: " in capsys.readouterr().err  # halved at least once
