"""``ntk-selector predict``: its flags and the call into :mod:`ntk_selector.analysis.predict`."""

from __future__ import annotations

from typing import Any

from ntk_selector.analysis.predict import predict
from ntk_selector.config import DataConfig, FeatureConfig, LoraSettings, ModelConfig, PredictConfig, RunConfig
from ntk_selector.settings import MODEL_SECTIONS, configs_from_args


def cmd_predict(args: Any) -> int:
    c = configs_from_args(args, MODEL_SECTIONS + (FeatureConfig, PredictConfig))
    res = predict(
        args.domain,
        args.test,
        args.out,
        c[ModelConfig],
        c[DataConfig],
        c[LoraSettings],
        c[RunConfig],
        c[FeatureConfig],
        c[PredictConfig],
    )
    if not c[RunConfig].quiet:
        acc = "n/a" if res["accuracy"] is None else f"{res['accuracy']:.3f}"
        print(
            f"kernel regression ({res['kernel']}): accuracy {acc} on {res['test_rows']} test rows "
            f"(majority class {res['majority_accuracy'] or 0:.3f}); {args.out}/predict.json"
        )
    return 0


def register_cli(sub: Any, add: Any) -> None:
    """Adds ``predict`` to the command line."""
    p = add(
        "predict",
        cmd_predict,
        "kernel ridge regression with the initial NTK on the domain's labels (quick predictor)",
        MODEL_SECTIONS + (FeatureConfig, PredictConfig),
    )
    p.add_argument("--domain", required=True, help="labelled domain records (the responses are the labels)")
    p.add_argument("--test", required=True, help="labelled test records")
    p.add_argument("--out", required=True, help="output folder (predict.json)")
