"""4-bit LiteRT file: the verified float `<name>.fp32.tflite` -> `<name>.int4.tflite` (4-bit weights, activations
quantized to int8 per inference by the kernels: "dynamic range").

The quantizer is Google's AI Edge Quantizer (PyPI `ai-edge-quantizer`, pinned; installed with --no-deps, see
scripts/install.sh). It reads and writes .tflite files and quantizes FULLY_CONNECTED and EMBEDDING_LOOKUP weights
to 4 bits per channel or per block. Two things it does not do, done here:

1. The vocabulary table. onnx2tf writes the word lookup as GATHER, which the quantizer never quantizes (its policy
   lists EMBEDDING_LOOKUP for tables; forcing GATHER fails inside the quantizer). `gather_to_embedding_lookup`
   rewrites that one op in the float file: GATHER(table, ids) on axis 0 with 1-D int32 ids is exactly
   EMBEDDING_LOOKUP(ids, table), whose int4 / int8 per-row kernel is LiteRT's builtin (XNNPACK has no lookup;
   the op runs outside the delegate, like the int8 file's GATHER). The edit is made before quantizing: the
   quantizer's output keeps large buffers after the flatbuffer (offset/size), which the flatbuffer object API here
   would not carry over. The position and token-type tables (33 k values) stay float.
2. Which linears stay 8-bit: the recipe names modules (`Int4Recipe.keep_int8`); in the .tflite the weights have
   converter names, so each FULLY_CONNECTED weight is matched by value to the model's nn.Linear it came from
   (`fc_module_names`), and the recipe gets one exact-name rule for each op to keep at 8 bits.

Trap, measured: FULLY_CONNECTED with blockwise 4-bit weights is computed WRONGLY by LiteRT's builtin kernels (no
XNNPACK delegate): logits near 0 and 4.5 s a row on the default model, while XNNPACK computes it right. An app that
runs without the delegate would get garbage, so `check_int4_tflite` runs every 4-bit file both ways
(`BUILTIN_WITHOUT_DEFAULT_DELEGATES` is the interpreter's "no XNNPACK" mode) and the default recipe is per channel,
which both compute right. Measurements: docs/int4.md.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.core import metrics as numerics
from pipeline.core.artifact import Artifact, check_size
from pipeline.core.config import Int4Recipe, check_int4_recipe
from pipeline.core.errors import PipelineError
from pipeline.lower.int4_executorch import kept_int8, linear_names, recipe_details
from pipeline.runtimes import LiteRTRunner
from pipeline.formats.tflite_flatbuffer import builtin_code, constant, litert_schema, opcode_index, pack_model, read_model, text

# The sanity gate applied here to both kernel sets, before a file gets its final name (gross errors only: the
# validate stage judges the file on the whole eval set with [thresholds.int4]). The two kernel sets quantize the
# activations by their own rules (XNNPACK's dynamically quantized GEMMs, LiteRT's hybrid kernels), so their logits
# differ by about as much as each differs from float (0.19 vs 0.9-1.0 on the default model): each is compared with the float model, not with the other. The blockwise
# failure is gross (logits near 0: cosine ~0).
INT4_MIN_COSINE = 0.95
INDEX_TYPES = (2, 4)  # TensorType INT32, INT64


# --- 1. the vocabulary table: GATHER -> EMBEDDING_LOOKUP in the float file -------------------------------------


def gather_to_embedding_lookup(fp32: bytes, vocab_size: int) -> tuple[bytes, dict]:
    """The float .tflite with its vocabulary GATHER (a constant float [vocab_size, E] table, axis 0, 1-D int32 ids)
    as EMBEDDING_LOOKUP; what was rewritten. Raises when there is not exactly one such GATHER."""
    schema = litert_schema()
    model = read_model(fp32)
    graph = model.subgraphs[0]
    ops = schema.BuiltinOperator
    found = []
    for op in graph.operators:
        if builtin_code(model, op) != ops.GATHER:
            continue
        table, ids = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        if table.type != schema.TensorType.FLOAT32 or len(table.shape) != 2 or int(table.shape[0]) != vocab_size:
            continue
        if constant(model, table, np.float32) is None:
            continue
        axis = getattr(op.builtinOptions, "axis", 0) or 0
        batch_dims = getattr(op.builtinOptions, "batchDims", 0) or 0
        if axis != 0 or batch_dims != 0 or ids.type not in INDEX_TYPES or len(ids.shape) != 1:
            raise PipelineError(f"the vocabulary GATHER has axis {axis}, batch_dims {batch_dims}, ids of rank "
                                f"{len(ids.shape)} ({ids.type}): not an EMBEDDING_LOOKUP")
        found.append(op)
    if len(found) != 1:
        raise PipelineError(f"expected one GATHER of the [{vocab_size}, E] vocabulary table in the float .tflite, "
                            f"found {len(found)}")
    op = found[0]
    table_index, ids_index = int(op.inputs[0]), int(op.inputs[1])
    cast = None
    if graph.tensors[ids_index].type == schema.TensorType.INT64:  # EMBEDDING_LOOKUP takes int32 ids: CAST first
        ids_index, cast = _cast_to_int32(model, graph, schema, ids_index, graph.operators.index(op))
    op.opcodeIndex = opcode_index(model, schema, ops.EMBEDDING_LOOKUP)
    op.inputs = np.asarray([ids_index, table_index], dtype=np.int32)
    op.builtinOptionsType, op.builtinOptions = 0, None
    table = graph.tensors[table_index]
    return pack_model(model, len(fp32)), {"op": "EMBEDDING_LOOKUP", "table": text(table.name),
                                          "shape": [int(s) for s in table.shape], "ids_cast_to_int32": cast is not None}


def _cast_to_int32(model, graph, schema, source: int, position: int) -> tuple[int, object]:
    """A CAST int64 -> int32 of tensor `source`, inserted at `position` in the operator list; (its output, the op)."""
    original = graph.tensors[source]
    tensor = schema.TensorT()
    tensor.shape = np.asarray(original.shape, dtype=np.int32)
    if original.shapeSignature is not None:
        tensor.shapeSignature = np.asarray(original.shapeSignature, dtype=np.int32)
    tensor.type = schema.TensorType.INT32
    tensor.name = (text(original.name) + "/ids_int32").encode()
    buffer = schema.BufferT()
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    output = len(graph.tensors) - 1
    options = schema.CastOptionsT()
    options.inDataType, options.outDataType = schema.TensorType.INT64, schema.TensorType.INT32
    cast = schema.OperatorT()
    cast.opcodeIndex = opcode_index(model, schema, schema.BuiltinOperator.CAST)
    cast.inputs = np.asarray([source], dtype=np.int32)
    cast.outputs = np.asarray([output], dtype=np.int32)
    cast.builtinOptionsType = schema.BuiltinOptions.CastOptions
    cast.builtinOptions = options
    graph.operators.insert(position, cast)
    return output, cast


# --- 2. which FULLY_CONNECTED weight is which nn.Linear ------------------------------------------------------


def fc_module_names(tflite: bytes, linears: dict[str, np.ndarray]) -> dict[str, str]:
    """{FULLY_CONNECTED output tensor name: module name} for every FC whose constant weight is one of `linears`
    ({module name: float weight [out, in]}), matched by shape and value up to one scalar factor (to 1e-5 of the
    largest weight)."""
    schema = litert_schema()
    model = read_model(tflite)
    graph = model.subgraphs[0]
    by_shape: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for name, weight in linears.items():
        by_shape.setdefault(tuple(weight.shape), []).append((name, np.asarray(weight, dtype=np.float32)))
    result = {}
    for op in graph.operators:
        if builtin_code(model, op) != schema.BuiltinOperator.FULLY_CONNECTED:
            continue
        weight = graph.tensors[op.inputs[1]]
        if weight.type != schema.TensorType.FLOAT32:
            continue
        values = constant(model, weight, np.float32)
        if values is None:
            continue
        for name, candidate in by_shape.get(tuple(values.shape), []):
            # the converter may fold a constant factor into a weight (the attention's 1/sqrt(head size) into the
            # query projection): match up to one scalar
            factor = float((values * candidate).sum() / max(float((candidate * candidate).sum()), 1e-30))
            if np.abs(factor * candidate - values).max() <= 1e-5 * max(float(np.abs(values).max()), 1e-12):
                result[text(graph.tensors[op.outputs[0]].name)] = name
                break
    return result


# --- 3. the quantizer recipe ----------------------------------------------------------------------------------


def _granularity(group: int):
    from ai_edge_quantizer import qtyping

    if not group:
        return qtyping.QuantGranularity.CHANNELWISE
    try:
        return getattr(qtyping.QuantGranularity, f"BLOCKWISE_{group}")
    except AttributeError:
        raise PipelineError(f"[int4.litert] the LiteRT quantizer has no blocks of {group}") from None


def quantizer_recipe(recipe: Int4Recipe, keep_ops: list[str]) -> list[dict]:
    """The AI Edge Quantizer recipe (its JSON form) for `recipe`; `keep_ops`: FC output names kept at 8 bits."""
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    op = qtyping.TFLOperationName
    manager.add_dynamic_config(".*", op.FULLY_CONNECTED, 4,
                               _granularity(recipe.group_size if recipe.weights == "group" else 0))
    manager.add_dynamic_config(".*", op.EMBEDDING_LOOKUP, recipe.embedding_bits, _granularity(recipe.embedding_group_size))
    if keep_ops:  # the latest matching rule wins; an op's scope is its output names, each followed by ";"
        manager.add_dynamic_config("^(" + "|".join(re.escape(n) for n in keep_ops) + ");$", op.FULLY_CONNECTED, 8,
                                   qtyping.QuantGranularity.CHANNELWISE)
    return manager.get_quantization_recipe()


def quantize_tflite(fp32: bytes, recipe: Int4Recipe, vocab_size: int, linears: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The 4-bit .tflite from the float one, and what was done (table rewrite, ops kept at 8 bits, op counts)."""
    check_int4_recipe(recipe)
    unknown = [k for k in recipe.keep_int8 if not any(kept_int8(n, [k]) for n in linears)]
    if unknown:
        raise PipelineError(f"[int4] keep_int8 names no linear of the model: {unknown}; linears: {sorted(linears)}")
    prepared, table = gather_to_embedding_lookup(fp32, vocab_size)
    modules = fc_module_names(prepared, linears)
    keep = sorted(op for op, module in modules.items() if kept_int8(module, recipe.keep_int8))
    float_fcs = weight_types(prepared).get("FULLY_CONNECTED float32", 0)
    if recipe.keep_int8 and float_fcs != len(modules):
        raise PipelineError(f"[int4] keep_int8: {float_fcs - len(modules)} of {float_fcs} FULLY_CONNECTED weights in "
                            "the float .tflite match no linear of the model, so the ops to keep at 8 bits are unknown")
    try:
        from ai_edge_quantizer import quantizer
    except ImportError as err:
        raise PipelineError(f"the AI Edge Quantizer (ai-edge-quantizer) is not installed ({err}); "
                            "see scripts/install.sh") from None
    rules = quantizer_recipe(recipe, keep)
    engine = quantizer.Quantizer(bytearray(prepared))
    engine.load_quantization_recipe(rules)
    result = engine.quantize(enable_progress_report=False)
    quantized = bytes(result.quantized_model)
    details = {"vocabulary_table": table, "int8_fully_connected": len(keep),
               "fully_connected_by_module": len(modules), "weights_by_type": weight_types(quantized),
               "quantizer_recipe": _plain(rules)}
    return quantized, details


