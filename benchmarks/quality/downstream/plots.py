"""The downstream benchmark's plots, next to its table: accuracy per method, and the N and |D| curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .settings import Settings


def write_plots(
    results: Path, rows: list[tuple[str, list[float]]], s: Settings, curve_n: dict, curve_d: dict, curve_d_natural: dict
) -> None:
    """downstream_accuracy.png (test accuracy per method over seeds) and downstream_curve_{n,d}.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [m for m, _ in rows]
        means = [100 * np.mean(v) for _, v in rows]
        errs = [100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in rows]
        ax.bar(names, means, yerr=errs, capsize=4, color=["#999" if m in ("base", "domain") else "#4a7" for m in names])
        for i, (_, v) in enumerate(rows):
            ax.scatter([i] * len(v), [100 * x for x in v], color="k", s=8, zorder=3)
        ax.set_ylabel("test accuracy %")
        ax.set_ylim(max(0, min(means) - 15), min(100, max(means) + 10))
        ax.set_title("Drug-review sentiment after LoRA fine-tuning on D ∪ S")
        plt.setp(ax.get_xticklabels(), rotation=20)
        fig.tight_layout()
        fig.savefig(results / "downstream_accuracy.png", dpi=110)
        plt.close(fig)
    natural = {f"{m} (natural D)": v for m, v in curve_d_natural.items()}
    for name, curve, xs, xlabel in (
        ("n", curve_n, [f * s.domain_size for f in s.curve_n_factors], "N (selected rows)"),
        ("d", {**curve_d, **natural}, list(s.curve_domain_sizes), "|D| (N = 5·|D|)"),
    ):
        if not any(any(v) for v in curve.values()):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, vals in curve.items():
            pts = [
                (x, 100 * np.mean(v), 100 * np.std(v, ddof=1) if len(v) > 1 else 0.0)
                for x, v in zip(xs, vals, strict=True)
                if v
            ]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=m,
                    linestyle="--" if m in natural else "-",
                )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy %")
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / f"downstream_curve_{name}.png", dpi=110)
        plt.close(fig)
