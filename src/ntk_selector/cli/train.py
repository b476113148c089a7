"""``ntk-selector train``: its flags and the call into :mod:`ntk_selector.training.finetune`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig
from ntk_selector.settings import configs_from_args
from ntk_selector.training.finetune import finetune


def cmd_train(args: argparse.Namespace) -> int:
    c = configs_from_args(args, (ModelConfig, DataConfig, LoraSettings, RunConfig, TrainConfig))
    state = finetune(
        args.data,
        args.out,
        c[ModelConfig],
        c[DataConfig],
        c[LoraSettings],
        c[RunConfig],
        c[TrainConfig],
        group_by_length=args.group_by_length,
    )
    if not c[RunConfig].quiet:
        print(
            f"trained on {state['examples']} examples, {state['steps']} steps, loss {state['loss_first']:.3f} -> "
            f"{state['loss_last']:.3f} in {state['seconds']:.0f} s; adapter in {args.out}"
        )
    return 0


def register_cli(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(
        "train",
        cmd_train,
        "LoRA fine-tune on the union of the data files (D and the selected S)",
        (ModelConfig, DataConfig, LoraSettings, RunConfig, TrainConfig),
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="training records; repeat for several files (e.g. the domain and selected.jsonl)",
    )
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="sort rows by length within groups of 50 batches (less padding; batches still random)",
    )
