"""The TFLite stage: the export-friendly ALBERT -> `<name>.fp32.tflite` and `<name>.int8.tflite`.

Two converters (`TFLiteConfig.converter`):

onnx2tf (default)
    torch.onnx.export at the static shape [1, max_length] -> onnx2tf (in a subprocess, no onnxsim) ->
    onnx2tf's SavedModel -> TF's TFLite converter: float32, dynamic-range int8 (`quant="dynamic"`) or
    full-integer int8 calibrated on real text (`quant="static"`, float fallback for ops without int8 kernels).
litert-torch (optional extra)
    litert_torch.convert of the module itself; int8 is its PT2E static quantization (whatever `quant` says:
    its dynamic mode writes files LiteRT cannot load), with the embedding tables stored as int8 rows plus a
    per-row scale (PT2E leaves nn.Embedding fp32). Inputs become int32 and the int8 output an int8 tensor
    (LiteRTRunner casts and dequantizes).

Every file is run in LiteRT's interpreter and compared with the eager fp32 export model on the `check`
rows before it is returned; a file that fails the sanity gate below, or that breaks the size rule
(shared layers stored once), is never written under its final name: the stage raises PipelineError naming
the file and, for onnx2tf, the first ONNX op whose output the .tflite no longer reproduces.

Traps handled here (see ../shared/TOOLCHAIN.md):
- onnxslim un-shares ALBERT's shared layer weights (it folds per-call constants into them), and its Gemm
  fusions made onnx2tf transpose wrongly: the ONNX file goes to onnx2tf as exported (initializers deduped),
  with onnx2tf's own onnxsim off.
- onnx2tf mis-transposed the position + token-type embedding sum when it was folded into one [1, S, E]
  constant (2-input models, S == E). The embeddings are exported as gathers whose indices come from the
  graph inputs, so nothing is folded into a [1, S, E] constant; this also lets dynamic-range quantization
  store the position and type tables as int8 (TFLite quantizes gather tables, not add constants).
- onnx2tf writes its .tflite files without a signature: we convert its SavedModel ourselves, so every file
  has the `serving_default` signature with the ONNX input names.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pipeline.artifact import Artifact, TensorSpec
from pipeline.config import TFLiteConfig
from pipeline.errors import PipelineError
from pipeline.model.albert import PolynomialGELU
from pipeline.model.checkpoint import LoadedModel
from pipeline.tokenization import Encoded

# --- the converter's sanity gate (the validate stage applies the real thresholds later) -----------------
FP32_MAX_ABS_ERROR = 1e-3  # max |logit(.tflite) - logit(eager fp32)| over the check rows
INT8_MIN_COSINE = 0.98  # cosine of all check logits, int8 file vs eager fp32
TIE_MARGIN = 0.05  # check rows whose reference top-2 margin < TIE_MARGIN x logit RMS are not counted in top-1
SIZE_FACTOR = 1.25  # file bytes <= SIZE_FACTOR x num_parameters x bytes per weight + the allowance below
# Graph allowance: the flatbuffer's ops, tensor names and shapes, unrolled per layer (onnx2tf ~12 KB a layer,
# litert-torch ~40 KB with its long tensor names): most of a tiny int8 file, noise for a real model, where a
# duplicated layer costs megabytes.
SIZE_OVERHEAD_BYTES = 32 * 1024
SIZE_OVERHEAD_BYTES_PER_LAYER = 48 * 1024
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1}
# Tolerances of the diagnosis that names the first diverging op (values compared as sorted sets, so
# layout transposes do not count as divergence).
DIAGNOSE_RTOL = {"fp32": 1e-3, "int8": 0.05}

ONNX_OPSET = 17
ONNX2TF_TIMEOUT_S = 1800
# onnx2tf's "strict mode" brute-forces transposes where output dims coincide (e.g. intermediate_size ==
# max_length) and crashes on scalar constants there (`Output tensors of a Functional model must be ...
# Found: 0.5`); the retry turns it off. Every result is verified either way.
ONNX2TF_ATTEMPTS = ({}, {"disable_strict_mode": True})
CONVERTERS = ("onnx2tf", "litert-torch")
QUANT_MODES = ("dynamic", "static")
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
LITERT_TORCH_MISSING = "litert-torch is not installed; pip install '.[litert-torch]'"

# Test hooks that reproduce the known onnx2tf traps (never set them in a build).
_USE_ONNXSLIM = False  # onnxslim (Gemm fusions skipped) before onnx2tf
_FOLD_EMBEDDING_CONSTANTS = False  # export the embeddings as ExportAlbert writes them (constants folded)


def lower_tflite(
    model: LoadedModel,
    config: TFLiteConfig,
    max_length: int,
    workdir: Path,
    calibration: Encoded,
    check: Encoded,
    name: str = "albert",
    use_token_type_ids: bool = True,
    log: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    on_torch_done: Callable[[], None] | None = None,
    shapes: str = "static",
) -> list[Artifact]:
    """Write and verify `<name>.fp32.tflite` and `<name>.int8.tflite` in `workdir`; return their Artifacts.

    For running beside other work on a thread (build.py overlaps it with the ExecuTorch lowering):
    `on_torch_done` is called once this stage's in-process torch work (reference rows, ONNX export) is
    over, so the caller can start its own torch work only then; what follows is the onnx2tf subprocess and
    LiteRT runs. Setting `stop` kills the converter subprocess and ends the stage with a PipelineError.
    """
    dynamic = shapes == "dynamic"
    if dynamic and config.converter != "onnx2tf":
        raise PipelineError(f'[build] shapes = "dynamic" needs the onnx2tf converter (litert-torch\'s dynamic shapes '
                            f'are reported broken for ALBERT, litert-torch issue 870); use shapes = "static"')
    if config.converter not in CONVERTERS:
        raise PipelineError(f"unknown TFLite converter {config.converter!r}; choose one of {list(CONVERTERS)}")
    if config.quant not in QUANT_MODES:
        raise PipelineError(f"unknown TFLite quantization {config.quant!r}; choose one of {list(QUANT_MODES)}")
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

    input_names = list(INPUT_ORDER if use_token_type_ids else INPUT_ORDER[:2])
    torch_done = on_torch_done or (lambda: None)
    reference = _reference_logits(model.export_model, check, input_names, dynamic)
    if config.converter == "onnx2tf":
        made, onnx_path, extra = _convert_onnx2tf(model, config, max_length, scratch, calibration, input_names, log,
                                                  stop, torch_done, dynamic)
        details = {"converter": "onnx2tf", "onnx_opset": ONNX_OPSET, **extra,
                   "tool_versions": _tool_versions("onnx2tf")}
    else:
        made, onnx_path = _convert_litert_torch(model, max_length, scratch, calibration, input_names, log), None
        torch_done()
        details = {"converter": "litert-torch", "tool_versions": _tool_versions("litert-torch")}
    quantization = {"fp32": "none", "int8": config.quant if config.converter == "onnx2tf" else "static-pt2e"}

    # Every file is checked before any is moved to its final name: a failed build leaves no .tflite behind.
    checked = {}
    for precision, produced in made.items():
        if dynamic:  # the longest input the file was validated for: LiteRTRunner refuses longer ones
            from pipeline.runtimes.litert import write_tflite_max_length

            write_tflite_max_length(produced, max_length)
        final = finals[precision]
        metrics = _check_file(produced, final.name, precision, check, reference, input_names, dynamic)
        log(
            f"  {final.name}: max|err| {metrics['max_abs_error']:.3g}, cosine {metrics['cosine']:.6f}, "
            f"top-1 {metrics['top1_agreement']:.3f}, {metrics['bytes']} bytes"
        )
        failure = _gate(precision, metrics)
        if failure:
            where = ""
            if onnx_path is not None:
                where = "; " + _diagnose(onnx_path, produced, check, input_names, precision, dynamic)
            _reject(produced)
            what = "the converter wrote a wrong file" if precision == "fp32" else "int8 drift beyond the sanity bound"
            raise PipelineError(f"{failure}: {what}{where}; rejected (files kept in the {scratch.name} scratch folder)", final)
        limit = size_limit(model, precision)
        if metrics["bytes"] > limit:
            _reject(produced)
            raise PipelineError(
                f"{metrics['bytes']} bytes exceed {limit} ({SIZE_FACTOR} x {model.num_parameters} parameters x "
                f"{BYTES_PER_WEIGHT[precision]} bytes + graph allowance): shared layers are stored more than "
                f"once (or tables were left in float)",
                final,
            )
        checked[precision] = (produced, metrics, limit)

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


def size_limit(model: LoadedModel, precision: str) -> int:
    """Largest file the size rule allows: shared layers stored once, int8 files with int8 tables."""
    weights = SIZE_FACTOR * model.num_parameters * BYTES_PER_WEIGHT[precision]
    return int(weights + SIZE_OVERHEAD_BYTES + SIZE_OVERHEAD_BYTES_PER_LAYER * model.spec.num_hidden_layers)


# --- reference and checks -------------------------------------------------------------------------------


def _rows(encoded: Encoded, input_names: list[str], dynamic: bool = False) -> list[dict[str, np.ndarray]]:
    """Rows as the file takes them: [1, max_length], or cut after their last real token (`dynamic`)."""
    from pipeline.shapes import trim

    rows = [{k: v for k, v in encoded.row(i).items() if k in input_names} for i in range(len(encoded))]
    return [trim(row) for row in rows] if dynamic else rows


def _reference_logits(export_model: nn.Module, check: Encoded, input_names: list[str], dynamic: bool = False) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for row in _rows(check, input_names, dynamic):
            args = [torch.from_numpy(np.ascontiguousarray(row[n])) for n in input_names]
            outs.append(export_model(*args).numpy().astype(np.float32))
    return np.concatenate(outs)


def _check_file(path: Path, label: str, precision: str, check: Encoded, reference: np.ndarray,
                input_names: list[str], dynamic: bool = False) -> dict[str, Any]:
    from pipeline.runtimes import LiteRTRunner

    runner = LiteRTRunner(path, num_threads=2)
    missing = sorted(set(runner.input_names) - set(input_names))
    if missing:
        raise PipelineError(f"the .tflite has inputs {missing} that the model does not take", label)
    try:
        got = np.concatenate([runner.run(row).reshape(1, -1) for row in _rows(check, input_names, dynamic)])
    except PipelineError:
        raise
    except Exception as err:
        raise PipelineError(f"LiteRT failed to run the model ({type(err).__name__}: {err})", label) from None
    if got.shape != reference.shape:
        raise PipelineError(f"output shape {list(got.shape)} differs from the model's {list(reference.shape)}", label)
    return {
        "max_abs_error": float(np.abs(got - reference).max()),
        "cosine": _cosine(got, reference),
        "top1_agreement": _top1_agreement(got, reference),
        "finite": bool(np.isfinite(got).all()),
        "bytes": path.stat().st_size,
    }


def _top1_agreement(got: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows with the reference's arg-max; rows where the reference itself is a near tie (top-2
    margin below TIE_MARGIN x the RMS of its logits) are left out: noise decides those, not the file."""
    if reference.shape[1] < 2:
        return 1.0
    top2 = np.sort(reference, axis=1)[:, -2:]
    scale = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    decisive = (top2[:, 1] - top2[:, 0]) >= TIE_MARGIN * scale
    if not decisive.any():
        return 1.0
    return float(np.mean(got.argmax(-1)[decisive] == reference.argmax(-1)[decisive]))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def _gate(precision: str, m: dict[str, Any]) -> str | None:
    if not m["finite"]:
        return "non-finite logits"
    if precision == "fp32" and m["max_abs_error"] > FP32_MAX_ABS_ERROR:
        return f"max abs logit error {m['max_abs_error']:.4g} > {FP32_MAX_ABS_ERROR} vs the eager fp32 model"
    # int8: only gross errors here. Top-1 agreement on a handful of check rows is too coarse to judge a file
    # (one flip of 8 is 0.875: that refused the GRU student's int8 file, see README); it is recorded, and the
    # validate stage judges it on the whole eval set with the configured thresholds.
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


