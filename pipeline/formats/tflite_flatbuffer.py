"""Reading and writing .tflite flatbuffers through the TFLite schema's generated object API (ModelT)."""
from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError

TFLITE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16  # what TFLite's converter uses; unaligned constant buffers are copied at load, not mmapped
MAX_LENGTH_KEY = "max_length"  # TFLite metadata entry of a dynamic-length file: its longest input, ASCII digits


def litert_schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(tflite: bytes, schema=None):
    """The flatbuffer as a mutable ModelT (`schema`: the generated module to use; LiteRT's by default)."""
    schema = schema or litert_schema()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    except Exception as err:
        raise PipelineError(f"not a TFLite flatbuffer ({type(err).__name__}: {err})") from None
    for buffer in model.buffers or []:
        # Buffers stored after the flatbuffer (offset/size from the file's start; ai-edge-quantizer writes some):
        # taken in, since pack_model writes a new flatbuffer with nothing after it.
        if buffer.offset is not None and buffer.offset > 1:
            if buffer.offset + buffer.size > len(tflite):
                raise PipelineError(f"buffer at offset {buffer.offset} runs past the file's end ({len(tflite)} bytes)")
            buffer.data = np.frombuffer(tflite, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.offset = buffer.size = 0
    return model


def pack_model(model, size_hint: int, schema=None) -> bytes:
    """The ModelT as a .tflite flatbuffer with every constant buffer 16-byte aligned (the generated object API
    aligns uint8 vectors to 1 byte only)."""
    import flatbuffers

    schema = schema or litert_schema()

    def aligned_vector(builder, data: np.ndarray) -> int:
        raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
        builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
        builder.head = builder.head - len(raw)
        builder.Bytes[builder.Head():builder.Head() + len(raw)] = raw
        return builder.EndVector()

    builder = flatbuffers.Builder(size_hint + 1024)
    vectors = {}
    for index, buffer in enumerate(model.buffers or []):  # data vectors first (no nesting inside tables)
        if buffer.data is not None and len(buffer.data):
            vectors[index] = aligned_vector(builder, np.asarray(buffer.data))
    saved = [(b, b.data) for b in model.buffers or []]
    offsets = []
    for index, buffer in enumerate(model.buffers or []):
        schema.BufferStart(builder)
        if index in vectors:
            schema.BufferAddData(builder, vectors[index])
        schema.BufferAddOffset(builder, buffer.offset)
        schema.BufferAddSize(builder, buffer.size)
        offsets.append(schema.BufferEnd(builder))

    class Packed:  # stands in for a BufferT whose table is already written
        def __init__(self, offset):
            self.offset = offset

        def Pack(self, _builder):
            return self.offset

    model.buffers = [Packed(o) for o in offsets]
    try:
        builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    finally:
        model.buffers = [b for b, _ in saved]
    return bytes(builder.Output())


def builtin_code(model, op) -> int:
    return opcode_builtin(model.operatorCodes[op.opcodeIndex])


def opcode_builtin(code) -> int:
    """An OperatorCodeT's builtin operator (schema 3a keeps codes < 127 in the deprecated field too)."""
    return max(code.builtinCode or 0, code.deprecatedBuiltinCode or 0)


def constant(model, tensor, dtype) -> np.ndarray | None:
    """The tensor's constant data as `dtype` in its shape, or None when it has no buffer data."""
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype).reshape([int(s) for s in tensor.shape])


def text(value) -> str:
    """A flatbuffer string field as str (the object API gives bytes; None is "")."""
    return value.decode() if isinstance(value, bytes) else (value or "")


def opcode_index(model, schema, builtin: int) -> int:
    """The index of `builtin`'s operator code in `model` (an unpacked ModelT), added when the model has none."""
    for i, code in enumerate(model.operatorCodes or []):
        if opcode_builtin(code) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1
