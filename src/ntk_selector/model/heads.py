"""Access to a causal LM's body and head: final hidden states, real logits, logits at response
positions only, and the summed-logit shortcut ``sum_k z_{t,k} = u.h_t + const`` of a linear head.

Computing the V x d head only where a loss or score needs it (a few response tokens of a long
prompt) saves most of the head's cost and memory; heads that are not a plain linear map (logit
soft-capping, scaled logits) are detected and use the model's own forward.
"""

from __future__ import annotations

import weakref

import torch

from ntk_selector.io.tokens import IGNORE_INDEX, Batch


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


_PLAIN_HEAD: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def head_is_plain(model: torch.nn.Module, batch: Batch) -> bool:
    """True when the model's logits are exactly ``head(final hidden)`` (to rounding: 1e-4 relative in
    fp32, 2e-2 in half precision), checked numerically on a probe batch once per model.

    The one check for every use of the head shortcut: the training loss and the CE objective apply
    the head only at response positions, and the NTK objective uses ``sum_k z_k = u.h + const``; a
    head that caps, scales or otherwise transforms the logits (whatever its config calls it) fails
    the check and the model's own forward is used.
    """
    if model in _PLAIN_HEAD:
        return _PLAIN_HEAD[model]
    head = _base_causal_lm(model).get_output_embeddings()
    plain = False
    if isinstance(head, torch.nn.Linear):
        was_training = model.training
        model.eval()  # no dropout: both forwards must see the same network (and draw no random numbers)
        try:
            with torch.no_grad():
                real = full_logits(model, batch).float()
                fast = head(last_hidden(model, batch)).float()
        finally:
            model.train(was_training)
        mask = batch.attention_mask.bool()
        rtol = 1e-4 if head.weight.dtype == torch.float32 else 2e-2
        err = (real - fast)[mask].abs().max()
        plain = bool(err <= rtol * real[mask].abs().max().clamp_min(1.0))
    _PLAIN_HEAD[model] = plain
    return plain


def response_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at positions that predict a response token: (logits [n, V], next-token labels [n], row index [n])."""
    pos = batch.labels != IGNORE_INDEX
    rows = pos.nonzero()[:, 0]
    if not head_is_plain(model, batch):
        return full_logits(model, batch)[pos], batch.labels[pos], rows
    head = _base_causal_lm(model).get_output_embeddings()
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
    """True when the summed logits of the real model equal ``u.h + const``: exactly when the head is a
    plain linear map of the final hidden state (``head_is_plain``, the same check the loss uses)."""
    return head_is_plain(model, batch)
