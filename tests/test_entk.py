"""The exact eNTK path against a brute-force Jacobian: one autograd call per row and output logit
on the real logits, batch of one."""

import numpy as np
import pytest
import torch

from ntk_selector.analysis.entk import choose_outputs, exact_entk
from ntk_selector.config import DataConfig
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.formats import Conversation
from ntk_selector.io.tokens import collate, encode
from ntk_selector.model.loading import lora_parameters

CONVS = [
    Conversation([{"role": "user", "content": "good drug, slept well"}], "positive"),
    Conversation([{"role": "user", "content": "awful pain all night"}], "negative"),
    Conversation([{"role": "user", "content": "market vote debate"}], "politics now"),
    Conversation([{"role": "user", "content": "hello"}], "hi there"),
]


def brute_force_jacobian(model, encoded, pad_id, outputs):
    """[rows, outputs, P] gradients of zbar_k (mean logit k over response positions) and [rows, P]
    gradients of the summed logits, from real logits, one row at a time."""
    params = [p for _, p in lora_parameters(model)]
    per_output, summed = [], []
    for e in encoded:
        b = collate([e], pad_id)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[0].float()
        resp = logits[b.target_mask[0]]  # [|R|, V]
        rows = []
        for k in outputs:
            g = torch.autograd.grad(resp[:, k].mean(), params, retain_graph=True)
            rows.append(torch.cat([x.reshape(-1) for x in g]).double())
        per_output.append(torch.stack(rows))
        g = torch.autograd.grad(resp.sum(-1).mean(), params)
        summed.append(torch.cat([x.reshape(-1) for x in g]).double())
    return torch.stack(per_output), torch.stack(summed)


@pytest.mark.parametrize("logits", ["auto", "full"])
def test_sampled_exact_entk_equals_brute_force(lora_model, tok, logits):
    cfg = DataConfig(max_length=48)
    encoded = encode(CONVS, tok, cfg)
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    res = exact_entk(lora_model, collate(encoded, tok.pad_token_id), max_outputs=12, seed=3, logits=logits)
    assert res.logits_mode == ("shortcut" if logits == "auto" else "full")
    assert len(res.outputs) == 12 and np.array_equal(res.outputs, choose_outputs(vocab, 12, 3))
    J, J_sum = brute_force_jacobian(lora_model, encoded, tok.pad_token_id, res.outputs)
    k_ref = torch.einsum("akp,bkp->ab", J, J).numpy() * vocab / 12
    np.testing.assert_allclose(res.k_exact, k_ref, rtol=1e-4, atol=1e-6 * np.abs(k_ref).max())
    k_jf_ref = (J_sum @ J_sum.T).numpy()
    np.testing.assert_allclose(res.k_jf, k_jf_ref, rtol=1e-4, atol=1e-6 * np.abs(k_jf_ref).max())
    # mean signed cosine between different output gradients of the same row
    unit = J / J.norm(dim=2, keepdim=True)
    cos = torch.einsum("akp,alp->akl", unit, unit)
    off = ~torch.eye(12, dtype=torch.bool)
    assert res.mean_output_cosine == pytest.approx(float(cos[:, off].mean()), rel=1e-4, abs=1e-6)
    # the two halves of the sample average to the whole estimate
    np.testing.assert_allclose((res.k_halves[0] + res.k_halves[1]) / 2, res.k_exact, rtol=1e-9, atol=1e-12)


def test_all_outputs_when_vocab_is_small(lora_model, tok):
    cfg = DataConfig(max_length=32)
    encoded = encode(CONVS[:2], tok, cfg)
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    res = exact_entk(lora_model, collate(encoded, tok.pad_token_id), max_outputs=10_000, seed=0)
    assert len(res.outputs) == vocab and res.scale == 1.0
    J, J_sum = brute_force_jacobian(lora_model, encoded, tok.pad_token_id, res.outputs)
    k_ref = torch.einsum("akp,bkp->ab", J, J).numpy()
    np.testing.assert_allclose(res.k_exact, k_ref, rtol=1e-4)
    # K_jf = K_exact + cross terms, and the cross terms are the off-diagonal output pairs
    cross = torch.einsum("akp,blp->ab", J, J).numpy() - k_ref
    np.testing.assert_allclose(res.k_jf - res.k_exact, cross, rtol=1e-3, atol=1e-6 * np.abs(res.k_jf).max())


def test_jacobian_free_kernel_matches_featurizer(lora_model, tok):
    encoded = encode(CONVS, tok, DataConfig(max_length=48))
    batch = collate(encoded, tok.pad_token_id)
    res = exact_entk(lora_model, batch, max_outputs=2, seed=0)
    with GradientFeaturizer(lora_model, 0, 0, "ntk", "auto", batch) as feat:
        f = feat.features(batch).double()
    np.testing.assert_allclose(res.k_jf, (f @ f.T).numpy(), rtol=1e-4, atol=1e-6 * float((f @ f.T).abs().max()))


def test_several_batches_equal_one(lora_model, tok):
    encoded = encode(CONVS, tok, DataConfig(max_length=48))
    one = exact_entk(lora_model, collate(encoded, tok.pad_token_id), max_outputs=6, seed=1)
    split = exact_entk(
        lora_model,
        [collate(encoded[:1], tok.pad_token_id), collate(encoded[1:], tok.pad_token_id)],
        max_outputs=6,
        seed=1,
    )
    for a, b in ((one.k_exact, split.k_exact), (one.k_jf, split.k_jf)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    assert one.mean_output_cosine == pytest.approx(split.mean_output_cosine, rel=1e-4)
