"""The TFLite stage: the export-friendly ALBERT -> `<name>.fp32.tflite` and `<name>.int8.tflite`.

Two converters (`TFLiteConfig.converter`), each in its own module:

onnx2tf (default)       patch.py (export patching) -> onnx_passes.py (torch.onnx.export at [1, max_length],
                        graph passes) -> onnx2tf.py (onnx2tf + TF's TFLite converter in a subprocess) ->
                        float_tables.py (dynamic int8: tables other than the vocabulary's back to float);
                        diagnose.py names the first diverging ONNX op of a wrong file.
litert-torch (optional) litert_torch.py: litert_torch.convert of the module itself.

Every file is run in LiteRT's interpreter and compared with the eager fp32 export model on the `check` rows
before it is returned; a file that fails the sanity gate below, or the size rule (shared layers stored once,
`pipeline.core.artifact.check_size`), is never written under its final name: the stage raises PipelineError naming
the file and, for onnx2tf, the first ONNX op whose output the .tflite no longer reproduces.
"""
from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pipeline.core import metrics
from pipeline.core.artifact import Artifact, TensorSpec, check_size
from pipeline.core.config import TFLiteConfig
from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import LoadedModel
from pipeline.core.shapes import eval_rows
from pipeline.lower.tflite import litert_torch, onnx2tf
from pipeline.lower.tflite.diagnose import diagnose
from pipeline.lower.tflite.float_tables import INT8_TABLES
from pipeline.lower.tflite.onnx_passes import ONNX_OPSET
from pipeline.core.tokenization import Encoded
from pipeline.runtimes.contained import FileJob, run_contained
from pipeline.runtimes.litert import write_tflite_max_length

# --- the converter's sanity gate (the validate stage applies the real thresholds later) -----------------
FP32_MAX_ABS_ERROR = 1e-3  # max |logit(.tflite) - logit(eager fp32)| over the check rows
# int8: only gross errors here. Top-1 agreement on a handful of check rows is too coarse to judge a file (one
# flip of 8 is 0.875: that refused the GRU student's int8 file); it is recorded, and the validate stage judges
# it on the whole eval set with the configured thresholds.
INT8_MIN_COSINE = 0.98  # cosine of all check logits, int8 file vs eager fp32

CONVERTERS = ("onnx2tf", "litert-torch")
QUANT_MODES = ("dynamic", "static")
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TFLiteJob:
    """What the .tflite files are made from: the model, the recipe, the shape contract and the rows to check."""

    model: LoadedModel
    config: TFLiteConfig
    max_length: int
    calibration: Encoded  # static int8's calibration rows (padded to max_length)
    check: Encoded  # rows every file is compared on with the eager fp32 model before it is returned
    name: str = "albert"
    shapes: str = "static"  # "dynamic": inputs [1, -1], any length up to max_length (pipeline/core/shapes.py)
    use_token_type_ids: bool = True


@dataclass
class Hooks:
    """For running beside other work on a thread (build.py overlaps it with the ExecuTorch lowering): `on_torch_done`
    is called once this conversion's in-process torch work (reference rows, ONNX export) is over, so the caller can
    start its own torch work only then; what follows is the onnx2tf subprocess and LiteRT runs. Setting `stop`
    kills the converter subprocess and ends the conversion with a PipelineError."""

    log: Callable[[str], None] = print
    stop: threading.Event | None = None
    on_torch_done: Callable[[], None] | None = None

    def torch_done(self) -> None:
        if self.on_torch_done is not None:
            self.on_torch_done()


