"""What the downstream benchmark runs, in which order: the learning-rate sweep first (every later run
uses its choice), then the phases named on the command line, most informative first."""

from __future__ import annotations

from collections.abc import Iterator

from benchmarks.common import log

from . import ablations
from .publish import publish
from .settings import SELECTING, Run, Settings, selection_seed
from .units import Bench


def chosen_lr(bench: Bench) -> float:
    """The learning rate with the best domain-only accuracy on domain_valid (ties: the smaller)."""
    scores = []
    for lr in bench.s.lrs:
        r = bench.evaluate(Run(bench.s.domain_size, 0, "domain", 0, 0, lr), "valid")
        scores.append((-r["accuracy"], lr))
    return min(scores)[1]


def main_runs(s: Settings, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
    d, n = s.domain_size, s.n_factor * s.domain_size
    order = ("base", "domain", "ntk", "random", "embedding", "preselect-random", "less")
    for seed in seeds:
        for m in order:
            if m == "base" and seed != seeds[0]:
                continue
            yield Run(d, n if m in SELECTING else 0, m, selection_seed(m, seed), seed, lr)


def curve_runs(s: Settings, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
    d0 = s.domain_size
    for seed in seeds:
        for f in s.curve_n_factors:
            for m in s.curve_methods:
                yield Run(d0, f * d0, m, selection_seed(m, seed), seed, lr)
        for d in s.curve_domain_sizes:
            yield from domain_size_runs(s, d, seed, lr)
            if seed == seeds[0]:
                yield Run(d, 0, "base", 0, 0, lr)


def domain_size_runs(s: Settings, d: int, seed: int, lr: float, prior: str = "balanced") -> Iterator[Run]:
    """One point of a |D| curve: domain only and the curve's methods with N = n_factor·|D|."""
    for m in ("domain",) + tuple(s.curve_methods):
        yield Run(d, s.n_factor * d if m in SELECTING else 0, m, selection_seed(m, seed), seed, lr, prior)


def natural_curve_runs(s: Settings, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
    """The |D| curve again with D drawn in the train split's label mix, which, unlike a balanced D, every
    |D| can have (at 400 the train split runs out of neutral and negative rows). |D| = 100 is the
    natural-prior ablation's runs."""
    for seed in seeds:
        for d in s.curve_domain_sizes:
            if d != s.domain_size:
                yield from domain_size_runs(s, d, seed, lr, "natural")


def ablation_runs(s: Settings, lr: float) -> Iterator[Run]:
    d, n = s.domain_size, s.n_factor * s.domain_size
    for item in ablations.PLAN:
        if item == ablations.NATURAL:  # the same comparison with a D of the natural label mix, every seed
            for seed in s.seeds:
                for m in ablations.NATURAL_METHODS:
                    if m != "base" or seed == s.seeds[0]:
                        yield Run(
                            d, n if m not in ("base", "domain") else 0, m, selection_seed(m, seed), seed, lr, "natural"
                        )
        else:
            yield Run(d, n, ablations.PREFIX + item, 0, 0, lr)


def run_phases(bench: Bench, phases: list[str]) -> None:
    """The runs of these phases, in order, each cell's evaluations cached; the table after each phase."""
    s = bench.s
    lr = chosen_lr(bench)  # phase "settings": always first, every later run uses its choice
    log(f"learning rate chosen on domain_valid: {lr:g}")
    seeds = s.seeds
    plan = {
        "seed0": list(main_runs(s, seeds[:1], lr)),
        "seeds": list(main_runs(s, seeds[1:], lr)),
        "ablations": list(ablation_runs(s, lr)),
        "curves0": list(curve_runs(s, seeds[:1], lr)),
        "curves": list(curve_runs(s, seeds[1:], lr)),
        "curves-natural0": list(natural_curve_runs(s, seeds[:1], lr)),
        "curves-natural": list(natural_curve_runs(s, seeds[1:], lr)),
    }
    for phase in phases:
        for run in plan.get(phase, []):
            bench.cell(
                run,
                ("valid", "test")
                if phase == "ablations"
                else ("test", "valid")
                if run.d == s.domain_size
                else ("test",),
            )
        publish(s, bench.results, bench.cache, commit=bool(bench.commit_every))
    log("all requested phases done")
