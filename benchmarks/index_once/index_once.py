"""Index once, select for many domains: what it costs and what it changes against the paper's mode.

Given a pool and one or more domain files, with the same settings for every run:
1. ``ntk-selector index`` of the pool, once (seconds);
2. per domain: ``select`` in the paper's mode (warm-up, pool embedded with the warm model, M
   candidates re-featurized) and ``select --index`` in each --modes (seconds per domain);
3. agreement with the paper's mode per domain and mode: top-N overlap of the selections; Spearman
   of the scores over the paper's M candidates (the paper's scores against the index's features'
   scores of the same rows, computed from the index); recall of the paper's top N within the
   mode's M pre-selected rows;
4. coarse options (--coarse, e.g. ``minilm`` or ``model:128`` = model embeddings of a 128-token
   prefix): recall of the paper's top N within the M rows their embeddings pre-select.
The number of domains after which the index has paid for itself is
``index seconds / (paper seconds - index-mode seconds)`` per domain (mean over domains).
Writes --out/index_once.json and prints Markdown tables.

    .venv/bin/python -m benchmarks.index_once.index_once --pool pool.jsonl --domain d1.jsonl --domain d2.jsonl \\
        -n 500 --out runs/index_once [--model M] [--modes features preselect] [--coarse minilm model:128] \\
        [-- extra select/index flags, e.g. --max-length 256]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ntk_selector.cli.commands import main as cli
from ntk_selector.config import PreselectConfig, ScoreConfig
from ntk_selector.features.kernels import spearman
from ntk_selector.io.store import DONE, open_store
from ntk_selector.selection.index import open_pool_index
from ntk_selector.selection.index_select import preselect_in_index, score_in_index
from ntk_selector.selection.report import read_scores as read_scores_csv


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    if cli(args) != 0:
        raise SystemExit(f"failed: ntk-selector {' '.join(args)}")
    return time.perf_counter() - t0


def read_scores(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(preselected mask, scores with NaN where not scored) from a select run's scores.csv."""
    table = read_scores_csv(run / "scores.csv")
    return table["preselected"], table["score"]


def selected(run: Path) -> list[int]:
    return [
        json.loads(line)["pool_index"] for line in (run / "selected.jsonl").read_text().splitlines() if line.strip()
    ]


def flags_for_embed(extra: list[str]) -> list[str]:
    """The extra flags the ``embed`` subcommand takes (drops feature settings and their values)."""
    from ntk_selector.cli.commands import MODEL_SECTIONS
    from ntk_selector.config import EmbedConfig, known_names

    names, kept, keep = known_names(MODEL_SECTIONS + (EmbedConfig,)), [], True
    for tok in extra:
        if tok.startswith("--"):
            keep = tok[2:].replace("-", "_") in names
        if keep:
            kept.append(tok)
    return kept


def coarse_recall(
    index_dir: Path,
    pool: Path,
    domain: Path,
    option: str,
    n: int,
    paper_top: set[int],
    work: Path,
    model_args: list[str],
    extra: list[str],
    pool_work: Path | None = None,
) -> float:
    """Recall of the paper's top N within the M rows one coarse option pre-selects. The embedding
    stores go under ``work`` (the pool's under ``pool_work`` when given, to share it between domains)."""
    embedder, _, length = option.partition(":")
    flags = ["--embedder", embedder] + (["--embed-max-length", length] if length else [])
    stores = {}
    for name, data in (("pool", pool), ("domain", domain)):
        folder = pool_work if name == "pool" and pool_work else work
        stores[name] = folder / f"coarse_{option.replace(':', '_')}_{name}_{data.stem}"
        cli(
            [
                "embed",
                "--data",
                str(data),
                "--out",
                str(stores[name]),
                *model_args,
                *flags,
                "--quiet",
                *flags_for_embed(extra),
            ]
        )
    d_emb, d_status, _ = open_store(stores["domain"])
    p_emb, p_status, _ = open_store(stores["pool"])
    index = open_pool_index(index_dir)
    index.embeddings = p_emb  # the same rows, embedded the coarse way
    pre = preselect_in_index(index, d_emb, d_status, n, PreselectConfig(n=n), p_status == DONE)
    return len(paper_top & set(pre.order.tolist())) / max(1, len(paper_top))


