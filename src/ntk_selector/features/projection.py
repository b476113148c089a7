"""Seeded projections of per-sample LoRA gradients, behind one interface.

``FactoredRademacher`` (the default) never builds a dense P x p matrix. A LoRA weight gradient
G is a thin matrix ``[s, L]`` (s = rank side, L = the model-width side). Each module m gets its own
seeded Rademacher matrix R_m ``[L, p/k]`` scaled by ``1/sqrt(p/k)``; the rank side is kept exact
(zero-padded from s to k, the smallest divisor of p that is >= s). The module's contribution is
``vec(pad(G) R_m)`` (p values) and contributions of all modules are summed into one p-vector.

Because the R_m are independent with zero mean and ``E[R R^T] = I``, the projected inner product
is an unbiased estimate of the raw one: ``E[<Pg, Pg'>] = sum_m <G_m, G'_m>_F = <g, g'>``.
R_m is generated from ``sha256(seed, parameter name)`` on the CPU generator, so every process and
machine gets the same projection for the same seed. Cost per row: ``sum_m L_m * p`` multiply-adds,
about 1% of a forward+backward for SmolLM2-135M at p = 8192.

The modules of one layer container (``model.layers.3.self_attn``: q/k/v/o, A and B) that share s
and k are projected together in one product over their stacked R_m (fewer, larger products: the
per-module ones are many small kernels on a GPU); that only changes the float summation order.
What is kept on the device is bounded by a byte budget (``cache_bytes``; default a quarter of a
GPU's free memory, 1 GiB on a CPU): when every scaled R_m fits in the compute dtype, all are kept
that way (nothing is converted per batch); otherwise the signs of as many layer groups as fit are
kept as int8, one byte per entry instead of four, and scaled into the compute dtype when used, and
the others are regenerated per batch. The numbers are the same either way.

``RawGradient`` (p = 0) concatenates the raw gradients in ``named_parameters()`` order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import torch

from ntk_selector.errors import UserError


class Projector(Protocol):
    out_dim: int

    def accumulate(self, name: str, grad: torch.Tensor, out: torch.Tensor) -> None:
        """Add the projection of per-sample gradients ``grad [B, *param_shape]`` into ``out [B, out_dim]``
        (possibly later: every call of one batch gets the same ``out``, and ``flush(out)`` ends the batch)."""

    def flush(self, out: torch.Tensor) -> None:
        """Add into ``out`` whatever the batch's ``accumulate`` calls still hold."""

    def reset(self) -> None:
        """Drop whatever is held (after a failed batch)."""


