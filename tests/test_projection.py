import numpy as np
import pytest
import torch

from ntk_selector.features.projection import FactoredRademacher, RawGradient, make_projector

SHAPES = [
    ("l0.q.lora_A.weight", (4, 24)),
    ("l0.q.lora_B.weight", (24, 4)),
    ("l0.v.lora_A.weight", (4, 24)),
    ("l0.v.lora_B.weight", (12, 4)),
]


def project(shapes, grads, dim, seed, dtype="float32"):
    proj = make_projector(shapes, dim, seed, dtype=dtype)
    out = torch.zeros(grads[0].shape[0], proj.out_dim)
    for (name, _), g in zip(shapes, grads, strict=True):
        proj.accumulate(name, g, out)
    proj.flush(out)
    return out


def random_grads(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *s, generator=gen, dtype=torch.float64) for _, s in SHAPES]


def test_same_seed_identical_other_seed_differs():
    g = random_grads(3, 0)
    a, b, c = project(SHAPES, g, 64, 5), project(SHAPES, g, 64, 5), project(SHAPES, g, 64, 6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_projected_inner_products_unbiased(dtype):
    """Averaged over many seeds, <Pg, Pg'> converges to <g, g'> (incl. cross terms of other pairs);
    the bf16 products too, at the same tolerance."""
    g = random_grads(3, 1)
    raw = torch.cat([x.reshape(3, -1) for x in g], 1)
    exact = raw @ raw.T
    seeds = 400
    acc = torch.zeros(3, 3, dtype=torch.float64)
    single_err = []
    for s in range(seeds):
        p = project(SHAPES, g, 32, s, dtype).double()
        gram = p @ p.T
        acc += gram
        single_err.append(float((gram - exact).abs().max()))
    mean = acc / seeds
    # the mean error shrinks like 1/sqrt(seeds) relative to a single projection's error
    assert float((mean - exact).abs().max()) < 0.2 * np.mean(single_err)
    assert float((mean - exact).abs().max() / exact.abs().max()) < 0.05


def test_raw_gradient_layout():
    g = random_grads(2, 2)
    raw = project(SHAPES, g, 0, 0)
    assert raw.shape[1] == sum(int(np.prod(s)) for _, s in SHAPES)
    assert torch.allclose(raw.double(), torch.cat([x.reshape(2, -1) for x in g], 1))
    assert isinstance(make_projector(SHAPES, 0, 0), RawGradient)


def test_factored_equals_explicit_dense_matrix():
    """The factored projection is a linear map; build it column by column and compare."""
    shapes = SHAPES[:2]
    proj = FactoredRademacher(shapes, 16, seed=3)
    total = sum(int(np.prod(s)) for _, s in shapes)
    dense = torch.zeros(total, 16)
    offset = 0
    for name, s in shapes:
        k = int(np.prod(s))
        for j in range(k):
            e = torch.zeros(1, k)
            e[0, j] = 1.0
            row = dense[offset + j : offset + j + 1]
            proj.accumulate(name, e.reshape(1, *s), row)
            proj.flush(row)  # one module alone: its layer group is held until flushed
        offset += k
    # entries are +-1/sqrt(cols) or 0 (zero-padded rank side never used here since s divides 16)
    nz = dense[dense != 0].abs()
    assert torch.allclose(nz, nz[0].expand_as(nz))
    g = [torch.randn(2, *s) for _, s in shapes]
    flat = torch.cat([x.reshape(2, -1) for x in g], 1)
    assert torch.allclose(project(shapes, g, 16, 3), flat @ dense, atol=1e-5)


def test_sign_cache_budget_changes_memory_not_numbers():
    """Per module: cached int8 signs, partly cached and regenerated matrices give the same features, bit for bit."""
    g = [x.float() for x in random_grads(3, 4)]
    outs, cached = [], []
    for budget in (0, 24 * 4, 1 << 20):  # nothing, one module's signs (24 x 4 at p = 16, k = 4), all
        proj = FactoredRademacher(SHAPES, 16, seed=2, cache_bytes=budget, fuse=False, cache_matrices=False)
        out = torch.zeros(3, 16)
        for (name, _), x in zip(SHAPES, g, strict=True):
            proj.accumulate(name, x, out)
        proj.flush(out)
        outs.append(out)
        cached.append(proj.cached_modules)
        assert all(t.dtype == torch.int8 for t in proj._cache.values())
        assert sum(t.numel() for t in proj._cache.values()) <= budget
    assert cached == [0, 1, len(SHAPES)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # and the same numbers as an explicitly scaled +-1 matrix
    from ntk_selector.features.projection import rademacher

    name, _ = SHAPES[0]
    ref = rademacher((24, 4), 2, name).float() * 4**-0.5
    assert torch.equal(FactoredRademacher(SHAPES, 16, seed=2, cache_bytes=1 << 20).matrix(name), ref)
    assert torch.equal(FactoredRademacher(SHAPES, 16, seed=2, cache_bytes=0).matrix(name), ref)


def test_fused_cache_kinds_give_the_same_numbers():
    """Fused layer group: regenerated, int8 signs and kept fp32 matrices give the same features, bit for bit."""
    g = [x.float() for x in random_grads(3, 4)]
    rows = sum(s[0] if s[0] > s[1] else s[1] for _, s in SHAPES)  # the group's stacked width: 84 x 4 at p = 16
    outs, kinds = [], []
    for budget in (0, rows * 4, 1 << 20):
        proj = FactoredRademacher(SHAPES, 16, seed=2, cache_bytes=budget)
        assert len(proj.groups) == 1
        out = project_with(proj, SHAPES, g)
        outs.append(out)
        kinds.append((proj.cache_kind, proj.cached_modules, {str(t.dtype) for t in proj._cache.values()}))
    assert kinds == [("signs", 0, set()), ("signs", 4, {"torch.int8"}), ("matrices", 4, {"torch.float32"})]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def project_with(proj, shapes, grads, order=None):
    out = torch.zeros(grads[0].shape[0], proj.out_dim, dtype=torch.float64 if proj.dtype == torch.float64 else None)
    for i in order if order is not None else range(len(shapes)):
        proj.accumulate(shapes[i][0], grads[i], out)
    proj.flush(out)
    return out


LAYERS = [
    (f"m.layers.{i}.{blk}.{mod}.lora_{ab}.default.weight", shape)
    for i in range(2)
    for blk, mod, shapes in (
        ("self_attn", "q_proj", ((4, 24), (24, 4))),
        ("self_attn", "v_proj", ((4, 24), (12, 4))),
        ("mlp", "up_proj", ((4, 24), (40, 4))),
        ("mlp", "down_proj", ((6, 40), (24, 6))),  # another rank side: another group
    )
    for ab, shape in zip("AB", shapes, strict=True)
]


def test_fused_equals_per_module_up_to_summation_order():
    """One product per layer group (in any arrival order, incomplete groups flushed) against one per module."""
    from ntk_selector.features.projection import layer_container

    assert layer_container(LAYERS[0][0]) == "m.layers.0.self_attn"
    gen = torch.Generator().manual_seed(7)
    g = [torch.randn(3, *s, generator=gen, dtype=torch.float64) for _, s in LAYERS]
    unfused = FactoredRademacher(LAYERS, 48, seed=1, dtype=torch.float64, fuse=False)
    fused = FactoredRademacher(LAYERS, 48, seed=1, dtype=torch.float64)
    assert len(unfused.groups) == len(LAYERS) and len(fused.groups) == 6  # 2 layers x (attn, mlp s=4, mlp s=6)
    want = project_with(unfused, LAYERS, g)
    backward = list(range(len(LAYERS)))[::-1]  # the order hooks fire in
    for order in (None, backward):
        got = project_with(fused, LAYERS, g, order)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
        assert not fused._pending
    # a group some of whose modules get no gradient is projected at flush, module by module
    some = [i for i in range(len(LAYERS)) if i % 3]
    want = project_with(unfused, LAYERS, g, some)
    assert torch.allclose(project_with(fused, LAYERS, g, some), want, rtol=1e-12, atol=1e-12)
    # in fp32 the same features to float rounding
    g32 = [x.float() for x in g]
    a = project_with(FactoredRademacher(LAYERS, 48, seed=1, fuse=False, cache_matrices=False), LAYERS, g32)
    b = project_with(FactoredRademacher(LAYERS, 48, seed=1), LAYERS, g32)
    assert float((a - b).norm() / a.norm()) < 1e-6


def test_bf16_products_against_fp32():
    """bf16 products (fp32 accumulation, bf16 results): the same seed gives the same numbers, cached or
    not; projected values within 1e-2 of fp32, inner products within 1e-3 of the norms' product. Not
    within the 1e-5 feature tolerance of the fp32 path (tests/test_gradients.py), hence off by default."""
    gen = torch.Generator().manual_seed(3)
    g = [torch.randn(4, *s, generator=gen) for _, s in LAYERS]
    bf = [
        project_with(FactoredRademacher(LAYERS, 256, seed=1, dtype=torch.bfloat16, cache_bytes=b), LAYERS, g)
        for b in (0, 1 << 20)
    ]
    assert torch.equal(bf[0], bf[1])
    fp = project_with(FactoredRademacher(LAYERS, 256, seed=1), LAYERS, g).double()
    low = bf[0].double()
    rel = float((low - fp).norm() / fp.norm())
    assert 1e-5 < rel < 1e-2, rel
    norms = fp.norm(dim=1)
    gram_err = ((low @ low.T - fp @ fp.T) / torch.outer(norms, norms)).abs().max()
    assert float(gram_err) < 1e-3, float(gram_err)
    assert make_projector(LAYERS, 256, 1, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="projection dtype"):
        make_projector(LAYERS, 256, 1, dtype="float8")
