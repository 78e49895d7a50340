"""The typed options of every command (pipeline/api.py takes them; pipeline/cli.py parses arguments into them).

Each numeric option declares its range here, next to its definition (`metadata={"min": ..., "max": ...}`), and
`check_fields` (pipeline/core/config.py) checks types and ranges before any work starts: NaN, infinities and
values out of range are refused with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import CompressConfig, PipelineConfig, ThresholdConfig

PROFILES = ("i8mm", "cortex-a76", "max-sme")  # emulated ARM64 CPU profiles (pipeline/verify/arm64/emulate.py)


@dataclass
class Arm64Options:
    """Run every file again in the aarch64 runtimes under QEMU (needs `python -m pipeline arm64-setup` once)."""

    profile: str = field(default="i8mm", metadata={"choices": PROFILES})
    rows: int | None = field(default=None, metadata={"min": 1, "max": 100_000})  # None: 32 eval rows


@dataclass
class CostOptions:
    """Count the aarch64 instructions of one inference of every .pte / .tflite under QEMU, per CPU profile and
    length (pipeline/gate/cost.py; needs `python -m pipeline arm64-setup` once); gated against `baseline` (a
    manifest.json or report.json holding `arm64_cost`) with [thresholds.cost] max_increase, else only recorded."""

    profiles: list[str] = field(default_factory=lambda: ["cortex-a76", "i8mm"], metadata={"choices": PROFILES})
    # token counts; "max": the folder's max_length (a static file's fixed length)
    lengths: list[int | str] = field(default_factory=lambda: [16, 64, "max"],
                                     metadata={"min": 1, "max": 8192, "pattern": "max"})
    baseline: str | Path | None = None
    steady_runs: int = field(default=2, metadata={"min": 1, "max": 100})  # steady inferences counted (the cheapest)


@dataclass
class BuildOptions:
    config: PipelineConfig = field(default_factory=PipelineConfig)  # [build] target etc. and every recipe
    targets: list[str] = field(default_factory=lambda: ["android"])
    use_cache: bool = True
    arm64: Arm64Options | None = None  # also the ARM64 gate on the bundled folder before the app gets it
    cost: CostOptions | None = None  # also count (and gate) its aarch64 instructions before the app gets it


@dataclass
class ValidateOptions:
    artifacts: str | Path = "artifacts/android"
    model_dir: str | Path | None = None  # default: the checkpoint the manifest names (proven by its hash)
    eval_data: str | Path | None = None  # default: as recorded in the manifest
    eval_limit: int | None = field(default=None, metadata={"min": 0, "max": 10_000_000})
    calibration_data: str | Path | None = None  # for localization and auto_fallback (default: the manifest's)
    thresholds: str | Path | ThresholdConfig | None = None  # a TOML file, a ThresholdConfig, or the defaults
    report_dir: str | Path | None = None  # default: the artifact folder
    auto_fallback: bool = False
    arm64: Arm64Options | None = None
    cost: CostOptions | None = None  # after the x86 validation passed


@dataclass
class BenchOptions:
    artifacts: str | Path = "artifacts/android"
    threads: list[int] = field(default_factory=lambda: [2], metadata={"min": 1, "max": 256})
    runs: int = field(default=30, metadata={"min": 1, "max": 100_000})
    max_lengths: list[int] = field(default_factory=lambda: [128], metadata={"min": 2, "max": 8192})
    out: str | Path | None = None  # default: the artifact folder
    compare: list[str] = field(default_factory=list)
    rebuild_lengths: bool = False
    static: str | Path | None = None
    lengths: list[int] | None = field(default=None, metadata={"min": 1, "max": 8192})  # extra sweep lengths
    sweep: bool = True  # the latency-against-length table
    workload: int = field(default=200, metadata={"min": 0, "max": 1_000_000})
    clock: str = field(default="wall", metadata={"choices": ("wall", "cpu")})
    cache_dir: str | None = None  # the stage cache for rebuild_lengths


@dataclass
class CompressOptions:
    config: CompressConfig = field(default_factory=CompressConfig)
    fp32: bool = False  # store weights in fp32 (default: fp16)
    command: str = "pipeline compress"  # recorded in the model card
