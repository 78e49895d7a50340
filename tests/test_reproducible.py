"""Two cold builds of the same inputs on one machine give byte-identical files.

Measured before the fix: two `--no-cache` builds in two processes wrote int8 .pte files that differed in 240 bytes
(tiny model) / 1,874 bytes (default model): ExecuTorch serializes the int8 program's quantization scales in
set-iteration order, which follows Python's per-process str hash seed. The CLI now runs with a fixed
PYTHONHASHSEED (pipeline/cli.py); the builds here run with none set in their environment, as a user's would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny import write_review_data, write_tiny_albert

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"stage_seconds", "latency_ms", "median_ms", "p90_ms", "mean_ms"}


def _cold_build(root: Path, model: Path, data: Path, name: str) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PIPELINE_LOCAL_INDEX": str(root / "index.json")})
    result = subprocess.run([sys.executable, "-m", "pipeline", "build", "--model", str(model), "--out", str(root / name),
                             "--max-length", "32", "--eval-data", str(data), "--runtimes", "executorch",
                             "--no-copy-to-apps", "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root / name / "android"


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS and "latenc" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_two_cold_builds_write_byte_identical_artifacts(tmp_path):
    model = write_tiny_albert(tmp_path / "model", vocab_size=30000, embedding_size=128, hidden_size=64,
                              num_hidden_layers=2, intermediate_size=128)
    data = write_review_data(tmp_path / "eval.csv", count=8)
    first, second = (_cold_build(tmp_path, model, data, name) for name in ("one", "two"))
    manifest = json.loads((first / "manifest.json").read_text())
    shipped = [f["path"] for f in manifest["files"] + manifest["assets"]]
    assert any(p.endswith(".int8.pte") for p in shipped) and any(p.endswith(".fp32.pte") for p in shipped)
    differ = [p for p in shipped if (first / p).read_bytes() != (second / p).read_bytes()]
    assert not differ, differ
    other = json.loads((second / "manifest.json").read_text())
    assert _without_timings(manifest) == _without_timings(other)
