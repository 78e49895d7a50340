"""The child process that runs model files: every file of a job through `open_runner`, one after another.

    python -m pipeline.runtimes.worker JOB_DIR                                        (x86: pipeline/runtimes/contained.py)
    qemu-aarch64 -cpu PROFILE -L SYSROOT SYSROOT/usr/bin/python3.11 -m pipeline.runtimes.worker JOB_DIR  (ARM64)

JOB_DIR/job.pkl: {"num_threads": int, "litert_without_xnnpack": bool,
                  "files": [{"name", "path", "runtime", "input_names", "inputs": [row dict | text, ...],
                             "expect": None | {"inputs", "outputs", "max_length"} (the manifest entry's),
                             "delegates": False for LiteRT's builtin kernels only}]}
For file i it prints `start i` before loading it, writes JOB_DIR/out_<i>.npz (outputs, latencies[, builtin]) and
JOB_DIR/out_<i>.json (error or timings), then prints `done i`. A native abort or a hang in a runtime ends only
this process: the host sees which file was running and names it (contained.py).

Imports nothing but numpy and pipeline.runtimes (pure Python until a runner loads its runtime): it also runs inside
the emulated aarch64 CPython, where only numpy and the runtimes are installed.
"""
from __future__ import annotations

import ctypes
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.core.console import active, attach_from_env
from pipeline.core.errors import PipelineError
from pipeline.runtimes import open_runner, run_rows
from pipeline.runtimes.base import check_signature
from pipeline.runtimes.litert import LiteRTRunner

# AT_HWCAP / AT_HWCAP2 bits of arch/arm64/include/uapi/asm/hwcap.h that select XNNPACK's / LiteRT's int8 kernels
HWCAP = {"asimddp": 1 << 20, "sve": 1 << 22}
HWCAP2 = {"sve2": 1 << 1, "i8mm": 1 << 13, "bf16": 1 << 14, "sme": 1 << 23}


def hwcaps() -> list[str]:
    """The aarch64 CPU features the kernel reports (empty on x86)."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        hw, hw2 = getauxval(16), getauxval(26)
    except (OSError, AttributeError):
        return ["unknown"]
    return [n for n, bit in HWCAP.items() if hw & bit] + [n for n, bit in HWCAP2.items() if hw2 & bit]


def without_xnnpack(path: Path, num_threads: int, input_names: list[str] | None = None):
    """A LiteRT runner for `path` with the builtin kernels only (no XNNPACK delegate)."""
    return LiteRTRunner(path, input_names, num_threads, delegates=False)


def say_progress(name: str):
    """Progress lines on stdout (for the host's log) when no console of the parent draws bars: a quarter at a time."""
    if active() is not None:
        return None

    def say(done: int, total: int, latencies: list[float]) -> None:
        if done % max(1, total // 4) == 0 or done == total:
            print(f"worker: {name}: {done}/{total} rows, {float(np.median(latencies)):.2f} s/row", flush=True)

    return say


def run_file(spec: dict, job: dict, out: Path) -> dict:
    """One file: outputs into `out`.npz; returns its status (timings, or the error that stopped it)."""
    status: dict = {"name": spec["name"]}
    t0, c0 = time.perf_counter(), time.process_time()
    threads = job.get("num_threads", 2)
    try:
        if spec.get("delegates", True):
            runner = open_runner(Path(spec["path"]), spec["runtime"], spec["input_names"], threads)
        else:
            runner = without_xnnpack(Path(spec["path"]), threads, spec["input_names"])
        status["load_s"] = round(time.perf_counter() - t0, 2)
        expect = spec.get("expect")
        if expect:  # another model's file is refused here, before a row can make its runtime abort
            check_signature(runner, expect["inputs"], expect["outputs"], expect["max_length"])
        outputs, latencies = run_rows(runner, spec["inputs"], spec["name"], say_progress(spec["name"]))
        arrays = {"outputs": outputs, "latencies": np.asarray(latencies)}
        if job.get("litert_without_xnnpack") and spec["runtime"] == "litert":
            arrays["builtin"] = run_rows(without_xnnpack(Path(spec["path"]), threads), spec["inputs"])[0]
        np.savez(out.with_suffix(".npz"), **arrays)
    except PipelineError as err:  # the host names the file: the message alone when it is about this file
        status["error"] = err.message if err.path is not None and str(err.path) == str(spec["path"]) else str(err)
    except Exception as err:  # a runtime that loads but cannot run the file: reported, never skipped
        status["error"] = f"{spec['runtime']} cannot run it ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})"
    status["seconds"] = round(time.perf_counter() - t0, 1)
    status["cpu_seconds"] = round(time.process_time() - c0, 1)  # load, warm-up and rows: the load-free cost
    return status


def main(job_dir: str) -> int:
    attach_from_env()  # progress bars on the parent's console, when it passed its descriptors
    folder = Path(job_dir)
    job = pickle.loads((folder / "job.pkl").read_bytes())
    (folder / "worker.json").write_text(json.dumps({"hwcaps": hwcaps(), "machine": __import__("platform").machine(),
                                                    "startup_cpu_seconds": round(time.process_time(), 1)}))
    first = job.get("first", 0)
    for index, spec in enumerate(job["files"]):
        if index < first:
            continue
        print(f"start {index}", flush=True)
        status = run_file(spec, job, folder / f"out_{index}")
        (folder / f"out_{index}.json").write_text(json.dumps(status))
        print(f"done {index}" + (f" error {status['error'][:200]}" if "error" in status else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
