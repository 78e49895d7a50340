"""One shape for every stage, and one function that runs any stage through the cache.

A `Stage` is a name, the inputs its output depends on (JSON-able: they make the cache key, together with
the versions of the tools that build artifacts — added here, once, not by each stage), a `run` that makes
the output, and a codec that stores the output in a cache entry and restores it. `run_cached` is the only
place that talks to the cache:

    value = run_cached(Stage("reference", [model_hash, ids], lambda: compute(...), ARRAY), ctx)

A new artifact kind is a new stage (a function returning a Stage) and one line in `build()`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar

import numpy as np

from pipeline.core.artifact import Artifact
from pipeline.core.cache import StageCache, content_key

T = TypeVar("T")
Log = Callable[[str], None]

# Packages whose versions are recorded in every manifest and enter every stage's cache key.
VERSION_PACKAGES = ("torch", "executorch", "torchao", "transformers", "tokenizers", "numpy", "onnx", "onnxruntime",
                    "onnxscript", "onnxslim", "onnx2tf", "tensorflow", "ai-edge-litert", "litert-torch", "sentencepiece",
                    "mediapipe")


@functools.cache
def tool_versions() -> dict[str, str]:
    versions = {}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Codec(Protocol[T]):
    def encode(self, value: T, scratch: Path) -> tuple[dict[str, Path], dict]:
        """(files to store by name, JSON-able metadata); `scratch` is a folder the codec may write into."""

    def decode(self, entry: Path, meta: dict, workdir: Path) -> T:
        """The value back from a cache entry; files the value points at are copied into `workdir`."""


class ArrayCodec:
    """One numpy array (e.g. the float reference's logits)."""

    def encode(self, value: np.ndarray, scratch: Path) -> tuple[dict[str, Path], dict]:
        np.save(scratch / "value.npy", value)
        return {"value.npy": scratch / "value.npy"}, {}

    def decode(self, entry: Path, meta: dict, workdir: Path) -> np.ndarray:
        return np.load(entry / "value.npy")


class JsonCodec:
    """A JSON-able value (e.g. the tokenizer drift report)."""

    def encode(self, value: Any, scratch: Path) -> tuple[dict[str, Path], dict]:
        (scratch / "value.json").write_text(json.dumps(value, ensure_ascii=False))
        return {"value.json": scratch / "value.json"}, {}

    def decode(self, entry: Path, meta: dict, workdir: Path) -> Any:
        return json.loads((entry / "value.json").read_text())


class OutputsCodec:
    """A runtime's outputs on the eval rows: (logits, per-row seconds)."""

    def encode(self, value: tuple[np.ndarray, list[float]], scratch: Path) -> tuple[dict[str, Path], dict]:
        np.save(scratch / "logits.npy", value[0])
        return {"logits.npy": scratch / "logits.npy"}, {"latencies": list(value[1])}

    def decode(self, entry: Path, meta: dict, workdir: Path) -> tuple[np.ndarray, list[float]]:
        return np.load(entry / "logits.npy"), meta["latencies"]


class ArtifactsCodec:
    """Model files (one or several Artifacts); restored as copies in the build's work folder."""

    def encode(self, value: list[Artifact], scratch: Path) -> tuple[dict[str, Path], dict]:
        return {a.file_name: a.path for a in value}, {"artifacts": [a.to_dict() for a in value]}

    def decode(self, entry: Path, meta: dict, workdir: Path) -> list[Artifact]:
        restored = []
        for item in meta["artifacts"]:
            shutil.copy2(entry / item["path"], workdir / item["path"])
            restored.append(Artifact.from_dict(workdir, item))
        return restored


ARRAY, JSON, OUTPUTS, ARTIFACTS = ArrayCodec(), JsonCodec(), OutputsCodec(), ArtifactsCodec()


@dataclass
class Stage(Generic[T]):
    name: str  # also the cache namespace
    inputs: Any  # JSON-able: everything the output depends on
    run: Callable[[], T]
    codec: Codec[T]
    label: str = ""  # what the log calls it (default: the name)

    def key(self) -> str:
        return content_key(self.name, self.inputs, tool_versions())


class StageTimer:
    """`[stage] ...` / `[stage] done in N s (total M s)` lines, and every stage's seconds for the manifest."""

    def __init__(self, log: Log):
        self.log = log
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.log(f"[{stage}] ...")
        began = time.perf_counter()
        yield
        self.timings[stage] = round(time.perf_counter() - began, 2)
        self.log(f"[{stage}] done in {self.timings[stage]:.1f} s (total {time.perf_counter() - self.started:.1f} s)")


@dataclass
class Context:
    """What every stage run shares: the cache, the build's work folder, the log and the timer."""

    cache: StageCache
    workdir: Path
    log: Log = print
    timer: StageTimer = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.timer is None:
            self.timer = StageTimer(self.log)


def run_cached(stage: Stage[T], ctx: Context) -> T:
    """The stage's output from the cache when a verified entry exists, else run it and store the output."""
    key = stage.key()
    label = stage.label or stage.name
    hit = ctx.cache.get(stage.name, key)
    if hit is not None:
        ctx.log(f"[cached] {label}")
        return stage.codec.decode(hit[0], hit[1], ctx.workdir)
    with ctx.timer(label):
        value = stage.run()
    with tempfile.TemporaryDirectory() as scratch:
        files, meta = stage.codec.encode(value, Path(scratch))
        ctx.cache.put(stage.name, key, files, meta)
    return value
