"""``train``: the final LoRA fine-tune on D ∪ S (the paper: 3 epochs).

Several data files are read, concatenated and trained on together; every epoch is a fresh seeded
shuffle of the union, so the same seed gives the same adapter. The adapter folder is written
atomically, followed by ``training_state.json`` (definition, loss curve, seconds). A rerun with
the same definition skips the work, or resumes it from ``OUT/resume/`` after a crash (every
``--checkpoint-every`` steps); another definition is refused unless ``--overwrite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig, to_dict
from ntk_selector.errors import UserError
from ntk_selector.io.definitions import canonical, read_state, reuse_or_refuse
from ntk_selector.io.files import folder_lock
from ntk_selector.io.records import Records
from ntk_selector.io.store import write_json_atomic
from ntk_selector.io.tokens import data_definition, encode_checked
from ntk_selector.model.session import Session
from ntk_selector.training.checkpoint import TrainCheckpoint
from ntk_selector.training.loop import check_adapter_folder, save_adapter_atomic, train_lora

STATE_FILE = "training_state.json"


def training_definition(
    session: Session, data: Sequence[Records], data_cfg: DataConfig, train_cfg: TrainConfig, group_by_length: bool
) -> dict[str, Any]:
    """Everything that determines the adapter's weights (compared on a rerun)."""
    return canonical(
        {
            "stage": "train",
            **session.describe(),
            "data": [data_definition(r, data_cfg) for r in data],
            "train": to_dict(train_cfg),
            "group_by_length": group_by_length,
            "seed": session.run.seed,
        }
    )


def finetune(
    data_paths: Sequence[str | Path],
    out: str | Path,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    lora: LoraSettings,
    run: RunConfig,
    train_cfg: TrainConfig,
    *,
    group_by_length: bool = False,
) -> dict[str, Any]:
    """Train a fresh seeded LoRA on the union of the files; return the training state.

    ``group_by_length`` sorts rows by length within groups of batches (see training.epoch_batches):
    on a domain of long rows mixed with short pool rows it halves the padded tokens.
    """
    if not data_paths:
        raise UserError("train needs at least one --data file")
    out = Path(out)
    check_adapter_folder(out, run.overwrite)
    data = [Records.load(p, data_cfg) for p in data_paths]
    if model_cfg.adapter and not (Path(model_cfg.adapter) / "adapter_config.json").exists():
        raise UserError(f"adapter folder not found or not a PEFT adapter: {model_cfg.adapter}")
    session = Session(model_cfg, lora, run, adapter=model_cfg.adapter)
    with folder_lock(out):
        return _finetune_locked(data, out, session, model_cfg, data_cfg, run, train_cfg, group_by_length)


def _finetune_locked(
    data: list[Records],
    out: Path,
    session: Session,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    run: RunConfig,
    train_cfg: TrainConfig,
    group_by_length: bool,
) -> dict[str, Any]:
    definition = training_definition(session, data, data_cfg, train_cfg, group_by_length)
    old = None if run.overwrite else read_state(out / STATE_FILE)  # --overwrite trains again
    if reuse_or_refuse(
        None if old is None else old.get("definition", {}),
        definition,
        f"{out} holds an adapter trained on other data or settings",
        ready=(out / "adapter_config.json").exists(),
    ):
        return old
    encoded = [e for per_file in encode_checked(data, session.load_tokenizer(), data_cfg) for e in per_file]
    session.load(model_cfg.adapter)  # --adapter continues training it; otherwise a fresh seeded LoRA
    conversations = [c for r in data for c in r.conversations]
    checkpoint = TrainCheckpoint(out, definition, run.checkpoint_every, run.overwrite)
    (out / STATE_FILE).unlink(missing_ok=True)  # the marker comes back last: a half-saved adapter never looks finished
    stats = train_lora(
        session.model,
        session.tokenizer,
        conversations,
        data_cfg,
        train_cfg,
        run.seed,
        quiet=run.quiet,
        desc="train",
        group_by_length=group_by_length,
        checkpoint=checkpoint,
        encoded=encoded,
    )
    save_adapter_atomic(session.model, out)
    checkpoint.discard()
    state = {"definition": definition, "rows": {str(r.path): len(r) for r in data}, **stats}
    write_json_atomic(out / STATE_FILE, state)
    return state
