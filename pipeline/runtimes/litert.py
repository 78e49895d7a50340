"""LiteRT: a .tflite in the LiteRT interpreter (ai-edge-litert), through its signature runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.formats.tflite_flatbuffer import MAX_LENGTH_KEY, litert_schema, pack_model, read_model, text
from pipeline.runtimes.base import Runner, canonical_input_name, register


@register("litert")
class LiteRTRunner(Runner):
    def __init__(self, path: Path, input_names: list[str] | None = None, num_threads: int = 2, delegates: bool = True):
        """`delegates=False`: LiteRT's builtin kernels only, no XNNPACK (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        what an app runs that does not apply the delegate."""
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as err:
            raise PipelineError(f"the LiteRT interpreter (ai-edge-litert) is not installed ({err})", path) from None
        try:
            resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                                            experimental_op_resolver_type=resolver)
            self._runner = self._interpreter.get_signature_runner()
        except Exception as err:
            raise PipelineError(f"LiteRT cannot load the model ({type(err).__name__}: {err})", path) from None
        details = self._runner.get_input_details()
        self._inputs = dict(details)
        first = next(iter(details.values()))
        self.static = bool(np.all(first["shape_signature"] > 0))
        self.max_length = int(first["shape"][-1]) if self.static else tflite_max_length(path)
        self.input_names = [canonical_input_name(n) for n in details]
        self._by_canonical = {canonical_input_name(n): n for n in details}
        self._outputs = self._runner.get_output_details()
        self.path = Path(path)

    def signature(self) -> tuple[list[dict], list[dict]]:
        def specs(details: dict) -> list[dict]:  # as the TFLite stage records them in the manifest
            return [{"name": n, "shape": [int(s) for s in d.get("shape_signature", d["shape"])],
                     "dtype": np.dtype(d["dtype"]).name} for n, d in details.items()]

        return specs(self._inputs), specs(self._outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        inputs = self.fit_length({c: inputs[c] for c in self._by_canonical if c in inputs} or inputs)
        feed = {}
        for canonical, name in self._by_canonical.items():
            if canonical not in inputs:
                raise PipelineError(f"model input {name!r} has no matching array", self.path)
            feed[name] = np.ascontiguousarray(inputs[canonical], dtype=self._inputs[name]["dtype"])
        result = self._runner(**feed)
        name, out = next(iter(result.items()))
        detail = self._outputs[name]
        if out.dtype in (np.int8, np.uint8):  # litert-torch's static int8 output: dequantize
            scale, zero = detail["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)


def tflite_max_length(path: Path) -> int | None:
    """The `max_length` metadata entry of a .tflite (written by the TFLite stage for dynamic files), or None."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == MAX_LENGTH_KEY:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            try:
                return int(bytes(raw).decode())
            except (TypeError, ValueError):
                return None
    return None


def write_tflite_max_length(path: Path, max_length: int, num_labels: int | None = None) -> None:
    """Add (or replace) the `max_length` metadata entry of a .tflite; with `num_labels`, also declare the output
    `[1, num_labels]` (onnx2tf leaves a dynamic file's logits at shape [1, 1], signature [1, -1]; the class count
    does not depend on the length, and the interpreter computes the real shape when it allocates)."""
    schema = litert_schema()
    data = Path(path).read_bytes()
    model = read_model(data)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(str(int(max_length)).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = MAX_LENGTH_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if text(m.name) != MAX_LENGTH_KEY] + [entry]
    if num_labels:
        subgraph = model.subgraphs[0]
        for index in subgraph.outputs:
            tensor = subgraph.tensors[index]
            if tensor.shapeSignature is not None and len(tensor.shapeSignature) == 2:
                tensor.shape = np.asarray([1, num_labels], dtype=np.int32)
                tensor.shapeSignature = None
    Path(path).write_bytes(pack_model(model, len(data)))
