"""What defines the downstream benchmark's numbers (Settings) and how its units are named (Run keys).

The names are the file names of the cached results under ``benchmarks/results/quality/downstream/{select,train,eval}/``:
changing one orphans every result computed so far.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("base", "domain", "random", "embedding", "preselect-random", "less", "ntk")
SELECTING = ("ntk", "random", "embedding", "preselect-random", "less")
DETERMINISTIC = ("ntk", "embedding", "less")  # one selection (seed 0), fine-tune seeds vary


@dataclass
class Settings:
    """Everything that defines the numbers (stored with each unit; a mismatch recomputes it)."""

    model: str | None = None
    pool_size: int = 5000
    domain_size: int = 100
    n_factor: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    max_length: int = 256
    eval_max_length: int = 320
    epochs: float = 3.0
    batch_size: int = 8
    rank: int = 8
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    proj_dim: int = 8192
    group_by_length: bool = True
    curve_n_factors: tuple[int, ...] = (1, 5, 10)
    curve_domain_sizes: tuple[int, ...] = (50, 100, 400)
    curve_methods: tuple[str, ...] = ("random", "ntk")
    data_dir: str | None = None  # prebuilt domain/domain_valid/test/pool files instead of the demo (smoke test)
    # padded tokens per batch in select and evaluate (the package default; ~1 MB of backward activations per token)
    token_budget: int = 2048


def lr_tag(lr: float) -> str:
    return f"{lr:g}"


@dataclass(frozen=True)
class Run:
    """One fine-tune-and-evaluate cell: domain size, N, method, selection seed, fine-tune seed, learning rate,
    and how D was drawn (``balanced`` over labels, the main table; ``natural``: the train split's mix)."""

    d: int
    n: int
    method: str
    sel: int
    ft: int
    lr: float
    prior: str = "balanced"

    @property
    def dtag(self) -> str:
        return d_tag(self.d, self.prior)

    @property
    def sel_key(self) -> str:
        return selection_key(self.d, self.n, self.method, self.sel, self.prior)

    @property
    def key(self) -> str:
        if self.method == "base":
            return f"{self.dtag}_base"
        return (
            f"{self.dtag}_n0_domain_ft{self.ft}_lr{lr_tag(self.lr)}"
            if self.method == "domain"
            else f"{self.sel_key}_ft{self.ft}_lr{lr_tag(self.lr)}"
        )


def d_tag(d: int, prior: str = "balanced") -> str:
    """``d100`` for the main (balanced) D, ``d100natural`` for a D with the natural label mix."""
    return f"d{d}" if prior == "balanced" else f"d{d}{prior}"


def selection_key(d: int, n: int, method: str, sel: int, prior: str = "balanced") -> str:
    """Name of a selection's result JSON and cache folder."""
    return f"{d_tag(d, prior)}_n{n}_{method}_sel{sel}"


def selection_seed(method: str, seed: int) -> int:
    return 0 if method in DETERMINISTIC else seed


def group_key(d: int, n: int, method: str, lr: float, prior: str = "balanced") -> str:
    """The run key of a method's fine-tune seeds, seeds stripped: the rows of one table cell."""
    dtag = d_tag(d, prior)
    if method == "base":
        return f"{dtag}_base"
    if method == "domain":
        return f"{dtag}_n0_domain_lr{lr_tag(lr)}"
    return f"{dtag}_n{n}_{method}_lr{lr_tag(lr)}"


def strip_seeds(key: str) -> str:
    """A run key without its selection and fine-tune seeds (``group_key``'s form)."""
    parts = [
        p
        for p in key.split("_")
        if not (p.startswith("sel") and p[3:].isdigit()) and not (p.startswith("ft") and p[2:].isdigit())
    ]
    return "_".join(parts)