def weight_types(tflite: bytes) -> dict[str, int]:
    """{"FULLY_CONNECTED int4": ops, ...}: the weight type of every FC and table lookup (what the size rule guards)."""
    schema = litert_schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = schema.BuiltinOperator
    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    counts: dict[str, int] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == ops.FULLY_CONNECTED:
            weight, kind = graph.Tensors(op.Inputs(1)), "FULLY_CONNECTED"
        elif builtin in (ops.EMBEDDING_LOOKUP, ops.GATHER):
            weight, kind = graph.Tensors(op.Inputs(1 if builtin == ops.EMBEDDING_LOOKUP else 0)), (
                "EMBEDDING_LOOKUP" if builtin == ops.EMBEDDING_LOOKUP else "GATHER")
        else:
            continue
        if model.Buffers(weight.Buffer()).DataLength() == 0 and not model.Buffers(weight.Buffer()).Size():
            continue  # an activation, not a weight
        key = f"{kind} {names.get(weight.Type(), weight.Type()).lower()}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --- 4. the check: with and without XNNPACK ---------------------------------------------------------------------


def run_litert(path: Path, rows: list[dict[str, np.ndarray]], delegates: bool = True, num_threads: int = 2) -> np.ndarray:
    """Logits of every row in LiteRT's interpreter: with its default delegate (XNNPACK), or with the builtin
    kernels only (`delegates=False`: OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, what an app that does not
    apply XNNPACK runs)."""
    runner = LiteRTRunner(path, num_threads=num_threads, delegates=delegates)
    return np.concatenate([runner.run(row).reshape(1, -1) for row in rows])


