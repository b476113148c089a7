"""Pool-scale scoring and pre-selection: seconds and peak RSS, each task in its own process.

Builds synthetic stores under --work (deleted afterwards unless --keep):
- NTK features: a pool store of --rows x --dim fp16 and a domain store of --domain x --dim;
- embeddings: a pool store of --rows x --emb-dim float32 (clustered) and --domain domain rows
  drawn near a few of the clusters;
then measures, each in a fresh subprocess so the peak RSS is that task's alone:
- score: streaming mean inner products (``ntk_scores``) and the top --n;
- preselect-flat / -ivf: reverse-kNN votes over the whole pool (N = --n, M = 4N, K = M/4);
- preselect-hnsw: the same over the first --hnsw-rows pool rows (HNSW builds slowly on CPUs).
Writes benchmarks/results/scale/pool_scale.json and prints a Markdown table.

    .venv/bin/python -m benchmarks.scale.pool_scale            # 1M rows (about 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.scale.pool_scale --rows 100000 --hnsw-rows 20000   # quick look
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
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks import RESULTS, ROOT


def child_env() -> dict[str, str]:
    """This environment, with the repository root on PYTHONPATH so that a task runs this module with ``-m``."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *([path] if path else [])])}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


# ----------------------------------------------------------------------------- data


def write_store(path: Path, rows: int, dim: int, dtype: str, make_block, block: int = 65_536) -> None:
    from ntk_selector.io.store import RowStore

    with RowStore(path, rows, dim, dtype, {"synthetic": path.name, "rows": rows}, overwrite=True) as store:
        for start in range(0, rows, block):
            idx = np.arange(start, min(rows, start + block))
            store.write(idx, make_block(start, len(idx)))
        assert store.finish()


def build_data(work: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, args.emb_dim)).astype(np.float32)

    def features(seed: int):
        def make(start: int, count: int) -> np.ndarray:
            return (
                np.random.default_rng([seed, start])
                .standard_normal((count, args.dim), dtype=np.float32)
                .astype(np.float16)
            )

        return make

    def embeddings(seed: int, centre_ids: np.ndarray):
        def make(start: int, count: int) -> np.ndarray:
            r = np.random.default_rng([seed, start])
            labels = r.choice(centre_ids, size=count)
            return centers[labels] + 0.7 * r.standard_normal((count, args.emb_dim), dtype=np.float32)

        return make

    specs = [
        ("feat_pool", args.rows, args.dim, "float16", features(1)),
        ("feat_domain", args.domain, args.dim, "float16", features(2)),
        ("emb_pool", args.rows, args.emb_dim, "float32", embeddings(3, np.arange(200))),
        ("emb_domain", args.domain, args.emb_dim, "float32", embeddings(4, np.arange(20))),
    ]
    for name, rows, dim, dtype, make in specs:
        if not (work / name / "meta.json").exists():
            start = time.perf_counter()
            write_store(work / name, rows, dim, dtype, make)
            print(f"  built {name} [{rows} x {dim} {dtype}] in {time.perf_counter() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------- one measurement (child process)


def measure(task: str, work: Path, args: argparse.Namespace) -> dict:
    from ntk_selector.config import ScoreConfig
    from ntk_selector.io.store import DONE, open_store
    from ntk_selector.selection.preselect import default_m_k, reverse_knn
    from ntk_selector.selection.score import top_n
    from ntk_selector.selection.stages import ntk_scores

    base = rss_mb()
    start = time.perf_counter()
    info: dict = {}
    if task == "score":
        scores = ntk_scores(work / "feat_domain", work / "feat_pool", ScoreConfig())
        best = top_n(scores, args.n)
        info = {"rows": int(len(scores)), "top": int(len(best))}
    else:
        kind = task.split("-", 1)[1]
        d_emb, d_status, _ = open_store(work / "emb_domain")
        p_emb, p_status, _ = open_store(work / "emb_pool")
        valid = p_status == DONE
        if kind == "hnsw":
            valid &= np.arange(len(valid)) < args.hnsw_rows
        m, k = default_m_k(args.n, int(valid.sum()))
        res = reverse_knn(d_emb, p_emb, m, k, pool_valid=valid, domain_valid=d_status == DONE, knn_search=kind)
        info = {"rows": int(valid.sum()), "m": m, "k": k, "votes": int(res.votes.sum())}
        seconds = time.perf_counter() - start
        peak = rss_mb()
        np.save(work / f"order_{kind}.npy", res.order)
        if kind == "hnsw":  # its own exact reference over the same rows (not timed)
            exact = reverse_knn(d_emb, p_emb, m, k, pool_valid=valid, domain_valid=d_status == DONE, knn_search="flat")
            info["overlap_with_exact"] = round(len(np.intersect1d(exact.order, res.order)) / len(exact.order), 3)
        return {
            "task": task,
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak, 0),
            "rss_after_imports_mb": round(base, 0),
            **info,
        }
    seconds = time.perf_counter() - start
    return {
        "task": task,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(rss_mb(), 0),
        "rss_after_imports_mb": round(base, 0),
        **info,
    }


