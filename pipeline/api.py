"""The library API: every command as a function of typed options (pipeline/core/options.py).

    from pipeline import api

    folder = api.build(api.BuildOptions(targets=["android"]))[0]
    api.validate(api.ValidateOptions(artifacts=folder))    # raises DriftError (exit 1) / PipelineError (exit 2)

The CLI (pipeline/cli.py) only parses arguments into these options and maps errors to exit codes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipeline.core.config import (TARGETS, CompressConfig, PipelineConfig, ThresholdConfig, check_fields,  # noqa: F401
                                  load_config)
from pipeline.core.errors import DriftError, PipelineError  # noqa: F401
from pipeline.core.paths import check_output_folder
from pipeline.core.options import (Arm64Options, BenchOptions, BuildOptions, CompressOptions, CostOptions,
                                   ValidateOptions)
from pipeline.bench import bench as run_bench
from pipeline.gate.cost import CostGate, cost_folder, prepare_cost
from pipeline.gate.validate import validate_folder
from pipeline.verify.arm64.emulate import require_env
from pipeline.verify.arm64.cost_env import provision_counting
from pipeline.verify.arm64.env import home, provision

Log = Callable[[str], None]
RUNTIMES = ("executorch", "litert")
PRECISIONS = ("fp32", "int8", "int4")


def check_build_options(options: BuildOptions) -> CostGate | None:
    """Everything about a build that can be refused before hours of work (with `cost`: what cost_folder needs)."""
    b = options.config.build
    if not all(isinstance(v, list) for v in (b.runtimes, b.precisions, options.targets)):
        check_fields(options.config, "config")  # the type error, one line
    unknown = [r for r in b.runtimes if r not in RUNTIMES]
    if unknown or not b.runtimes:
        raise PipelineError(f"unknown runtime(s) {unknown or b.runtimes}; choose from {', '.join(RUNTIMES)}")
    unknown = [p for p in b.precisions if p not in PRECISIONS]
    if unknown or not b.precisions:
        raise PipelineError(f"unknown precision(s) {unknown or b.precisions}; choose from {', '.join(PRECISIONS)}")
    for target in options.targets or ["?"]:
        if target not in TARGETS:
            raise PipelineError(f"unknown target {target!r}; choose android, ios or all")
    for section in ("build", "quantize", "tflite", "thresholds", "compress"):  # "[build] max_length = 1: ..."
        check_fields(getattr(options.config, section), section)
    check_output_folder(b.out_dir)
    check_output_folder(b.cache_dir, "stage cache folder")
    if options.arm64 is not None:
        check_fields(options.arm64, "arm64")
        require_env()
    if options.cost is not None:
        return prepare_cost(options.cost, options.config.thresholds.cost.max_increase)
    return None


def build(options: BuildOptions, log: Log = print) -> list[Path]:
    """Each target's verified folder; with `arm64`, each also through the ARM64 gate, and with `cost`, its aarch64
    instructions counted (and gated against a baseline), before the app gets it."""
    cost = check_build_options(options)
    from pipeline.build import build as build_target  # after the cheap checks: importing torch takes seconds
    from pipeline.bundle import copy_to_app

    config = options.config
    to_apps = config.build.copy_to_apps
    deferred = options.arm64 is not None or cost is not None
    if deferred:  # the apps get the folder only once it passed on ARM / its cost is counted (its manifest says so)
        config.build.copy_to_apps = False
    folders = []
    for target in options.targets:
        config.build.target = target
        final = build_target(config, log, use_cache=options.use_cache)
        if options.arm64 is not None:  # the bundled folder, through the same gate as `validate --arm64`
            validate(ValidateOptions(artifacts=final, model_dir=config.build.model_dir, eval_data=config.build.eval_data,
                                     eval_limit=config.build.eval_limit, thresholds=config.thresholds,
                                     arm64=options.arm64), log)
        if cost is not None:  # the bundled folder as it is: the x86 validation just passed in the build
            cost_folder(final, cost, log=log)
        if deferred and to_apps:
            copy_to_app(final, target)
        folders.append(final)
    config.build.copy_to_apps = to_apps
    return folders


def validate(options: ValidateOptions, log: Log = print) -> int:
    """The drift gate over an artifact folder: 0, or DriftError (exit 1) / PipelineError (exit 2)."""
    check_fields(options, "validate")
    return validate_folder(options, log)


def bench(options: BenchOptions, log: Log = print) -> int:
    def rebuild(config: PipelineConfig, rebuild_log: Log) -> Path:
        from pipeline.build import build as build_target

        return build_target(config, rebuild_log)

    return run_bench(options, log, rebuild)


def compress(options: CompressOptions, log: Log = print) -> Path:
    """BERT -> ALBERT (factorized embedding, shared layers, distillation); the written checkpoint folder."""
    check_fields(options.config, "compress")
    check_output_folder(options.config.out_dir)
    check_output_folder(options.config.cache_dir, "stage cache folder")
    import torch

    from pipeline.compress.command import compress as run_compress

    run_compress(options.config, log, command=options.command,
                 store_dtype=torch.float32 if options.fp32 else torch.float16)
    return Path(options.config.out_dir)


def arm64_setup(log: Log = print) -> None:
    """Provision the ARM64 emulation environment and what counting instructions needs (idempotent)."""
    provision(log)
    provision_counting(home(), log)


__all__ = ["Arm64Options", "BenchOptions", "BuildOptions", "CompressConfig", "CompressOptions", "CostOptions", "DriftError",
           "PipelineConfig", "PipelineError", "ThresholdConfig", "ValidateOptions", "arm64_setup", "bench", "build",
           "compress", "load_config", "validate"]
