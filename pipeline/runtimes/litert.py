"""LiteRT: a .tflite in the LiteRT interpreter (ai-edge-litert), through its signature runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.runtimes.base import Runner, canonical_input_name, register


@register("litert")
class LiteRTRunner(Runner):
    def __init__(self, path: Path, input_names: list[str] | None = None, num_threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise PipelineError(f"the LiteRT interpreter (ai-edge-litert) is not installed ({err})", path) from None
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self._runner = self._interpreter.get_signature_runner()
        except Exception as err:
            raise PipelineError(f"LiteRT cannot load the model ({type(err).__name__}: {err})", path) from None
        details = self._runner.get_input_details()
        self._inputs = dict(details)
        self.input_names = [canonical_input_name(n) for n in details]
        self._by_canonical = {canonical_input_name(n): n for n in details}
        self._outputs = self._runner.get_output_details()
        self.path = Path(path)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
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
