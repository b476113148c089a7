"""Index at pool scale, no model: build a synthetic index, then query it for one domain.

Writes a synthetic index under --work (deleted afterwards unless --keep): --rows pool rows of
--emb-dim float32 embeddings (clustered) and --dim NTK features (--store-dtype), written block by
block like ``ntk-selector index`` writes rows; plus --domain domain rows (embeddings near a few
clusters, features). Then, each step in a fresh subprocess so its peak RSS is its own:
- build: stream the rows into the index (memory should not grow with --rows);
- query: what ``select --index`` does for a new domain once the domain is featurized
  (index_select.preselect_in_index + score_in_index: reverse-kNN votes over every pool embedding,
  mean inner products of the M = 4N candidates' features, top N).
Writes benchmarks/results/index_once/index_scale.json (--out) and prints a Markdown table.

    .venv/bin/python -m benchmarks.index_once.index_scale                    # 10^6 rows, p = 8192 fp16 (~18 GB of disk)
    .venv/bin/python -m benchmarks.index_once.index_scale --rows 20000 --dim 256   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import CACHE, RESULTS, ROOT


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def build_index(path: Path, rows: int, dim: int, emb_dim: int, store_dtype: str, block: int = 16_384) -> None:
    """A synthetic index folder (same layout and record as ``ntk-selector index``), written block by block."""
    from ntk_selector.io.store import RowStore, write_json_atomic
    from ntk_selector.selection.index import EMBEDDINGS, FEATURES, INDEX_META, PairStore

    centers = np.random.default_rng(0).normal(size=(200, emb_dim)).astype(np.float32)
    definition = {"synthetic": True, "rows": rows}
    with PairStore(
        RowStore(path / EMBEDDINGS, rows, emb_dim, "float32", definition, overwrite=True),
        RowStore(path / FEATURES, rows, dim, store_dtype, definition, overwrite=True),
    ) as store:
        for start in range(0, rows, block):
            count = min(block, rows - start)
            rng = np.random.default_rng([1, start])
            emb = centers[rng.integers(0, len(centers), count)] + 0.5 * rng.standard_normal(
                (count, emb_dim), dtype=np.float32
            )
            feat = rng.standard_normal((count, dim), dtype=np.float32)
            store.write(np.arange(start, start + count), np.concatenate([feat, emb], 1))
        assert store.finish()
    write_json_atomic(
        path / INDEX_META,
        {
            "format": 1,
            "pool": "synthetic",
            "pool_fingerprint": "synthetic",
            "rows": rows,
            "embedder": "model",
            "embed_max_length": 0,
            "complete": True,
            "definitions": {
                EMBEDDINGS: {**definition, "model": "synthetic"},
                FEATURES: {**definition, "model": "synthetic"},
            },
        },
    )


def domain_arrays(domain: int, dim: int, emb_dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    centers = np.random.default_rng(0).normal(size=(200, emb_dim)).astype(np.float32)
    emb = centers[rng.integers(0, 5, domain)] + 0.5 * rng.standard_normal((domain, emb_dim), dtype=np.float32)
    return emb, rng.standard_normal((domain, dim), dtype=np.float32)


def query(path: Path, domain: int, n: int, knn_search: str = "auto", block_mb: int = 256) -> dict:
    """One new domain against the index: (pre-selection, scores of the candidates, top N)."""
    from ntk_selector.config import PreselectConfig, ScoreConfig
    from ntk_selector.io.store import DONE
    from ntk_selector.selection.index import open_pool_index
    from ntk_selector.selection.index_select import preselect_in_index, score_in_index
    from ntk_selector.selection.score import top_n

    index = open_pool_index(path)
    emb, feat = domain_arrays(domain, index.features.shape[1], index.embeddings.shape[1])
    ok = np.ones(domain, dtype=np.uint8) * DONE
    t0 = time.perf_counter()
    pre = preselect_in_index(index, emb, ok, n, PreselectConfig(n=n, knn_search=knn_search), index.status == DONE)
    t1 = time.perf_counter()
    scores = score_in_index(index, feat, ok, pre.order, ScoreConfig(score_block_mb=block_mb))
    chosen = pre.order[top_n(scores, n)]
    t2 = time.perf_counter()
    return {
        "preselect_s": t1 - t0,
        "score_s": t2 - t1,
        "candidates": int(len(pre.order)),
        "selected": int(len(chosen)),
        "top": chosen[:10].tolist(),
    }


def run_step(step: str, args: argparse.Namespace) -> dict:
    """One step in a fresh interpreter (its own peak RSS)."""
    cmd = [
        sys.executable,
        "-m",
        __spec__.name,
        "--step",
        step,
        "--work",
        str(args.work),
        "--rows",
        str(args.rows),
        "--dim",
        str(args.dim),
        "--emb-dim",
        str(args.emb_dim),
        "--domain",
        str(args.domain),
        "-n",
        str(args.n),
        "--store-dtype",
        args.store_dtype,
        "--knn-search",
        args.knn_search,
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "PATH": "/usr/bin:/bin"},
    )
    if out.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=8192, help="projected feature dim p")
    p.add_argument("--emb-dim", type=int, default=576, help="embedding dim (SmolLM2-135M: 576; MiniLM: 384)")
    p.add_argument("--domain", type=int, default=1000)
    p.add_argument("-n", type=int, default=9000)
    p.add_argument("--store-dtype", default="float16")
    p.add_argument("--knn-search", default="auto")
    p.add_argument("--work", type=Path, default=CACHE / "index_scale_work")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "index_once" / "index_scale.json")
    p.add_argument("--step", choices=("build", "query"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step == "build":
        t0 = time.perf_counter()
        build_index(args.work, args.rows, args.dim, args.emb_dim, args.store_dtype)
        print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb()}))
        return None
    if args.step == "query":
        res = query(args.work, args.domain, args.n, args.knn_search)
        print(json.dumps({**res, "seconds": res["preselect_s"] + res["score_s"], "peak_rss_mb": rss_mb()}))
        return None
    try:
        build = run_step("build", args)
        q = run_step("query", args)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    bytes_per_row = args.dim * np.dtype(args.store_dtype).itemsize + 4 * args.emb_dim
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "emb_dim": args.emb_dim,
        "domain": args.domain,
        "n": args.n,
        "store_dtype": args.store_dtype,
        "index_gb": args.rows * bytes_per_row / 1e9,
        "build": build,
        "query": q,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"| step | rows | seconds | peak RSS (MB) |\n|---|---|---|---|\n"
        f"| build index ({result['index_gb']:.1f} GB) | {args.rows:,} | {build['seconds']:.1f} | "
        f"{build['peak_rss_mb']:.0f} |\n"
        f"| query: pre-select {q['candidates']:,} + score + top {args.n:,} | {args.rows:,} | "
        f"{q['preselect_s']:.1f} + {q['score_s']:.1f} | {q['peak_rss_mb']:.0f} |"
    )
    return result


if __name__ == "__main__":
    main()
