"""How far bf16 base weights move the NTK features and the ranking, against fp32, and how much faster.

`--dtype auto` runs the frozen base in bf16 on a GPU (LoRA weights, per-sample products and the
projection stay fp32). This script measures what that costs in agreement, on real rows: it warms
a LoRA on the demo's drug-review domain (fp32, the library's own `train_lora`, or `--adapter DIR`),
then featurizes the same domain and pool rows once with an fp32 base and once with a bf16 base and
reports: pool featurize rows/s per dtype, the relative error of the pool features, the per-row
cosine between them, the Spearman correlation of the NTK scores, and the overlap of the top-k.
It also times the other two model stages per dtype on the same rows: the pre-selection embedding
(a no-grad forward, rows/s) and one epoch of LoRA training on domain + pool rows (rows/s, loss),
since a CPU with bf16 matrix units speeds the three up by different amounts.
Usage:

    python -m benchmarks.speed.dtype_agreement [--pool-rows 128] [--top 32] [--json out.json]

On a CPU without bf16 matrix units the bf16 run is slow; the agreement numbers are what matter.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, TrainConfig
from ntk_selector.demo.data import build_demo
from ntk_selector.features.embed import mean_pooled
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.features.kernels import relative_error, rows_features, spearman, top_overlap
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.records import read_records
from ntk_selector.io.tokens import Encoded, collate, encode
from ntk_selector.model.loading import load_base_model, with_lora
from ntk_selector.training.loop import save_adapter_atomic, train_lora

CACHE = Path("benchmarks/cache/dtype_agreement")


def features(
    model: torch.nn.Module, rows: list[Encoded], pad_id: int, proj_dim: int, data_cfg: DataConfig
) -> torch.Tensor:
    """[n, p] features in row order, with the library's batch plan."""
    with GradientFeaturizer(model, proj_dim, 0, "ntk", "auto", probe=collate([rows[0]], pad_id)) as feat:
        return rows_features(feat.features, rows, pad_id, data_cfg.token_budget, data_cfg.max_batch_size)


def embed_rows_per_s(model: torch.nn.Module, rows: list[Encoded], pad_id: int, data_cfg: DataConfig) -> float:
    """Pre-selection embedding speed: mean-pooled forward passes over ``rows`` in the library's batches."""

    def embed(some: list[Encoded]) -> torch.Tensor:
        return rows_features(
            lambda b: mean_pooled(model, b), some, pad_id, data_cfg.token_budget, data_cfg.max_batch_size
        )

    embed(rows[:8])  # warm caches
    start = time.perf_counter()
    embed(rows)
    return len(rows) / (time.perf_counter() - start)


def train_speed(dtype: str, tok: Any, conversations: list[Any], data_cfg: DataConfig) -> dict[str, float]:
    """One epoch of LoRA training from a fresh seeded LoRA: rows/s and the last loss."""
    base, _ = load_base_model(ModelConfig(dtype=dtype))
    model = with_lora(base, LoraSettings(), None, seed=0)
    start = time.perf_counter()
    state = train_lora(
        model,
        tok,
        conversations,
        data_cfg,
        TrainConfig(epochs=1, lr=1e-3, batch_size=8),
        seed=0,
        quiet=True,
        group_by_length=True,
    )
    seconds = time.perf_counter() - start
    return {"rows_per_s": len(conversations) / seconds, "loss_last": float(state["losses"][-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default=None, help="warm adapter folder (default: warm up 1 epoch on the demo domain)")
    ap.add_argument("--domain-rows", type=int, default=100)
    ap.add_argument("--pool-rows", type=int, default=128)
    ap.add_argument("--top", type=int, default=32)
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--token-budget", type=int, default=2048)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    data_cfg = DataConfig(max_length=args.max_length, token_budget=args.token_budget)
    paths = build_demo(CACHE / "data", n_domain=args.domain_rows, pool_size=max(args.pool_rows, 500), seed=0)
    domain_conv = [to_conversation(r, data_cfg) for r in read_records(paths.domain)]
    pool_conv = [to_conversation(r, data_cfg) for r in read_records(paths.pool)[: args.pool_rows]]

    adapter = args.adapter
    if adapter is None:
        adapter = str(CACHE / f"warmup_d{args.domain_rows}")
        if not (Path(adapter) / "adapter_config.json").exists():
            base, tok = load_base_model(ModelConfig(dtype="float32"))
            model = with_lora(base, LoraSettings(), None, seed=0)
            train_lora(model, tok, domain_conv, data_cfg, TrainConfig(), seed=0, desc="warm-up")
            save_adapter_atomic(model, adapter)
            del model, base

    feats: dict[str, dict[str, torch.Tensor]] = {}
    speed: dict[str, float] = {}
    embed_speed: dict[str, float] = {}
    training: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "bfloat16"):
        base, tok = load_base_model(ModelConfig(dtype=dtype))
        model = with_lora(base, LoraSettings(), adapter, seed=0)
        domain = encode(domain_conv, tok, data_cfg)
        pool = encode(pool_conv, tok, data_cfg)
        features(model, pool[:8], tok.pad_token_id, args.proj_dim, data_cfg)  # warm caches
        d = features(model, domain, tok.pad_token_id, args.proj_dim, data_cfg)
        t0 = time.perf_counter()
        p = features(model, pool, tok.pad_token_id, args.proj_dim, data_cfg)
        speed[dtype] = len(pool) / (time.perf_counter() - t0)
        feats[dtype] = {"domain": d, "pool": p}
        embed_speed[dtype] = embed_rows_per_s(model, pool, tok.pad_token_id, data_cfg)
        print(f"{dtype}: pool featurize {speed[dtype]:.2f} rows/s, embed {embed_speed[dtype]:.2f} rows/s", flush=True)
        del model, base
        training[dtype] = train_speed(dtype, tok, domain_conv + pool_conv, data_cfg)
        print(f"{dtype}: one training epoch {training[dtype]['rows_per_s']:.2f} rows/s", flush=True)

    a, b = feats["float32"], feats["bfloat16"]
    score_a = (a["pool"] @ a["domain"].mean(0)).numpy()
    score_b = (b["pool"] @ b["domain"].mean(0)).numpy()
    nonempty = (a["pool"].norm(dim=1) > 0).numpy()  # rows without response tokens have no feature
    row_cos = torch.nn.functional.cosine_similarity(a["pool"], b["pool"], dim=1).numpy()[nonempty]
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"),
        "command": " ".join(sys.argv),
        "pool_rows": len(score_a),
        "pool_rows_without_response": int((~nonempty).sum()),
        "domain_rows": len(domain_conv),
        "top": args.top,
        "rows_per_s": speed,
        "bf16_speedup": speed["bfloat16"] / speed["float32"],
        "embed_rows_per_s": embed_speed,
        "embed_bf16_speedup": embed_speed["bfloat16"] / embed_speed["float32"],
        "train": training,
        "train_bf16_speedup": training["bfloat16"]["rows_per_s"] / training["float32"]["rows_per_s"],
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16"))),
        "pool_feature_rel_err": relative_error(b["pool"].numpy(), a["pool"].numpy()),
        "row_cosine_min": float(row_cos.min()),
        "row_cosine_mean": float(row_cos.mean()),
        "score_spearman": spearman(score_a, score_b),
        "top_overlap": top_overlap(score_a, score_b, args.top),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), to tell which bf16 units the timings had."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


if __name__ == "__main__":
    main()
