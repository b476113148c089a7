"""Operator profile of featurize on fixed-length rows: where the time goes (matmuls vs the rest);
with ``--compare-projection``, the projection's share of featurize time and its inner-product error,
path by path.

    .venv/bin/python -m benchmarks.speed.featurize_profile [LENGTH]   # default 128 tokens, 16 rows

Packaged SmolLM2-135M-Instruct, LoRA r=8 on q/k/v/o with random non-zero B, p = 8192, default
token budget; prints rows/s and the torch.profiler table sorted by self CPU time.

    .venv/bin/python -m benchmarks.speed.featurize_profile --compare-projection --random-config smollm2-135m
    .venv/bin/python -m benchmarks.speed.featurize_profile --compare-projection --random-config llama3-8b \\
        --layers 2 --rows 8

Random weights of a named shape (``featurize_speed.SHAPES``; ``--layers`` keeps that many layers),
random token rows of ``--length`` tokens, LoRA r = 8 on q/k/v/o with random non-zero B. The same
rows are featurized once per projection path of ``src/ntk_selector/features/projection.py``:
  per-module    one product per LoRA matrix, int8 signs converted per batch (the path before layer groups)
  fused-signs   one product per layer group (q/k/v/o A and B stacked), int8 signs converted per batch
  fused         one product per layer group, the fp32 matrices kept when they fit the budget (the default)
  fused-bf16    as fused with ``--projection-dtype bfloat16``
and once unprojected (p = 0) for the exact inner products. For each path it prints featurize rows/s,
the seconds spent in the projection (``accumulate`` + ``flush``, timed around each call), its share
of featurize time, and two inner-product errors: max over row pairs of ``|<Pg_i,Pg_j> - K_ij| /
(|g_i| |g_j|)`` against the exact K (the raw gradients: mostly the random projection's own error,
about 1/sqrt(p)) and against the per-module path's features (what the path itself changes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch.profiler import ProfilerActivity, profile

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig
from ntk_selector.features.budget import resolve_setting
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.features.projection import FactoredRademacher
from ntk_selector.io.tokens import Batch, collate, plan_batches
from ntk_selector.model.loading import load_base_model, lora_config, lora_parameters

from .featurize_speed import SHAPES, fixed_rows, random_model

PATHS: dict[str, dict[str, Any]] = {
    "per-module": dict(fuse=False, cache_matrices=False),
    "fused-signs": dict(fuse=True, cache_matrices=False),
    "fused": dict(fuse=True),
    "fused-bf16": dict(fuse=True, dtype=torch.bfloat16),
}


def lora_model(base: torch.nn.Module) -> torch.nn.Module:
    lcfg = lora_config(LoraSettings())
    lcfg.init_lora_weights = False  # non-zero B, like a warmed adapter
    model = get_peft_model(base, lcfg)
    model.eval()
    return model


def batches_of(rows: list, pad: int, token_budget: int) -> list[Batch]:
    plan = plan_batches([r.length for r in rows], token_budget, DataConfig().max_batch_size)
    return [collate([rows[i] for i in idx], pad) for idx in plan]


def profile_packaged(length: int) -> None:
    base, tok = load_base_model(ModelConfig())
    model = lora_model(base)
    rows = fixed_rows(16, length, tok.vocab_size, length)
    batches = batches_of(rows, tok.pad_token_id, resolve_setting(DataConfig().token_budget))
    with GradientFeaturizer(model, 8192, 0, "ntk", "auto", probe=batches[0]) as feat:
        for b in batches:  # warm-up pass
            feat.features(b)
        t0 = time.perf_counter()
        for b in batches:
            feat.features(b)
        print(f"featurize: {len(rows) / (time.perf_counter() - t0):.2f} rows/s at {length} tokens")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches:
                feat.features(b)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_path(
    model: torch.nn.Module, batches: list[Batch], proj_dim: int, path: str | None, cache_mb: float | None, warmup: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Features of every row (fp64, on the CPU) through one projection path (None: unprojected), and timings."""
    with GradientFeaturizer(model, proj_dim if path else 0, 0, "ntk", "shortcut") as feat:
        device = feat.device
        if path:
            shapes = [(n, tuple(p.shape)) for n, p in lora_parameters(model)]
            cache = None if cache_mb is None else int(cache_mb * (1 << 20))
            feat.projector = FactoredRademacher(shapes, proj_dim, 0, device=device, cache_bytes=cache, **PATHS[path])
        proj_s = [0.0]
        projector = feat.projector
        for method in ("accumulate", "flush"):
            inner = getattr(projector, method)

            def timed(*args: Any, _inner: Any = inner) -> None:
                sync(device)
                t0 = time.perf_counter()
                _inner(*args)
                sync(device)
                proj_s[0] += time.perf_counter() - t0

            setattr(projector, method, timed)
        if warmup:
            for b in batches:
                feat.features(b)
        proj_s[0] = 0.0
        sync(device)
        t0 = time.perf_counter()
        out = [feat.features(b).double().cpu() for b in batches]
        sync(device)
        secs = time.perf_counter() - t0
        info = {
            "featurize_seconds": secs,
            "projection_seconds": proj_s[0],
            "projection_share": proj_s[0] / secs,
        }
        if path:
            info["cache_kind"] = projector.cache_kind  # type: ignore[attr-defined]
            info["groups"] = len(projector.groups)  # type: ignore[attr-defined]
    return torch.cat(out), info


