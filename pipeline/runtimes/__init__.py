"""One runtime layer: `open_runner(path, runtime, input_names, num_threads)` for every runtime, found by name.

    executorch    .pte in executorch.runtime               (runtimes/executorch.py)
    litert        .tflite in the LiteRT interpreter        (runtimes/litert.py)
    onnxruntime   .onnx in ONNX Runtime (bench baseline)   (runtimes/onnxruntime.py)
    torch-hf      eager transformers ALBERT (reference)    (runtimes/eager.py)
    torch-export  eager export-friendly ALBERT             (runtimes/eager.py)
    mediapipe     MediaPipe-ready .tflite in MediaPipe's TextClassifier, TEXT in (runtimes/mediapipe.py)

Runner modules import their runtime lazily (in the constructor), so importing this package is cheap.
"""
from pipeline.runtimes.base import INPUT_NAMES, RUNNERS, Runner, canonical_input_name, open_runner, register, run_rows
from pipeline.runtimes import eager, executorch, litert, mediapipe, onnxruntime  # noqa: F401,E402  (register themselves)
from pipeline.runtimes.executorch import ExecuTorchRunner  # noqa: E402
from pipeline.runtimes.litert import LiteRTRunner  # noqa: E402


def set_threads(kinds: set[str], num_threads: int) -> None:
    """Every thread knob of the runtimes in `kinds`, before anything is loaded (bench workers)."""
    if "executorch" in kinds:
        executorch.set_threads(num_threads)
    if kinds & {"executorch", "torch-hf", "torch-export"}:
        eager.set_threads(num_threads)


__all__ = ["INPUT_NAMES", "RUNNERS", "Runner", "canonical_input_name", "open_runner", "register", "run_rows", "set_threads",
           "ExecuTorchRunner", "LiteRTRunner"]
