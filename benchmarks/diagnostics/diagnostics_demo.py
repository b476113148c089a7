"""Diagnostics of the packaged SmolLM2-135M-Instruct on the drug-review demo: NTK stability over
the default warm-up, exact eNTK vs the Jacobian-free kernel, and projection error.

    .venv/bin/python -m benchmarks.diagnostics.diagnostics_demo [--out runs/diag_demo] [--reuse]

Builds the demo data (100 domain rows, 1500 pool rows, seed 0), runs ``ntk-selector diagnose``
with sizes that fit ~15 minutes on a 2-core CPU, prints a table and writes
``benchmarks/results/diagnostics/diagnostics_demo.json``. ``--reuse`` summarises an existing run instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

from benchmarks import RESULTS
from ntk_selector.cli.commands import main as cli_main
from ntk_selector.demo.data import build_demo

SIZES = [
    "--max-length",
    "256",
    "--token-budget",
    "2048",
    "--probe-rows",
    "24",
    "--stability-points",
    "4",
    "--approx-rows",
    "16",
    "--approx-outputs",
    "48",
]


def summarise(d: dict, command: str) -> dict:
    a, p = d.get("approximation") or {}, d.get("projection") or {}
    return {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core CPU, no GPU ({platform.machine()}, torch threads {d['machine']['threads']})",
        "model": d["model"],
        "warmup": d.get("warmup"),
        "ntk_stability": d.get("ntk_stability"),
        "stability_final": d.get("stability_final"),
        "stability_min": d.get("stability_min"),
        "approximation": {k: v for k, v in a.items() if k != "scores"},
        "projection": p,
        "warnings": d.get("warnings"),
        "seconds": d.get("seconds"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/diag_demo")
    ap.add_argument("--reuse", action="store_true", help="summarise OUT/out/diagnostics.json without running")
    ap.add_argument("--results", default=str(RESULTS / "diagnostics" / "diagnostics_demo.json"))
    args = ap.parse_args()
    out = Path(args.out)
    paths = build_demo(out / "data", n_domain=100, pool_size=1500, seed=0)
    argv = ["diagnose", "--domain", str(paths.domain), "--pool", str(paths.pool), "--out", str(out / "out"), *SIZES]
    if not args.reuse:
        rc = cli_main(argv)
        if rc:
            raise SystemExit(rc)
    d = json.loads((out / "out" / "diagnostics.json").read_text())
    summary = summarise(d, "ntk-selector " + " ".join(argv))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(summary, indent=2) + "\n")
    print("step  Frobenius cosine  loss")
    for s in summary["ntk_stability"] or []:
        print(f"{s['step']:>4}  {s['frobenius_cosine']:.5f}  {s['loss'] if s['loss'] is not None else ''}")
    a = summary["approximation"]
    print(f"approximation: {a}")
    for e in summary["projection"].get("ladder", []):
        print(
            f"p={e['proj_dim']}: relative Gram error {e['relative_gram_error']:.4f}, "
            f"top-{summary['projection']['top_n']} "
            f"overlap {e['top_overlap']:.2f}, Spearman {e['spearman']}"
        )
    print(f"written {args.results}")


if __name__ == "__main__":
    main()
