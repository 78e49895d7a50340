"""Runs INSIDE the emulated aarch64 CPython 3.11, under QEMU with the project's instruction-counting plugin
(cost_plugin.c): one inference at a time between markers, so the plugin's counts of the instructions between two
markers are the cost of exactly that inference.

    qemu-aarch64 -plugin cost_plugin.so,out=MARKS -cpu CPU -L SYSROOT SYSROOT/usr/bin/python3.11 \
        -m pipeline.verify.arm64.cost_worker JOB.json

JOB.json: {"inputs": "in.npz" (per length L: ids_<L>, mask_<L>, types_<L>, each [1, L]),
           "steady_runs": 2,
           "files": [{"name", "path", "runtime", "input_names", "static_length": int | null, "max_length": int | null}],
           "lengths": [16, 64, "max"]}
Writes <JOB>.out.json: the marker plan (which marker numbers enclose which inference) and, per file, the lengths
it was counted at or why it was not, the guest CPU's HWCAPs. Imports nothing but numpy, pipeline.runtimes,
pipeline.core.shapes and runtimes.worker.hwcaps (pure Python).

Marker k is `os.close(MARKER_BASE + k)`: a syscall on a descriptor that cannot exist (EBADF), which the plugin
records with the number of instructions executed so far. Per (file, length), the worker loads the file afresh and
marks around the first inference after loading and around `steady_runs` further ones. Before any of that, every
file is loaded and run once at its shortest length, unmarked: process-wide one-time set-up (lazy kernel tables,
thread-pool creation, lazily bound library symbols) is paid there, so a file's "first" does not depend on which files
were counted before it in the same process. Python's garbage collector is off while counting (a collection
would land in whichever inference crossed its allocation threshold).
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.shapes import pad
from pipeline.runtimes import open_runner, set_threads
from pipeline.runtimes.worker import hwcaps

MARKER_BASE = 0x51C00000  # the plugin's MARKER_MAGIC
NUM_THREADS = 1  # the counter is shared by all threads: counting is exact for one


class Markers:
    def __init__(self):
        self.next = 0

    def __call__(self) -> int:
        k = self.next
        self.next += 1
        try:
            os.close(MARKER_BASE + k)
        except OSError:
            pass
        return k


def say(message: str) -> None:
    print(f"worker: {message}", flush=True)


def resolve_lengths(requested: list, max_length: int) -> list[int]:
    """Requested lengths ("max" = the file's max_length) that the file takes, deduplicated, in order."""
    out = []
    for length in requested:
        value = max_length if length == "max" else int(length)
        if 1 <= value <= max_length and value not in out:
            out.append(value)
    return out


def native_calls(runner, x: dict[str, np.ndarray]):
    """(first, steady, output) for one inference of `x` through the runtime's own entry point, with the project
    runner's Python (name binding, dtype casts, output conversion) done beforehand: what is counted is what an app's
    call into the runtime costs.
        ExecuTorch  Method.execute(inputs) for both (memory was planned and the delegate prepared at load time)
        LiteRT      first: AllocateTensors (tensor planning for this length, the XNNPACK delegate's set-up:
                    LiteRT applies it lazily) + SetTensor per input + Invoke; steady: Invoke
    (inputs stay set between invocations)."""
    if runner.kind == "executorch":
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(x[n], dtype=np.int64)) for n in runner.input_names]
        method = runner._method
        result = []

        def execute():
            result[:] = method.execute(args)

        return execute, execute, lambda: result[0].numpy().astype(np.float32)
    if runner.kind == "litert":
        # the signature runner's own interpreter wrapper and subgraph (Interpreter.invoke() refuses to run while a
        # signature runner holds the wrapper); inputs by tensor index, as the signature runner binds them
        signature = runner._runner
        wrapper, subgraph = signature._interpreter_wrapper, signature._subgraph_index
        feed = [(signature._inputs[name], np.ascontiguousarray(x[canonical], dtype=runner._inputs[name]["dtype"]))
                for canonical, name in runner._by_canonical.items()]
        for index, value in feed:  # bookkeeping only: the work of a new length happens in AllocateTensors
            wrapper.ResizeInputTensor(index, np.asarray(value.shape, dtype=np.int32), False, subgraph)
        out_name, out_index = next(iter(signature._outputs))
        detail = runner._outputs[out_name]

        def first():
            wrapper.AllocateTensors(subgraph)
            for index, value in feed:
                wrapper.SetTensor(index, value, subgraph)
            wrapper.Invoke(subgraph)

        def invoke():
            wrapper.Invoke(subgraph)

        def read():
            out = wrapper.GetTensor(out_index, subgraph)
            if out.dtype in (np.int8, np.uint8):
                scale, zero = detail["quantization"]
                out = (out.astype(np.float32) - zero) * scale
            return out.astype(np.float32)

        return first, invoke, read
    raise RuntimeError(f"no counted entry point for runtime {runner.kind!r}")


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())

    if any(spec["runtime"] == "executorch" for spec in job["files"]):  # (imports torch: only when needed)
        set_threads({"executorch"}, NUM_THREADS)  # before any program loads (ExecuTorch allows it only then)
    arrays = dict(np.load(job["inputs"]))
    rows = {int(k.split("_", 1)[1]): None for k in arrays if k.startswith("ids_")}
    for length in rows:
        rows[length] = {"input_ids": arrays[f"ids_{length}"], "attention_mask": arrays[f"mask_{length}"],
                        "token_type_ids": arrays[f"types_{length}"]}
    steady_runs = int(job.get("steady_runs", 2))
    mark = Markers()
    plan, files = [], {}

    def feed(spec: dict, length: int) -> dict:
        row = rows[length]
        static = spec.get("static_length")
        if static and length < static:  # a static file takes [1, static]: padded as apps pad (shapes.pad)
            row = pad(row, static)
        return {n: row[n] for n in spec["input_names"] if n in row}

    def load(spec: dict):
        return open_runner(Path(spec["path"]), spec["runtime"], spec["input_names"], NUM_THREADS)

    # warm-up: every file once, unmarked (process-wide one-time costs are not any file's "first")
    ready = []
    for spec in job["files"]:
        entry = files.setdefault(spec["name"], {"lengths": [], "error": None})
        try:
            runner = load(spec)
            max_length = int(spec.get("static_length") or spec.get("max_length") or runner.max_length or max(rows))
            entry["max_length"] = max_length
            entry["lengths"] = resolve_lengths(job["lengths"], max_length)
            missing = [n for n in entry["lengths"] if n not in rows]
            if missing:
                raise PipelineError(f"no input row of length {missing}")
            if not entry["lengths"]:
                entry["error"] = f"none of the lengths {job['lengths']} fits max_length {max_length}"
                continue
            runner.run(feed(spec, min(entry["lengths"])))
            del runner
            ready.append(spec)
        except PipelineError as err:
            entry["error"] = str(err)
        except Exception as err:  # a runtime that cannot load or run the file: reported, never skipped silently
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        if entry["error"]:
            say(f"{spec['name']}: ERROR {entry['error']}")
    say(f"warm-up done ({len(ready)} of {len(job['files'])} files)")

    for spec in ready:
        entry = files[spec["name"]]
        for position, length in enumerate(entry["lengths"]):
            x = feed(spec, length)
            try:
                runner = load(spec)
                first_call, call, output = native_calls(runner, x)
                gc.collect()
                gc.disable()
                first = (mark(), None)
                first_call()
                first = (first[0], mark())
                steady = []
                start = first[1]
                for _ in range(steady_runs):
                    call()
                    end = mark()
                    steady.append((start, end))
                    start = end
                gc.enable()
                if position == 0:  # the native calls computed the runner's result (checked once per file)
                    expected = runner.run(x)
                    got = output()
                    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
                        raise RuntimeError(f"the counted call's output {got.ravel()[:4]} differs from the runner's "
                                           f"{expected.ravel()[:4]}")
                del runner
            except Exception as err:
                gc.enable()
                entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                say(f"{spec['name']}: ERROR at {length} tokens: {entry['error']}")
                break
            plan.append({"file": spec["name"], "length": length, "fed_length": int(next(iter(x.values())).shape[1]),
                         "first": list(first), "steady": [list(s) for s in steady]})
            say(f"{spec['name']}: {length} tokens counted")
    # two markers back to back: what a marker itself costs (reported, not subtracted)
    gc.disable()
    empty = [mark(), mark(), mark()]
    gc.enable()

    out = {"plan": plan, "files": files, "empty": [[empty[0], empty[1]], [empty[1], empty[2]]],
           "markers": mark.next, "num_threads": NUM_THREADS, "hwcaps": hwcaps()}
    Path(job_path).with_suffix(".out.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
