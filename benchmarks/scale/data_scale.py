"""Pool-size memory of the data stages: loading, filtering, tokenizing and pre-selection.

Writes a synthetic JSONL pool of --rows rows (prompt/response/task; 1 in 100 rows repeats an
earlier one, and a small test file shares 13-grams with some rows), then runs each stage in a fresh
subprocess and samples its anonymous (private) resident memory, so the memory-mapped Arrow
file, which the page cache holds and any rank can share, is not counted:
- load: ``Records.load`` (the datasets library's Arrow conversion runs once, before, untimed);
- filter: load + ``pool_filter`` with dedupe and decontamination;
- tokenize: load + the streamed tokenize-and-batch loop of ``runner.run_rows`` (a no-op model);
- preselect: reverse-kNN votes of 1,000 domain rows over a --emb-dim pool embedding store.
For each stage: peak anonymous RSS above the process's RSS after imports, and that per pool row.
The tokenizer is a byte-level BPE without merges and a ChatML template (one token a byte: more
tokens than a real tokenizer would give), so no model download is needed.

    .venv/bin/python -m benchmarks.scale.data_scale --rows 10000000      # the headline size
    .venv/bin/python -m benchmarks.scale.data_scale --rows 1000000        # a few minutes on 2 cores
Writes benchmarks/results/scale/data_scale_<rows>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks import RESULTS, ROOT

WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down"
).split()
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- data


GROUP = 100  # rows generated together from one seed


def group_texts(group: int) -> list[tuple[str, str, str]]:
    """Rows group*100 .. group*100+99: 15-35-word prompts, 1-8-word responses, 8 tasks; the last
    row of each group repeats the row 50 before it (so dedupe has work)."""
    rng = np.random.default_rng(group)
    p_len, r_len = rng.integers(15, 36, GROUP), rng.integers(1, 9, GROUP)
    ids = rng.integers(0, len(WORDS), (GROUP, 43))
    rows = []
    for j in range(GROUP):
        i = group * GROUP + j
        w = ids[j]
        rows.append(
            (
                " ".join(WORDS[x] for x in w[: p_len[j]]),
                " ".join(WORDS[x] for x in w[35 : 35 + r_len[j]]),
                f"task{i % 8}",
            )
        )
    rows[GROUP - 1] = rows[GROUP - 51][:2] + (rows[GROUP - 1][2],)
    return rows


def row_text(i: int) -> tuple[str, str, str]:
    return group_texts(i // GROUP)[i % GROUP]


def write_pool(path: Path, rows: int, block: int = 100_000) -> None:
    """rows lines of JSONL (the texts are plain words, so no JSON escaping is needed)."""
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, rows, block):
            lines = []
            for g in range(start // GROUP, (min(rows, start + block) + GROUP - 1) // GROUP):
                for j, (p, r, t) in enumerate(group_texts(g)):
                    if g * GROUP + j < rows:
                        lines.append(f'{{"prompt": "{p}", "response": "{r}", "task": "{t}"}}\n')
            fh.write("".join(lines))


def write_test_set(path: Path, rows: int = 100) -> None:
    """Test records: every other one copies a pool row's prompt (a contamination to find)."""
    with open(path, "w", encoding="utf-8") as fh:
        for j in range(rows):
            p, r, _ = row_text(j * 7 + 3) if j % 2 == 0 else ("held out " + " ".join(WORDS[j % 50 :]), "x", "")
            fh.write(json.dumps({"prompt": p, "response": r}) + "\n")


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML
    return tok


# ----------------------------------------------------------------- the stages (also used by tests/test_memory_bound.py)


def stage_load(pool: Path):
    from ntk_selector.config import DataConfig
    from ntk_selector.io.records import Records

    return Records.load(pool, DataConfig())


def stage_filter(pool: Path, test_set: Path) -> np.ndarray:
    from ntk_selector.config import PoolFilterConfig
    from ntk_selector.selection.filters import pool_filter

    records = stage_load(pool)
    return pool_filter(records.conversations, PoolFilterConfig(dedupe=True, decontaminate=str(test_set))).excluded


def stage_tokenize(pool: Path, store: Path, tokenizer, chat_template: bool = True) -> int:
    """The streamed tokenize-and-batch loop of the embed / featurize stages, with a no-op model."""
    import torch

    from ntk_selector.config import DataConfig
    from ntk_selector.features.runner import run_rows
    from ntk_selector.io.store import RowStore

    records = stage_load(pool)
    cfg = DataConfig(max_length=256, token_budget=8192, max_batch_size=256, no_chat_template=not chat_template)
    with RowStore(store, len(records), 1, "float32", {"benchmark": "tokenize"}, overwrite=True) as rs:
        n = run_rows(
            records.conversations, tokenizer, cfg, rs, lambda b: torch.zeros(b.input_ids.shape[0], 1), quiet=True
        )
        rs.finish()
    return n


