"""Dynamic-range int8 .tflite: embedding tables other than the vocabulary's are put back to float.

TFLite's GATHER takes an int8 table with one scale for the whole table, and the dynamic-range quantizer gives
every table of over 1024 values one. For the position table that is lossy: in the default model its row 0
(the [CLS] position) reaches 1.95, ten times the median row's 0.195, so one scale leaves the other rows about
13 levels each way; it flipped 0.9% of the test predictions on its own (top-1 0.982 -> 0.991 with the table
float, for 0.2 MB). The vocabulary table is what int8 is for (V x E: 11.7 MB float for the default model) and
stays int8.

The float values come from the fp32 file the same conversion wrote (the same graph before quantization):
each int8 table is matched to the float constant of its shape that it dequantizes to, within half a
quantization step, so a mismatch is an error rather than a wrong table. The GATHER then outputs float and the
DEQUANTIZE behind it is removed.
"""
from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.formats.tflite_flatbuffer import builtin_code, constant, litert_schema, pack_model, read_model, text

INT8_TABLES = ("all", "vocabulary")  # TFLiteConfig.int8_tables


def keep_tables_float(int8: bytes, fp32: bytes, vocab_size: int) -> tuple[bytes, list[dict]]:
    """The int8 file with every int8 GATHER table except the [vocab_size, E] one float; what was restored."""
    schema = litert_schema()
    model, reference = read_model(int8), read_model(fp32)
    graph = model.subgraphs[0]
    ops = schema.BuiltinOperator
    restored = []
    for op in list(graph.operators):
        if builtin_code(model, op) != ops.GATHER:
            continue
        table = graph.tensors[op.inputs[0]]
        if table.type != schema.TensorType.INT8 or table.quantization is None or int(table.shape[0]) == vocab_size:
            continue
        values = constant(model, table, np.int8)
        if values is None:
            continue
        scale = float(np.asarray(table.quantization.scale)[0])
        table_float = _float_twin(reference, values.astype(np.float32) * scale, scale, text(table.name))
        table.type, table.quantization = schema.TensorType.FLOAT32, None
        model.buffers[table.buffer].data = np.frombuffer(table_float.tobytes(), dtype=np.uint8)
        gathered = op.outputs[0]
        graph.tensors[gathered].type, graph.tensors[gathered].quantization = schema.TensorType.FLOAT32, None
        for dequantize in [o for o in graph.operators if builtin_code(model, o) == ops.DEQUANTIZE and o.inputs[0] == gathered]:
            _bypass(graph, dequantize)
        restored.append({"table": text(table.name), "shape": [int(s) for s in table.shape],
                         "bytes_added": table_float.nbytes - values.nbytes})
    return (pack_model(model, len(int8) + sum(r["bytes_added"] for r in restored)) if restored else int8), restored


def _float_twin(reference, dequantized: np.ndarray, scale: float, name: str) -> np.ndarray:
    """The fp32 file's constant that `dequantized` came from (same shape, within half a step everywhere)."""
    best, float32 = None, litert_schema().TensorType.FLOAT32
    for tensor in reference.subgraphs[0].tensors:
        if tensor.type != float32 or [int(s) for s in tensor.shape] != list(dequantized.shape):
            continue
        values = constant(reference, tensor, np.float32)
        if values is None:
            continue
        error = float(np.abs(values - dequantized).max())
        if best is None or error < best[0]:
            best = (error, values)
    if best is None or best[0] > 0.5 * scale * 1.001:
        raise PipelineError(f"int8 table {name} {list(dequantized.shape)} has no float counterpart in the fp32 file")
    return np.ascontiguousarray(best[1], dtype=np.float32)


def _bypass(graph, op) -> None:
    """Remove `op` (one input, one output of the same values) and feed its consumers its input."""
    source, target = op.inputs[0], op.outputs[0]
    graph.operators.remove(op)
    for consumer in graph.operators:
        consumer.inputs = np.asarray([source if i == target else i for i in consumer.inputs], dtype=np.int32)
    graph.outputs = np.asarray([source if i == target else i for i in graph.outputs], dtype=np.int32)