def _tool_versions(converter: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "ai-edge-litert"]
    names += ["onnx", "onnx2tf", "tensorflow"] if converter == "onnx2tf" else ["litert-torch"]
    found = {}
    for package in names:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


# --- onnx2tf route -----------------------------------------------------------------------------------------


class _GatherEmbeddings(nn.Module):
    """ALBERT's embeddings with every table read by a gather whose indices come from the graph inputs.

    Same values as `AlbertEmbeddings`; it only keeps the exporters from folding position + token-type
    into one [1, S, E] constant (onnx2tf mis-transposes it when S == E) and lets TFLite's dynamic-range
    quantization store the position and type tables as int8.
    """

    def __init__(self, embeddings: nn.Module, max_length: int):
        super().__init__()
        self.inner = embeddings
        self.register_buffer("positions", torch.arange(max_length, dtype=torch.int64).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        e = self.inner
        zeros = input_ids * 0
        if token_type_ids is None:
            token_type_ids = zeros
        seq_len = input_ids.shape[1]
        words = e.word_embeddings(input_ids)
        positions = nn.functional.embedding(zeros + self.positions[:, :seq_len], e.position_embeddings.weight[:seq_len])
        types = e.token_type_embeddings(token_type_ids)
        return e.LayerNorm(words + positions + types)


class _Int8GatherEmbeddings(nn.Module):
    """Embeddings whose tables are stored as int8 (symmetric, one scale per row) and dequantized after the
    gather: PT2E int8 leaves nn.Embedding tables fp32, which breaks the int8 size rule."""

    def __init__(self, embeddings: nn.Module, max_length: int):
        super().__init__()
        self.inner = embeddings
        self.register_buffer("positions", torch.arange(max_length, dtype=torch.int64).unsqueeze(0), persistent=False)
        for name, table in (("word", embeddings.word_embeddings.weight),
                            ("position", embeddings.position_embeddings.weight[:max_length]),
                            ("type", embeddings.token_type_embeddings.weight)):
            table = table.detach().float()
            scale = table.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            self.register_buffer(f"{name}_q", torch.round(table / scale).clamp(-127, 127).to(torch.int8))
            self.register_buffer(f"{name}_scale", scale)

    def _lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, getattr(self, f"{name}_q")).to(torch.float32)
        return rows * nn.functional.embedding(ids, getattr(self, f"{name}_scale"))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        # No integer arithmetic here: PT2E would put observers on it (histogram of int64 fails). The
        # position (and absent token-type) rows are constants the converter may fold; they are small.
        positions = self._lookup("position", self.positions[:, : input_ids.shape[1]])
        if token_type_ids is None:
            types = (self.type_q[0:1].to(torch.float32) * self.type_scale[0:1]).unsqueeze(0)
        else:
            types = self._lookup("type", token_type_ids)
        return self.inner.LayerNorm(self._lookup("word", input_ids) + positions + types)


