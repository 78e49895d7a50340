"""The onnx2tf route's converter process: ONNX -> onnx2tf (no onnxsim) -> its SavedModel -> TF's TFLite
converter: float32, and dynamic-range int8 (`quant="dynamic"`) or full-integer int8 calibrated on real text
(`quant="static"`, float fallback for ops without int8 kernels).

onnx2tf runs in a subprocess (it may sys.exit or leak, and it runs beside the ExecuTorch lowering on the
other core); the process is killed when the build stops, on the timeout, or when the parent dies.
onnx2tf writes its .tflite files without a signature: we convert its SavedModel ourselves, so every file
has the `serving_default` signature with the ONNX input names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.config import TFLiteConfig
from pipeline.core.errors import PipelineError
from pipeline.core.shapes import trim
from pipeline.model.checkpoint import LoadedModel
from pipeline.lower.tflite.float_tables import keep_tables_float
from pipeline.lower.tflite.onnx_passes import export_onnx, prepare_for_onnx2tf
from pipeline.core.tokenization import Encoded

ONNX2TF_TIMEOUT_S = 1800
# onnx2tf's "strict mode" brute-forces transposes where output dims coincide (e.g. intermediate_size ==
# max_length) and crashes on scalar constants there (`Output tensors of a Functional model must be ...
# Found: 0.5`); the retry turns it off. Every result is verified either way.
ONNX2TF_ATTEMPTS = ({}, {"disable_strict_mode": True})


def convert(job, scratch: Path, input_names: list[str], hooks) -> tuple[dict[str, Path], Path, dict]:
    """({precision: .tflite in scratch}, the ONNX file, details) for a `TFLiteJob`; `hooks.torch_done()` is called
    after the ONNX export."""
    model, config, max_length, calibration = job.model, job.config, job.max_length, job.calibration
    dynamic, log = job.shapes == "dynamic", hooks.log

    onnx_path = scratch / "model.onnx"
    sample = (calibration if len(calibration) else dummy_rows(max_length)).row(0)
    if dynamic:
        sample = trim(sample)
    started = time.perf_counter()
    export_onnx(model, max_length, onnx_path, input_names, sample, dynamic)
    merged = prepare_for_onnx2tf(onnx_path)
    log(f"  ONNX export: {onnx_path.stat().st_size} bytes ({merged} duplicate initializers merged), "
        f"{time.perf_counter() - started:.1f} s")
    hooks.torch_done()

    job = {
        "onnx": str(onnx_path),
        "saved_model": str(scratch / "saved_model"),
        "fp32": str(scratch / "fp32.tflite"),
        "int8": str(scratch / "int8.tflite"),
        "quant": config.quant,
        "calibration": None,
        "input_names": input_names,
    }
    if config.quant == "static":
        calib_path = scratch / "calibration.npz"
        np.savez(calib_path, **{n: getattr(calibration, n) for n in input_names})
        job["calibration"] = str(calib_path)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])  # the folder holding `pipeline/`
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    failures = []
    for attempt, options in enumerate(ONNX2TF_ATTEMPTS, start=1):
        job["onnx2tf_options"] = options
        job_path = scratch / "job.json"
        job_path.write_text(json.dumps(job))
        log_path = scratch / f"onnx2tf.{attempt}.log"
        result_path = scratch / "result.json"
        result_path.unlink(missing_ok=True)
        shutil.rmtree(job["saved_model"], ignore_errors=True)
        started = time.perf_counter()
        code = run_worker(job_path, env, hooks.stop, log_path)
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if code == 0 and result.get("ok"):
            elapsed = time.perf_counter() - started
            log(f"  onnx2tf {options or ''} + TFLite converter ({config.quant} int8): {elapsed:.1f} s")
            made = {"fp32": Path(job["fp32"]), "int8": Path(job["int8"])}
            extra = {"onnx2tf_options": options, "onnx2tf_attempts": attempt}
            if config.quant == "dynamic" and config.int8_tables == "vocabulary":
                int8, restored = keep_tables_float(made["int8"].read_bytes(), made["fp32"].read_bytes(),
                                                   model.spec.vocab_size)
                made["int8"].write_bytes(int8)
                extra["float_tables"] = restored
                for table in restored:
                    log(f"  int8 .tflite: table {table['table']} {table['shape']} kept float (+{table['bytes_added']} bytes)")
            return made, onnx_path, extra
        reason = result.get("error") or _log_errors(log_path) or f"exit code {code}"
        ops = _log_ops(log_path)
        failures.append(f"attempt {attempt} {options or '(defaults)'}: {reason}{' at ONNX op ' + ops if ops else ''} "
                        f"(log: {log_path})")
        log(f"  onnx2tf attempt {attempt} failed: {reason[:200]}")
    raise PipelineError("onnx2tf conversion failed: " + "; ".join(failures), onnx_path)


def run_worker(job_path: Path, env: dict, stop: threading.Event | None, log_path: Path) -> int:
    """The onnx2tf worker subprocess (output into `log_path`); killed when `stop` is set, on the timeout, or when
    this process dies."""
    onnx_path = Path(json.loads(job_path.read_text())["onnx"])
    with open(log_path, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pipeline.lower.tflite.onnx2tf import worker; worker(sys.argv[1])",
             str(job_path)],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(job_path.parent), preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + ONNX2TF_TIMEOUT_S
    try:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if stop is not None and stop.is_set():
                raise PipelineError("the TFLite conversion was stopped", onnx_path)
            if time.monotonic() > deadline:
                raise PipelineError(f"onnx2tf did not finish in {ONNX2TF_TIMEOUT_S} s (log: {log_path})", onnx_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the thread that started it ends (Linux), so a killed build
    leaves no converter writing into its work folder. Nothing is imported here (the parent has threads)."""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