# ----------------------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="pool rows")
    p.add_argument("--dim", type=int, default=1024, help="feature dims of the score store")
    p.add_argument("--emb-dim", type=int, default=576, help="embedding dims (SmolLM2-135M's hidden size)")
    p.add_argument("--domain", type=int, default=1000, help="domain rows")
    p.add_argument("--n", type=int, default=1000, help="N (M = 4N pre-selected, K = N neighbours per domain row)")
    p.add_argument("--hnsw-rows", type=int, default=100_000, help="pool rows indexed by the HNSW run")
    p.add_argument("--tasks", nargs="+", default=["score", "preselect-flat", "preselect-ivf", "preselect-hnsw"])
    p.add_argument("--work", default="/tmp/ntk-pool-scale", help="folder for the synthetic stores")
    p.add_argument("--keep", action="store_true", help="keep the synthetic stores")
    p.add_argument("--out", default=str(RESULTS / "scale" / "pool_scale.json"))
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    if args.measure:
        print(json.dumps(measure(args.measure, work, args)))
        return
    work.mkdir(parents=True, exist_ok=True)
    print(f"building synthetic stores in {work}", flush=True)
    build_data(work, args)
    results = []
    for task in args.tasks:
        cmd = [
            sys.executable,
            "-m",
            __spec__.name,
            "--measure",
            task,
            "--work",
            str(work),
            "--rows",
            str(args.rows),
            "--dim",
            str(args.dim),
            "--emb-dim",
            str(args.emb_dim),
            "--domain",
            str(args.domain),
            "--n",
            str(args.n),
            "--hnsw-rows",
            str(args.hnsw_rows),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env())
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {results[-1]}", flush=True)
    exact = work / "order_flat.npy"
    for r in results:
        kind = r["task"].split("-", 1)[-1]
        if r["task"] == "preselect-ivf" and exact.exists():
            a, b = np.load(exact), np.load(work / f"order_{kind}.npy")
            r["overlap_with_exact"] = round(len(np.intersect1d(a, b)) / len(a), 3)
    report = {
        "date": str(date.today()),
        "machine": f"{os.cpu_count()}-core CPU, no GPU ({platform.machine()}, {platform.system()})",
        "command": "python -m benchmarks.scale.pool_scale " + " ".join(sys.argv[1:]),
        "settings": {k: getattr(args, k) for k in ("rows", "dim", "emb_dim", "domain", "n", "hnsw_rows")},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print("| task | pool rows | seconds | peak RSS (MB) | RSS after imports (MB) | overlap with exact |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['task']} | {r['rows']:,} | {r['seconds']} | {r['peak_rss_mb']:.0f} | "
            f"{r['rss_after_imports_mb']:.0f} | "
            f"{r.get('overlap_with_exact', '')} |"
        )
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
