"""train and the warm-up resume after a crash: the resumed adapter equals the uninterrupted one, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import synthetic_rows, write_jsonl
from safetensors.torch import load_file

from ntk_selector.cli.commands import main
from ntk_selector.training import loop as training
from ntk_selector.training.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE

# LoRA dropout makes every step draw random numbers: a resume that lost the random state would differ
TRAIN = [
    "--quiet",
    "--rank",
    "4",
    "--batch-size",
    "3",
    "--epochs",
    "2",
    "--lr",
    "3e-3",
    "--lora-dropout",
    "0.3",
    "--checkpoint-every",
    "2",
]


class Crash(RuntimeError):
    pass


def watch_steps(monkeypatch, crash_at: int | None = None) -> list[int]:
    """Log each batch the training loop collates (one per step); with ``crash_at``, fail at that step (1-based)."""
    real, calls = training.collate, []

    def collate(*a, **k):
        calls.append(1)
        if len(calls) == crash_at:
            raise Crash(f"simulated crash at step {crash_at}")
        return real(*a, **k)

    monkeypatch.setattr(training, "collate", collate)
    return calls


def train_args(model_dir, data, out, extra=()) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--model", str(model_dir), *TRAIN, *extra]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", synthetic_rows(12, 4))  # 12 rows / 3 = 4 steps an epoch, 8 in all


def test_resumed_train_equals_uninterrupted(tiny_model_dir, data, tmp_path, monkeypatch):
    assert main(train_args(tiny_model_dir, data, tmp_path / "full")) == 0
    full = json.loads((tmp_path / "full" / "training_state.json").read_text())
    assert full["steps"] == 8 and full["resumed_at_step"] == 0
    assert not (tmp_path / "full" / CHECKPOINT_DIR).exists()  # the finished adapter replaces the checkpoint

    out = tmp_path / "crashed"
    watch_steps(monkeypatch, crash_at=6)
    with pytest.raises(Crash):
        main(train_args(tiny_model_dir, data, out, ["--debug"]))
    assert (out / CHECKPOINT_DIR / CHECKPOINT_FILE).exists() and not (out / "adapter_config.json").exists()
    monkeypatch.undo()
    calls = watch_steps(monkeypatch)
    assert main(train_args(tiny_model_dir, data, out)) == 0
    assert len(calls) == 8 - 4  # resumed after the last checkpoint (step 4), not from the start
    resumed = json.loads((out / "training_state.json").read_text())
    assert resumed["resumed_at_step"] == 4 and resumed["losses"] == full["losses"]
    a, b = weights(tmp_path / "full"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / CHECKPOINT_DIR).exists()


def test_a_checkpoint_of_another_run_is_refused_or_discarded(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    watch_steps(monkeypatch, crash_at=4)
    with pytest.raises(Crash):
        main(train_args(tiny_model_dir, data, out, ["--debug"]))
    monkeypatch.undo()
    other = ["--seed", "1"]
    assert main(train_args(tiny_model_dir, data, out, other)) == 2
    err = capsys.readouterr().err
    assert "checkpoint of another training run" in err and "seed: 0 -> 1" in err  # names what differs
    calls = watch_steps(monkeypatch)
    assert main(train_args(tiny_model_dir, data, out, other + ["--overwrite"])) == 0
    assert len(calls) == 8  # started over
    monkeypatch.undo()
    assert main(train_args(tiny_model_dir, data, tmp_path / "b", other)) == 0
    a, b = weights(out), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_every_zero_saves_nothing(tiny_model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "a"
    watch_steps(monkeypatch, crash_at=6)
    with pytest.raises(Crash):
        main(train_args(tiny_model_dir, data, out, ["--debug", "--checkpoint-every", "0"]))
    assert not (out / CHECKPOINT_DIR).exists()


def test_select_resumes_a_crashed_warm_up(tiny_model_dir, small_files, tmp_path, monkeypatch):
    domain, pool = small_files

    def select(out, extra=()):
        return main(
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
                "16",
                "--rank",
                "4",
                "--batch-size",
                "2",
                "--lora-dropout",
                "0.3",
                "--checkpoint-every",
                "1",
                "--quiet",
                *extra,
            ]
        )

    assert select(tmp_path / "full") == 0
    watch_steps(monkeypatch, crash_at=3)
    with pytest.raises(Crash):
        select(tmp_path / "crashed", ["--debug"])
    monkeypatch.undo()
    calls = watch_steps(monkeypatch)
    assert select(tmp_path / "crashed") == 0
    warm_full, warm_resumed = (tmp_path / name / "stages" / "warmup" for name in ("full", "crashed"))
    steps = json.loads((warm_full / "ntk_selector_warmup.json").read_text())["stats"]["steps"]
    assert len(calls) == steps - 2
    a, b = weights(warm_full), weights(warm_resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "selected.jsonl").read_text() == (tmp_path / "crashed" / "selected.jsonl").read_text()
    assert select(tmp_path / "full", ["--checkpoint-every", "5"]) == 0  # how often to save is not part of the run
