"""Mean-pooled final-layer hidden states (padding masked) of the warm model: the space in which
pre-selection votes. One no-grad forward per row."""

from __future__ import annotations

import torch

from ntk_selector.data import Batch
from ntk_selector.gradients import last_hidden


def mean_pooled(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """[B, d] mean of the final hidden states over real (non-padding) tokens."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    with torch.inference_mode():
        hidden = last_hidden(model, batch).float()
        mask = batch.attention_mask.unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
