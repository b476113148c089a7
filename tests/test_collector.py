"""The one per-sample gradient collector: its gradients equal a batch-of-one autograd reference, untracked
forwards record nothing, and close() removes every hook."""

from __future__ import annotations

import torch

from ntk_selector.config import DataConfig
from ntk_selector.features.collector import LoraGradientCollector
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.tokens import collate, encode


def test_collector_matches_batch_of_one_autograd(lora_model, tok):
    rows = [
        {"prompt": "short", "response": "a"},
        {"prompt": "a somewhat longer prompt", "response": "b c d"},
        {"prompt": "x", "response": "yes"},
    ]
    enc = encode([to_conversation(r, DataConfig()) for r in rows], tok, DataConfig())
    batch = collate(enc, tok.pad_token_id)
    got: dict[str, torch.Tensor] = {}

    def sink(name: str, g: torch.Tensor) -> None:
        got[name] = got.get(name, 0) + g

    def per_row(model, b):
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        return (logits.float().sum(-1) * b.target_mask).sum(1)

    with LoraGradientCollector(lora_model, sink) as col:
        with torch.no_grad():
            lora_model(input_ids=batch.input_ids)  # untracked: records nothing
        assert got == {}
        with col.track():
            f = per_row(lora_model, batch)
            torch.autograd.grad(f.sum(), col.tensors, allow_unused=True)
        for i, e in enumerate(enc):
            one = collate([e], tok.pad_token_id)
            params = dict(col.params)
            ref = torch.autograd.grad(per_row(lora_model, one).sum(), list(params.values()), allow_unused=True)
            for (name, _), r in zip(col.params, ref, strict=True):
                r = torch.zeros_like(params[name]) if r is None else r
                torch.testing.assert_close(got[name][i], r.float(), rtol=1e-4, atol=1e-4 * float(r.abs().max()) + 1e-7)
    n_hooks = sum(len(m._forward_hooks) for m in lora_model.modules())
    assert n_hooks == 0