def lower_tflite(job: TFLiteJob, workdir: Path, hooks: Hooks | None = None) -> list[Artifact]:
    """Write and verify `<name>.fp32.tflite` and `<name>.int8.tflite` in `workdir`; return their Artifacts."""
    hooks = hooks or Hooks()
    model, config, max_length, calibration, check = job.model, job.config, job.max_length, job.calibration, job.check
    name, shapes, log = job.name, job.shapes, hooks.log
    dynamic = shapes == "dynamic"
    if dynamic and config.converter != "onnx2tf":
        raise PipelineError('[build] shapes = "dynamic" needs the onnx2tf converter (litert-torch\'s dynamic shapes '
                            'are reported broken for ALBERT by its maintainers); use shapes = "static"')
    if config.converter not in CONVERTERS:
        raise PipelineError(f"unknown TFLite converter {config.converter!r}; choose one of {list(CONVERTERS)}")
    if config.quant not in QUANT_MODES:
        raise PipelineError(f"unknown TFLite quantization {config.quant!r}; choose one of {list(QUANT_MODES)}")
    if config.int8_tables not in INT8_TABLES:
        raise PipelineError(f"unknown [tflite] int8_tables {config.int8_tables!r}; choose one of {list(INT8_TABLES)}")
    if len(check) == 0:
        raise PipelineError("no check rows: a .tflite is only written after it was compared with the float model")
    if config.quant == "static" and len(calibration) == 0:
        raise PipelineError("static int8 needs calibration rows, got none")
    for rows, what in ((check, "check"), (calibration, "calibration")):
        if len(rows) and rows.input_ids.shape[1] != max_length:  # padded rows; dynamic files get them trimmed
            raise PipelineError(f"{what} rows have length {rows.input_ids.shape[1]}, expected max_length {max_length}")
    workdir = Path(workdir).resolve()  # the onnx2tf worker runs in another cwd
    workdir.mkdir(parents=True, exist_ok=True)
    finals = {p: workdir / f"{name}.{p}.tflite" for p in ("fp32", "int8")}
    for path in finals.values():  # a stale file from an earlier run must not survive a failed one
        path.unlink(missing_ok=True)
    scratch = workdir / f".{name}.tflite-work"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    input_names = list(INPUT_ORDER if job.use_token_type_ids else INPUT_ORDER[:2])
    reference = _reference_logits(model.export_model, check, input_names, dynamic)
    if config.converter == "onnx2tf":
        made, onnx_path, extra = onnx2tf.convert(job, scratch, input_names, hooks)
        details = {"converter": "onnx2tf", "onnx_opset": ONNX_OPSET, **extra}
    else:
        made, onnx_path = litert_torch.convert(model, max_length, scratch, calibration, input_names, log), None
        hooks.torch_done()
        details = {"converter": "litert-torch"}
    quantization = {"fp32": "none", "int8": config.quant if config.converter == "onnx2tf" else "static-pt2e"}

    # Every file is checked before any is moved to its final name: a failed build leaves no .tflite behind.
    checked = {}
    for precision, produced in made.items():
        if dynamic:  # the longest input the file was validated for: LiteRTRunner refuses longer ones
            write_tflite_max_length(produced, max_length, model.spec.num_labels)
        final = finals[precision]
        metrics = _check_file(produced, final.name, check, reference, input_names, dynamic)
        log(
            f"  {final.name}: max|err| {metrics['max_abs_error']:.3g}, cosine {metrics['cosine']:.6f}, "
            f"top-1 {metrics['top1_agreement']:.3f}, {metrics['bytes']} bytes"
        )
        failure = _gate(precision, metrics)
        if failure:
            where = ""
            if onnx_path is not None:
                where = "; " + diagnose(onnx_path, produced, check, input_names, precision, dynamic)
            _reject(produced)
            what = "the converter wrote a wrong file" if precision == "fp32" else "int8 drift beyond the sanity bound"
            raise PipelineError(f"{failure}: {what}{where}; rejected (files kept in the {scratch.name} scratch folder)", final)
        sized = Artifact(produced, "litert", precision, [], [])
        try:
            check_size(sized, model.num_parameters, model.spec.num_hidden_layers)
        except PipelineError as err:
            _reject(produced)
            raise PipelineError(err.message, final) from None
        checked[precision] = (produced, metrics, sized.details["size_limit_bytes"])

    artifacts = []
    for precision, (produced, metrics, limit) in checked.items():
        final = finals[precision]
        os.replace(produced, final)
        inputs, outputs = _signature_specs(final)
        artifacts.append(
            Artifact(
                path=final,
                runtime="litert",
                precision=precision,
                inputs=inputs,
                outputs=outputs,
                details={
                    **details,
                    "quantization": quantization[precision],
                    "max_abs_error_check": metrics["max_abs_error"],
                    "cosine_check": metrics["cosine"],
                    "top1_agreement_check": metrics["top1_agreement"],
                    "check_rows": len(check),
                    "bytes": metrics["bytes"],
                    "size_limit_bytes": limit,
                    "max_length": max_length,
                    "shapes": shapes,
                },
            )
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return artifacts


# --- reference and checks -------------------------------------------------------------------------------


def _reference_logits(export_model: nn.Module, check: Encoded, input_names: list[str], dynamic: bool = False) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for row in eval_rows(check, dynamic, input_names):
            args = [torch.from_numpy(np.ascontiguousarray(row[n])) for n in input_names]
            outs.append(export_model(*args).numpy().astype(np.float32))
    return np.concatenate(outs)


def _check_file(path: Path, label: str, check: Encoded, reference: np.ndarray, input_names: list[str],
                dynamic: bool = False) -> dict[str, Any]:
    """The converted file on the check rows in LiteRT, in a contained child process (pipeline/runtimes/contained.py):
    a converter output that aborts or hangs the runtime is this file's one-line error, not the end of the build."""
    artifact = Artifact(path, "litert", "check", [TensorSpec(n, [1, -1], "int64") for n in input_names], [])
    got = run_contained([FileJob(artifact, eval_rows(check, dynamic, input_names))]).get(path.name)
    if got is None or got.error is not None:
        error = got.error if got is not None else "no outputs came back"
        raise PipelineError(f"LiteRT failed to run the model ({error})", label)
    got = got.outputs
    if got.shape != reference.shape:
        raise PipelineError(f"output shape {list(got.shape)} differs from the model's {list(reference.shape)}", label)
    return {
        "max_abs_error": metrics.max_abs_error(got, reference),
        "cosine": metrics.cosine(got, reference),
        "top1_agreement": metrics.top1_agreement(got, reference),
        "finite": bool(np.isfinite(got).all()),
        "bytes": path.stat().st_size,
    }


def _gate(precision: str, m: dict[str, Any]) -> str | None:
    if not m["finite"]:
        return "non-finite logits"
    if precision == "fp32" and m["max_abs_error"] > FP32_MAX_ABS_ERROR:
        return f"max abs logit error {m['max_abs_error']:.4g} > {FP32_MAX_ABS_ERROR} vs the eager fp32 model"
    if precision != "fp32" and m["cosine"] < INT8_MIN_COSINE:
        return f"logit cosine {m['cosine']:.4f} < {INT8_MIN_COSINE} vs the eager fp32 model"
    return None


def _reject(path: Path) -> None:
    if path.exists():
        os.replace(path, path.with_name(path.name + ".rejected"))


def _signature_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()

    def specs(details: dict[str, dict]) -> list[TensorSpec]:
        return [TensorSpec(n, [int(s) for s in d.get("shape_signature", d["shape"])], np.dtype(d["dtype"]).name)
                for n, d in details.items()]

    return specs(runner.get_input_details()), specs(runner.get_output_details())
