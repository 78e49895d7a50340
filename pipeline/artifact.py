"""What every lowering stage returns and every later stage (validate, bundle, bench) consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
