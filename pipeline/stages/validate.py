"""Validate stage: every artifact in its real runtime on the eval texts, against the float reference.

Metrics per artifact: max and mean abs logit error, cosine similarity (over all logits), top-1 agreement
with the reference, task accuracy and its delta from the reference's (when labels exist), confusion
matrix, median latency (information only). Thresholds decide pass/fail; an empty eval set or an artifact
that cannot run is an error (exit 2), never a pass.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.artifact import Artifact
from pipeline.config import ThresholdConfig, Thresholds
from pipeline.errors import PipelineError
from pipeline.runtimes import open_runner
from pipeline.tokenization import Encoded


@dataclass
class Metrics:
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    top1_agreement: float
    accuracy: float | None
    reference_accuracy: float | None
    accuracy_delta: float | None
    confusion: list[list[int]] | None
    latency_ms_median: float
    rows: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ArtifactResult:
    artifact: Artifact
    metrics: Metrics
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


def compare(logits: np.ndarray, reference: np.ndarray, labels: list[int] | None, latencies: list[float]) -> Metrics:
    if len(reference) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against")
    error = np.abs(logits - reference)
    flat_a, flat_b = logits.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    cosine = float(flat_a @ flat_b / max(np.linalg.norm(flat_a) * np.linalg.norm(flat_b), 1e-30))
    predicted, expected = logits.argmax(-1), reference.argmax(-1)
    accuracy = reference_accuracy = delta = confusion = None
    if labels is not None:
        truth = np.asarray(labels)
        accuracy = float((predicted == truth).mean())
        reference_accuracy = float((expected == truth).mean())
        delta = accuracy - reference_accuracy
        classes = reference.shape[1]
        matrix = np.zeros((classes, classes), dtype=int)
        np.add.at(matrix, (truth, predicted), 1)
        confusion = matrix.tolist()
    return Metrics(
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        cosine=cosine,
        top1_agreement=float((predicted == expected).mean()),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        accuracy_delta=delta,
        confusion=confusion,
        latency_ms_median=float(np.median(latencies) * 1000) if latencies else float("nan"),
        rows=len(reference),
    )


def check_thresholds(name: str, metrics: Metrics, limits: Thresholds) -> list[str]:
    """One message per violated limit: artifact, metric, value and limit."""
    failures = []
    if not metrics.max_abs_error <= limits.max_abs_error:  # `not <=` also catches NaN
        failures.append(f"{name}: max_abs_error {metrics.max_abs_error:.4g} > limit {limits.max_abs_error:.4g}")
    if not metrics.cosine >= limits.min_cosine:
        failures.append(f"{name}: cosine {metrics.cosine:.6f} < limit {limits.min_cosine}")
    if not metrics.top1_agreement >= limits.min_top1_agreement:
        failures.append(f"{name}: top1_agreement {metrics.top1_agreement:.4f} < limit {limits.min_top1_agreement}")
    if metrics.accuracy_delta is not None and not -metrics.accuracy_delta <= limits.max_accuracy_drop:
        failures.append(
            f"{name}: accuracy {metrics.accuracy:.4f} is {-metrics.accuracy_delta:.4f} below the float model's "
            f"{metrics.reference_accuracy:.4f} > limit {limits.max_accuracy_drop}"
        )
    return failures


def run_artifact(artifact: Artifact, encoded: Encoded, num_threads: int = 2) -> tuple[np.ndarray, list[float]]:
    runner = open_runner(artifact.path, artifact.runtime, [t.name for t in artifact.inputs], num_threads)
    outputs, latencies = [], []
    runner.run(encoded.row(0))  # warm-up
    for index in range(len(encoded)):
        started = time.perf_counter()
        outputs.append(runner.run(encoded.row(index)))
        latencies.append(time.perf_counter() - started)
    return np.concatenate(outputs).reshape(len(encoded), -1), latencies


def validate(
    artifacts: list[Artifact],
    encoded: Encoded,
    reference: np.ndarray,
    labels: list[int] | None,
    thresholds: ThresholdConfig,
    log=print,
) -> list[ArtifactResult]:
    if len(encoded) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against")
    results = []
    for artifact in artifacts:
        started = time.perf_counter()
        logits, latencies = run_artifact(artifact, encoded)
        metrics = compare(logits, reference, labels, latencies)
        limits = thresholds.for_artifact(artifact.file_name, artifact.precision)
        result = ArtifactResult(artifact, metrics, limits, check_thresholds(artifact.file_name, metrics, limits), logits)
        results.append(result)
        log(f"  validate {artifact.file_name}: {'PASS' if result.passed else 'FAIL'} "
            f"(max_abs {metrics.max_abs_error:.2e}, cosine {metrics.cosine:.6f}, top1 {metrics.top1_agreement:.4f}"
            + (f", accuracy {metrics.accuracy:.4f}" if metrics.accuracy is not None else "")
            + f", {metrics.latency_ms_median:.2f} ms median) [{time.perf_counter() - started:.1f} s]")
    return results
