"""Op-level profiles with each runtime's own profiler: ExecuTorch's ETDump (XNNPACK's per-operator events) for
.pte files, ONNX Runtime's node profile for .onnx files. LiteRT's Python interpreter has none."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.runtimes.onnxruntime import OnnxRuntimeRunner

PROFILE_RUNS = 10
PROFILE_WARMUP = 3
# Op groups of the profile summary, matched on the runtime's op names (XNNPACK via ETDump, ONNX Runtime node types).
OP_GROUPS = (("matrix multiply", ("fully connected", "matrix multiply", "matmul", "gemm")),
             ("(de)quantize", ("convert", "quantize")))
ETDUMP_WRAPPERS = {"Method::execute", "Method::init", "Program::load_method", "OPERATOR_CALL", "DELEGATE_CALL"}


def op_group(op: str) -> str:
    lowered = op.lower()
    return next((group for group, words in OP_GROUPS if any(w in lowered for w in words)), "other")


def _op_summary(per_op_ms: dict[str, float], total_ms: float) -> dict:
    groups: dict[str, float] = {}
    for op, ms in per_op_ms.items():
        group = op_group(op)
        groups[group] = groups.get(group, 0.0) + ms
    ops = sorted(per_op_ms.items(), key=lambda kv: -kv[1])
    return {"run_ms": round(total_ms, 3), "ops_ms": round(sum(per_op_ms.values()), 3),
            "groups_ms": {g: round(ms, 3) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": op, "ms": round(ms, 3), "share": round(ms / total_ms, 4) if total_ms else None}
                        for op, ms in ops[:8]]}


def profile_executorch(candidate: dict, rows: list[dict[str, np.ndarray]], scratch: Path) -> dict:
    """XNNPACK's per-operator times from an ETDump of PROFILE_RUNS runs (median per op instance, summed per op type)."""
    import re
    import warnings

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch(candidate["path"], enable_etdump=True, debug_buffer_size=0)
    names = candidate["input_names"]
    for i in range(PROFILE_WARMUP + PROFILE_RUNS):
        row = rows[i % len(rows)]
        module.forward([torch.from_numpy(np.ascontiguousarray(row[n], dtype=np.int64)) for n in names])
    etdump = scratch / "profile.etdp"
    module.write_etdump_result_to_file(str(etdump))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no tensor data was asked for
        inspector = Inspector(etdump_path=str(etdump))
    per_op: dict[str, float] = {}
    total = 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None:
                continue
            median = float(np.median(event.perf_data.raw[-PROFILE_RUNS:]))
            if event.name == "Method::execute":
                total += median
            elif event.name not in ETDUMP_WRAPPERS:
                op = re.sub(r" #\d+$", "", event.name)
                op = f"{op[len('native_call_'):]} (portable kernel)" if op.startswith("native_call_") else op
                per_op[op] = per_op.get(op, 0.0) + median
    return _op_summary(per_op, total)


def profile_ort(candidate: dict, rows: list[dict[str, np.ndarray]], threads: int, scratch: Path) -> dict:
    """ONNX Runtime's node profile (enable_profiling) of the last PROFILE_RUNS runs, summed per op type."""
    runner = OnnxRuntimeRunner(Path(candidate["path"]), candidate["input_names"], threads,
                               profile_prefix=str(scratch / "ort-profile"))
    for i in range(PROFILE_WARMUP + PROFILE_RUNS):
        runner.run(rows[i % len(rows)])
    events = json.loads(Path(runner.session.end_profiling()).read_text())
    run_windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-PROFILE_RUNS:]
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= e["ts"] <= end for start, end in run_windows):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0 / len(run_windows)
    total = float(np.median([end - start for start, end in run_windows])) / 1000.0
    return _op_summary(per_op, total)


