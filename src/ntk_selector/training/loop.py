"""The LoRA training loop shared by warm-up (on D) and the final fine-tune (on D ∪ S): seeded
shuffling, response-only cross-entropy, AdamW with a linear schedule, atomic adapter saves."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ntk_selector.config import DataConfig, TrainConfig
from ntk_selector.errors import UserError
from ntk_selector.io.files import LOCK, disk_full, temporary_folder_beside, umask
from ntk_selector.io.formats import Conversation
from ntk_selector.io.tokens import Encoded, collate, encode
from ntk_selector.model.heads import response_logits
from ntk_selector.model.loading import lora_parameters
from ntk_selector.training.checkpoint import CHECKPOINT_DIR, TrainCheckpoint


def response_loss(model: torch.nn.Module, batch: Any, loss_mean: str = "token") -> torch.Tensor:
    """Cross-entropy of the batch's response tokens (head applied only there).

    ``token``: the mean over all response tokens of the batch, so a row weighs by its response
    length. ``example``: the mean over rows of each row's token mean, so a long pool response
    cannot take the loss weight away from short domain answers.
    """
    logits, labels, rows = response_logits(model, batch)
    if loss_mean == "token":
        return F.cross_entropy(logits.float(), labels)
    if loss_mean != "example":
        raise ValueError(f"loss_mean must be 'token' or 'example', got {loss_mean!r}")
    per_token = F.cross_entropy(logits.float(), labels, reduction="none")
    n_rows = batch.labels.shape[0]
    sums = torch.zeros(n_rows, dtype=per_token.dtype, device=per_token.device).index_add_(0, rows, per_token)
    counts = torch.zeros(n_rows, dtype=per_token.dtype, device=per_token.device).index_add_(
        0, rows, torch.ones_like(per_token)
    )
    has = counts > 0
    return (sums[has] / counts[has]).mean()


MEGABATCH = 50  # batches per length-sorted group when grouping by length


def epoch_batches(
    n: int, batch_size: int, epochs: float, seed: int, lengths: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Row indices of every optimizer step: each epoch a fresh seeded shuffle; fractional epochs cut the last.

    ``epochs`` whole epochs are ``epochs`` full passes, ceil(n / batch_size) steps each (the last
    batch of an epoch may be smaller); a fractional part runs that share of one more epoch's steps.

    With ``lengths`` (group by length), each epoch's shuffle is cut into groups of MEGABATCH batches,
    rows sorted by length inside a group and the group's batches shuffled: on mixed-length data this
    halves the padded tokens, while every batch still draws from a random part of the data.
    """
    total_steps = max(1, math.ceil(epochs * math.ceil(n / batch_size) - 1e-9))
    steps: list[np.ndarray] = []
    epoch = 0
    while len(steps) < total_steps:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        if lengths is None:
            steps.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
        else:
            rng = np.random.default_rng([seed, epoch, 1])
            size = MEGABATCH * batch_size
            for g in range(0, n, size):
                group = order[g : g + size]
                group = group[np.argsort([-lengths[i] for i in group], kind="stable")]
                batches = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
                steps.extend(batches[j] for j in rng.permutation(len(batches)))
        epoch += 1
    return steps[:total_steps]


def train_lora(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    seed: int,
    *,
    quiet: bool = False,
    desc: str = "train",
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    group_by_length: bool = False,
    checkpoint: TrainCheckpoint | None = None,
    encoded: Sequence[Encoded] | None = None,
) -> dict[str, Any]:
    """Train the model's LoRA parameters in place; return loss history and timing.

    With ``checkpoint``, the run first resumes from its saved state (if any) and saves it every
    ``checkpoint.every`` steps; the result equals an uninterrupted run's. ``encoded``: the
    conversations' encodings when the caller already made them (tokens.encode_checked), so they are
    not tokenized again.
    """
    from transformers import get_linear_schedule_with_warmup

    if encoded is None:
        encoded = encode(conversations, tokenizer, data_cfg)
    elif len(encoded) != len(conversations):
        raise ValueError(f"{len(encoded)} encodings for {len(conversations)} conversations")
    encoded = [e for e in encoded if e.n_response_tokens > 0]
    if not encoded:
        raise ValueError("no training example has response tokens")
    params = [p for _, p in lora_parameters(model)]
    device = params[0].device
    steps = epoch_batches(
        len(encoded),
        train_cfg.batch_size,
        train_cfg.epochs,
        seed,
        [e.length for e in encoded] if group_by_length else None,
    )
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(train_cfg.warmup_ratio * len(steps)), len(steps))
    torch.manual_seed(seed)
    losses: list[float] = []
    done, seconds_before = 0, 0.0
    resumed = checkpoint.restore(params, opt, sched) if checkpoint is not None else None
    if resumed is not None:
        done, losses, seconds_before = resumed.step, resumed.losses, resumed.seconds
    start = time.perf_counter()
    if on_step is not None and done == 0:
        on_step(0, model)
    model.train()
    try:
        progress = tqdm(
            steps[done:], desc=desc, unit="step", disable=quiet, dynamic_ncols=True, initial=done, total=len(steps)
        )
        for step, members in enumerate(progress, start=done + 1):
            batch = collate([encoded[i] for i in members], tokenizer.pad_token_id).to(device)
            loss = response_loss(model, batch, train_cfg.loss_mean)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if checkpoint is not None and checkpoint.due(step, len(steps)):
                checkpoint.save(step, params, opt, sched, losses, seconds_before + time.perf_counter() - start)
            if on_step is not None:
                model.eval()
                on_step(step, model)
                model.train()
    finally:
        model.eval()
    return {
        "steps": len(steps),
        "examples": len(encoded),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "seconds": seconds_before + time.perf_counter() - start,
        "resumed_at_step": done,
    }


# What train and the warm-up write into their --out folder; anything else there belongs to the user.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
OWN_NAMES = frozenset(ADAPTER_FILES + ("training_state.json", "ntk_selector_warmup.json", CHECKPOINT_DIR, LOCK))


def foreign_files(out: str | Path) -> list[str]:
    """Names in an adapter output folder that ntk-selector did not write (temporaries of ours excluded)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(
        p.name
        for p in out.iterdir()
        if p.name not in OWN_NAMES
        and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        and not _peft_model_card(p)
    )


def _peft_model_card(path: Path) -> bool:
    """PEFT's README.md, which adapter folders written by earlier versions hold: ours too."""
    if path.name != "README.md" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        return "library_name: peft" in fh.read(4096)


def check_adapter_folder(out: str | Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, or a folder holding files we did not write (unless ``overwrite``:
    then our files are written beside them; the user's files are never deleted or replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose a folder for the adapter")
    foreign = foreign_files(out)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"--out {out} holds files ntk-selector did not write ({shown}); choose a new or empty folder, "
            f"or --overwrite to write the adapter beside them (they are kept)"
        )


def save_adapter_atomic(model: torch.nn.Module, out: str | Path) -> None:
    """save_pretrained into an exclusive temporary folder inside ``out``, then move our files in one by one.

    Only the adapter's own files are written (PEFT's model card is left out); nothing else in ``out``
    is touched. Callers remove their completion marker first and write it last, so a crash between
    two renames leaves no folder that claims to be finished.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = temporary_folder_beside(out / "adapter")
    except OSError as e:
        raise disk_full(out, e) from None
    try:
        model.save_pretrained(str(tmp))
        for name in ADAPTER_FILES:
            if (tmp / name).exists():
                (tmp / name).chmod(0o666 & ~umask())  # safetensors writes 0600; give what open() gives
                os.replace(tmp / name, out / name)
    except OSError as e:
        raise disk_full(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
