"""What every lowering stage returns and every later stage (validate, bundle, bench) consumes; the manifest reader."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


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
