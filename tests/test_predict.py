"""Kernel ridge regression with the initial NTK: the solver against the primal ridge solution, no
label leak through the features, and a tiny separable case end to end."""

import json
import random

import numpy as np
import pytest
from conftest import write_jsonl

from ntk_selector.analysis.predict import kernel_ridge, predict_labels, prompt_only
from ntk_selector.cli.commands import main
from ntk_selector.config import DataConfig
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.formats import Conversation
from ntk_selector.io.tokens import collate, encode


def test_kernel_ridge_equals_primal_ridge():
    rng = np.random.default_rng(0)
    x, x_test, y = rng.normal(size=(20, 5)), rng.normal(size=(7, 5)), rng.normal(size=(20, 3))
    ridge = 0.1
    lam = ridge * np.mean(np.sum(x * x, 1))
    primal = x_test @ np.linalg.solve(x.T @ x + lam * np.eye(5), x.T @ y)
    np.testing.assert_allclose(kernel_ridge(x @ x.T, x_test @ x.T, y, ridge), primal, rtol=1e-8, atol=1e-10)


def test_predict_labels_on_separable_features():
    rng = np.random.default_rng(1)
    centers = {"left": np.array([3.0, 0, 0]), "right": np.array([0, 3.0, 0])}
    labels = ["left", "right"] * 10
    train = np.stack([centers[label] + rng.normal(scale=0.3, size=3) for label in labels])
    test_labels = ["right", "left", "left", "right"]
    test = np.stack([centers[label] + rng.normal(scale=0.3, size=3) for label in test_labels])
    classes, pred = predict_labels(train, labels, test, ridge=1e-3)
    assert classes == ["left", "right"] and pred == test_labels


def test_features_do_not_see_the_response(lora_model, tok):
    convs = [
        Conversation([{"role": "user", "content": "same prompt"}], "first answer"),
        Conversation([{"role": "user", "content": "same prompt"}], "a different, longer answer"),
    ]
    enc = prompt_only(encode(convs, tok, DataConfig()))
    assert enc[0].length == enc[1].length and enc[0].n_response_tokens == 1
    batch = collate(enc, tok.pad_token_id)
    with GradientFeaturizer(lora_model, 0, 0, "ntk", "auto", batch) as feat:
        f = feat.features(batch)
    assert f.abs().sum() > 0
    np.testing.assert_allclose(f[0].numpy(), f[1].numpy(), rtol=1e-4, atol=1e-5 * float(f.abs().max()))


def _rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("yes", "no")[i % 2]
        letters = "aeiou" if label == "yes" else "xzqkw"
        prompt = " ".join("".join(rng.choice(letters) for _ in range(4)) for _ in range(5))
        rows.append({"prompt": prompt, "response": label})
    return rows


def test_predict_command_on_a_separable_case(tiny_model_dir, tmp_path):
    domain = write_jsonl(tmp_path / "d.jsonl", _rows(16, 0))
    test = write_jsonl(tmp_path / "t.jsonl", _rows(10, 1))
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--domain",
                str(domain),
                "--test",
                str(test),
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--proj-dim",
                "0",
                "--rank",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    res = json.loads((out / "predict.json").read_text())
    assert res["classes"] == ["no", "yes"] and res["test_rows"] == 10 and res["train_rows"] == 16
    assert res["majority_accuracy"] == pytest.approx(0.5)
    assert res["accuracy"] >= 0.9, res
    assert len(res["predictions"]) == 10
