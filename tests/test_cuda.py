"""The GPU path against the CPU path (skipped without CUDA; on a GPU machine:
``python -m pytest tests/test_cuda.py``): per-sample gradients computed on the GPU equal the CPU's
batch-of-one autograd reference, projected features are the same numbers on either device and
invariant to batching there, the sign cache changes GPU memory but not numbers, the GPU default
(bf16 base weights) stays close to fp32, and a whole fp32 selection on the GPU picks the same rows as
on the CPU with the same seed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_jsonl
from test_gradients import bf16_base_copy, encoded_rows, reference_gradient, rel_err
from test_projection import SHAPES

from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.features.projection import FactoredRademacher
from ntk_selector.io.tokens import collate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """TF32 would round fp32 products to 10 mantissa bits; the comparisons below are of fp32 math."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_gpu(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(GPU)


@pytest.mark.parametrize(
    "objective,logits", [("ntk", "shortcut"), ("ntk", "full"), ("ntk-content", "shortcut"), ("ce", "full")]
)
def test_gpu_per_sample_gradients_match_cpu_batch_of_one(lora_model, tok, objective, logits):
    encs = encoded_rows(tok)
    with GradientFeaturizer(on_gpu(lora_model), 0, 0, objective, logits) as feat:
        assert feat.device.type == "cuda"
        got = feat.features(collate(encs, tok.pad_token_id))
    assert got.device.type == "cuda"
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for i, e in enumerate(encs):
        ref = reference_gradient(lora_model, e, tok.pad_token_id, objective, end_of_turn)
        assert ref.abs().sum() > 0
        assert rel_err(got[i].cpu(), ref) < 1e-4, (i, rel_err(got[i].cpu(), ref))


def test_gpu_projected_features_equal_cpu_and_ignore_batching(lora_model, tok):
    encs = encoded_rows(tok, n=8, seed=4)
    batch = collate(encs, tok.pad_token_id)
    with GradientFeaturizer(lora_model, 256, 3, "ntk", "shortcut") as cpu:
        want = cpu.features(batch)
    with GradientFeaturizer(on_gpu(lora_model), 256, 3, "ntk", "shortcut") as gpu:
        got = gpu.features(batch)
        alone = torch.cat([gpu.features(collate([e], tok.pad_token_id)) for e in encs])
    assert rel_err(got.cpu(), want) < 1e-4
    assert rel_err(alone, got) < 1e-4


def test_gpu_sign_cache_budget_changes_memory_not_numbers():
    shapes = SHAPES[:3]  # 24 x 4 signs each at p = 16, k = 4; one layer group of 72 x 4
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, *s, generator=gen) for _, s in shapes]
    outs, kinds = [], []
    for device, budget, fuse in (
        ("cpu", 1 << 20, True),
        ("cuda", 0, True),  # regenerated per batch
        ("cuda", 3 * 24 * 4, True),  # the group's int8 signs
        ("cuda", 1 << 20, True),  # the group's fp32 matrix
        ("cuda", 24 * 4, False),  # one product per module, one module's signs kept
    ):
        proj = FactoredRademacher(shapes, 16, seed=2, device=device, cache_bytes=budget, fuse=fuse, cache_matrices=fuse)
        out = torch.zeros(3, 16, device=device)
        for (name, _), g in zip(shapes, grads, strict=True):
            proj.accumulate(name, g.to(device), out)
        proj.flush(out)
        assert all(t.device.type == device for t in proj._cache.values())
        outs.append(out.cpu())
        kinds.append((proj.cache_kind, proj.cached_modules))
    assert kinds == [("matrices", 3), ("signs", 0), ("signs", 3), ("matrices", 3), ("signs", 1)]
    assert torch.equal(outs[1], outs[2]) and torch.equal(outs[1], outs[3])
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(outs[4], outs[1], rtol=1e-5, atol=1e-6)


def test_gpu_bf16_base_close_to_fp32(lora_model, tok):
    """The GPU default: bf16 base weights (tensor-core products), fp32 LoRA and fp32 features."""
    encs = encoded_rows(tok)
    batch = collate(encs, tok.pad_token_id)
    half = bf16_base_copy(lora_model).to(GPU)
    assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if "lora_" in n)
    with GradientFeaturizer(lora_model, 256, 3, "ntk", "auto", probe=batch) as f32:
        ref = f32.features(batch)
    with GradientFeaturizer(half, 256, 3, "ntk", "auto", probe=batch) as bf16:
        got = bf16.features(batch).cpu()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    for i in range(len(encs)):
        assert rel_err(got[i], ref[i]) < 2e-2, (i, rel_err(got[i], ref[i]))
    assert rel_err(got, ref) > 0  # really ran in bf16


def test_gpu_selection_equals_cpu_selection(tmp_path, tiny_model_dir):
    """Warm-up, embedding, pre-selection, features and scores, all of it, in fp32 on each device."""
    from ntk_selector import select

    domain = write_jsonl(tmp_path / "domain.jsonl", synthetic_rows(8, 1, ("dom",)))
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_rows(40, 2))
    settings = {"proj_dim": 64, "rank": 4, "batch_size": 4, "lr": 1e-3, "quiet": True, "dtype": "float32"}
    cpu = select(domain, pool, 5, model=tiny_model_dir, out=tmp_path / "cpu", device="cpu", **settings)
    gpu = select(domain, pool, 5, model=tiny_model_dir, out=tmp_path / "gpu", device="cuda", **settings)
    assert {sec.get("device") for sec in gpu.summary["config"].values() if "device" in sec} == {"cuda"}
    assert gpu.summary["inputs"] == cpu.summary["inputs"]  # the device is not a setting of what is selected
    assert gpu.indices.tolist() == cpu.indices.tolist()
    assert gpu.scores.tolist() == pytest.approx(cpu.scores.tolist(), rel=1e-3, abs=1e-6)
    both = ~np.isnan(cpu.pool_scores)
    assert np.array_equal(both, ~np.isnan(gpu.pool_scores)) and both.sum() > 5
    assert np.allclose(gpu.pool_scores[both], cpu.pool_scores[both], rtol=1e-3, atol=1e-6)
