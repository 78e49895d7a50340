"""What every lowering stage returns and every later stage (validate, bundle, bench) consumes; the manifest reader."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.provenance import sha256_file


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # numpy dtype name: "int64", "int32", "float32", "int8"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Artifact:
    """One model file: `<name>.<precision>.<pte|tflite>` plus how it was made."""

    path: Path
    runtime: str  # "executorch" or "litert"
    precision: str  # "fp32", "int8", "int8-dynamic", "fp16", ...
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    details: dict[str, Any] = field(default_factory=dict)  # converter, delegation, quantization settings, ...

    @property
    def file_name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        """How the manifest, reports and the stage cache record it (the file by name, relative to its folder)."""
        return {"path": self.file_name, "runtime": self.runtime, "precision": self.precision,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "details": self.details}

    @classmethod
    def from_dict(cls, folder: Path, entry: dict[str, Any]) -> "Artifact":
        try:
            return cls(Path(folder) / entry["path"], entry["runtime"], entry["precision"],
                       [TensorSpec(**t) for t in entry["inputs"]], [TensorSpec(**t) for t in entry["outputs"]],
                       dict(entry.get("details") or {}))
        except (KeyError, TypeError) as err:
            raise PipelineError(f"manifest entry for {entry.get('path')} is incomplete ({err})") from None


def read_manifest(folder: Path) -> dict:
    """The manifest.json of a bundled artifact folder (bundle.py writes it), with a one-line error if it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError("artifact folder not found", folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise PipelineError("no manifest.json: not an artifact folder made by `python -m pipeline build`", folder)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"manifest.json is not valid JSON ({err})", path) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or "model" not in manifest:
        raise PipelineError("manifest.json has no 'files' list or no 'model' section", path)
    return manifest


MODEL_SUFFIXES = (".pte", ".tflite")


def verify_files(folder: Path, manifest: dict) -> int:
    """Every listed file is a regular file inside the folder, listed once, with the recorded size and sha256; no
    model file of the folder is left unlisted."""
    listed = set()
    where = folder / "manifest.json"
    entries = [manifest.get("files"), manifest.get("assets", [])]
    if not all(isinstance(e, list) for e in entries):
        raise PipelineError("'files' and 'assets' must be lists of entries", where)
    try:
        root = folder.resolve()
        for entry in entries[0] + entries[1]:
            name = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") \
                    or "\0" in name or "\\" in name:
                raise PipelineError(f"manifest entry with a bad path {name!r} (a file name inside the folder)", where)
            if name in listed:
                raise PipelineError(f"manifest lists {name!r} twice", where)
            listed.add(name)
            _verify_entry(folder / name, root, entry)
        unlisted = sorted(p.name for p in folder.iterdir()
                          if p.suffix.lower() in MODEL_SUFFIXES and p.name not in listed)
    except OSError as err:  # a name too long for the file system, a folder that cannot be read: one line
        raise PipelineError(f"cannot read it ({err.strerror or err})", err.filename or folder) from None
    if unlisted:
        raise PipelineError(f"model file(s) not in manifest.json: {unlisted}", folder)
    return len(listed)


def _verify_entry(path: Path, root: Path, entry: dict) -> None:
    """One listed file: regular, inside the folder (a link may only point to a file beside it), size and sha256."""
    if path.is_symlink() and path.resolve().parent != root:
        raise PipelineError("a link to a file outside the folder", path)
    if not path.is_file():
        raise PipelineError("listed in manifest.json but missing (or not a regular file)", path)
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise PipelineError(f"size {size} bytes does not match the manifest's {entry.get('bytes')}", path)
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise PipelineError(f"sha256 mismatch: file {digest}, manifest {entry.get('sha256')} "
                            "(the file was changed after the build)", path)


# --- the size rule: shared layers stored once ------------------------------------------------------------------
# A file may hold its parameters at the precision's bytes per weight, times SIZE_FACTOR (quantization scales, fp32
# LayerNorms, alignment), plus a graph allowance: a fixed part for the program / flatbuffer itself (an ExecuTorch
# program's plan, a GRU front end unrolled over max_length steps: a tiny GRU model's int8 .pte is 250 kB for 84 k
# parameters) and a part per layer call for the ops, tensor names and shapes (onnx2tf ~12 KB a layer,
# litert-torch ~40 KB with its long names). The allowance is most of a tiny file and noise for a real model, where
# one duplicated shared layer costs megabytes.
# int4: 4-bit weights; a 4-bit file that kept its vocabulary table or its linears at 8 bits (or float) exceeds the limit
# on any model whose weights outweigh the graph allowance (default model: limit 4.11 MB, 4-bit files 3.5 MB, the
# same with an int8 table 4.3 MB; docs/int4.md).
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}
SIZE_FACTOR = 1.25
SIZE_OVERHEAD_BYTES = 256 * 1024
SIZE_OVERHEAD_BYTES_PER_LAYER = 48 * 1024


def size_limit(num_parameters: int, num_layers: int, precision: str) -> int:
    """Largest file the size rule allows for a model of `num_parameters` over `num_layers` layer calls."""
    per_weight = BYTES_PER_WEIGHT.get(precision.split("-")[0], 4)
    return int(SIZE_FACTOR * num_parameters * per_weight + SIZE_OVERHEAD_BYTES + SIZE_OVERHEAD_BYTES_PER_LAYER * num_layers)


def check_size(artifact: Artifact, num_parameters: int, num_layers: int) -> None:
    """Records the limit in the artifact's details; a larger file fails the build (weights stored more than once)."""
    limit = size_limit(num_parameters, num_layers, artifact.precision)
    size = artifact.path.stat().st_size
    artifact.details["size_limit_bytes"] = limit
    if size > limit:
        per_weight = BYTES_PER_WEIGHT.get(artifact.precision.split("-")[0], 4)
        raise PipelineError(
            f"{size:,} bytes exceed {limit:,} ({SIZE_FACTOR} x {num_parameters:,} parameters x {per_weight} B + graph "
            f"allowance for {num_layers} layers): shared layers are stored more than once (or tables were left in "
            f"float, or weights kept at more bits than {artifact.precision})",
            artifact.path)
