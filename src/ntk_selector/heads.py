"""Access to a causal LM's body and head: final hidden states, real logits, logits at response
positions only, and the summed-logit shortcut ``sum_k z_{t,k} = u.h_t + const`` of a linear head.

Computing the V x d head only where a loss or score needs it (a few response tokens of a long
prompt) saves most of the head's cost and memory; heads that are not a plain linear map (logit
soft-capping, scaled logits) are detected and use the model's own forward.
"""

from __future__ import annotations

import torch

from ntk_selector.data import IGNORE_INDEX, Batch


def _base_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body (returns final, normed hidden states) of a causal LM."""
    base = _base_causal_lm(model)
    if hasattr(base, "get_decoder"):
        dec = base.get_decoder()
        if dec is not None:
            return dec
    return getattr(base, base.base_model_prefix)


def last_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = decoder_of(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def full_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def plain_linear_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The head when logits are exactly ``head(final hidden)``; None for capped or scaled logits."""
    base = _base_causal_lm(model)
    head = base.get_output_embeddings()
    cfg = base.config
    if not isinstance(head, torch.nn.Linear):
        return None
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        value = getattr(cfg, attr, None)
        if value not in (None, 1, 1.0):
            return None
    return head


def response_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at positions that predict a response token: (logits [n, V], next-token labels [n], row index [n])."""
    pos = batch.labels != IGNORE_INDEX
    rows = pos.nonzero()[:, 0]
    head = plain_linear_head(model)
    if head is None:
        return full_logits(model, batch)[pos], batch.labels[pos], rows
    hidden = last_hidden(model, batch)
    return head(hidden[pos]), batch.labels[pos], rows


class SummedLogitHead:
    """``sum_k z_{t,k}`` of a linear head as ``u.h_t`` (+ summed bias, which has no gradient)."""

    def __init__(self, model: torch.nn.Module):
        head = _base_causal_lm(model).get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise TypeError("output head is not a torch.nn.Linear")
        self.u = head.weight.detach().float().sum(0)  # [d]
        self.bias_sum = float(head.bias.detach().float().sum()) if head.bias is not None else 0.0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() @ self.u + self.bias_sum


def shortcut_applies(model: torch.nn.Module, batch: Batch) -> bool:
    """True when the summed logits of the real model equal ``u.h + const`` on a probe batch
    (to rounding: 1e-4 relative in fp32, 2e-2 in half precision)."""
    try:
        head = SummedLogitHead(model)
    except TypeError:
        return False
    with torch.no_grad():
        real = full_logits(model, batch).float().sum(-1)
        hidden = last_hidden(model, batch)
        fast = head(hidden)
    rtol = 1e-4 if hidden.dtype == torch.float32 else 2e-2
    mask = batch.attention_mask.bool()
    err = (real - fast)[mask].abs().max()
    return bool(err <= rtol * real[mask].abs().max().clamp_min(1.0))


