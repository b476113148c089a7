"""Projection throughput against the sign-cache budget on an 8B-shaped LoRA layout (no weights).

Llama-3-8B with r = 8 on q/k/v/o (hidden 4096, GQA: k/v out 1024), p = 8192: 32 layers x 8 LoRA
matrices; the +-1 matrices R_m hold about 0.87 G signs (3.5 GB in fp32, 0.87 GB as int8). For each
--budgets-mb value, the factored projector (projection.py) keeps the signs of as many modules as fit
and regenerates the rest per batch (or, when the budget holds all of them in fp32, keeps those);
this times ``accumulate`` of random per-sample gradients of a --batch-row batch over every module,
one product per layer group (``--per-module``: one per matrix, int8 signs only, the path before
layer groups) (the projection alone, as in a featurize step) and reports rows
per second, the cached share and the device memory the cache takes.

    .venv/bin/python -m benchmarks.speed.projection_budget                          # all layers, GPU if there is one
    .venv/bin/python -m benchmarks.speed.projection_budget --layers 2 --budgets-mb 0 8 64   # a quick CPU look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import RESULTS
from ntk_selector.features.projection import FactoredRademacher


def llama3_8b_lora_shapes(
    layers: int = 32, hidden: int = 4096, kv_out: int = 1024, r: int = 8
) -> list[tuple[str, tuple[int, int]]]:
    shapes = []
    for i in range(layers):
        for mod, out_f in (("q_proj", hidden), ("k_proj", kv_out), ("v_proj", kv_out), ("o_proj", hidden)):
            base = f"model.layers.{i}.self_attn.{mod}"
            shapes += [(f"{base}.lora_A.weight", (r, hidden)), (f"{base}.lora_B.weight", (out_f, r))]
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    shapes, dim: int, budget_mb: float, batch: int, steps: int, device: torch.device, per_module: bool = False
) -> dict:
    t0 = time.perf_counter()
    proj = FactoredRademacher(
        shapes,
        dim,
        seed=0,
        device=device,
        cache_bytes=int(budget_mb * (1 << 20)),
        fuse=not per_module,
        cache_matrices=not per_module,
    )
    sync(device)
    build_s = time.perf_counter() - t0
    gen = torch.Generator(device="cpu").manual_seed(0)
    grads = {n: torch.randn(batch, *s, generator=gen).to(device) for n, s in shapes[:8]}  # one layer's worth, reused
    out = torch.zeros(batch, dim, device=device)
    for name, _ in shapes:  # warm-up pass
        proj.accumulate(name, grads[_layer0(name)], out)
    proj.flush(out)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        for name, _ in shapes:
            proj.accumulate(name, grads[_layer0(name)], out)
        proj.flush(out)
    sync(device)
    secs = (time.perf_counter() - t0) / steps
    total = sum(proj.plan[n][2] * (dim // proj.plan[n][3]) for n, _ in shapes)
    cached = sum(t.numel() for t in proj._cache.values())
    cached_bytes = sum(t.numel() * t.element_size() for t in proj._cache.values())
    return {
        "path": "per-module" if per_module else "fused",
        "cache_kind": proj.cache_kind,
        "budget_mb": budget_mb,
        "cached_modules": proj.cached_modules,
        "modules": len(shapes),
        "cached_share": cached / total,
        "cache_mb": cached_bytes / (1 << 20),
        "seconds_per_batch": secs,
        "rows_per_second": batch / secs,
        "build_seconds": build_s,
    }


def _layer0(name: str) -> str:
    parts = name.split(".")
    parts[2] = "0"
    return ".".join(parts)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--proj-dim", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8, help="rows per batch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--budgets-mb", type=float, nargs="+", default=[0, 128, 256, 512, 1024])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--per-module",
        action="store_true",
        help="one product per LoRA matrix and int8 signs only (the path before layer groups)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "speed" / "projection_budget.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shapes = llama3_8b_lora_shapes(args.layers)
    rows = [measure(shapes, args.proj_dim, b, args.batch, args.steps, device, args.per_module) for b in args.budgets_mb]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "layers": args.layers,
                "proj_dim": args.proj_dim,
                "batch": args.batch,
                "device": str(device),
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"{args.layers} layers, p = {args.proj_dim}, batch {args.batch}, {device}, {rows[0]['path']} path")
    print(
        "| budget (MB) | kept as | cached modules | cached share | cache (MB) | s / batch | rows / s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['budget_mb']:g} | {r['cache_kind']} | {r['cached_modules']}/{r['modules']} | "
            f"{r['cached_share']:.2f} | {r['cache_mb']:.0f} | "
            f"{r['seconds_per_batch']:.3f} | {r['rows_per_second']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