def gram_error(features: torch.Tensor, exact: torch.Tensor, norms: torch.Tensor) -> float:
    """max over row pairs of |<f_i, f_j> - exact_ij| / (|g_i| |g_j|)."""
    return float(((features @ features.T - exact) / torch.outer(norms, norms)).abs().max())


def compare_projection(args: argparse.Namespace) -> dict[str, Any]:
    model = lora_model(random_model(args.random_config, args.layers))
    vocab = model.config.vocab_size
    rows = fixed_rows(args.rows, args.length, vocab, args.length)
    batches = batches_of(rows, 0, args.token_budget)
    raw, raw_info = run_path(model, batches, 0, None, None, False)
    exact = raw @ raw.T
    norms = raw.norm(dim=1)
    report: dict[str, Any] = {
        "shape": args.random_config,
        "layers": args.layers or SHAPES[args.random_config]["num_hidden_layers"],
        "rows": args.rows,
        "length": args.length,
        "proj_dim": args.proj_dim,
        "token_budget": args.token_budget,
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "raw_dim": raw.shape[1],
        "raw_featurize_seconds": raw_info["featurize_seconds"],
        "paths": {},
    }
    reference = None
    timings: dict[str, list[tuple[float, float]]] = {path: [] for path in args.paths}
    for rep in range(args.repeats):
        # rotate the order each repeat, so no path is always first or last on a noisy machine
        order = args.paths[rep % len(args.paths) :] + args.paths[: rep % len(args.paths)]
        for path in order:
            feats, info = run_path(model, batches, args.proj_dim, path, args.cache_mb, args.warmup)
            timings[path].append((info["featurize_seconds"], info["projection_seconds"]))
            if path in report["paths"]:
                continue
            if reference is None:  # the first repeat starts with the first path
                reference = feats
            info["gram_error_vs_exact"] = gram_error(feats, exact, norms)
            ref_gram = reference @ reference.T
            info["gram_error_vs_first_path"] = float(
                ((feats @ feats.T - ref_gram) / torch.outer(norms, norms)).abs().max()
            )
            info["features_rel_diff_vs_first_path"] = float((feats - reference).norm() / reference.norm())
            report["paths"][path] = info
            print(f"{path}: {json.dumps(info)}", flush=True)
    for path, secs in timings.items():
        info = report["paths"][path]
        info["featurize_seconds_each_repeat"] = [f for f, _ in secs]
        info["projection_seconds_each_repeat"] = [q for _, q in secs]
        # noise on a shared machine only adds time: the fastest repeat is the best estimate of the cost
        info["featurize_seconds"] = min(f for f, _ in secs)
        info["projection_seconds"] = min(q for _, q in secs)
        info["rows_per_second"] = args.rows / info["featurize_seconds"]
        info["projection_share"] = info["projection_seconds"] / info["featurize_seconds"]
    report["repeats"] = args.repeats
    print(
        f"\n{report['shape']}, {report['layers']} layers, {args.rows} rows x {args.length} tokens, "
        f"p = {args.proj_dim}, token budget {args.token_budget}, {report['device']}, "
        f"{report['torch_threads']} threads; first path {args.paths[0]}\n"
    )
    print(
        "| path | cache | featurize rows/s | projection s | projection share | inner-product error vs exact | "
        "vs first path | features vs first path |\n|---|---|---|---|---|---|---|---|"
    )
    for path, r in report["paths"].items():
        print(
            f"| {path} | {r['cache_kind']} | {r['rows_per_second']:.2f} | {r['projection_seconds']:.2f} | "
            f"{100 * r['projection_share']:.1f}% | {r['gram_error_vs_exact']:.2e} | "
            f"{r['gram_error_vs_first_path']:.1e} | {r['features_rel_diff_vs_first_path']:.1e} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("length", nargs="?", type=int, default=128, help="tokens per row (profile mode)")
    ap.add_argument("--compare-projection", action="store_true", help="time and check each projection path")
    ap.add_argument("--random-config", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="keep only this many layers")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", dest="row_length", type=int, default=None, help="tokens per row (default 128)")
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--token-budget", type=int, default=2048)
    ap.add_argument("--cache-mb", type=float, default=None, help="projection cache budget (default: the library's)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--warmup", action="store_true", help="one untimed pass per path first")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every path this many times, the order rotated each time; report the fastest",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.compare_projection:
        profile_packaged(args.length)
        return
    args.length = args.row_length or args.length
    compare_projection(args)


if __name__ == "__main__":
    main()
