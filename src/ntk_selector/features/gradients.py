"""Per-sample LoRA gradients of the NTK objective, in one batched backward.

Lifecycle (as a hook collector): ``GradientFeaturizer(model, ...)`` registers forward hooks on
every LoRA ``lora_A`` / ``lora_B`` linear; each forward saves the module input and hangs a hook on
the module output. One ``autograd.grad`` of the batch objective ``F = sum_b f_b`` then hands every
hook ``delta = dF/d(output)``; since rows never interact (right padding, causal attention), the
per-sample weight gradient is ``G_b = sum_t delta_{b,t} x_{b,t}^T``, which is projected at once and
freed. ``close()`` removes the hooks.

Objectives (per row b, R_b = positions whose logits predict a response token):
- ``ntk``: ``f_b = 1/|R_b| sum_{t in R_b} sum_k z_{t,k}``. With a linear head ``sum_k z_{t,k} = u.h_t + const``
  where ``u = W_head^T 1``, so the V x d head product is skipped ("shortcut"); heads that are not
  a plain linear map use the real logits ("full"). ``auto`` checks which applies on a probe input.
- ``ntk-all``: as ``ntk`` but over every position that predicts a real next token (prompt and
  response), for checking what restricting the objective to the response changes.
- ``ntk-content``: as ``ntk`` without each row's last response position, the one whose logits
  predict the end-of-turn token (kept when it is the row's only one). For a one-word answer the
  feature is then that of the position that chooses the answer alone, not half of it the answer
  word's own position. A row cut at ``max_length`` has no end-of-turn token and loses its last
  content position instead, one of many.
- ``ce``: ``f_b`` = mean cross-entropy over R_b (LESS-style gradients).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ntk_selector.features.collector import LoraGradientCollector
from ntk_selector.features.projection import Projector, make_projector
from ntk_selector.io.tokens import Batch
from ntk_selector.model.heads import (  # noqa: F401
    SummedLogitHead,
    decoder_of,
    full_logits,
    last_hidden,
    response_logits,
    shortcut_applies,
)
from ntk_selector.model.loading import lora_parameters


def per_row_objective(
    model: torch.nn.Module, batch: Batch, objective: str, head: SummedLogitHead | None
) -> torch.Tensor:
    """f_b for every row of the batch, [B] (rows without response tokens give 0)."""
    if objective in NTK_OBJECTIVES:
        positions = {"ntk": batch.target_mask, "ntk-all": next_token_mask(batch), "ntk-content": content_mask(batch)}[
            objective
        ]
        if head is not None:
            per_pos = head(last_hidden(model, batch))  # [B, T]
        else:
            per_pos = full_logits(model, batch).float().sum(-1)
        return (per_pos * positions).sum(1) / positions.sum(1).clamp_min(1).float()
    if objective == "ce":
        logits, labels, rows = response_logits(model, batch)  # head only at response positions
        tok = F.cross_entropy(logits.float(), labels, reduction="none")
        per_row = torch.zeros(batch.input_ids.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
        return per_row / batch.target_mask.sum(1).clamp_min(1).float()
    raise ValueError(f"unknown objective '{objective}' (ntk, ntk-all, ntk-content or ce)")


NTK_OBJECTIVES = ("ntk", "ntk-all", "ntk-content")  # summed-logit objectives (the head shortcut applies)


def content_mask(batch: Batch) -> torch.Tensor:
    """[B, T] bool: the response positions without each row's last (kept where it is the only one)."""
    mask = batch.target_mask.clone()
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, pos, -1).max(1).values
    rows = torch.nonzero(mask.sum(1) > 1).flatten()
    mask[rows, last[rows]] = False
    return mask


def next_token_mask(batch: Batch) -> torch.Tensor:
    """[B, T] bool: positions whose next token is a real one (right padding: all but each row's last)."""
    mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    mask[:, :-1] = batch.attention_mask[:, 1:].bool()
    return mask


class GradientFeaturizer:
    """Projected per-sample gradients of the objective w.r.t. the LoRA parameters."""

    def __init__(
        self,
        model: torch.nn.Module,
        proj_dim: int,
        seed: int,
        objective: str = "ntk",
        logits: str = "auto",
        probe: Batch | None = None,
        cache_bytes: int | None = None,
        projection_dtype: str = "float32",
    ):
        self.model = model
        self.objective = objective
        self.params = lora_parameters(model)
        if not self.params:
            raise ValueError("the model has no trainable LoRA parameters")
        device = self.params[0][1].device
        self.device = device
        shapes = [(n, tuple(p.shape)) for n, p in self.params]
        self.projector: Projector = make_projector(
            shapes, proj_dim, seed, device=device, cache_bytes=cache_bytes, dtype=projection_dtype
        )
        self.out_dim = self.projector.out_dim
        self.head = self._choose_head(logits, probe)
        self.logits_mode = "shortcut" if self.head is not None else "full"
        self._out: torch.Tensor | None = None
        self.collector = LoraGradientCollector(model, self._project)

    def _choose_head(self, logits: str, probe: Batch | None) -> SummedLogitHead | None:
        if self.objective not in NTK_OBJECTIVES or logits == "full":
            return None
        if logits == "shortcut":
            return SummedLogitHead(self.model)
        if logits != "auto":
            raise ValueError(f"unknown logits mode '{logits}' (auto, shortcut, full)")
        if probe is None:
            raise ValueError("logits='auto' needs a probe batch to check the shortcut")
        return SummedLogitHead(self.model) if shortcut_applies(self.model, probe.to(self.device)) else None

    def _project(self, name: str, grad: torch.Tensor) -> None:
        if self._out is not None:
            self.projector.accumulate(name, grad, self._out)

    # -- API --------------------------------------------------------------------------------
    def features(self, batch: Batch) -> torch.Tensor:
        """[B, out_dim] float32 features of one batch (on the model's device)."""
        batch = batch.to(self.device)
        self._out = torch.zeros(batch.input_ids.shape[0], self.out_dim, dtype=torch.float32, device=self.device)
        try:
            with self.collector.track():
                f = per_row_objective(self.model, batch, self.objective, self.head)
                torch.autograd.grad(f.sum(), self.collector.tensors, allow_unused=True)
            self.projector.flush(self._out)
            return self._out
        finally:
            self.projector.reset()
            self._out = None

    def close(self) -> None:
        self.collector.close()

    def __enter__(self) -> GradientFeaturizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
