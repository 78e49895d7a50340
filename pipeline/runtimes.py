"""Run an artifact in the runtime that runs it on phones: executorch.runtime for .pte, LiteRT for .tflite.

Inputs are always bound by name (runtimes reorder and rename them) and cast to the dtype the file
declares (LiteRT files often take int32 where PyTorch had int64). int8 outputs are dequantized.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Runner:
    input_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def time_run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out = self.run(inputs)
        return out, time.perf_counter() - started


class ExecuTorchRunner(Runner):
    def __init__(self, path: Path, input_names: list[str]):
        try:
            from executorch.runtime import Runtime
            import executorch.kernels.quantized  # noqa: F401  registers quantized_decomposed::embedding_byte
        except ImportError as err:
            raise PipelineError(f"the ExecuTorch runtime is not installed ({err})", path) from None
        import torch

        self._torch = torch
        try:
            program = Runtime.get().load_program(Path(path))
            self._method = program.load_method("forward")
        except Exception as err:
            raise PipelineError(f"ExecuTorch cannot load the program ({type(err).__name__}: {err})", path) from None
        self.input_names = list(input_names)
        self.path = path

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [self._torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.int64)) for n in self.input_names]
        return self._method.execute(args)[0].numpy().astype(np.float32)


class LiteRTRunner(Runner):
    def __init__(self, path: Path, num_threads: int = 2):
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
        self._inputs = {name: d for name, d in details.items()}
        self.input_names = [canonical_input_name(n) for n in details]
        self._by_canonical = {canonical_input_name(n): n for n in details}
        self._outputs = self._runner.get_output_details()
        self.path = path

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        for canonical, name in self._by_canonical.items():
            if canonical not in inputs:
                raise PipelineError(f"model input {name!r} has no matching array", self.path)
            feed[name] = np.ascontiguousarray(inputs[canonical], dtype=self._inputs[name]["dtype"])
        result = self._runner(**feed)
        name, out = next(iter(result.items()))
        detail = self._outputs[name]
        if out.dtype in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)


def canonical_input_name(name: str) -> str:
    """'serving_default_input_ids:0' / 'args_0' / 'input_ids' -> 'input_ids' where recognisable."""
    for known in INPUT_NAMES:
        if known in name:
            return known
    return name


def open_runner(path: Path, runtime: str, input_names: list[str], num_threads: int = 2) -> Runner:
    path = Path(path)
    if not path.is_file():
        raise PipelineError("artifact file not found", path)
    if runtime == "executorch":
        return ExecuTorchRunner(path, input_names)
    if runtime == "litert":
        return LiteRTRunner(path, num_threads)
    raise PipelineError(f"unknown runtime {runtime!r}", path)
