"""Does the Jacobian-free kernel still rank well when answers are long?

The NTK-Selector feature sums the logits over the vocabulary and the response positions before
taking the gradient, which drops the cross terms between outputs that the exact eNTK keeps. With a
one-token label there is one position; with a 60-token conclusion there are 60, and every pair of
positions adds cross terms. This runs ``ntk-selector diagnose --checks stability approximation``
(the kernel at the end of the warm-up, exact eNTK over a seeded sample of outputs on a probe of
domain and pool rows) on:

- ``fpb``: label answers (about 1 token + end of turn);
- ``samsum``: dialogue summaries (about 20-30 tokens);
- ``pubmedqa_long``: study conclusions (60+ tokens);
- ``pubmedqa_long`` with each answer cut to its first 1 and 15 words: the same prompts and pool, only
  the answer length changes, which separates length from domain.

The pool side of the probe is the same P3 pool rows in every run (same seed). For each run it
records the mean response tokens of the probe's domain rows, the cross-term share (relative size of
what the Jacobian-free kernel leaves out), the Frobenius cosine of the two kernels and the Spearman
correlation of the mean-inner-product scores of the probe's pool rows. Results:
``benchmarks/results/quality/kernel_length/<name>.json`` (one per run, reused on a rerun) and ``table.md``.

    python -m benchmarks.quality.generative_domains.kernel_length --data DATA  # DATA: prepare_real_domains' output
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import CACHE, RESULTS

SETTINGS = [
    "--max-length",
    "384",
    "--approx-rows",
    "16",
    "--approx-outputs",
    "32",
    "--probe-rows",
    "16",
    "--stability-points",
    "1",
    "--checks",
    "stability",
    "approximation",
    "--quiet",
]


def cut_answers(src: Path, dst: Path, words: int) -> Path:
    """The domain file with every response cut to its first ``words`` words."""
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({**r, "response": " ".join(r["response"].split()[:words])}, ensure_ascii=False) + "\n")
    return dst


def runs(data: Path, work: Path) -> dict[str, Path]:
    long = data / "generative" / "pubmedqa_long" / "domain.jsonl"
    return {
        "fpb": data / "fpb" / "domain.jsonl",
        "pubmedqa_long_1word": cut_answers(long, work / "pubmedqa_long_1word.jsonl", 1),
        "pubmedqa_long_15words": cut_answers(long, work / "pubmedqa_long_15words.jsonl", 15),
        "samsum": data / "generative" / "samsum" / "domain.jsonl",
        "pubmedqa_long": long,
    }


def probe_response_tokens(domain: Path, out: Path) -> float:
    """Mean response tokens of the probe's domain rows (the rows diagnostics.json names)."""
    from ntk_selector.config import DataConfig, ModelConfig
    from ntk_selector.io.formats import to_conversation
    from ntk_selector.io.tokens import encode
    from ntk_selector.model.loading import load_tokenizer, model_path

    diag = json.loads((out / "diagnostics.json").read_text())
    rows = [json.loads(line) for line in domain.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = [rows[i] for i in diag["probe"]["domain_rows"]]
    cfg = DataConfig(max_length=384)
    tok = load_tokenizer(model_path(ModelConfig(), quiet=True))
    return float(np.mean([e.n_response_tokens for e in encode([to_conversation(r, cfg) for r in picked], tok, cfg)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=CACHE / "kernel_length")
    ap.add_argument("--results", type=Path, default=RESULTS / "quality" / "kernel_length")
    ap.add_argument("--only", nargs="*", default=None, help="only these runs")
    args = ap.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "ntk_selector", "diagnose"]
    for name, domain in runs(args.data, args.work).items():
        if args.only and name not in args.only:
            continue
        result = args.results / f"{name}.json"
        if result.exists():
            continue
        out = args.work / name
        cmd = [
            *exe,
            "--domain",
            str(domain),
            "--pool",
            str(args.data / "pool.jsonl"),
            "--out",
            str(out),
            *SETTINGS,
            "--overwrite",
        ]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        diag = json.loads((out / "diagnostics.json").read_text())
        a = diag["approximation"]
        record = {
            "run": name,
            "command": " ".join(["ntk-selector", *cmd[3:]]),
            "seconds": round(time.perf_counter() - start),
            "date": time.strftime("%Y-%m-%d"),
            "domain_response_tokens": probe_response_tokens(domain, out),
            **{
                k: a[k]
                for k in (
                    "rows",
                    "domain_rows",
                    "pool_rows",
                    "outputs",
                    "vocab",
                    "cross_term_share",
                    "mean_output_cosine",
                    "kernel_cosine",
                    "spearman",
                    "spearman_cosine",
                    "sampling_spearman",
                )
            },
            "stability_final": diag.get("stability_final"),
        }
        result.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {record}", flush=True)
    lines = [
        "| run | response tokens (probe's D rows) | cross-term share | kernel cosine | Spearman (mean IP) | "
        "Spearman (cosine) | sampling Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sorted(args.results.glob("*.json"), key=lambda p: json.loads(p.read_text())["domain_response_tokens"]):
        r = json.loads(p.read_text())

        def f(x):
            return "–" if x is None else f"{x:.3f}"

        lines.append(
            f"| {r['run']} | {r['domain_response_tokens']:.1f} | {f(r['cross_term_share'])} | "
            f"{f(r['kernel_cosine'])} | {f(r['spearman'])} | {f(r['spearman_cosine'])} | {f(r['sampling_spearman'])} |"
        )
    (args.results / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
