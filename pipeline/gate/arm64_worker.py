"""Runs INSIDE the emulated aarch64 CPython 3.11 (QEMU user-mode): every artifact of a job through the project's own
runners (pipeline.runtimes: the aarch64 executorch.runtime and LiteRT interpreter), logits into an .npz.

    qemu-aarch64-static -cpu PROFILE -L SYSROOT SYSROOT/usr/bin/python3.11 -m pipeline.gate.arm64_worker JOB.json

JOB.json: {"inputs": "in.npz" (one [rows, L] array per input name), "output": "out.npz", "num_threads": 2,
           "artifacts": [{"name", "path", "runtime", "input_names"}]}
Writes out.npz (logits_<i>, latency_<i>) and out.json (per artifact: error or timing; the CPU's HWCAPs).
Imports nothing but numpy and pipeline.runtimes/pipeline.errors (pure Python): no torch.export, no tokenizer.
"""
from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

# AT_HWCAP / AT_HWCAP2 bits of arch/arm64/include/uapi/asm/hwcap.h that select XNNPACK's / LiteRT's int8 kernels
HWCAP = {"asimddp": 1 << 20, "sve": 1 << 22}
HWCAP2 = {"sve2": 1 << 1, "i8mm": 1 << 13, "bf16": 1 << 14, "sme": 1 << 23}


def hwcaps() -> list[str]:
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        hw, hw2 = getauxval(16), getauxval(26)
    except (OSError, AttributeError):
        return ["unknown"]
    return [n for n, bit in HWCAP.items() if hw & bit] + [n for n, bit in HWCAP2.items() if hw2 & bit]


def without_xnnpack(runner, path: Path, num_threads: int) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner._interpreter, runner._runner = interpreter, interpreter.get_signature_runner()


def say(message: str) -> None:
    print(message, flush=True)


def main(job_path: str) -> int:
    started = time.perf_counter()
    job = json.loads(Path(job_path).read_text())
    from pipeline.errors import PipelineError
    from pipeline.runtimes import open_runner

    inputs = dict(np.load(job["inputs"]))
    rows = len(next(iter(inputs.values())))
    status = {"hwcaps": hwcaps(), "machine": __import__("platform").machine(), "artifacts": []}
    status["startup_cpu_seconds"] = round(time.process_time(), 1)
    say(f"worker: aarch64 python up, HWCAPs {' '.join(status['hwcaps'])}, {rows} rows")
    arrays = {}
    for index, spec in enumerate(job["artifacts"]):
        entry = {"name": spec["name"]}
        status["artifacts"].append(entry)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            runner = open_runner(Path(spec["path"]), spec["runtime"], spec["input_names"], job.get("num_threads", 2))
            entry["load_s"] = round(time.perf_counter() - t0, 2)
            row = lambda i: {n: a[i:i + 1] for n, a in inputs.items()}  # noqa: E731
            runner.run(row(0))  # warm-up, as the x86 gate
            outputs, latencies = [], []
            for i in range(rows):
                t1 = time.perf_counter()
                outputs.append(runner.run(row(i)))
                latencies.append(time.perf_counter() - t1)
                if (i + 1) % max(1, rows // 4) == 0 or i + 1 == rows:
                    say(f"worker: {spec['name']}: {i + 1}/{rows} rows, {np.median(latencies):.2f} s/row")
            arrays[f"logits_{index}"] = np.concatenate(outputs).reshape(rows, -1).astype(np.float32)
            arrays[f"latency_{index}"] = np.asarray(latencies)
            if job.get("litert_without_xnnpack") and spec["runtime"] == "litert":
                # the same file with LiteRT's builtin kernels only (no XNNPACK delegate): separates XNNPACK's
                # ISA-specific kernels (e.g. SME) from the rest of the runtime
                without_xnnpack(runner, Path(spec["path"]), job.get("num_threads", 2))
                arrays[f"builtin_{index}"] = np.concatenate([runner.run(row(i)) for i in range(rows)]).reshape(rows, -1)
                say(f"worker: {spec['name']}: {rows} rows again without the XNNPACK delegate")
        except PipelineError as err:
            entry["error"] = str(err)
        except Exception as err:  # a runtime that loads but cannot run the file: reported, never skipped
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        entry["cpu_seconds"] = round(time.process_time() - c0, 1)  # load, warm-up and rows: the load-free cost
        if "error" in entry:
            say(f"worker: {spec['name']}: ERROR {entry['error']}")
    np.savez(job["output"], **arrays)
    status["seconds"] = round(time.perf_counter() - started, 1)
    Path(job["output"]).with_suffix(".json").write_text(json.dumps(status, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