def module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rademacher(shape: tuple[int, int], seed: int, name: str) -> torch.Tensor:
    """A deterministic +-1 matrix for (seed, name), identical on every machine."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(module_seed(seed, name))
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.int8).mul_(2).sub_(1)


def smallest_divisor_at_least(p: int, s: int) -> int:
    for k in range(s, p + 1):
        if p % k == 0:
            return k
    raise UserError(
        f"--proj-dim {p} is smaller than the LoRA rank side {s} of the adapter; raise --proj-dim (or 0 for raw "
        "gradients)"
    )


class RawGradient:
    """The unprojected gradient, parameters laid out in ``named_parameters()`` order."""

    def __init__(self, shapes: Sequence[tuple[str, tuple[int, ...]]]):
        self.offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, shape in shapes:
            n = 1
            for d in shape:
                n *= d
            self.offsets[name] = (pos, pos + n)
            pos += n
        self.out_dim = pos

    def accumulate(self, name: str, grad: torch.Tensor, out: torch.Tensor) -> None:
        a, b = self.offsets[name]
        out[:, a:b] += grad.reshape(grad.shape[0], -1).to(out.dtype)

    def flush(self, out: torch.Tensor) -> None:
        pass

    def reset(self) -> None:
        pass


class FactoredRademacher:
    """Per-module factored Rademacher projection, summed into one p-dimensional space.

    ``dtype`` is the dtype of the products: float32 (the default), or bfloat16, where each product
    takes bf16 gradients and the exact +-1 signs, accumulates in fp32 inside the matmul, rounds each
    projected value to bf16, and is scaled and summed into ``out`` in fp32 (an approximation:
    ``python -m benchmarks.speed.featurize_profile --compare-projection`` measures its inner-product error).

    ``fuse`` (the default) projects the modules of one layer container that share a rank side s and
    a split k in one product: their gradients ``[B, s, L_m]`` are concatenated along the width into
    ``[B, s, sum L_m]`` and multiplied by the matrices R_m stacked in the same order. That is the sum
    of the per-module products in another summation order, so the features are the same numbers up
    to float rounding. A group's gradients are held until its last module's arrive (one layer's
    worth); ``flush`` projects what is still held, module by module, and must follow every batch.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[str, tuple[int, ...]]],
        dim: int,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int | None = None,
        fuse: bool = True,
        cache_matrices: bool = True,
    ):
        self.out_dim = dim
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.low_precision = dtype in LOW_PRECISION
        self.fuse = fuse
        self.plan: dict[str, tuple[bool, int, int, int]] = {}  # name -> (transpose, s, L, k)
        keyed: dict[tuple[str, int, int], list[str]] = {}
        for name, shape in shapes:
            if len(shape) != 2:
                raise ValueError(f"{name}: expected a 2-D LoRA weight, got shape {shape}")
            out_f, in_f = shape
            transpose = out_f > in_f  # put the small (rank) side first
            s, L = (in_f, out_f) if transpose else (out_f, in_f)
            k = smallest_divisor_at_least(dim, s)
            self.plan[name] = (transpose, s, L, k)
            keyed.setdefault((layer_container(name) if fuse else name, s, k), []).append(name)
        self.groups: list[tuple[str, ...]] = [tuple(members) for members in keyed.values()]
        self._group_of: dict[str, int] = {}
        self._rows: dict[str, tuple[int, int]] = {}  # name -> its rows in the group's stacked matrix
        for gi, members in enumerate(self.groups):
            pos = 0
            for name in members:
                self._group_of[name] = gi
                self._rows[name] = (pos, pos + self.plan[name][2])
                pos += self.plan[name][2]
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        # what is kept per group: the scaled matrix in the compute dtype when all of them fit the budget
        # (nothing to convert per batch), else the +-1 signs, one byte each, of as many groups as fit
        # (scaled into the compute dtype when used); the others are regenerated per batch
        self._cache: dict[int, torch.Tensor] = {}
        self.cache_bytes = default_cache_bytes(self.device) if cache_bytes is None else int(cache_bytes)
        sizes = [self._group_rows(gi) * (dim // self.plan[m[0]][3]) for gi, m in enumerate(self.groups)]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self.cache_kind = "matrices" if cache_matrices and sum(sizes) * itemsize <= self.cache_bytes else "signs"
        budget = self.cache_bytes
        for gi, n in enumerate(sizes):
            if self.cache_kind == "matrices":
                self._cache[gi] = self._scaled(gi, self._signs(gi))
            elif n <= budget:
                self._cache[gi] = self._signs(gi)
                budget -= n

    @property
    def cached_modules(self) -> int:
        return sum(len(self.groups[gi]) for gi in self._cache)

    def _group_rows(self, gi: int) -> int:
        return sum(self.plan[name][2] for name in self.groups[gi])

    def _cols(self, gi: int) -> int:
        return self.out_dim // self.plan[self.groups[gi][0]][3]

    def _signs(self, gi: int) -> torch.Tensor:
        cols = self._cols(gi)
        parts = [rademacher((self.plan[name][2], cols), self.seed, name) for name in self.groups[gi]]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device=self.device)

    def _scaled(self, gi: int, signs: torch.Tensor) -> torch.Tensor:
        if self.low_precision:  # +-1 is exact in bf16; the scale is applied to the fp32 result
            return signs.to(dtype=self.dtype)
        return signs.to(dtype=self.dtype).mul_(self._cols(gi) ** -0.5)

    def _matrix(self, gi: int) -> torch.Tensor:
        """The group's stacked, scaled matrix in the compute dtype (the same numbers however it is kept)."""
        kept = self._cache.get(gi)
        if kept is not None and kept.dtype == self.dtype:
            return kept
        return self._scaled(gi, self._signs(gi) if kept is None else kept)

    def matrix(self, name: str) -> torch.Tensor:
        """The scaled matrix R_m in the compute dtype (the same numbers whether it is cached or not; in
        bf16 the +-1 signs alone, as the scale is applied to the product)."""
        a, b = self._rows[name]
        return self._matrix(self._group_of[name])[a:b]

    def accumulate(self, name: str, grad: torch.Tensor, out: torch.Tensor) -> None:
        transpose, _, _, _ = self.plan[name]
        g = grad.transpose(1, 2) if transpose else grad  # [B, s, L]
        gi = self._group_of[name]
        members = self.groups[gi]
        if len(members) == 1:
            self._project(gi, g, self._matrix(gi), out)
            return
        pending = self._pending.setdefault(gi, {})
        pending[name] = g.to(self.dtype)
        if len(pending) == len(members):
            del self._pending[gi]
            self._project(gi, torch.cat([pending[m] for m in members], dim=2), self._matrix(gi), out)

    def _project(self, gi: int, g: torch.Tensor, matrix: torch.Tensor, out: torch.Tensor) -> None:
        s = g.shape[1]
        proj = torch.matmul(g.to(self.dtype), matrix)  # [B, s, p/k]
        view = out.view(proj.shape[0], self.out_dim // self._cols(gi), self._cols(gi))
        if self.low_precision:
            view[:, :s] += proj.to(out.dtype).mul_(self._cols(gi) ** -0.5)
        else:
            view[:, :s] += proj.to(out.dtype)

    def flush(self, out: torch.Tensor) -> None:
        """Project the gradients of groups not every module of which received one (module by module)."""
        pending, self._pending = self._pending, {}
        for gi, held in pending.items():
            matrix = self._matrix(gi)
            for name in self.groups[gi]:
                if name in held:
                    a, b = self._rows[name]
                    self._project(gi, held[name], matrix[a:b], out)

    def reset(self) -> None:
        """Drop held gradients (after a batch that failed)."""
        self._pending = {}


def layer_container(name: str) -> str:
    """The module holding a LoRA'd linear: ``model.layers.3.self_attn`` for
    ``model.layers.3.self_attn.q_proj.lora_A.default.weight`` (the name itself without a ``lora_`` part)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            return ".".join(parts[: max(i - 1, 0)])
    return name


LOW_PRECISION = (torch.bfloat16, torch.float16)
PROJECTION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

DEFAULT_CPU_CACHE_BYTES = 1 << 30


def default_cache_bytes(device: torch.device) -> int:
    """A quarter of the device's free memory on a GPU; 1 GiB on a CPU (enough, at one byte a sign,
    for every matrix of an 8B model with r = 8 on q/k/v/o at p = 8192: about 0.9 GB)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    return DEFAULT_CPU_CACHE_BYTES


def make_projector(
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    dim: int,
    seed: int,
    device: torch.device | str = "cpu",
    cache_bytes: int | None = None,
    dtype: str = "float32",
) -> Projector:
    """The projector for ``dim`` (0: the raw gradient); ``dtype``: a key of PROJECTION_DTYPES, the
    dtype of the projection's products (the raw gradient ignores it)."""
    if dim == 0:
        return RawGradient(shapes)
    if dim < 0:
        raise ValueError("proj-dim must be >= 0")
    if dtype not in PROJECTION_DTYPES:
        raise ValueError(f"unknown projection dtype '{dtype}' ({', '.join(PROJECTION_DTYPES)})")
    return FactoredRademacher(shapes, dim, seed, device=device, cache_bytes=cache_bytes, dtype=PROJECTION_DTYPES[dtype])


PROJECTION_KIND = {True: "raw", False: "factored-rademacher"}
