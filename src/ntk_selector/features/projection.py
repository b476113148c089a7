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
about 1% of a forward+backward for SmolLM2-135M at p = 8192. The signs of as many R_m as fit a
byte budget (``cache_bytes``; default a quarter of a GPU's free memory, 1 GiB on a CPU) are kept
as int8, one byte per entry instead of four, and scaled into the compute dtype when used; the
others are regenerated per batch. The numbers are the same either way.

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
        """Add the projection of per-sample gradients ``grad [B, *param_shape]`` into ``out [B, out_dim]``."""


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


class FactoredRademacher:
    """Per-module factored Rademacher projection, summed into one p-dimensional space."""

    def __init__(
        self,
        shapes: Sequence[tuple[str, tuple[int, ...]]],
        dim: int,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int | None = None,
    ):
        self.out_dim = dim
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.plan: dict[str, tuple[bool, int, int, int]] = {}  # name -> (transpose, s, L, k)
        # the +-1 signs, one byte each (exact); scaled into the compute dtype one module at a time
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_bytes = default_cache_bytes(self.device) if cache_bytes is None else int(cache_bytes)
        budget = self.cache_bytes
        for name, shape in shapes:
            if len(shape) != 2:
                raise ValueError(f"{name}: expected a 2-D LoRA weight, got shape {shape}")
            out_f, in_f = shape
            transpose = out_f > in_f  # put the small (rank) side first
            s, L = (in_f, out_f) if transpose else (out_f, in_f)
            k = smallest_divisor_at_least(dim, s)
            self.plan[name] = (transpose, s, L, k)
            nbytes = L * (dim // k)  # int8 signs
            if nbytes <= budget:  # keep matrices that fit the budget; regenerate the rest per call
                self._cache[name] = self._signs(name)
                budget -= nbytes

    @property
    def cached_modules(self) -> int:
        return len(self._cache)

    def _signs(self, name: str) -> torch.Tensor:
        _, _, L, k = self.plan[name]
        return rademacher((L, self.out_dim // k), self.seed, name).to(device=self.device)

    def _matrix(self, name: str, signs: torch.Tensor | None = None) -> torch.Tensor:
        _, _, _, k = self.plan[name]
        cols = self.out_dim // k
        r = (self._signs(name) if signs is None else signs).to(dtype=self.dtype)
        return r.mul_(cols**-0.5)

    def matrix(self, name: str) -> torch.Tensor:
        """The scaled matrix R_m in the compute dtype (the same numbers whether its signs are cached or not)."""
        return self._matrix(name, self._cache.get(name))

    def accumulate(self, name: str, grad: torch.Tensor, out: torch.Tensor) -> None:
        transpose, s, L, k = self.plan[name]
        g = grad.transpose(1, 2) if transpose else grad  # [B, s, L]
        proj = torch.matmul(g.to(self.dtype), self.matrix(name))  # [B, s, p/k]
        B = proj.shape[0]
        view = out.view(B, k, self.out_dim // k)
        view[:, :s] += proj.to(out.dtype)


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
) -> Projector:
    if dim == 0:
        return RawGradient(shapes)
    if dim < 0:
        raise ValueError("proj-dim must be >= 0")
    return FactoredRademacher(shapes, dim, seed, device=device, cache_bytes=cache_bytes)


PROJECTION_KIND = {True: "raw", False: "factored-rademacher"}