def check_int4_tflite(path: Path, rows: list[dict[str, np.ndarray]], reference: np.ndarray,
                      builtin_rows: int | None = None) -> dict:
    """The file's metrics against `reference` with XNNPACK and with LiteRT's builtin kernels (no delegate) on the
    first `builtin_rows` rows (None: all); `failures`: why the file must not ship (empty when it may)."""
    delegated = run_litert(path, rows, delegates=True)
    count = len(rows) if builtin_rows is None else min(builtin_rows, len(rows))
    builtin = run_litert(path, rows[:count], delegates=False)
    result = {
        "xnnpack": _metrics(delegated, reference),
        "builtin": _metrics(builtin, reference[:count]),
        "builtin_vs_xnnpack_max_abs": numerics.max_abs_error(builtin, delegated[:count]),
        "rows": len(rows), "builtin_rows": count,
    }
    failures = []
    for mode, label in (("xnnpack", "with XNNPACK"), ("builtin", "LiteRT's builtin kernels (no XNNPACK)")):
        m = result[mode]
        if not m["finite"]:
            failures.append(f"{label}: non-finite logits")
        elif m["cosine"] < INT4_MIN_COSINE:
            failures.append(f"{label}: logit cosine {m['cosine']:.4f} < {INT4_MIN_COSINE} vs the float model")
    result["failures"] = failures
    return result


