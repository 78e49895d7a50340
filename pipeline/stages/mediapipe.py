"""MediaPipe stage: for every verified plain LiteRT file `<name>.<precision>.tflite`, an extra file
`<name>.<precision>.mediapipe.tflite` that MediaPipe Tasks' `TextClassifier` loads and runs from text alone
(int32 ids/mask/segment_ids, softmax probabilities, TFLite metadata with the tokenizer file and the labels;
pipeline/mediapipe_model.py), then the gate for it, text in:

    make_files   plain .tflite -> .mediapipe.tflite (flatbuffer post-processing, no second conversion),
                 metadata read back and checked (a broken or missing one is a PipelineError, exit 2)
    validate     every file through the real `TextClassifier` on the eval TEXTS vs the float reference
                 (reference tokenizer + eager model), softmaxed: probability error, cosine, top-1 agreement,
                 accuracy; limits `thresholds.mediapipe-<precision>` (pipeline/config.py)
    drift        the tokenizer drift of the device tokenizer vs the reference (pipeline/tokenizer_drift.py)

Why extra files and not the plain ones made MediaPipe-ready: the plain files' contract (int64 input_ids /
attention_mask / token_type_ids in, logits out) is what the ExecuTorch twin, golden.json, the apps' own
runners and the gate use; the MediaPipe file needs int32 inputs and probabilities. Post-processing the verified
flatbuffer costs ~0.3 s and the vocabulary's bytes (~0.23 MB for the default WordPiece vocab) per file; a
second onnx2tf conversion would cost ~95 s. See README ("MediaPipe Tasks").
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.artifact import Artifact, TensorSpec
from pipeline.config import ThresholdConfig
from pipeline.errors import PipelineError
from pipeline.mediapipe_model import check_metadata, device_tokenizer, make_mediapipe_ready
from pipeline.data import sha256_file
from pipeline import numerics
from pipeline.numerics import ArtifactResult, run_rows
from pipeline.runtimes.mediapipe import TEXT_INPUT
from pipeline.stage import ARTIFACTS, JSON, OUTPUTS, Stage

Log = Callable[[str], None]
SUFFIX = ".mediapipe.tflite"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def file_name(plain: str) -> str:
    """albert.fp32.tflite -> albert.fp32.mediapipe.tflite"""
    return plain[: -len(".tflite")] + SUFFIX


def threshold_key(precision: str) -> str:
    return f"mediapipe-{'int8' if precision.startswith('int8') else precision}"


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


def run_texts(artifact: Artifact, texts: list[str]) -> tuple[np.ndarray, list[float]]:
    """The file in MediaPipe's TextClassifier on every text: probabilities [N, C] and seconds per text."""
    from pipeline.runtimes import open_runner

    check_metadata(artifact.path)  # a file whose metadata broke after the build fails here with its reason
    runner = open_runner(artifact.path, "mediapipe")
    try:
        if not texts:
            return np.zeros((0, len(runner.labels)), np.float32), []
        return run_rows(runner, [{TEXT_INPUT: text} for text in texts])
    except PipelineError:
        raise
    except Exception as err:
        raise PipelineError(f"MediaPipe cannot run the model ({type(err).__name__}: {err})", artifact.path) from None
    finally:
        runner.close()


def judge(artifact: Artifact, probabilities: np.ndarray, latencies: list[float], reference_logits: np.ndarray,
          labels: list[int] | None, thresholds: ThresholdConfig) -> ArtifactResult:
    """Probabilities vs the float reference's softmax; limits `mediapipe-<precision>` (or a per-artifact entry)."""
    limits = thresholds.for_artifact(artifact.file_name, threshold_key(artifact.precision))
    result = numerics.judge(artifact, probabilities, latencies, softmax(reference_logits), labels, limits)
    result.failures = [f.replace("max_abs_error", "max_abs_error (probability)", 1) for f in result.failures]
    return result


def validate(artifacts: list[Artifact], texts: list[str], reference_logits: np.ndarray, labels: list[int] | None,
             thresholds: ThresholdConfig, log: Log = print,
             outputs: Callable[[Artifact], tuple[np.ndarray, list[float]]] | None = None) -> list[ArtifactResult]:
    """Every MediaPipe file, text in, judged; `outputs` may serve cached (probabilities, latencies)."""
    results = []
    for artifact in artifacts:
        probabilities, latencies = (outputs or (lambda a: run_texts(a, texts)))(artifact)
        result = judge(artifact, probabilities, latencies, reference_logits, labels, thresholds)
        log(f"  {artifact.file_name} (mediapipe, text in): {'PASS' if result.passed else 'FAIL'}"
            + ("" if result.passed else " - " + "; ".join(result.failures)))
        results.append(result)
    return results


def drift(model, max_length: int, texts: list[str], log: Log = print) -> dict:
    """Tokenizer drift of the MediaPipe tokenizer vs the checkpoint's, eval texts + hard cases."""
    from pipeline.tokenizer_drift import measure

    started = time.perf_counter()
    found = measure(model.tokenizer, device_tokenizer(model.model_dir), max_length, texts)
    found["seconds"] = round(time.perf_counter() - started, 2)
    for name, s in found["sets"].items():
        log(f"  tokenizer drift ({found['tokenizer']}), {name}: {s['differ']}/{s['texts']} texts get other ids on "
            f"the device ({s['share']:.2%}); after app normalization {s['differ_after_app_normalization']}")
    return found


def mediapipe_stage(plain: list[Artifact], model, workdir: Path, log: Log = print) -> Stage[list[Artifact]]:
    """The MediaPipe-ready twins of the verified plain LiteRT files (cached by the plain files' hashes)."""
    plain = [a for a in plain if a.runtime == "litert" and not a.file_name.endswith(SUFFIX)]
    return Stage("mediapipe", [[sha256_file(a.path) for a in plain], model.source_sha256, model.label_names],
                 lambda: make_files(plain, model.model_dir, model.label_names, workdir, log), ARTIFACTS,
                 label="mediapipe files")


def outputs_stage(artifact: Artifact, texts: list[str]) -> Stage[tuple[np.ndarray, list[float]]]:
    """A twin's probabilities on the eval texts through the real TextClassifier (cached by file hash + texts)."""
    return Stage("outputs", [sha256_file(artifact.path), "mediapipe", texts], lambda: run_texts(artifact, texts),
                 OUTPUTS, label=f"run {artifact.file_name}")


def drift_stage(model, max_length: int, texts: list[str], log: Log = print) -> Stage[dict]:
    """The device tokenizer's drift from the reference tokenizer (cached by tokenizer file + texts)."""
    tokenizer = device_tokenizer(model.model_dir)
    return Stage("drift", [model.source_sha256, sha256_file(tokenizer.path), tokenizer.kind, max_length, texts],
                 lambda: drift(model, max_length, texts, log), JSON, label="tokenizer drift")