class _Exported(nn.Module):
    """The export model with the ONNX graph's argument list (2 or 3 inputs). `flat`: its 2-D batch-1 form
    (`ExportAlbert.classify_flat`), the graph onnx2tf converts with a dynamic sequence axis."""

    def __init__(self, model: nn.Module, three_inputs: bool, flat: bool = False):
        super().__init__()
        self.model = model
        self.three_inputs = three_inputs
        self.flat = flat

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        types = token_type_ids if self.three_inputs else None
        if self.flat:
            return self.model.classify_flat(input_ids, attention_mask, types)
        return self.model(input_ids, attention_mask, types)


def _export_onnx(model: LoadedModel, max_length: int, path: Path, input_names: list[str], sample: dict,
                 dynamic: bool = False) -> None:
    """`dynamic`: the sequence axis of every input is dynamic (`classify_flat`: 2-D hidden states, position
    ids from a cumsum of the inputs, so no table is sliced to a fixed length)."""
    export_model = model.export_model.eval()
    body = export_model.albert
    original = body.embeddings
    if not _FOLD_EMBEDDING_CONSTANTS and not dynamic:
        body.embeddings = _GatherEmbeddings(original, max_length)
    # exact GELU exports as ONNX Erf, which TFLite has no builtin for: use the polynomial form instead
    layers = [layer for group in body.encoder.albert_layer_groups for layer in group.albert_layers]
    exact_gelu = {id(layer): layer.activation for layer in layers if isinstance(layer.activation, nn.GELU)}
    for layer in layers:
        if id(layer) in exact_gelu:
            layer.activation = PolynomialGELU()
    try:
        args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in input_names)
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Exported(export_model, len(input_names) == 3, flat=dynamic),
                args,
                str(path),
                input_names=input_names,
                output_names=["logits"],
                dynamic_axes={n: {1: "sequence"} for n in input_names} if dynamic else None,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter keeps shared weights as one initializer
            )
    except Exception as err:
        first_line = str(err).splitlines()[0][:300] if str(err) else ""
        raise PipelineError(f"torch.onnx.export failed ({type(err).__name__}: {first_line})", path) from None
    finally:
        body.embeddings = original
        for layer in layers:
            if id(layer) in exact_gelu:
                layer.activation = exact_gelu[id(layer)]


