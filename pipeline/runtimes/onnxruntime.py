"""ONNX Runtime (CPU): the baseline a user would otherwise pick (bench)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.runtimes.base import Runner, canonical_input_name, register


@register("onnxruntime")
class OnnxRuntimeRunner(Runner):
    def __init__(self, path: Path, input_names: list[str] | None = None, num_threads: int = 2, profile_prefix: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise PipelineError(f"ONNX Runtime cannot load the model ({type(err).__name__}: {err})", path) from None
        self._names = [i.name for i in self.session.get_inputs()]
        self.input_names = [canonical_input_name(n) for n in self._names]
        self.path = Path(path)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {n: np.ascontiguousarray(inputs[c], dtype=np.int64) for n, c in zip(self._names, self.input_names)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
