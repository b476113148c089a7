#!/usr/bin/env bash
# Background driver: resume the downstream benchmark until it finishes (up to 20 restarts after a crash).
cd "$(dirname "$0")/../../.."
for attempt in $(seq 1 20); do
  .venv/bin/python -m benchmarks.quality.downstream.downstream --commit-every 3 && exit 0
  echo "[driver] attempt $attempt failed; resuming in 60 s"
  sleep 60
done
