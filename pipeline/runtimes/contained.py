"""Run model files where a crash is contained: a child process (pipeline/runtimes/worker.py) runs them one after
another, and a native abort, a segfault or a hang in a runtime ends only that child. The file it was running is
named with what happened; the child is started again for the files after it.

    outputs = run_contained([FileJob(artifact, rows), ...])          # {file name: FileOutputs}
    outputs = run_contained(jobs, Worker(prefix=qemu_command, ...))  # the same files under QEMU (ARM64)
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.artifact import Artifact
from pipeline.core.console import child_progress
from pipeline.core.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parents[2]
SECONDS_PER_ROW = 60.0  # a file is declared hung after this much per row (plus START_SECONDS): generous on purpose
START_SECONDS = 600.0
WITHOUT_DELEGATES = " [no XNNPACK]"


@dataclass
class FileJob:
    artifact: Artifact
    inputs: list[dict]  # one dict per run: input name -> array (or "text" -> str for MediaPipe files)
    # the folder's longest input: with the artifact's manifest inputs/outputs, what the loaded file is checked
    # against before it is fed (runtimes/base.py check_signature); None: not checked
    max_length: int | None = None
    delegates: bool = True  # False: a LiteRT file with its builtin kernels only (no XNNPACK), as some apps run it

    @property
    def key(self) -> str:
        """Its outputs' name in run_contained's result: the file's, or with WITHOUT_DELEGATES for a builtin run."""
        return self.artifact.file_name + ("" if self.delegates else WITHOUT_DELEGATES)


@dataclass
class FileOutputs:
    outputs: np.ndarray | None = None  # [rows, classes]
    latencies: list[float] = field(default_factory=list)
    error: str | None = None  # why the file gave no outputs: a runtime error, a crash, a time-out
    status: dict = field(default_factory=dict)  # timings; "builtin": outputs without the XNNPACK delegate


@dataclass
class Worker:
    """How the child is started: `prefix` runs a Python (this one, or an emulated aarch64 one)."""

    prefix: list[str] = field(default_factory=lambda: [sys.executable])
    env: dict[str, str] | None = None  # the child's whole environment (None: this process's, plus the repository)
    num_threads: int = 2
    litert_without_xnnpack: bool = False
    seconds_per_row: float = SECONDS_PER_ROW
    on_line: Callable[[str], None] | None = None  # the child's other output lines (e.g. emulator messages)
    info: dict = field(default_factory=dict)  # filled by run_contained: what the child reported about its CPU


def signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return {"SIGABRT": "SIGABRT (a native abort)", "SIGSEGV": "SIGSEGV (a segmentation fault)"}.get(name, name)


def _expected(job: FileJob) -> dict | None:
    if job.max_length is None:
        return None
    return {"inputs": [t.to_dict() for t in job.artifact.inputs], "outputs": [t.to_dict() for t in job.artifact.outputs],
            "max_length": int(job.max_length)}


def _environment(worker: Worker) -> tuple[dict[str, str], tuple[int, ...]]:
    env = dict(worker.env) if worker.env is not None else dict(os.environ)
    if worker.env is None:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        extra, fds = child_progress()
        env.update(extra)
        return env, fds
    return env, ()


def run_contained(jobs: list[FileJob], worker: Worker | None = None) -> dict[str, FileOutputs]:
    """Every job's file on its inputs in a child process, by job key; a file that crashed or hung gets an error, not
    outputs."""
    worker = worker or Worker()
    results: dict[str, FileOutputs] = {}
    if not jobs:
        return results
    env, fds = _environment(worker)
    with tempfile.TemporaryDirectory(prefix="pipeline-run-") as scratch:
        folder = Path(scratch)
        payload = {"num_threads": worker.num_threads, "litert_without_xnnpack": worker.litert_without_xnnpack,
                   "files": [{"name": j.artifact.file_name, "path": str(j.artifact.path.resolve()),
                              "runtime": j.artifact.runtime, "input_names": [t.name for t in j.artifact.inputs],
                              "inputs": j.inputs, "expect": _expected(j), "delegates": j.delegates} for j in jobs]}
        first = 0
        while first < len(jobs):
            payload["first"] = first
            (folder / "job.pkl").write_bytes(pickle.dumps(payload))
            crashed = _run_child(worker, folder, env, fds, jobs[first:], first)
            for index in range(first, len(jobs)):
                name = jobs[index].key
                if index == crashed[0]:
                    results[name] = FileOutputs(error=crashed[1])
                elif (folder / f"out_{index}.json").is_file():
                    results[name] = _read(folder, index)
            first = crashed[0] + 1 if crashed[0] is not None else len(jobs)
        info = folder / "worker.json"
        if info.is_file():
            worker.info.update(__import__("json").loads(info.read_text()))
    return results


def _run_child(worker: Worker, folder: Path, env: dict, fds: tuple[int, ...], jobs: list[FileJob],
               first: int) -> tuple[int | None, str]:
    """One child run from job `first` on: (index of the file it died on, what happened), or (None, "")."""
    running, started, any_started = None, time.monotonic(), False
    command = [*worker.prefix, "-m", "pipeline.runtimes.worker", str(folder)]
    limits = [START_SECONDS + worker.seconds_per_row * max(1, len(j.inputs)) for j in jobs]
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          cwd=folder, pass_fds=fds, start_new_session=True) as proc:
        deadline = started + sum(limits)
        try:
            for line in _lines(proc, lambda: deadline):
                if line.startswith("start "):
                    running, any_started = int(line.split()[1]), True
                    deadline = time.monotonic() + limits[running - first]
                elif line.startswith("done "):
                    running = None
                elif line.strip():
                    tail = (tail + [line.rstrip()])[-5:]
                    if worker.on_line is not None:
                        worker.on_line(line.rstrip())
            proc.wait()
        except TimeoutError:
            _kill(proc)
            return (running if running is not None else first), (
                f"no answer after {limits[(running or first) - first]:.0f} s: the runtime hung (killed)")
        except BaseException:
            _kill(proc)
            raise
    if proc.returncode == 0 and running is None:
        return None, ""
    what = signal_name(proc.returncode) if proc.returncode < 0 else f"exit status {proc.returncode}"
    last = next((l for l in reversed(tail) if l.strip()), "")
    if not any_started:  # no file was reached: the worker itself is broken, not a file
        raise PipelineError(f"the run worker could not start ({' '.join(worker.prefix[:1])}: {what}): {last[:300]}")
    where = running if running is not None else first
    return where, f"the runtime crashed: {what}" + (f" ({last[:200]})" if last else "")


def _lines(proc: subprocess.Popen, deadline: Callable[[], float]):
    """The child's stdout lines; TimeoutError once `deadline()` passes with no line finishing the file."""
    import selectors

    fd, pending = proc.stdout.fileno(), b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline() - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not selector.select(timeout=min(left, 5.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _read(folder: Path, index: int) -> FileOutputs:
    import json

    status = json.loads((folder / f"out_{index}.json").read_text())
    if "error" in status:
        return FileOutputs(error=status["error"], status=status)
    data = np.load(folder / f"out_{index}.npz")
    if "builtin" in data:
        status["builtin"] = data["builtin"]
    return FileOutputs(data["outputs"], data["latencies"].tolist(), None, status)
