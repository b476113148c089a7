"""``predict``: kernel ridge regression with the initial NTK (paper, Table 3) as a quick predictor.

Labels are D's distinct responses (one-hot). Each row's feature is the Jacobian-free NTK
gradient of the logits at the last prompt position only (the one predicting the first response
token), so neither training nor test features see the answer. The kernel is that of the LoRA at
init (seeded, as the warm-up starts) or of a given adapter. Writes ``OUT/predict.json``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.config import DataConfig, FeatureConfig, LoraSettings, ModelConfig, PredictConfig, RunConfig, to_dict
from ntk_selector.errors import UserError
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.features.kernels import cosine_normalize, gram, rows_features
from ntk_selector.io.files import refuse_replacing
from ntk_selector.io.records import Records
from ntk_selector.io.store import write_json_atomic
from ntk_selector.io.tokens import Encoded, collate, encode
from ntk_selector.model.session import Session


def label_of(text: str) -> str:
    """A response as a class label (surrounding whitespace does not count)."""
    return " ".join(str(text).split())


def prompt_only(encoded: Sequence[Encoded]) -> list[Encoded]:
    """Cut each row after its first response position: the objective then covers only the logits
    at the end of the prompt (causal attention: they never see the response)."""
    out = []
    for e in encoded:
        start = max(1, min(e.response_start, e.length - 1))
        out.append(Encoded(e.input_ids[: start + 1].copy(), start))
    return out


def kernel_ridge(k_train: np.ndarray, k_cross: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Predictions ``K_* (K + lambda I)^-1 Y`` with lambda = ridge x mean diagonal of K."""
    lam = ridge * float(np.mean(np.diag(k_train))) if len(k_train) else 0.0
    alpha = np.linalg.solve(k_train + lam * np.eye(len(k_train)), y)
    return k_cross @ alpha


def predict_labels(
    train_features: np.ndarray,
    train_labels: Sequence[str],
    test_features: np.ndarray,
    ridge: float,
    cosine: bool = False,
) -> tuple[list[str], list[str]]:
    """(classes, predicted label per test row) by kernel ridge regression on one-hot labels."""
    classes = sorted(set(train_labels))
    y = np.zeros((len(train_labels), len(classes)))
    y[np.arange(len(train_labels)), [classes.index(t) for t in train_labels]] = 1.0
    both = np.concatenate([train_features, test_features])
    k = gram(both)
    if cosine:
        k = cosine_normalize(k)
    n = len(train_features)
    scores = kernel_ridge(k[:n, :n], k[n:, :n], y, ridge)
    return classes, [classes[i] for i in scores.argmax(1)]


def predict(
    domain_path: str | Path,
    test_path: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    lora: LoraSettings,
    run: RunConfig,
    feat_cfg: FeatureConfig,
    pred_cfg: PredictConfig,
) -> dict[str, Any]:
    """Fit on the domain, predict the test rows, write ``predict.json`` (with ``accuracy``)."""
    if feat_cfg.objective != "ntk":
        raise UserError("predict uses the NTK objective (--objective ntk): other objectives would see the labels")
    refuse_replacing(out_dir, ("predict.json",), (("predict.json", "kernel"),), run.overwrite)
    start = time.perf_counter()
    domain = Records.load(domain_path, data_cfg)
    test = Records.load(test_path, data_cfg)
    session = Session(model_cfg, lora, run).load(model_cfg.adapter)
    tok = session.tokenizer
    train_enc = prompt_only(encode(domain.conversations, tok, data_cfg))
    test_enc = prompt_only(encode(test.conversations, tok, data_cfg))
    with GradientFeaturizer(
        session.model,
        feat_cfg.proj_dim,
        run.seed,
        "ntk",
        feat_cfg.logits,
        collate(train_enc[:2], tok.pad_token_id),
        projection_dtype=feat_cfg.projection_dtype,
    ) as feat:

        def features(enc: list[Encoded]) -> np.ndarray:
            return (
                rows_features(
                    feat.features,
                    enc,
                    tok.pad_token_id,
                    data_cfg.token_budget,
                    data_cfg.max_batch_size,
                    device=next(session.model.parameters()).device,
                    stage="predict features",
                    quiet=run.quiet,
                )
                .double()
                .numpy()
            )

        f_train, f_test = features(train_enc), features(test_enc)
        dim = feat.out_dim
    train_labels = [label_of(c.response) for c in domain.conversations]
    test_labels = [label_of(c.response) for c in test.conversations]
    classes, predicted = predict_labels(f_train, train_labels, f_test, pred_cfg.ridge, pred_cfg.predict_cosine)
    correct = [p == t for p, t in zip(predicted, test_labels, strict=True)]
    majority = Counter(train_labels).most_common(1)[0][0]
    confusion: dict[str, dict[str, int]] = {}
    for p, t in zip(predicted, test_labels, strict=True):
        confusion.setdefault(t, {}).setdefault(p, 0)
        confusion[t][p] += 1
    result = {
        "accuracy": float(np.mean(correct)) if correct else None,
        "majority_accuracy": float(np.mean([t == majority for t in test_labels])) if test_labels else None,
        "train_rows": len(train_labels),
        "test_rows": len(test_labels),
        "classes": classes,
        "test_labels_unseen": int(sum(t not in classes for t in test_labels)),
        "confusion": confusion,
        "predictions": predicted,
        "kernel": model_cfg.adapter or "LoRA at init",
        "feature_dim": dim,
        "config": {
            "model": to_dict(model_cfg),
            "data": to_dict(data_cfg),
            "lora": to_dict(lora),
            "run": to_dict(run),
            "feature": to_dict(feat_cfg),
            "predict": to_dict(pred_cfg),
        },
        "inputs": {"domain": str(domain.path), "test": str(test.path)},
        "seconds": round(time.perf_counter() - start, 2),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "predict.json", result)
    return result
