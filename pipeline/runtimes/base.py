"""The one runner interface: every runtime (ExecuTorch, LiteRT, ONNX Runtime, eager PyTorch, ...) runs a model file
from named numpy inputs to one float32 output array, and is found by name in `RUNNERS`.

Inputs are always bound by name (runtimes reorder and rename them) and cast to the dtype the file declares
(LiteRT files often take int32 where PyTorch had int64). Thread settings live here too: each runtime takes
its thread count where it can (ExecuTorch's Python runtime only once per process, before the first program
loads).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.console import progress
from pipeline.core.errors import PipelineError
from pipeline.core.shapes import pad, too_long

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Runner:
    """A loaded model. `input_names`: the canonical names `run` reads from its inputs dict."""

    kind: str = ""
    input_names: list[str]
    path: Path
    # The shape contract of the loaded file (runners that know it set these): the longest input it takes, and
    # whether it takes exactly [1, max_length] (static: `run` pads shorter inputs) or any [1, S <= max_length].
    max_length: int | None = None
    static: bool | None = None

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def fit_length(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inputs` as the file takes them: a length above max_length is refused with a one-line PipelineError
        (never truncated), a shorter one padded for a static file, fed as is to a dynamic one."""
        length = int(np.asarray(next(iter(inputs.values()))).shape[-1])
        if self.max_length is not None and length > self.max_length:
            raise PipelineError(too_long(length, self.max_length), self.path)
        if self.static and self.max_length is not None and length < self.max_length:
            return pad(inputs, self.max_length)
        return inputs

    def signature(self) -> tuple[list[dict], list[dict]] | None:
        """What the loaded file declares: ([{"name", "shape", "dtype"} per input], [... per output]); a name or a
        dimension the runtime does not tell is None, -1 is a dynamic dimension. None: the runner cannot tell."""
        return None

    def time_run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out = self.run(inputs)
        return out, time.perf_counter() - started


RUNNERS: dict[str, Callable[..., Runner]] = {}


def register(kind: str):
    """Class decorator: `open_runner(path, kind, ...)` builds this class as `cls(path, input_names, num_threads)`."""

    def add(cls):
        cls.kind = kind
        RUNNERS[kind] = cls
        return cls

    return add


def canonical_input_name(name: str) -> str:
    """'serving_default_input_ids:0' / 'args_0' / 'input_ids' -> 'input_ids' where recognisable."""
    for known in INPUT_NAMES:
        if known in name:
            return known
    return name


def open_runner(path: Path, runtime: str, input_names: list[str] | None = None, num_threads: int = 2) -> Runner:
    """The runner named `runtime` with the model at `path` loaded (a file, or a folder for eager checkpoints).
    Every runner module has registered itself: importing this module runs pipeline/runtimes/__init__.py first."""
    path = Path(path)
    if runtime not in RUNNERS:
        raise PipelineError(f"unknown runtime {runtime!r}; known: {sorted(RUNNERS)}", path)
    if not path.exists():
        raise PipelineError("artifact file not found", path)
    return RUNNERS[runtime](path, list(input_names or INPUT_NAMES), num_threads)


def run_rows(runner: Runner, rows, desc: str = "run",
             on_row: Callable[[int, int, list[float]], None] | None = None) -> tuple[np.ndarray, list[float]]:
    """Every row of `rows` (an `Encoded`, or a list of inputs) through `runner`: stacked outputs, seconds each;
    `on_row(done, total, latencies)` after each row."""
    items = [rows.row(i) for i in range(len(rows))] if hasattr(rows, "row") else list(rows)
    if not items:
        raise PipelineError("no rows to run")
    outputs, latencies = [], []
    runner.run(items[0])  # warm-up
    for item in progress(items, desc=f"  {desc}", unit="row"):
        started = time.perf_counter()
        outputs.append(np.asarray(runner.run(item), dtype=np.float32).reshape(1, -1))
        latencies.append(time.perf_counter() - started)
        if on_row is not None:
            on_row(len(latencies), len(items), latencies)
    return np.concatenate(outputs), latencies


def check_signature(runner: Runner, inputs: list[dict], outputs: list[dict], max_length: int | None) -> None:
    """The loaded file against its manifest entry (`inputs`/`outputs`: {"name", "shape", "dtype"} each) and the
    folder's max_length, before anything is fed to it: another model's file (other inputs, another label count,
    another length) is one PipelineError naming what differs, not a native abort inside the runtime."""
    problems = []
    if max_length is not None and runner.max_length is not None and int(runner.max_length) != int(max_length):
        problems.append(f"it takes at most {runner.max_length} tokens, the folder's max_length is {max_length}")
    declared = runner.signature()
    if declared is not None:
        for kind, have, want in (("input", declared[0], inputs), ("output", declared[1], outputs)):
            if len(have) != len(want):
                problems.append(f"{len(have)} {kind}(s), the manifest entry lists {len(want)}")
                continue
            by_name = {canonical_input_name(str(h["name"])): h for h in have if h.get("name") is not None}
            for index, spec in enumerate(want):
                got = by_name.get(canonical_input_name(str(spec.get("name"))), have[index]) if kind == "input" \
                    else have[index]
                problems += _tensor_problems(kind, spec, got, max_length)
    if problems:
        raise PipelineError("not the model its manifest entry describes: " + "; ".join(dict.fromkeys(problems)), runner.path)


def _tensor_problems(kind: str, spec: dict, got: dict, max_length: int | None) -> list[str]:
    name = spec.get("name")
    problems = []
    if got.get("dtype") is not None and spec.get("dtype") not in (None, "string") and got["dtype"] != spec["dtype"]:
        problems.append(f"{kind} {name} is {got['dtype']}, the manifest says {spec['dtype']}")
    want, have = list(spec.get("shape") or []), got.get("shape")
    if have is None or spec.get("dtype") == "string":
        return problems
    have = list(have)
    if len(have) != len(want):
        problems.append(f"{kind} {name} has shape {have}, the manifest says {want}")
        return problems
    for w, h in zip(want, have):
        if h is None:
            continue
        if w == -1:  # a dynamic length: the file's bound (or -1) must be the folder's max_length
            if h != -1 and max_length is not None and h != max_length:
                problems.append(f"it takes at most {h} tokens, the folder's max_length is {max_length}")
        elif h != w and not (h == -1 and kind == "input"):
            problems.append(f"{kind} {name} has shape {have}, the manifest says {want}")
            break
    return problems
