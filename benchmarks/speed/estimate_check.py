"""How close ``select --estimate`` comes to the run it predicts, per stage.

Builds the demo data (or takes --domain / --pool), runs ``select --estimate`` through the library,
then the real ``select`` with the same settings on the same machine, and prints predicted and real
seconds per stage with their ratio (the goal: within +-30% for warm-up, embed and featurize).
Real seconds: the warm-up's training loop (``run.json`` ``warmup.seconds``: the estimate predicts
the steps, not loading the model) and ``run.json`` ``seconds`` for the other stages. ``--long``
keeps only pool rows of at least that many characters (a pool of long rows). Writes
OUT/estimate_check.json. Run it on an idle machine: both halves are timings.

    .venv/bin/python -m benchmarks.speed.estimate_check --out runs/estimate_check [--embedder model|minilm] \\
        [--pool-size 2000] [--long 1500] [-- extra select flags, e.g. --max-length 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ntk_selector.cli.commands import SELECT_SECTIONS
from ntk_selector.cli.commands import main as cli
from ntk_selector.demo.data import build_demo
from ntk_selector.selection.estimate import estimate, format_estimate
from ntk_selector.selection.run_record import SelectConfigs
from ntk_selector.settings import build_configs

STAGES = ("warm-up", "embed", "preselect", "featurize", "score")


def settings_from_flags(flags: list[str]) -> dict:
    """The select settings that ``flags`` give (parsed as the command line parses them)."""
    from ntk_selector.cli.commands import build_parser

    args = build_parser().parse_args(["select", "--domain", "d", "--pool", "p", "--out", "o", *flags])
    return build_configs(vars(args), "select", SELECT_SECTIONS)


def long_rows(pool: Path, min_chars: int, out: Path) -> Path:
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if len(str(r.get("prompt", ""))) + len(str(r.get("response", ""))) >= min_chars]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--domain", help="domain records (default: the demo's drug reviews)")
    p.add_argument("--pool", help="pool records (default: the demo's pool)")
    p.add_argument("--domain-size", type=int, default=100)
    p.add_argument("--pool-size", type=int, default=2000)
    p.add_argument("-n", type=int, default=0, help="rows to select (default: the domain's size)")
    p.add_argument("--embedder", default="model", choices=("model", "minilm"))
    p.add_argument("--long", type=int, default=0, help="keep pool rows of at least this many characters")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.domain and args.pool:
        domain, pool = Path(args.domain), Path(args.pool)
    else:
        paths = build_demo(out / "data", n_domain=args.domain_size, pool_size=args.pool_size, seed=0)
        domain, pool = paths.domain, paths.pool
    if args.long:
        pool = long_rows(pool, args.long, out / f"pool_long{args.long}.jsonl")
    n = args.n or sum(1 for line in domain.read_text(encoding="utf-8").splitlines() if line.strip())
    flags = ["--n", str(n), "--embedder", args.embedder, "--quiet", *extra]

    cfg = SelectConfigs.from_sections(settings_from_flags(flags), method="ntk")
    predicted = estimate(domain, pool, cfg)
    print(format_estimate(predicted))
    run_dir = out / "select"
    assert (
        cli(["select", "--domain", str(domain), "--pool", str(pool), "--out", str(run_dir), "--overwrite", *flags]) == 0
    )
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    real = {
        "warm-up": run.get("warmup", {}).get("seconds"),
        "embed": run["seconds"].get("embed"),
        "preselect": run["seconds"].get("preselect"),
        "featurize": run["seconds"].get("featurize"),
        "score": run["seconds"].get("score"),
    }
    pred = {s["stage"]: s["seconds"] for s in predicted["stages"]}
    rows = []
    print("\n| stage | predicted s | real s | predicted / real |\n|---|---:|---:|---:|")
    for stage in STAGES:
        if stage in pred and real.get(stage):
            ratio = pred[stage] / real[stage]
            rows.append({"stage": stage, "predicted": pred[stage], "real": real[stage], "ratio": ratio})
            print(f"| {stage} | {pred[stage]:.1f} | {real[stage]:.1f} | {ratio:.2f} |")
    result = {
        "domain": str(domain),
        "pool": str(pool),
        "flags": flags,
        "estimate": predicted,
        "real_seconds": real,
        "run_seconds": run["seconds"],
        "token_budget": run.get("token_budget"),
        "stages": rows,
    }
    (out / "estimate_check.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