_PRCTL = _libc_prctl()


def dummy_rows(max_length: int) -> Encoded:
    ids = np.zeros((1, max_length), dtype=np.int64)
    return Encoded(ids, np.ones_like(ids), np.zeros_like(ids), 0)


def _log_text(log_path: Path) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")) if log_path.is_file() else ""


def _log_errors(log_path: Path) -> str:
    """The last error line of onnx2tf's log."""
    lines = [ln.strip() for ln in _log_text(log_path).splitlines() if "Error" in ln or "ERROR" in ln]
    return lines[-1][:400] if lines else ""


def _log_ops(log_path: Path) -> str:
    """The ONNX op onnx2tf was converting when it failed (its `onnx_op_name:` error line)."""
    names = re.findall(r"onnx_op_name:\s*(\S+)", _log_text(log_path))
    return names[-1] if names else ""


def worker(job_path: str) -> None:
    """Runs in a subprocess: onnx2tf -> SavedModel -> TFLite fp32 and int8 (onnx2tf may sys.exit or leak)."""
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job_path).with_name("result.json")
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import onnx2tf

        onnx2tf.convert(
            input_onnx_file_path=job["onnx"],
            output_folder_path=job["saved_model"],
            output_signaturedefs=True,  # the SavedModel gets `serving_default` with the ONNX input names
            not_use_onnxsim=True,
            non_verbose=True,
            **job["onnx2tf_options"],
        )
        if not (Path(job["saved_model"]) / "saved_model.pb").is_file():
            raise RuntimeError("onnx2tf wrote no SavedModel")

        def converter():
            return tf.lite.TFLiteConverter.from_saved_model(job["saved_model"])

        Path(job["fp32"]).write_bytes(converter().convert())
        quant = converter()
        quant.optimizations = [tf.lite.Optimize.DEFAULT]
        if job["quant"] == "static":
            data = np.load(job["calibration"])
            names = job["input_names"]

            def representative():
                for i in range(len(data[names[0]])):
                    yield {n: data[n][i : i + 1] for n in names}

            quant.representative_dataset = representative
        Path(job["int8"]).write_bytes(quant.convert())
        result_path.write_text(json.dumps({"ok": True}))
    except BaseException as err:  # SystemExit from onnx2tf included
        import traceback

        traceback.print_exc()
        result_path.write_text(json.dumps({"ok": False, "error": f"{type(err).__name__}: {str(err)[:600]}"}))
        raise SystemExit(1)


