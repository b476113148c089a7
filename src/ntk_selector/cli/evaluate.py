"""``ntk-selector evaluate``: its flags and the call into :mod:`ntk_selector.analysis.evaluate`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntk_selector.analysis.evaluate import DEFAULT_MAX_NEW_TOKENS, MAX_GENERATION_TOKENS, TASKS, run_evaluate
from ntk_selector.config import DataConfig, ModelConfig, RunConfig
from ntk_selector.settings import configs_from_args


def cmd_evaluate(args: argparse.Namespace) -> int:
    c = configs_from_args(args, (ModelConfig, DataConfig, RunConfig))
    summary = run_evaluate(
        args.data,
        args.out,
        c[ModelConfig],
        c[DataConfig],
        c[RunConfig],
        labels=args.labels,
        generate=args.generate,
        max_new_tokens=args.max_new_tokens,
        calibrate=args.calibrate,
        task=args.task,
    )
    if c[RunConfig].quiet:
        return 0
    if summary["task"] == "generation":
        print(
            f"free-text answers ({summary['task_reason']}): NLL per response token {summary['nll_per_token']:.4f}, "
            f"perplexity {summary['perplexity']:.3f} over {summary['n']} rows"
            + (
                f"; ROUGE-L {summary['rouge_l']:.4f}, chrF {summary['chrf']:.2f}, exact match "
                f"{summary['exact_match']:.4f}"
                if "rouge_l" in summary
                else ""
            )
            + f"; {Path(args.out) / 'eval.json'}"
        )
    else:
        print(
            f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}, {summary['mode']}), "
            f"balanced accuracy {summary['balanced_accuracy'] or 0:.4f}, macro-F1 {summary['macro_f1'] or 0:.4f}"
            + (f", gold NLL {summary['gold_nll']:.4f}" if "gold_nll" in summary else "")
            + (
                f"; calibrated: accuracy {summary['calibrated']['accuracy']:.4f}, balanced accuracy "
                f"{summary['calibrated']['balanced_accuracy'] or 0:.4f}"
                if "calibrated" in summary
                else ""
            )
            + f"; {Path(args.out) / 'eval.json'}"
        )
    return 0


def register_cli(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "evaluate",
        cmd_evaluate,
        "score a test set: label accuracy, or free-text NLL / ROUGE-L / chrF",
        (ModelConfig, DataConfig, RunConfig),
    )
    p.add_argument("--data", required=True, help="labelled test records (the response is the gold answer)")
    p.add_argument("--out", required=True, help="output folder (eval.json, predictions.jsonl)")
    p.add_argument(
        "--labels", nargs="+", default=None, help="allowed labels (default: the distinct responses of the test file)"
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="classification (label scores) or generation (free-text metrics); default auto: labels when "
        "the test answers have at most 20 distinct values, each about twice or more",
    )
    p.add_argument(
        "--generate",
        action="store_true",
        help="greedy answers (cut at the end-of-turn token): exact match for labels; ROUGE-L, chrF and exact "
        "match besides the NLL for free text",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"generation length for --generate (default: {DEFAULT_MAX_NEW_TOKENS} for labels; the longest gold "
        f"response, at most {MAX_GENERATION_TOKENS}, for free text)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="also report scores after contextual calibration: each label's log-likelihood on content-free "
        "prompts (the test prompts' shared text around 'N/A', '', '[MASK]') is subtracted",
    )