def _metrics(logits: np.ndarray, reference: np.ndarray) -> dict:
    return {"max_abs_error": numerics.max_abs_error(logits, reference), "cosine": numerics.cosine(logits, reference),
            "top1_agreement": numerics.top1_agreement(logits, reference), "finite": bool(np.isfinite(logits).all())}


# --- the function the build stage calls ----------------------------------------------------------------------


def lower_int4_tflite(float_artifact: Artifact, model, recipe: Int4Recipe, check_rows: list[dict[str, np.ndarray]],
                      reference: np.ndarray, out_path: Path | None = None) -> Artifact:
    """The verified float .tflite (an Artifact of the TFLite stage) -> `<name>.int4.tflite` beside it (or at
    `out_path`), checked with and without XNNPACK on `check_rows` against `reference` (the eager float logits of those
    rows, as the rows are fed: cut to their length for a dynamic file) and against the size rule; a file that fails
    is left as `<file>.rejected` and the error names why. `model`: the LoadedModel the float file was made from."""
    if float_artifact.precision != "fp32" or float_artifact.runtime != "litert":
        raise PipelineError(f"the 4-bit .tflite is made from the fp32 .tflite, not a {float_artifact.precision} "
                            f"{float_artifact.runtime} file", float_artifact.path)
    name = float_artifact.path.name.replace(".fp32.", ".int4.")
    out_path = Path(out_path) if out_path is not None else float_artifact.path.with_name(name)
    out_path.unlink(missing_ok=True)
    modules = dict(model.export_model.named_modules())
    linears = {n: modules[n].weight.detach().numpy() for n in linear_names(model.export_model)}
    quantized, extra = quantize_tflite(float_artifact.path.read_bytes(), recipe, model.spec.vocab_size, linears)
    scratch = out_path.with_name(out_path.name + ".unchecked")
    scratch.write_bytes(quantized)
    try:
        check = check_int4_tflite(scratch, check_rows, reference)
    except PipelineError:
        _reject(scratch, out_path)
        raise
    except Exception as err:
        _reject(scratch, out_path)
        raise PipelineError(f"LiteRT failed to run the 4-bit file ({type(err).__name__}: {err})", out_path) from None
    if check["failures"]:
        _reject(scratch, out_path)
        raise PipelineError("; ".join(check["failures"]) + " on the check rows: rejected", out_path)
    artifact = Artifact(out_path, "litert", "int4", list(float_artifact.inputs), list(float_artifact.outputs),
                        details={k: v for k, v in float_artifact.details.items()
                                 if k in ("converter", "onnx_opset", "onnx2tf_options", "max_length", "shapes")})
    shutil.move(str(scratch), str(out_path))
    try:
        check_size(artifact, model.num_parameters, model.spec.num_hidden_layers)
    except PipelineError as err:
        _reject(out_path, out_path)
        raise PipelineError(err.message, out_path) from None
    artifact.details.update({
        "quantization": {**recipe_details(recipe, model.export_model), "quantizer": "ai-edge-quantizer", **extra},
        "check": {k: v for k, v in check.items() if k != "failures"},
        "bytes": out_path.stat().st_size,
    })
    return artifact


def _plain(value):
    """The quantizer's recipe as JSON-ready data (its enums as their names)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    return value


def _reject(path: Path, final: Path) -> None:
    if path.exists():
        path.replace(final.with_name(final.name + ".rejected"))
