"""Mean-pooled final-layer hidden states (padding masked): the space in which pre-selection votes.
One no-grad forward per row; ``max_tokens`` embeds only a prefix of each row, which under causal
attention is exactly what the first ``max_tokens`` positions of the whole row's forward hold."""

from __future__ import annotations

import torch

from ntk_selector.features.gradients import last_hidden
from ntk_selector.io.tokens import Batch


def prefix(batch: Batch, max_tokens: int) -> Batch:
    """The first ``max_tokens`` positions of every row (all of them when 0)."""
    if max_tokens <= 0 or batch.input_ids.shape[1] <= max_tokens:
        return batch
    return Batch(*(t[:, :max_tokens] for t in (batch.input_ids, batch.attention_mask, batch.target_mask, batch.labels)))


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, max_tokens: int = 0) -> torch.Tensor:
    """[B, d] mean of ``hidden [B, T, d]`` over real tokens among the first ``max_tokens`` (all when 0)."""
    if max_tokens > 0:
        hidden, attention_mask = hidden[:, :max_tokens], attention_mask[:, :max_tokens]
    mask = attention_mask.unsqueeze(-1).float()
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def mean_pooled(model: torch.nn.Module, batch: Batch, max_tokens: int = 0) -> torch.Tensor:
    """[B, d] mean of the final hidden states over real (non-padding) tokens of each row's prefix."""
    device = next(model.parameters()).device
    batch = prefix(batch, max_tokens).to(device)
    with torch.inference_mode():
        return pool_hidden(last_hidden(model, batch), batch.attention_mask)