def write_embedding_store(path: Path, rows: int, dim: int, seed: int, block: int = 262_144) -> None:
    from ntk_selector.io.store import RowStore

    rng = np.random.default_rng(seed)
    with RowStore(path, rows, dim, "float32", {"synthetic": path.name, "rows": rows}, overwrite=True) as store:
        for start in range(0, rows, block):
            idx = np.arange(start, min(rows, start + block))
            store.write(idx, rng.standard_normal((len(idx), dim), dtype=np.float32))
        store.finish()


def stage_preselect(domain_store: Path, pool_store: Path, n: int):
    from ntk_selector.config import PreselectConfig
    from ntk_selector.selection.stages import preselect

    return preselect(domain_store, pool_store, PreselectConfig(n=n, knn_search="flat"), seed=0)


# ----------------------------------------------------------------------------- measuring


def anon_rss_bytes() -> int:
    """Private (anonymous) resident memory of this process: not the page cache of mapped files."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples anonymous RSS every few milliseconds in a thread and keeps the peak."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_rss_bytes())
            time.sleep(self.every)

    def __enter__(self) -> PeakSampler:
        self.peak = anon_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_bytes())


def child(args: argparse.Namespace) -> None:
    """One stage in this process; prints a JSON line with its memory."""
    work = Path(args.work)
    import datasets  # noqa: F401
    import torch  # noqa: F401  (imports before the baseline, as in a real run)

    import ntk_selector.features.runner  # noqa: F401
    import ntk_selector.selection.filters  # noqa: F401
    import ntk_selector.selection.stages  # noqa: F401

    tokenizer = make_tokenizer() if args.child == "tokenize" else None
    base = anon_rss_bytes()
    with PeakSampler() as sampler:
        if args.child == "load":
            stage_load(work / "pool.jsonl")
        elif args.child == "filter":
            stage_filter(work / "pool.jsonl", work / "test.jsonl")
        elif args.child == "tokenize":
            stage_tokenize(work / "pool.jsonl", work / "tokens_store", tokenizer)
        elif args.child == "preselect":
            stage_preselect(work / "emb_domain", work / "emb_pool", args.n)
    print(
        json.dumps(
            {
                "stage": args.child,
                "baseline_bytes": base,
                "peak_bytes": sampler.peak,
                "above_baseline_bytes": sampler.peak - base,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="pool rows (default 10^7)")
    ap.add_argument("--emb-dim", type=int, default=64, help="pool embedding dims for the pre-selection stage")
    ap.add_argument("--n", type=int, default=1000, help="N for the pre-selection stage (M = 4N)")
    ap.add_argument("--stages", nargs="+", default=["load", "filter", "tokenize", "preselect"])
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted afterwards)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="ntk-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # the library, and this module as a child
        "HF_DATASETS_CACHE": str(work / "hf_cache"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
    }
    if not (work / "pool.jsonl").exists():
        write_pool(work / "pool.jsonl", args.rows)
        write_test_set(work / "test.jsonl")
    print(f"pool written ({(work / 'pool.jsonl').stat().st_size / 1e6:.0f} MB)", flush=True)
    # the first load converts JSONL to the Arrow cache (once per file); the measured loads reuse it
    subprocess.run(
        [sys.executable, "-m", __spec__.name, "--work", str(work), "--child", "load"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    arrow_bytes = sum(p.stat().st_size for p in (work / "hf_cache").rglob("*.arrow"))
    print(f"Arrow cache (written by the first load) {arrow_bytes / 1e6:.0f} MB", flush=True)
    if "preselect" in args.stages and not (work / "emb_pool").exists():
        write_embedding_store(work / "emb_domain", 1000, args.emb_dim, 1)
        write_embedding_store(work / "emb_pool", args.rows, args.emb_dim, 2)
    results = []
    for stage in args.stages:
        out = subprocess.run(
            [sys.executable, "-m", __spec__.name, "--work", str(work), "--child", stage, "--n", str(args.n)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["bytes_per_row"] = res["above_baseline_bytes"] / args.rows
        results.append(res)
        print(
            f"  {stage}: {res['above_baseline_bytes'] / 1e6:.0f} MB above baseline "
            f"({res['bytes_per_row']:.1f} bytes a row)",
            flush=True,
        )
    command = f"python -m benchmarks.scale.data_scale --rows {args.rows} --stages {' '.join(args.stages)}"
    for r in results:
        r.update(date=date.today().isoformat(), command=command)
    summary = {
        "rows": args.rows,
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "jsonl_bytes": (work / "pool.jsonl").stat().st_size,
        "arrow_bytes": arrow_bytes,
        "stages": results,
        "command": command,
    }
    out_path = RESULTS / "scale" / f"data_scale_{args.rows}.json"
    if out_path.exists():  # stages measured by earlier runs (and not again now) are kept, each with its command
        earlier = json.loads(out_path.read_text())
        kept = [
            {"command": earlier.get("command"), **s} for s in earlier.get("stages", []) if s["stage"] not in args.stages
        ]
        summary["stages"] = kept + results
        summary["command"] = "; ".join(dict.fromkeys(s.get("command", "") for s in summary["stages"]))
    out_path.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| stage | peak anonymous RSS above baseline | bytes a pool row |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['stage']} | {r['above_baseline_bytes'] / 1e6:.1f} MB | {r['bytes_per_row']:.1f} |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
