"""Bench workers: each job (latency, lengths, memory, profile) runs in a fresh interpreter, so that every runtime's thread
count is set before anything loads (ExecuTorch's only once per process) and peak memory is the candidate's own.

    python -m pipeline.bench.worker JOB.json      (run_worker starts it)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.bench.candidates import INPUT_NAMES
from pipeline.bench.lengths import sweep_worker
from pipeline.bench.profile import profile_executorch, profile_ort
from pipeline.core.console import attach_from_env, child_progress, progress
from pipeline.core.errors import PipelineError
from pipeline.runtimes import open_runner, set_threads
from pipeline.runtimes.contained import signal_name

Log = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[2]
IDLE_GAP_S = 0.05  # between timed calls: lets spinning thread pools (ONNX Runtime, OpenMP) park; 3 ms was too short
MEMORY_RUNS = 5
WORKER_TIMEOUT_S = 3600
PROFILE_RUNS = 10
# bench's candidate kinds -> the runtime layer's runner names
RUNNER_OF_KIND = {"executorch": "executorch", "litert": "litert", "ort": "onnxruntime", "torch-hf": "torch-hf",
                  "torch-export": "torch-export"}


def run_worker(job: dict, scratch: Path, log: Log) -> dict:
    """Run one job in a fresh interpreter; its result comes back through a JSON file."""
    job_path = Path(tempfile.mkstemp(dir=scratch, prefix="job-", suffix=".json")[1])
    result_path = job_path.with_suffix(".result.json")
    job["result_path"] = str(result_path)
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    threads = str(job["threads"])
    env["OMP_NUM_THREADS"] = threads  # torch's OpenMP pool; torch.set_num_threads is called as well
    progress_env, progress_fds = child_progress()  # the worker's rounds show progress on this console
    env.update(progress_env)
    began = time.perf_counter()
    names = ", ".join(c["name"] for c in job["candidates"])[:200]
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline.bench.worker", str(job_path)], env=env,
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, pass_fds=progress_fds)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"bench worker ({job['mode']}) gave no result after {WORKER_TIMEOUT_S} s (killed); "
                            f"running: {names}") from None
    if proc.returncode != 0 or not result_path.is_file():
        tail = " | ".join(line for line in (proc.stderr or "").strip().splitlines()[-3:])
        what = signal_name(proc.returncode) if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise PipelineError(f"bench worker ({job['mode']}) failed with {what} running {names}: {tail[-600:]}")
    log(f"  worker {job['mode']} ({', '.join(c['name'] for c in job['candidates'])[:80]}): "
        f"{time.perf_counter() - began:.1f} s")
    return json.loads(result_path.read_text())


def summarize(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4),
            "max_ms": round(float(ms.max()), 4), "runs": int(ms.size)}




def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class _PeakMeter:
    """Peak RSS since `start()`: the kernel's VmHWM after resetting it (clear_refs 5), else a sampling thread."""

    def start(self) -> None:
        import gc

        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs"
            self.baseline_kb = _status_kb("VmRSS")
            self._thread = None
        except OSError:
            import threading

            import psutil

            self.method = "psutil RSS sampled every 1 ms"
            proc = psutil.Process()
            self.baseline_kb = proc.memory_info().rss // 1024
            self._peak = self.baseline_kb
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss // 1024)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()

    def stop(self) -> tuple[float, float]:
        if self._thread is None:
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        return (peak - self.baseline_kb) / 1024.0, self.baseline_kb / 1024.0




def _open_all(candidates: list[dict], threads: int) -> tuple[dict, dict]:
    runners, load_ms = {}, {}
    for c in candidates:
        began = time.perf_counter()
        runners[c["name"]] = open_runner(Path(c["path"]), RUNNER_OF_KIND[c["kind"]], c["input_names"], threads)
        load_ms[c["name"]] = (time.perf_counter() - began) * 1000
    return runners, load_ms


def _preload(kinds: set[str], threads: int) -> None:
    """Every thread knob set (the runtime layer) and every runtime imported before the memory baseline is read."""
    set_threads({RUNNER_OF_KIND[k] for k in kinds}, threads)
    if "executorch" in kinds:
        import executorch.kernels.quantized  # noqa: F401
        import executorch.runtime  # noqa: F401
    if kinds & {"torch-hf", "torch-export"}:
        from transformers import AlbertConfig, AlbertForSequenceClassification  # noqa: F401  (lazy modules)

        from pipeline.model import albert, checkpoint  # noqa: F401
    if "litert" in kinds:
        import ai_edge_litert.interpreter  # noqa: F401
    if "ort" in kinds:
        import onnxruntime  # noqa: F401


def _inputs(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    n = len(data["input_ids"])
    return [{k: np.ascontiguousarray(data[k][i : i + 1]) for k in INPUT_NAMES} for i in range(n)]


def worker(job: dict) -> dict:
    threads = int(job["threads"])
    candidates = job["candidates"]
    rows = _inputs(job["inputs"])
    _preload({c["kind"] for c in candidates}, threads)
    if job["mode"] == "memory":
        meter = _PeakMeter()
        meter.start()
        runners, _ = _open_all(candidates, threads)
        for i in range(MEMORY_RUNS):
            for runner in runners.values():
                runner.run(rows[i % len(rows)])
        peak, baseline = meter.stop()
        return {"peak_delta_mb": round(peak, 2), "baseline_mb": round(baseline, 1), "method": meter.method}

    if job["mode"] == "lengths":  # latency against length and the workload, every file in this one process
        runners, _ = _open_all(candidates, threads)
        return sweep_worker(job, runners, IDLE_GAP_S if threads > 1 else 0.0)

    if job["mode"] == "profile":
        scratch = Path(tempfile.mkdtemp(prefix="profile-", dir=Path(job["result_path"]).parent))
        return {c["name"]: (profile_executorch(c, rows, scratch) if c["kind"] == "executorch"
                            else profile_ort(c, rows, threads, scratch)) for c in candidates}

    runners, load_ms = _open_all(candidates, threads)
    names = [c["name"] for c in candidates]
    # Sanity: every candidate computes the same function (a wrong input binding would show here).
    outputs = {n: np.asarray(runners[n].run(rows[0]), dtype=np.float32).reshape(-1) for n in names}
    reference = next((outputs[c["name"]] for c in candidates if c["kind"] == "torch-export"), outputs[names[0]])
    for i in range(int(job["warmup"])):
        for name in names:
            runners[name].run(rows[i % len(rows)])
    latencies: dict[str, list[float]] = {n: [] for n in names}
    for r in progress(range(int(job["runs"])), desc=f"bench rounds, {threads} thread(s)", unit="round"):
        row = rows[r % len(rows)]
        shift = r % len(names)  # rotate who goes first: no candidate always follows the same neighbour
        for name in names[shift:] + names[:shift]:
            runner = runners[name]
            time.sleep(IDLE_GAP_S)
            began = time.perf_counter()
            runner.run(row)
            latencies[name].append(time.perf_counter() - began)
    return {n: {"latencies_s": latencies[n], "load_ms": round(load_ms[n], 2),
                "max_abs_diff_vs_export_model": round(float(np.abs(outputs[n] - reference).max()), 6)} for n in names}


def _worker_main(job_path: str) -> None:
    attach_from_env()
    job = json.loads(Path(job_path).read_text())
    result = worker(job)
    Path(job["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