def _dedupe_initializers(path: Path) -> int:
    """Make identical initializers one (shared layers must be stored once). Returns how many were merged."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    seen: dict[str, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        key = hashlib.sha256(
            f"{init.data_type}:{list(init.dims)}:".encode() + onnx.numpy_helper.to_array(init).tobytes()
        ).hexdigest()
        if key in seen:
            rename[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    onnx.save(graph_model, str(path))
    return len(rename)


ELEMENTWISE_OPS = ("Mul", "Add", "Sub", "Div")


def _promote_scalar_constants(path: Path) -> int:
    """Give the 0-d float constants of elementwise ops the shape [1] (same broadcast result).

    onnx2tf's strict mode (taken when an output has two equal dims > 1, e.g. intermediate_size ==
    max_length) builds a validation model from the op's inputs and crashes when one is a Python float
    (`Output tensors of a Functional model must be ... Found: 0.5`); a [1] array takes its array path.
    """
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_elementwise(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(u.op_type in ELEMENTWISE_OPS for u in users)

    changed = 0
    for init in graph.initializer:
        if len(init.dims) == 0 and init.data_type == onnx.TensorProto.FLOAT and only_elementwise(init.name):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).reshape(1), init.name))
            changed += 1
    for node in graph.node:
        if node.op_type != "Constant" or not only_elementwise(node.output[0]):
            continue
        for attr in node.attribute:
            if attr.name == "value" and len(attr.t.dims) == 0 and attr.t.data_type == onnx.TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).reshape(1), attr.t.name))
                changed += 1
    if changed:
        onnx.save(graph_model, str(path))
    return changed


def _slim(path: Path) -> None:
    import onnx
    import onnxslim

    slimmed = onnxslim.slim(str(path), skip_fusion_patterns=["FusionGemm", "FusionGemmMul", "FusionGemmAdd"])
    onnx.save(slimmed, str(path))


def _convert_onnx2tf(model, config, max_length, scratch, calibration, input_names, log, stop=None, torch_done=None,
                     dynamic=False):
    from pipeline.shapes import trim

    onnx_path = scratch / "model.onnx"
    sample = (calibration if len(calibration) else _dummy(max_length)).row(0)
    if dynamic:
        sample = trim(sample)
    started = time.perf_counter()
    _export_onnx(model, max_length, onnx_path, input_names, sample, dynamic)
    merged = _dedupe_initializers(onnx_path)
    _promote_scalar_constants(onnx_path)
    if _USE_ONNXSLIM:
        _slim(onnx_path)
    log(f"  ONNX export: {onnx_path.stat().st_size} bytes ({merged} duplicate initializers merged), "
        f"{time.perf_counter() - started:.1f} s")
    if torch_done is not None:
        torch_done()

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
    package_root = str(Path(__file__).resolve().parents[2])
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
        with open(log_path, "w") as handle:
            code = _run_worker(job_path, handle, env, scratch, stop, onnx_path, log_path)
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if code == 0 and result.get("ok"):
            elapsed = time.perf_counter() - started
            log(f"  onnx2tf {options or ''} + TFLite converter ({config.quant} int8): {elapsed:.1f} s")
            made = {"fp32": Path(job["fp32"]), "int8": Path(job["int8"])}
            return made, onnx_path, {"onnx2tf_options": options, "onnx2tf_attempts": attempt}
        reason = result.get("error") or _log_errors(log_path) or f"exit code {code}"
        ops = _log_ops(log_path)
        failures.append(f"attempt {attempt} {options or '(defaults)'}: {reason}{' at ONNX op ' + ops if ops else ''} "
                        f"(log: {log_path})")
        log(f"  onnx2tf attempt {attempt} failed: {reason[:200]}")
    raise PipelineError("onnx2tf conversion failed: " + "; ".join(failures), onnx_path)


def _run_worker(job_path: Path, handle, env: dict, scratch: Path, stop: threading.Event | None, onnx_path: Path,
                log_path: Path) -> int:
    """The onnx2tf worker subprocess; killed when `stop` is set, on the timeout, or when this process dies."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pipeline.stages.tflite import _worker; _worker(sys.argv[1])",
         str(job_path)],
        stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(scratch), preexec_fn=_die_with_parent,
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


