"""Featurize / embed speed against plain baselines on the same model, LoRA and rows.

For each row set (fixed 64-, 128- and 256-token rows, and real variable-length rows from the demo pool)
it measures, in one process and one run:
  forward      plain no-grad forward of the LoRA model at batch 8 (logits included)
  ce_step      plain LoRA training step: cross-entropy forward + backward at batch 8
               (both baselines take rows grouped by length, so they do little padding work)
  less_loop    LESS-style loop: batch of one, CE backward, flatten p.grad
  embed        our embed stage (mean-pooled hidden states, token-budget batches)
  featurize    our featurize stage (per-sample NTK features projected to p dims)
and prints rows/s, the ratios the targets are stated in, the projection's share of featurize
time and the peak RSS. Usage:

    python -m benchmarks.speed.featurize_speed [--model M] [--rows 48] [--proj-dim 8192] [--json out.json]
    python -m benchmarks.speed.featurize_speed --random-config llama3-8b --no-demo --lengths 256  # 8B shape

`--random-config` takes an HF config folder or one of the named shapes below (SHAPES): with
`--no-demo` the rows are random token ids, so no tokenizer or weights are needed (a GPU machine
with only torch, transformers and peft runs it; gpu_check.sh beside this file).

Speed is never asserted in tests; this script is the measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig
from ntk_selector.features.embed import mean_pooled
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.records import read_records
from ntk_selector.io.tokens import IGNORE_INDEX, Encoded, collate, encode, plan_batches
from ntk_selector.model.loading import load_base_model, lora_config, lora_parameters

# Llama-architecture shapes by name, for random-weight runs on machines without the weights.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
}


def random_model(config: str, layers: int | None) -> torch.nn.Module:
    """A frozen model of ``config`` (a named shape or an HF config folder) with random weights, on
    the GPU in bf16 when there is one (fp32 on the CPU), initialised where it will run."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[config]) if config in SHAPES else AutoConfig.from_pretrained(config)
    if layers:
        cfg.num_hidden_layers = layers
    if cfg.pad_token_id is None:
        cfg.pad_token_id = 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        base = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return base.requires_grad_(False)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Best of `repeats` wall-clock runs (after the first call warmed caches)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def fixed_rows(n: int, length: int, vocab: int, seed: int) -> list[Encoded]:
    rng = np.random.default_rng(seed)
    return [Encoded(rng.integers(10, vocab, size=length).astype(np.int64), length // 2) for _ in range(n)]


def demo_rows(n: int, tok: Any, max_length: int) -> list[Encoded]:
    from ntk_selector.demo.data import build_demo

    paths = build_demo(Path("benchmarks/cache/demo_speed"), n_domain=100, pool_size=max(n, 500), seed=0)
    cfg = DataConfig(max_length=max_length)
    recs = read_records(paths.pool)[:n]
    return encode([to_conversation(r, cfg) for r in recs], tok, cfg)


def fixed_batches(rows: list[Encoded], size: int) -> list[list[int]]:
    """Batches of `size` rows grouped by length (like a trainer's group_by_length), so the
    batch-8 baselines are not slowed by padding short rows to long ones."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].length, i))
    return [order[i : i + size] for i in range(0, len(rows), size)]


def bench_rows(
    model: torch.nn.Module, pad: int, rows: list[Encoded], proj_dim: int, token_budget: int, repeats: int
) -> dict[str, Any]:
    device = next(model.parameters()).device
    n = len(rows)
    params = [p for _, p in lora_parameters(model)]
    b8 = [collate([rows[i] for i in idx], pad).to(device) for idx in fixed_batches(rows, 8)]
    budget = [
        collate([rows[i] for i in idx], pad).to(device)
        for idx in plan_batches([r.length for r in rows], token_budget, 64)
    ]
    ones = [collate([r], pad).to(device) for r in rows]

    def forward() -> None:
        with torch.no_grad():
            for b in b8:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ce_step() -> None:
        for b in b8:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            loss = F.cross_entropy(logits.float().transpose(1, 2), b.labels, ignore_index=IGNORE_INDEX)
            loss.backward()
            for p in params:
                p.grad = None

    def less_loop() -> None:
        out = []
        for b in ones:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            loss = F.cross_entropy(logits.float().transpose(1, 2), b.labels, ignore_index=IGNORE_INDEX)
            loss.backward()
            out.append(torch.cat([p.grad.flatten() for p in params]))
            for p in params:
                p.grad = None

    def embed() -> None:
        for b in budget:
            mean_pooled(model, b)

    feat = GradientFeaturizer(model, proj_dim, 0, "ntk", "auto", probe=b8[0])
    proj_time = [0.0]
    inner = feat.projector.accumulate

    def timed_accumulate(name: str, grad: torch.Tensor, out: torch.Tensor) -> None:
        t0 = time.perf_counter()
        inner(name, grad, out)
        proj_time[0] += time.perf_counter() - t0

    feat.projector.accumulate = timed_accumulate  # type: ignore[method-assign]

    def featurize() -> None:
        for b in budget:
            feat.features(b)

    results: dict[str, Any] = {
        "rows": n,
        "mean_tokens": float(np.mean([r.length for r in rows])),
        "logits_mode": feat.logits_mode,
    }
    for name, fn in (
        ("forward", forward),
        ("ce_step", ce_step),
        ("less_loop", less_loop),
        ("embed", embed),
        ("featurize", featurize),
    ):
        fn()  # warm-up pass
        proj_time[0] = 0.0
        secs = timed(fn, repeats)
        if name == "featurize":
            results["projection_share"] = (
                proj_time[0] / repeats / secs if repeats == 1 else proj_time[0] / (secs * repeats)
            )
        results[f"{name}_rows_per_s"] = n / secs
        results["peak_rss_mb_after_" + name] = peak_rss_mb()
        if torch.cuda.is_available():
            results["peak_gpu_mb_after_" + name] = torch.cuda.max_memory_allocated() / (1 << 20)
    feat.close()
    r = results
    r["featurize_vs_ce_step"] = r["featurize_rows_per_s"] / r["ce_step_rows_per_s"]
    r["featurize_vs_less_loop"] = r["featurize_rows_per_s"] / r["less_loop_rows_per_s"]
    r["embed_vs_forward"] = r["embed_rows_per_s"] / r["forward_rows_per_s"]
    return r


def featurize_peak_rss(row_counts: list[int], model: str | None, proj_dim: int, token_budget: int) -> dict[int, float]:
    """Peak RSS (MB) of a fresh `ntk-selector featurize` process over n demo-pool rows, for each n:
    flat in n when rows stream through the store, bounded by the token budget."""
    import os
    import subprocess
    import tempfile

    from ntk_selector.demo.data import build_demo

    paths = build_demo(Path("benchmarks/cache/demo_speed"), n_domain=100, pool_size=max(max(row_counts), 500), seed=0)
    rows = paths.pool.read_text().splitlines()
    out: dict[int, float] = {}
    for n in row_counts:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "rows.jsonl"
            data.write_text("\n".join(rows[:n]) + "\n")
            cmd = [
                sys.executable,
                "-m",
                "ntk_selector",
                "featurize",
                "--data",
                str(data),
                "--out",
                str(Path(tmp) / "store"),
                "--proj-dim",
                str(proj_dim),
                "--token-budget",
                str(token_budget),
                "--max-length",
                "256",
                "--quiet",
            ]
            if model:
                cmd += ["--model", model]
            proc = subprocess.Popen(cmd)
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                raise RuntimeError(f"featurize failed on {n} rows")
            out[n] = usage.ru_maxrss / 1024
        print(f"featurize over {n} rows: peak RSS {out[n]:.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder / id (default: packaged SmolLM2-135M-Instruct)")
    ap.add_argument(
        "--random-config",
        default=None,
        help=f"instead of --model: random weights of an HF config folder or a named shape ({', '.join(SHAPES)})",
    )
    ap.add_argument("--layers", type=int, default=None, help="with --random-config: keep only this many layers")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--token-budget", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--no-demo", action="store_true", help="skip the real demo-pool rows")
    ap.add_argument(
        "--rss-rows",
        type=int,
        nargs="*",
        default=[],
        help="also measure a fresh featurize process's peak RSS over these row counts",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    tok = None
    if args.random_config:
        base = random_model(args.random_config, args.layers)
        if not args.no_demo:  # real rows need the packaged tokenizer
            from ntk_selector.model.loading import load_tokenizer, model_path

            tok = load_tokenizer(model_path(ModelConfig()))
    else:
        base, tok = load_base_model(ModelConfig(model=args.model))
    pad_id = tok.pad_token_id if tok is not None else base.config.pad_token_id
    from peft import get_peft_model

    lcfg = lora_config(LoraSettings())
    lcfg.init_lora_weights = False  # non-zero B, like a warmed adapter
    model = get_peft_model(base, lcfg)
    model.eval()
    vocab = int(base.config.vocab_size)
    sets: list[tuple[str, list[Encoded]]] = [
        (f"fixed {L} tokens", fixed_rows(args.rows, L, min(vocab, tok.vocab_size) if tok else vocab, L))
        for L in args.lengths
    ]
    if not args.no_demo:
        sets.append(("demo pool (variable)", demo_rows(args.rows, tok, 512)))
    device = next(model.parameters()).device
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"),
        "model": (
            f"{args.random_config} (random weights{f', {args.layers} layers' if args.layers else ''})"
            if args.random_config
            else args.model or "SmolLM2-135M-Instruct (packaged)"
        ),
        "device": str(device),
        "dtype": str(next(base.parameters()).dtype).replace("torch.", ""),
        "lora": "r=8 q/k/v/o",
        "proj_dim": args.proj_dim,
        "command": " ".join(sys.argv),
        "sets": {},
    }
    for name, rows in sets:
        print(f"== {name}: {len(rows)} rows", flush=True)
        r = bench_rows(model, pad_id, rows, args.proj_dim, args.token_budget, args.repeats)
        report["sets"][name] = r
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    if args.rss_rows:
        report["featurize_peak_rss_mb_by_rows"] = featurize_peak_rss(
            args.rss_rows, args.model, args.proj_dim, args.token_budget
        )
    print()
    print(markdown_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


def markdown_table(report: dict[str, Any]) -> str:
    head = (
        "| rows | mean tokens | forward r/s | CE step r/s | LESS loop r/s | embed r/s | featurize r/s | "
        "featurize / CE step | featurize / LESS | embed / forward | projection share | peak RSS MB |"
    )
    lines = [head, "|" + "---|" * 12]
    for name, r in report["sets"].items():
        lines.append(
            f"| {name} | {r['mean_tokens']:.0f} | {r['forward_rows_per_s']:.2f} | {r['ce_step_rows_per_s']:.2f} | "
            f"{r['less_loop_rows_per_s']:.2f} | {r['embed_rows_per_s']:.2f} | {r['featurize_rows_per_s']:.2f} | "
            f"**{r['featurize_vs_ce_step']:.2f}x** | **{r['featurize_vs_less_loop']:.2f}x** | "
            f"**{r['embed_vs_forward']:.2f}x** | "
            f"{100 * r['projection_share']:.1f}% | {r['peak_rss_mb_after_featurize']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
