#!/usr/bin/env bash
# The GPU measurements in one short run, for a GPU machine that has torch, transformers and peft but
# neither the packaged model nor `datasets` (random weights of named shapes, random token rows):
#   1. projection throughput against the sign-cache budget on Llama-3-8B's LoRA layout
#      (benchmarks/speed/projection_budget.py);
#   2. featurize and embed against a plain LoRA forward+backward and a LESS-style batch-of-one loop,
#      at SmolLM2-135M's shape (also at larger token budgets) and at Llama-3-8B's
#      (benchmarks/speed/featurize_speed.py).
# Each step has its own time limit, so one slow step still leaves the others' results. About eight
# minutes on an H200 (the sum of the steps' times measured on 2026-12-04: BENCHMARKS.md, "On a GPU").
# Results go to $RESULTS (default benchmarks/results/speed/gpu), one JSON per step and log.txt; copy them
# into benchmarks/results/speed/gpu, docs/benchmarks/speed.md and BENCHMARKS.md.
#
#   bash benchmarks/speed/gpu_check.sh            # from the repository root
set -uo pipefail
RESULTS=${RESULTS:-benchmarks/results/speed/gpu}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee -a "$RESULTS/log.txt") 2>&1

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'cuda', torch.cuda.is_available())" || exit 1

echo "== projection budget (Llama-3-8B LoRA layout, p = 8192)"
timeout 120 $PY -m benchmarks.speed.projection_budget --device cuda --budgets-mb 0 256 1024 4096 --steps 5 \
    --out "$RESULTS/projection_budget_gpu.json"

echo "== featurize speed, SmolLM2-135M shape (random weights, bf16)"
timeout 150 $PY -m benchmarks.speed.featurize_speed --random-config smollm2-135m --no-demo --lengths 128 256 --rows 64 \
    --repeats 2 --json "$RESULTS/featurize_speed_gpu_smollm2.json"

echo "== featurize speed, SmolLM2-135M shape, larger token budgets (batches of 8 are overhead-bound there)"
for budget in 8192 16384; do
  timeout 100 $PY -m benchmarks.speed.featurize_speed --random-config smollm2-135m --no-demo --lengths 256 --rows 64 \
      --repeats 2 --token-budget "$budget" --json "$RESULTS/featurize_speed_gpu_smollm2_budget$budget.json"
done

echo "== featurize speed, Llama-3-8B shape (random weights, bf16)"
timeout 200 $PY -m benchmarks.speed.featurize_speed --random-config llama3-8b --no-demo --lengths 256 --rows 64 \
    --repeats 2 --json "$RESULTS/featurize_speed_gpu_llama3_8b.json"
date -u
