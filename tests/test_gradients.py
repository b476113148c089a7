"""Per-sample features against a batch-of-one autograd reference; padding/batch invariance;
summed-logit shortcut == real logits; raw layout == named_parameters order."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, synthetic_rows

from ntk_selector.config import DataConfig
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.tokens import collate, encode
from ntk_selector.model.loading import lora_parameters


def encoded_rows(tok, n=6, seed=0, **kw):
    cfg = DataConfig(**kw)
    return encode([to_conversation(r, cfg) for r in synthetic_rows(n, seed)], tok, cfg)


def reference_gradient(model, enc, pad_id, objective, end_of_turn=None):
    """Batch of one, real logits, plain autograd, flattened in named_parameters() order."""
    b = collate([enc], pad_id)
    params = [p for _, p in lora_parameters(model)]
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    n = b.target_mask.sum()
    if objective == "ntk":
        f = (logits.sum(-1) * b.target_mask).sum() / n
    elif objective == "ntk-content":  # the positions whose next token is response content, not the end of turn
        content = b.target_mask & (b.labels != end_of_turn)
        f = (logits.sum(-1) * content).sum() / content.sum()
    elif objective == "ntk-all":  # every position but the last predicts a real token (one row, no padding)
        f = logits[0, :-1].sum() / (b.input_ids.shape[1] - 1)
    else:
        f = F.cross_entropy(logits[0], b.labels[0], ignore_index=-100, reduction="sum") / n
    grads = torch.autograd.grad(f, params)
    return torch.cat([g.flatten() for g in grads])


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def bf16_base_copy(model):
    """A copy of ``model`` with bf16 base weights and its LoRA weights left in fp32 (the GPU default)."""
    half = copy.deepcopy(model)
    for name, p in half.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(torch.bfloat16)
    return half


@pytest.mark.parametrize(
    "objective,logits",
    [
        ("ntk", "shortcut"),
        ("ntk", "full"),
        ("ntk-all", "shortcut"),
        ("ntk-all", "full"),
        ("ntk-content", "shortcut"),
        ("ntk-content", "full"),
        ("ce", "full"),
    ],
)
def test_per_sample_raw_gradients_match_batch_of_one(lora_model, tok, objective, logits):
    encs = encoded_rows(tok)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(lora_model, 0, 0, objective, logits) as feat:
        got = feat.features(batch)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for i, e in enumerate(encs):
        ref = reference_gradient(lora_model, e, tok.pad_token_id, objective, end_of_turn)
        assert got[i].abs().sum() > 0
        assert rel_err(got[i], ref) < 1e-5, (i, rel_err(got[i], ref))


def test_auto_picks_shortcut_for_linear_head_and_equals_full(lora_model, tok):
    encs = encoded_rows(tok)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(lora_model, 256, 3, "ntk", "auto", probe=batch) as fast:
        assert fast.logits_mode == "shortcut"
        a = fast.features(batch)
    with GradientFeaturizer(lora_model, 256, 3, "ntk", "full") as slow:
        b = slow.features(batch)
    assert rel_err(a, b) < 1e-5


def test_auto_falls_back_to_full_logits_with_softcapping(tok):
    from peft import LoraConfig, get_peft_model

    model = make_model(len(tok))
    torch.manual_seed(1)
    pm = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    # A head that is not a plain linear map: soft-cap the logits with tanh.
    base = pm.get_base_model()
    orig_forward = base.forward

    def capped(*args, **kwargs):
        out = orig_forward(*args, **kwargs)
        out.logits = 0.05 * torch.tanh(out.logits / 0.05)
        return out

    base.forward = capped
    encs = encoded_rows(tok, n=3)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(pm, 0, 0, "ntk", "auto", probe=batch) as feat:
        assert feat.logits_mode == "full"
        got = feat.features(batch)
    ref = reference_gradient(pm, encs[1], tok.pad_token_id, "ntk")
    assert rel_err(got[1], ref) < 1e-5


def test_padding_and_batch_composition_invariance(lora_model, tok):
    encs = encoded_rows(tok, n=8, seed=4)
    with GradientFeaturizer(lora_model, 512, 0, "ntk", "shortcut") as feat:
        together = feat.features(collate(encs, tok.pad_token_id))
        alone = torch.cat([feat.features(collate([e], tok.pad_token_id)) for e in encs])
        shuffled_order = [3, 0, 7, 5, 1, 6, 2, 4]
        shuffled = feat.features(collate([encs[i] for i in shuffled_order], tok.pad_token_id))
    assert rel_err(together, alone) < 1e-5
    assert rel_err(shuffled, together[shuffled_order]) < 1e-5


def test_raw_layout_is_named_parameters_order(lora_model, tok):
    encs = encoded_rows(tok, n=2)
    with GradientFeaturizer(lora_model, 0, 0, "ntk", "shortcut") as feat:
        got = feat.features(collate(encs, tok.pad_token_id))
    names = [n for n, _ in lora_parameters(lora_model)]
    assert names == [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert ".lora_A." in names[0] and ".lora_B." in names[1]
    ref = reference_gradient(lora_model, encs[0], tok.pad_token_id, "ntk")
    offset = 0
    for n, p in lora_parameters(lora_model):
        k = p.numel()
        assert rel_err(got[0, offset : offset + k], ref[offset : offset + k]) < 1e-5, n
        offset += k
    assert offset == got.shape[1]


def test_tied_embeddings_model(tok):
    from peft import LoraConfig, get_peft_model

    model = make_model(len(tok), tie=True)
    torch.manual_seed(2)
    pm = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], init_lora_weights=False)
    )
    encs = encoded_rows(tok, n=3)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(pm, 0, 0, "ntk", "auto", probe=batch) as feat:
        assert feat.logits_mode == "shortcut"
        got = feat.features(batch)
    assert rel_err(got[2], reference_gradient(pm, encs[2], tok.pad_token_id, "ntk")) < 1e-5


def test_projected_features_are_projection_of_raw(lora_model, tok):
    encs = encoded_rows(tok, n=3)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(lora_model, 0, 0, "ntk", "shortcut") as raw_f:
        raw = raw_f.features(batch)
    with GradientFeaturizer(lora_model, 128, 7, "ntk", "shortcut") as proj_f:
        proj = proj_f.features(batch)
        # apply the projector to the raw gradient, module by module
        expect = torch.zeros_like(proj)
        offset = 0
        for n, p in lora_parameters(lora_model):
            k = p.numel()
            proj_f.projector.accumulate(n, raw[:, offset : offset + k].reshape(-1, *p.shape), expect)
            offset += k
        proj_f.projector.flush(expect)
    assert rel_err(proj, expect) < 1e-5


def test_fused_projection_equals_per_module(lora_model, tok):
    """Features with one projection product per layer group equal one product per module, to float rounding."""
    from ntk_selector.features.projection import FactoredRademacher

    batch = collate(encoded_rows(tok, n=4), tok.pad_token_id)
    shapes = [(n, tuple(p.shape)) for n, p in lora_parameters(lora_model)]
    outs = []
    for fuse in (False, True):
        with GradientFeaturizer(lora_model, 128, 7, "ntk", "shortcut") as feat:
            feat.projector = FactoredRademacher(shapes, 128, 7, fuse=fuse, cache_matrices=fuse)
            assert len(feat.projector.groups) == (len(shapes) // 8 if fuse else len(shapes))  # q/k/v/o A and B
            outs.append(feat.features(batch))
    assert rel_err(outs[1], outs[0]) < 1e-6
    assert not torch.equal(outs[1], torch.zeros_like(outs[1]))


def test_bf16_base_gives_features_close_to_fp32(lora_model, tok):
    """The GPU default (bf16 base weights, fp32 LoRA, fp32 per-sample products) on CPU: close to
    fp32 features, and a batched row equals the same row alone up to bf16 rounding."""
    encs = encoded_rows(tok)
    batch = collate(encs, tok.pad_token_id)
    half = bf16_base_copy(lora_model)
    assert all(p.dtype == torch.float32 for _, p in lora_parameters(half))
    with GradientFeaturizer(lora_model, 256, 3, "ntk", "auto", probe=batch) as f32:
        ref = f32.features(batch)
    with GradientFeaturizer(half, 256, 3, "ntk", "auto", probe=batch) as bf16:
        assert bf16.logits_mode == "shortcut"
        got = bf16.features(batch)
        alone = torch.cat([bf16.features(collate([e], tok.pad_token_id)) for e in encs])
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    for i in range(len(encs)):
        assert rel_err(got[i], ref[i]) < 2e-2, (i, rel_err(got[i], ref[i]))
        assert rel_err(got[i], alone[i]) < 2e-2, (i, rel_err(got[i], alone[i]))
    assert rel_err(got, ref) > 0  # really ran in bf16


def test_ntk_content_drops_only_the_end_of_turn_position(lora_model, tok):
    """A one-word answer's ntk-content feature is the gradient at the one position choosing it; rows with
    a longer answer differ from ntk; a row whose response is one token keeps it."""
    from ntk_selector.features.gradients import content_mask

    cfg = DataConfig()
    rows = [{"prompt": "a b c", "response": "d"}, {"prompt": "a b", "response": "c d e f"}]
    encs = encode([to_conversation(r, cfg) for r in rows], tok, cfg)
    batch = collate(encs, tok.pad_token_id)
    mask = content_mask(batch)
    assert (batch.target_mask.sum(1) - mask.sum(1)).tolist() == [1, 1]
    last = [int(torch.nonzero(batch.target_mask[b]).max()) for b in range(2)]
    assert not mask[0, last[0]] and not mask[1, last[1]]
    assert batch.labels[0, last[0]] == tok.convert_tokens_to_ids("<|im_end|>")
    one = collate([encs[0]], tok.pad_token_id)
    one.target_mask[0, last[0] - 1] = False  # the response is now the end-of-turn token alone
    assert torch.equal(content_mask(one), one.target_mask)
    with GradientFeaturizer(lora_model, 0, 0, "ntk-content", "full") as feat:
        content = feat.features(batch)
    with GradientFeaturizer(lora_model, 0, 0, "ntk", "full") as feat:
        full = feat.features(batch)
    assert rel_err(content[0], full[0]) > 1e-3 and rel_err(content[1], full[1]) > 1e-3