def run(args: argparse.Namespace, extra: list[str]) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_args = ["--model", args.model] if args.model else []
    index_dir = out / "index"
    result_file = out / "index_once.json"
    result: dict = {"pool": str(args.pool), "n": args.n, "extra_flags": extra, "domains": {}}
    if result_file.exists():  # resume: finished parts are kept, with their seconds as measured then
        result = json.loads(result_file.read_text())
    if "index_seconds" not in result:
        result["index_seconds"] = timed(
            ["index", "--pool", str(args.pool), "--out", str(index_dir), *model_args, "--quiet", *extra]
        )
        result_file.write_text(json.dumps(result, indent=2))
    index = open_pool_index(index_dir)
    for domain in args.domain:
        name = domain.stem
        if name in result["domains"]:
            continue
        common = ["--domain", str(domain), "-n", str(args.n), "--quiet", *model_args, *extra]
        paper = out / name / "paper"
        res = {"paper_seconds": timed(["select", "--pool", str(args.pool), "--out", str(paper), *common])}
        paper_pre, paper_scores = read_scores(paper)
        paper_top = selected(paper)
        cand = np.flatnonzero(paper_pre)
        for mode in args.modes:
            run_dir = out / name / f"index_{mode}"
            seconds = timed(["select", "--index", str(index_dir), "--index-mode", mode, "--out", str(run_dir), *common])
            mode_pre, mode_scores = read_scores(run_dir)
            res[mode] = {
                "seconds": seconds,
                "top_n_overlap": len(set(paper_top) & set(selected(run_dir))) / args.n,
                "recall_in_preselected": float(mode_pre[paper_top].mean()),
                "preselected_overlap": float((mode_pre & paper_pre).sum() / max(1, paper_pre.sum())),
            }
            if mode == "features":
                d_feat, d_status, _ = open_store(run_dir / "stages" / "index_features_domain")
                index_scores = score_in_index(index, d_feat, d_status, cand, ScoreConfig())
                ok = np.isfinite(index_scores) & np.isfinite(paper_scores[cand])
                res[mode]["spearman_on_paper_candidates"] = spearman(paper_scores[cand][ok], index_scores[ok])
            else:
                both = np.isfinite(paper_scores) & np.isfinite(mode_scores)
                res[mode]["spearman_on_common_candidates"] = (
                    spearman(paper_scores[both], mode_scores[both]) if both.sum() > 2 else None
                )
        res["coarse_recall"] = {
            opt: coarse_recall(index_dir, args.pool, domain, opt, args.n, set(paper_top), out / name, model_args, extra)
            for opt in args.coarse
        }
        result["domains"][name] = res
        result_file.write_text(json.dumps(result, indent=2))
    for mode in args.modes:
        saved = [r["paper_seconds"] - r[mode]["seconds"] for r in result["domains"].values()]
        result[f"break_even_domains_{mode}"] = result["index_seconds"] / np.mean(saved) if np.mean(saved) > 0 else None
    result_file.write_text(json.dumps(result, indent=2))
    return result


def print_tables(result: dict, modes: list[str]) -> None:
    print(f"index once: {result['index_seconds']:.1f} s")
    print("| domain | paper s | " + " | ".join(f"{m} s | {m} top-N overlap | {m} recall in M" for m in modes) + " |")
    print("|---|---|" + "---|---|---|" * len(modes))
    for name, r in result["domains"].items():
        cells = [
            f"{r[m]['seconds']:.1f} | {r[m]['top_n_overlap']:.3f} | {r[m]['recall_in_preselected']:.3f}" for m in modes
        ]
        print(f"| {name} | {r['paper_seconds']:.1f} | " + " | ".join(cells) + " |")
    for m in modes:
        print(f"break-even ({m}): {result[f'break_even_domains_{m}']} domains")
    for name, r in result["domains"].items():
        sp = r.get("features", {}).get("spearman_on_paper_candidates")
        print(f"{name}: Spearman (features mode, paper candidates) {sp}; coarse recall {r['coarse_recall']}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--domain", type=Path, action="append", required=True, help="a domain file (repeat for several)")
    p.add_argument("-n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--modes", nargs="+", default=["features", "preselect"])
    p.add_argument("--coarse", nargs="*", default=["minilm"], help="coarse options: minilm, model:L, minilm:L")
    args, extra = p.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    result = run(args, extra)
    print_tables(result, args.modes)
    return result


if __name__ == "__main__":
    main()
