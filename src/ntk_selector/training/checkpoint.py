"""Resumable LoRA training: the state of a run every few optimizer steps, so a crash costs at most that many.

A checkpoint holds what the next step depends on: the LoRA weights, the AdamW moments, the schedule's
position, the loss history and the random state (LoRA dropout draws from it). The optimizer steps
themselves are fixed by the seed (``training.epoch_batches``), so a resumed run does the same steps
in the same order and ends with the same adapter, bit for bit on the same machine, as a run that
was never stopped. The file is written atomically and carries the run's definition: a checkpoint
of another run is never resumed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ntk_selector.errors import UserError
from ntk_selector.io.definitions import reuse_or_refuse
from ntk_selector.io.files import disk_full, temporary_beside

CHECKPOINT_DIR = "resume"  # inside the output folder; removed once the finished adapter is saved
CHECKPOINT_FILE = "training_checkpoint.pt"


@dataclass
class ResumedState:
    """Where a resumed run picks up: the number of optimizer steps done, their losses and seconds."""

    step: int
    losses: list[float]
    seconds: float


class TrainCheckpoint:
    """Saves and restores one training run's state in ``out/resume/`` (``every`` optimizer steps; 0: never).

    ``definition`` is everything that determines the weights (the caller's stage definition). A
    checkpoint of another definition is refused with a clear error, or discarded when ``overwrite``.
    """

    def __init__(self, out: str | Path, definition: dict[str, Any], every: int, overwrite: bool = False):
        self.path = Path(out) / CHECKPOINT_DIR / CHECKPOINT_FILE
        self.definition = json.dumps(definition, sort_keys=True, default=str)
        self.every = every
        self.overwrite = overwrite

    def due(self, step: int, total_steps: int) -> bool:
        """Save after this step? Never after the last one: the finished adapter is saved instead."""
        return self.every > 0 and step % self.every == 0 and step < total_steps

    def save(
        self,
        step: int,
        params: Sequence[torch.Tensor],
        opt: torch.optim.Optimizer,
        sched: Any,
        losses: list[float],
        seconds: float,
    ) -> None:
        state = {
            "definition": self.definition,
            "step": step,
            "losses": list(losses),
            "seconds": seconds,
            "params": [p.detach().cpu().clone() for p in params],
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        device = params[0].device
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        try:
            tmp = temporary_beside(self.path)
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            raise disk_full(self.path, e) from None

    def discard(self) -> None:
        """Remove the checkpoint (and its folder when that holds nothing else) once the run is finished."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass  # absent, or holds something that is not ours

    def restore(self, params: Sequence[torch.Tensor], opt: torch.optim.Optimizer, sched: Any) -> ResumedState | None:
        """Load the saved state into the parameters, optimizer and schedule; None when there is nothing to resume."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # damaged outside our atomic write (disk full, copied half): the user decides
            if self.overwrite:
                return None
            raise UserError(f"{self.path} cannot be read ({e}); delete it or use --overwrite to start over") from e
        if not reuse_or_refuse(
            json.loads(state.get("definition", "{}")),
            json.loads(self.definition),
            f"{self.path} is a checkpoint of another training run",
            overwrite=self.overwrite,
        ):
            return None
        if len(state["params"]) != len(params):
            raise UserError(f"{self.path}: holds {len(state['params'])} LoRA tensors, the model has {len(params)}")
        with torch.no_grad():
            for p, saved in zip(params, state["params"], strict=True):
                p.copy_(saved.to(p.device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        device = params[0].device
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        return ResumedState(int(state["step"]), [float(x) for x in state["losses"]], float(state["seconds"]))
