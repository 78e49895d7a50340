"""MediaPipe files: for every verified plain LiteRT file `<name>.<precision>.tflite`, an extra file
`<name>.<precision>.mediapipe.tflite` that MediaPipe Tasks' `TextClassifier` loads and runs from text alone
(int32 ids/mask/segment_ids, softmax probabilities, TFLite metadata with the tokenizer file and the labels;
pipeline/formats/mediapipe.py). Made by flatbuffer post-processing of the verified file, with its metadata read back
and checked (a broken or missing one is a PipelineError, exit 2); validated text in like every other file
(pipeline/verify/validation.py).

Why extra files and not the plain ones made MediaPipe-ready: the plain files' contract (int64 input_ids /
attention_mask / token_type_ids in, logits out) is what the ExecuTorch twin, golden.json, the apps' own
runners and the gate use; the MediaPipe file needs int32 inputs and probabilities. Post-processing the verified
flatbuffer costs ~0.3 s and the vocabulary's bytes (~0.23 MB for the default WordPiece vocab) per file; a
second onnx2tf conversion would cost ~95 s.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pipeline.core.artifact import Artifact, TensorSpec
from pipeline.formats.mediapipe import device_tokenizer, make_mediapipe_ready

Log = Callable[[str], None]
SUFFIX = ".mediapipe.tflite"


def file_name(plain: str) -> str:
    """albert.fp32.tflite -> albert.fp32.mediapipe.tflite"""
    return plain[: -len(".tflite")] + SUFFIX


def make_files(plain: list[Artifact], model_dir: Path, labels: list[str], workdir: Path, log: Log = print) -> list[Artifact]:
    """One MediaPipe-ready file per plain LiteRT artifact, in `workdir`."""
    tokenizer = device_tokenizer(model_dir)
    made = []
    for source in plain:
        if source.runtime != "litert" or source.file_name.endswith(SUFFIX):
            continue
        target = Path(workdir) / file_name(source.file_name)
        started = time.perf_counter()
        info = make_mediapipe_ready(source.path, target, labels, tokenizer)
        seconds = time.perf_counter() - started
        log(f"  {target.name}: {target.stat().st_size:,} bytes ({target.stat().st_size - source.path.stat().st_size:+,} "
            f"vs {source.file_name}), {info['tokenizer']} tokenizer, {seconds:.2f} s")
        made.append(Artifact(
            path=target, runtime="mediapipe", precision=source.precision,
            inputs=[TensorSpec("text", [1], "string")],
            outputs=[TensorSpec(info["output"], [1, len(labels)], "float32")],
            details={"made_from": source.file_name, "made_by": "flatbuffer post-processing (CAST int32 in, SOFTMAX out) "
                     "+ TFLite metadata (mediapipe schema)", "seconds": round(seconds, 3),
                     "tokenizer": info["tokenizer"], "tokenizer_file": info["tokenizer_file"],
                     "max_length": info["max_length"], "labels": info["labels"], "model_inputs": info["inputs"],
                     "output": "probabilities (softmax)", "min_parser_version": info["min_parser_version"],
                     "quantization": source.details.get("quantization"), "app_api": "TextClassifier.classify(text)"},
        ))
    return made
