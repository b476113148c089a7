"""``ntk-selector diagnose``: its flags and the call into :mod:`ntk_selector.analysis.diagnostics`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ntk_selector.analysis.diagnostics import diagnose
from ntk_selector.config import DataConfig, DiagnoseConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig
from ntk_selector.settings import MODEL_SECTIONS, configs_from_args


def print_diagnostics(result: dict[str, Any], out: str | Path) -> None:
    """Short human summary of diagnostics.json."""
    print(f"\ndiagnostics in {out}/diagnostics.json (report: {out}/report.html)")
    if result.get("ntk_stability"):
        curve = ", ".join(f"{p['step']}: {p['frobenius_cosine']:.4f}" for p in result["ntk_stability"])
        print(f"  NTK stability (step: Frobenius cosine with step 0): {curve}")
    a = result.get("approximation")
    if a:

        def fmt(x: Any) -> str:
            return "n/a" if x is None else f"{x:.4g}"

        print(
            f"  approximation on {a['rows']} rows, {a['outputs']} of {a['vocab']} outputs: cross-term share "
            f"{fmt(a['cross_term_share'])}, mean output cosine {fmt(a['mean_output_cosine'])}, Spearman "
            f"{fmt(a['spearman'])} (cosine scores {fmt(a['spearman_cosine'])})"
        )
    p = result.get("projection")
    if p and "ladder" in p:
        print(
            f"  projection (raw dim {p['raw_dim']}, top {p['top_n']}): "
            + ", ".join(
                f"p={e['proj_dim']}: err {e['relative_gram_error']:.3f} overlap {e['top_overlap']:.2f}"
                for e in p["ladder"]
                if e["proj_dim"] != "raw"
            )
        )
    for w in result.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)


def cmd_diagnose(args: Any) -> int:
    c = configs_from_args(args, MODEL_SECTIONS + (TrainConfig, DiagnoseConfig))
    result = diagnose(
        args.domain,
        args.pool,
        args.out,
        c[ModelConfig],
        c[DataConfig],
        c[LoraSettings],
        c[RunConfig],
        c[TrainConfig],
        c[DiagnoseConfig],
    )
    if c[RunConfig].quiet:
        for w in result["warnings"]:
            print(f"WARNING: {w}", file=sys.stderr)
    else:
        print_diagnostics(result, args.out)
    return 0


def register_cli(sub: Any, add: Any) -> None:
    """Adds ``diagnose`` to the command line."""
    p = add(
        "diagnose",
        cmd_diagnose,
        "NTK stability over the warm-up, exact vs Jacobian-free kernel, projection error",
        MODEL_SECTIONS + (TrainConfig, DiagnoseConfig),
    )
    p.add_argument("--domain", required=True, help="domain (target) records")
    p.add_argument("--pool", required=True, help="candidate pool records")
    p.add_argument("--out", required=True, help="output folder (diagnostics.json, report.html, PNGs)")