def _dummy(max_length: int) -> Encoded:
    ids = np.zeros((1, max_length), dtype=np.int64)
    return Encoded(ids, np.ones_like(ids), np.zeros_like(ids), 0)


def _log_text(log_path: Path) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")) if log_path.is_file() else ""


def _log_errors(log_path: Path) -> str:
    """The last error line of onnx2tf's log."""
    lines = [ln.strip() for ln in _log_text(log_path).splitlines() if "Error" in ln or "ERROR" in ln]
    return lines[-1][:400] if lines else ""


def _log_ops(log_path: Path) -> str:
    """The ONNX op onnx2tf was converting when it failed (its `onnx_op_name:` error line)."""
    import re

    names = re.findall(r"onnx_op_name:\s*(\S+)", _log_text(log_path))
    return names[-1] if names else ""


def _worker(job_path: str) -> None:
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


# --- naming the first diverging op ---------------------------------------------------------------------


def _diagnose(onnx_path: Path, tflite_path: Path, check: Encoded, input_names: list[str], precision: str,
              dynamic: bool = False) -> str:
    try:
        found = _first_diverging_op(onnx_path, tflite_path, _rows(check, input_names, dynamic)[0],
                                    DIAGNOSE_RTOL[precision])
    except Exception as err:  # the diagnosis must never hide the failure it explains
        return f"first diverging op unknown (diagnosis failed: {type(err).__name__}: {err})"
    if found is None:
        return "no single diverging ONNX op found (the drift is spread over the graph)"
    node, layer = found
    return f"first diverging op: ONNX node {node.name!r} ({node.op_type}) in layer {layer!r}"


