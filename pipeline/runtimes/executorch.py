"""ExecuTorch: a .pte in `executorch.runtime` (XNNPACK and the quantized kernels registered)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.runtimes.base import Runner, register

_threads_set: list[int] = []
# ExecuTorch's ScalarType codes -> numpy dtype names (the manifest's)
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


def set_threads(num_threads: int) -> None:
    """ExecuTorch's thread pool size. Only valid before the first program of the process loads (after: a
    `malloc(): invalid next size` crash), so only the first call takes effect."""
    if _threads_set:
        return
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(num_threads)
    _threads_set.append(num_threads)


@register("executorch")
class ExecuTorchRunner(Runner):
    def __init__(self, path: Path, input_names: list[str], num_threads: int = 2):
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
            # sizes of a bounded dynamic input are its upper bound (what memory is planned for)
            meta = program.metadata("forward")
            self._signature = ([{"name": None, "shape": list(meta.input_tensor_meta(i).sizes()),
                                 "dtype": _DTYPES.get(int(meta.input_tensor_meta(i).dtype()))}
                                for i in range(meta.num_inputs())],
                               [{"name": None, "shape": list(meta.output_tensor_meta(i).sizes()),
                                 "dtype": _DTYPES.get(int(meta.output_tensor_meta(i).dtype()))}
                                for i in range(meta.num_outputs())])
            self.max_length = int(meta.input_tensor_meta(0).sizes()[-1])
        except Exception as err:
            raise PipelineError(f"ExecuTorch cannot load the program ({type(err).__name__}: {err})", path) from None
        self.input_names = list(input_names)
        self.path = Path(path)
        self.static = None  # unknown until a shorter input is tried: a static program refuses to resize

    def signature(self) -> tuple[list[dict], list[dict]]:
        return self._signature

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {n: inputs[n] for n in self.input_names}
        fitted = self.fit_length(inputs)
        try:
            return self._execute(fitted)
        except Exception:
            if self.static is None and next(iter(fitted.values())).shape[-1] < self.max_length:
                # "Attempted to resize a static tensor": a static [1, max_length] program; pad from now on
                self.static = True
                return self._execute(self.fit_length(inputs))
            raise

    def _execute(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [self._torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.int64)) for n in self.input_names]
        out = self._method.execute(args)[0].numpy().astype(np.float32)
        if self.static is None and args[0].shape[-1] < self.max_length:
            self.static = False
        return out
