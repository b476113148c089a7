"""Downstream benchmark: does fine-tuning on D ∪ S, with S picked by NTK-Selector, beat the alternatives?

Domain: drug-review sentiment from the packaged demo (``ntk_selector.demo.data.build_demo``): |D| = 100
balanced training reviews, the 379 test reviews as the test set, ``domain_valid`` (100 other
training reviews) for choosing settings. Pool: 5,000 rows of seven other tasks (movie sentiment,
plot-or-review, headline completion, debate party, dialogue, ShareGPT, code); nothing from drug
reviews. Model: the packaged SmolLM2-135M-Instruct. N = 5·|D|.

Methods: base (no fine-tune), domain only, random, embedding, preselect-random, less, ntk; three
seeds. ntk, embedding and less are deterministic given the warm-up, so they select once (selection
seed 0) and only the fine-tune seed varies; random draws with each seed; preselect-random draws N of
the seed-0 pre-selected M with each seed (seed 0 through ``select``, seeds 1-2 here, with the same
``numpy.random.default_rng(seed).choice``). The methods of one |D| share the warm-up, embeddings and
pre-selection through ``select --work-dir``. Curves: N ∈ {1, 5, 10}·|D| and |D| ∈ {50, 100, 400}
for ntk vs random.

Settings are fixed before any test number is seen: max length 256 (the longest domain row has 251
tokens, so every domain label survives truncation; test prompts are scored at length 320, never
truncated), 3 epochs (the paper), LoRA r 8 on q/k/v/o, batch 8, length-grouped batches; the
learning rate is picked on ``domain_valid`` by fine-tuning on D alone with each candidate (phase 0).

Every unit (a selection, a fine-tune, an evaluation) writes one JSON under
``benchmarks/results/quality/downstream/{select,train,eval}/`` (adapters and selections under the ignored
``benchmarks/cache/downstream/``); a rerun skips finished units, so
``python -m benchmarks.quality.downstream.downstream`` resumes (a fine-tune in flight goes on from its
last checkpoint); run_downstream.sh reruns it in the background after a crash. Work runs most
informative first: the settings sweep, seed 0 of all methods, seeds 1-2, the method variants, seed 0
of the curves (N and |D| curves with the balanced D, then the |D| curve with D in the train split's
label mix), then seeds 1-2 of the same curves. ``--only-table`` rebuilds
``downstream.md`` and the plots in that folder from the cached JSONs; ``--update-benchmarks-md``
also writes the table into BENCHMARKS.md.

This file is the command line; the work is in the other modules of this package, one job each:
settings.py (settings and unit names), data.py (input files), units.py (selections, fine-tunes,
evaluations), phases.py (run order), ablations.py (NTK-Selector variants), table.py and plots.py (the
report), publish.py (downstream.md, git commits, BENCHMARKS.md), estimate.py (cost), with
benchmarks/common.py shared with the other resumable benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import CACHE, RESULTS
from benchmarks.common import exit_cleanly_on_sigterm, log, write_text

from . import ablations as ABLATIONS  # noqa: F401  (tests/test_downstream_smoke.py reads ABLATIONS.VARIANTS)
from .estimate import estimate
from .phases import run_phases
from .publish import update_benchmarks_md
from .settings import Settings
from .table import build_table
from .units import Bench


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Settings()
    ap.add_argument("--model", default=None, help="model folder (default: packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--pool-size", type=int, default=d.pool_size)
    ap.add_argument("--domain-size", type=int, default=d.domain_size)
    ap.add_argument("--n-factor", type=int, default=d.n_factor, help="N = factor x |D|")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--eval-max-length", type=int, default=d.eval_max_length)
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--rank", type=int, default=d.rank)
    ap.add_argument("--lrs", type=float, nargs="+", default=list(d.lrs), help="learning rates tried on domain_valid")
    ap.add_argument("--proj-dim", type=int, default=d.proj_dim)
    ap.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches in the fine-tune")
    ap.add_argument("--curve-n-factors", type=int, nargs="*", default=list(d.curve_n_factors))
    ap.add_argument("--curve-domain-sizes", type=int, nargs="*", default=list(d.curve_domain_sizes))
    ap.add_argument(
        "--data-dir", default=None, help="use these domain/domain_valid/test/pool .jsonl instead of the demo"
    )
    ap.add_argument(
        "--results", default=str(RESULTS / "quality" / "downstream"), help="folder of result JSONs, table, plots"
    )
    ap.add_argument("--cache", default=str(CACHE / "downstream"), help="folder of big intermediates")
    ap.add_argument("--only-table", action="store_true", help="rebuild the table and plots from cached results")
    ap.add_argument(
        "--update-benchmarks-md",
        default=None,
        metavar="FILE",
        help="also replace the downstream section of this BENCHMARKS.md",
    )
    ap.add_argument(
        "--commit-every", type=int, default=0, help="git-commit the results every K finished units (0: never)"
    )
    ap.add_argument(
        "--phases",
        nargs="+",
        default=["settings", "seed0", "seeds", "ablations", "curves0", "curves-natural0", "curves", "curves-natural"],
        help="phases to run, in order",
    )
    ap.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    ap.add_argument(
        "--rate-train", type=float, default=180.0, help="tokens/s of LoRA forward+backward (for the estimate)"
    )
    ap.add_argument("--rate-forward", type=float, default=575.0, help="tokens/s of a forward pass (for the estimate)")
    args = ap.parse_args(argv)
    s = Settings(
        model=args.model,
        pool_size=args.pool_size,
        domain_size=args.domain_size,
        n_factor=args.n_factor,
        seeds=tuple(args.seeds),
        max_length=args.max_length,
        eval_max_length=args.eval_max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        rank=args.rank,
        lrs=tuple(args.lrs),
        proj_dim=args.proj_dim,
        group_by_length=not args.no_group_by_length,
        curve_n_factors=tuple(args.curve_n_factors),
        curve_domain_sizes=tuple(args.curve_domain_sizes),
        data_dir=args.data_dir,
    )
    return s, args


def run_flags(argv: list[str]) -> list[str]:
    """The flags that define the run (not the ones that only rebuild or publish the table)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a in ("--only-table", "--estimate"):
            continue
        elif a in ("--update-benchmarks-md", "--commit-every"):
            skip = 1
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    s, args = parse_args(argv)
    exit_cleanly_on_sigterm()
    results, cache = Path(args.results), Path(args.cache)
    command = " ".join(["python -m benchmarks.quality.downstream.downstream", *run_flags(argv or [])])
    if args.estimate or not args.only_table:
        hours = estimate(s, cache, args.rate_train, args.rate_forward)
        log(
            "estimated hours on an idle 2-core CPU: "
            + ", ".join(f"{k} {v:.1f}" for k, v in hours.items())
            + f"; total {sum(hours.values()):.1f}"
        )
        if args.estimate:
            return 0
    if not args.only_table:
        run_phases(Bench(s, results, cache, commit_every=args.commit_every), args.phases)
    table = build_table(s, results, cache)
    write_text(results / "downstream.md", table)
    if args.update_benchmarks_md:
        update_benchmarks_md(Path(args.update_benchmarks_md), table, command, results)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