def _first_diverging_op(onnx_path: Path, tflite_path: Path, row: dict[str, np.ndarray], rtol: float):
    """The earliest ONNX node whose output the .tflite does not reproduce, nor most of what follows it.

    Every intermediate float tensor of the ONNX graph (onnxruntime) is looked for among the .tflite's
    tensors (LiteRT without delegates, all tensors kept), compared as sorted values of the same size so
    that layout changes (onnx2tf transposes) and fused ops do not count as divergence.
    """
    import onnx
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    graph_model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = graph_model.graph
    typed = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    existing = {o.name for o in graph.output}
    for node in graph.node:
        for out in node.output:
            if out in typed and out not in existing and typed[out].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                graph.output.append(typed[out])
                existing.add(out)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {i.name: row[i.name].astype(np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    onnx_values = dict(zip(names, session.run(names, feed)))

    interpreter = Interpreter(
        model_path=str(tflite_path),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = interpreter.get_signature_runner()
    from pipeline.runtimes import canonical_input_name

    runner(**{n: row[canonical_input_name(n)].astype(d["dtype"]) for n, d in runner.get_input_details().items()})
    by_size: dict[int, list[np.ndarray]] = {}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.float32:
            continue
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        by_size.setdefault(int(value.size), []).append(np.sort(value.ravel()))

    def matched(value: np.ndarray) -> bool:
        # element-wise relative tolerance on the sorted values: a max-based one would let a tensor that
        # holds the -1e4 attention mask match whatever its real entries are.
        ordered = np.sort(value.ravel().astype(np.float32))
        magnitude = np.abs(ordered)
        tol = 1e-6 + rtol * (magnitude + float(np.percentile(magnitude, 10)))
        return any(bool(np.all(np.abs(c - ordered) <= tol)) for c in by_size.get(ordered.size, []))

    live = {i.name for i in graph.input}  # tensors computed from the inputs (not constant subgraphs)
    status: dict[str, bool | None] = {}  # output name -> matched (None: not comparable)
    for node in graph.node:
        depends = any(name in live for name in node.input)
        for out in node.output:
            if depends:
                live.add(out)
            value = onnx_values.get(out)
            status[out] = None if not depends or value is None or value.size < 2 else matched(value)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    nodes = list(graph.node)

    def downstream_match_fraction(start: int) -> float:
        seen, stack, hits, total = set(), [start], 0, 0
        while stack:
            for out in nodes[stack.pop()].output:
                for c in consumers.get(out, []):
                    if c in seen:
                        continue
                    seen.add(c)
                    stack.append(c)
                    for o in nodes[c].output:
                        if status.get(o) is not None:
                            total += 1
                            hits += bool(status[o])
        return hits / total if total else 0.0

    # An op fused by the converter has no tensor of its own but its consumers match again; a diverging op
    # is followed by (almost) nothing that matches.
    for index, node in enumerate(nodes):
        if any(status[o] is False for o in node.output) and downstream_match_fraction(index) < 0.5:
            layer = node.name.rsplit("/", 1)[0].strip("/").removeprefix("model/").removeprefix("model") or "(top level)"
            return node, layer
    return None


# --- litert-torch route --------------------------------------------------------------------------------


def _convert_litert_torch(model, max_length, scratch, calibration, input_names, log) -> dict[str, Path]:
    """litert_torch.convert (fp32) and its PT2E static int8 (per-channel symmetric), per its README."""
    try:
        import litert_torch
    except ImportError:
        raise PipelineError(LITERT_TORCH_MISSING) from None
    started = time.perf_counter()
    module = _Exported(model.export_model.eval(), len(input_names) == 3).eval()
    sample_rows = _rows(calibration, input_names) if len(calibration) else _rows(_dummy(max_length), input_names)
    sample = {n: torch.from_numpy(np.ascontiguousarray(sample_rows[0][n])) for n in input_names}
    try:
        fp32 = litert_torch.convert(module, sample_args=(), sample_kwargs=sample)
        fp32.export(str(scratch / "fp32.tflite"))

        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError:
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        body = model.export_model.albert
        original = body.embeddings
        body.embeddings = _Int8GatherEmbeddings(original, max_length)
        try:
            captured = torch.export.export(module, (), sample).module()
        finally:
            body.embeddings = original
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for row in sample_rows:
                prepared(**{n: torch.from_numpy(np.ascontiguousarray(row[n])) for n in input_names})
        quantized = convert_pt2e(prepared, fold_quantize=False)
        int8 = litert_torch.convert(quantized, sample_args=(), sample_kwargs=sample,
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        int8.export(str(scratch / "int8.tflite"))
    except PipelineError:
        raise
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err)[:400]}"
        raise PipelineError(f"litert-torch conversion failed ({reason})", scratch) from None
    log(f"  litert-torch fp32 + PT2E int8: {time.perf_counter() - started:.1f} s")
    return {"fp32": scratch / "fp32.tflite", "int8": scratch / "int8.tflite"}
