"""The downstream benchmark's cost estimate (``--estimate``, and logged before every run): hours per
phase on an idle 2-core CPU, from the inputs' token counts and measured tokens/s."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import read_jsonl

from . import ablations
from .data import data_files
from .settings import Settings


def estimate(s: Settings, cache: Path, rate_train: float, rate_fwd: float) -> dict[str, float]:
    """Hours per phase from token counts and throughputs (padding: length-sorted ~1.05, shuffled ~1.9)."""
    from ntk_selector.config import DataConfig, ModelConfig
    from ntk_selector.io.formats import to_conversation
    from ntk_selector.io.tokens import encode
    from ntk_selector.model.loading import load_tokenizer, model_path

    tok = load_tokenizer(model_path(ModelConfig(model=s.model), quiet=True))
    cfg = DataConfig(max_length=s.max_length)

    def lengths(path: Path) -> np.ndarray:
        return np.array([e.length for e in encode([to_conversation(r, cfg) for r in read_jsonl(path)], tok, cfg)])

    base = data_files(s, cache, s.domain_size)
    pool = lengths(base["pool"])
    dom_len = float(lengths(base["domain"]).mean())
    test_tokens = lengths(base["test"]).sum()
    valid_tokens = lengths(base["domain_valid"]).sum()
    pad_train = 1.05 if s.group_by_length else 1.9
    epochs = s.epochs

    def sel_cost(d: int, n: int, methods: tuple[str, ...], new_d: bool) -> float:
        dom = d * dom_len
        m = min(4 * n, len(pool))
        t = 0.0
        if new_d:
            t += dom * 1.3 / rate_train + (pool.sum() + dom) / rate_fwd  # warm-up (1 epoch) + embeddings
        t += sum((m * pool.mean() + dom) / rate_train for meth in methods if meth in ("ntk", "less"))
        return t

    def ft_cost(d: int, n: int) -> float:
        return epochs * pad_train * (d * dom_len + n * pool.mean()) / rate_train

    def ev(split: str) -> float:
        return (test_tokens if split == "test" else valid_tokens) / rate_fwd

    d, n = s.domain_size, s.n_factor * s.domain_size
    phases = {}
    phases["settings"] = len(s.lrs) * (ft_cost(d, 0) + ev("valid"))
    main_ft = ft_cost(d, 0) + 5 * ft_cost(d, n)
    phases["seed0"] = sel_cost(d, n, ("ntk", "less"), True) + main_ft - ft_cost(d, 0) + 7 * (ev("test") + ev("valid"))
    phases["seeds"] = (len(s.seeds) - 1) * (main_ft + 6 * (ev("test") + ev("valid")))
    own_warmups = sum(v.own_work_dir for v in ablations.VARIANTS)
    phases["ablations"] = (
        len(ablations.VARIANTS) * (ft_cost(d, n) + ev("test") + ev("valid"))
        + own_warmups * sel_cost(d, n, ("ntk",), True)
        + len(pool) * pool.mean() / rate_train
        + sel_cost(d, n, ("ntk",), False)  # all-positions featurizes the M rows again
        # the natural-mix D: its own selection, then base, domain, random and ntk
        + sel_cost(d, n, ("ntk",), True)
        + len(s.seeds) * (ft_cost(d, 0) + 2 * ft_cost(d, n) + 3 * (ev("test") + ev("valid")))
        + ev("test")
        + ev("valid")
    )
    c = 0.0
    for f in s.curve_n_factors:
        if f != s.n_factor:
            c += sel_cost(d, f * d, ("ntk",), False) + 2 * (ft_cost(d, f * d) + ev("test"))
    for dd in s.curve_domain_sizes:
        if dd != d:
            c += (
                sel_cost(dd, s.n_factor * dd, ("ntk",), True)
                + ft_cost(dd, 0)
                + 2 * ft_cost(dd, s.n_factor * dd)
                + 4 * ev("test")
            )
    phases["curves0"] = c
    natural_points = [dd for dd in s.curve_domain_sizes if dd != d]
    natural_seed = sum(ft_cost(dd, 0) + 2 * ft_cost(dd, s.n_factor * dd) + 3 * ev("test") for dd in natural_points)
    phases["curves-natural0"] = (
        sum(sel_cost(dd, s.n_factor * dd, ("ntk",), True) for dd in natural_points) + natural_seed
    )
    phases["curves"] = (len(s.seeds) - 1) * c
    phases["curves-natural"] = (len(s.seeds) - 1) * natural_seed
    return {k: v / 3600 for k, v in phases.items()}
