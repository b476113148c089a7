"""Operator profile of featurize on fixed-length rows: where the time goes (matmuls vs the rest).

    .venv/bin/python benchmarks/featurize_profile.py [LENGTH]   # default 128 tokens, 16 rows

Packaged SmolLM2-135M-Instruct, LoRA r=8 on q/k/v/o with random non-zero B, p = 8192, default
token budget; prints rows/s and the torch.profiler table sorted by self CPU time.
"""

from __future__ import annotations

import sys
import time

from featurize_speed import fixed_rows
from peft import get_peft_model
from torch.profiler import ProfilerActivity, profile

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig
from ntk_selector.features.budget import resolve_setting
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.tokens import collate, plan_batches
from ntk_selector.model.loading import load_base_model, lora_config


def main() -> None:
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    data_cfg = DataConfig()
    base, tok = load_base_model(ModelConfig())
    lcfg = lora_config(LoraSettings())
    lcfg.init_lora_weights = False  # non-zero B, like a warmed adapter
    model = get_peft_model(base, lcfg)
    model.eval()
    rows = fixed_rows(16, length, tok.vocab_size, length)
    batches = [
        collate([rows[i] for i in idx], tok.pad_token_id)
        for idx in plan_batches(
            [r.length for r in rows], resolve_setting(data_cfg.token_budget), data_cfg.max_batch_size
        )
    ]
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


if __name__ == "__main__":
    main()
