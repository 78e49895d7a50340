"""Metrics, defined once: how far outputs are from the float reference, and the thresholds check. Pure numpy: used
by the validation (pipeline/verify/validation.py), the converters' sanity checks, localization, the fallback,
bench and compress.

Metrics per artifact: max and mean abs logit error, cosine similarity (over all logits), top-1 agreement with
the reference (every row counts), task accuracy and its delta from the reference's (when labels exist),
confusion matrix, median latency (information only).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.core.config import Thresholds
from pipeline.core.errors import PipelineError


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of all values of `a` and `b` (float64); 1.0 for two zero arrays that are equal."""
    a, b = np.asarray(a).ravel().astype(np.float64), np.asarray(b).ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows whose arg-max is the reference's."""
    return float((np.asarray(logits).argmax(-1) == np.asarray(reference).argmax(-1)).mean())


def max_abs_error(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(logits, dtype=np.float64) - reference).max())


def teacher_agreement(logits: np.ndarray, teacher: np.ndarray) -> dict:
    """How closely a student follows its teacher on the same rows (no labels needed): top-1 agreement and the
    mean KL(teacher || student) of their softmax outputs at temperature 1."""
    logits, teacher = np.asarray(logits, dtype=np.float64), np.asarray(teacher, dtype=np.float64)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_s, log_t = log_softmax(logits), log_softmax(teacher)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    return {"top1_agreement": round(top1_agreement(logits, teacher), 4), "kl": round(float(kl.mean()), 4),
            "rows": len(logits)}


def paired_accuracy_gap(logits: np.ndarray, reference: np.ndarray, labels, groups=None) -> dict:
    """Accuracy of `logits` minus that of `reference` on the same labelled rows, in points, with the standard
    error of that difference from the per-row pairs (much smaller than two unpaired errors when the models
    mostly agree) and the discordant counts: rows only the reference gets right, rows only `logits` gets right.
    With `groups` (a group id per row, e.g. a text and its corrupted copies), the error treats each group as
    one draw (cluster-robust), since rows of a group are not independent."""
    labels = np.asarray(labels)
    right = np.asarray(logits).argmax(-1) == labels
    reference_right = np.asarray(reference).argmax(-1) == labels
    diff = right.astype(np.float64) - reference_right
    n = len(diff)
    if n and groups is not None:
        _, group = np.unique(np.asarray(groups), return_inverse=True)
        g = group.max() + 1
        sums = np.bincount(group, weights=diff - diff.mean(), minlength=g)
        error = float(np.sqrt((sums ** 2).sum() * g / max(1, g - 1)) / n)
    else:
        error = float(diff.std() / np.sqrt(n)) if n else float("nan")
    return {"points": round(100 * float(diff.mean()), 2),
            "paired_standard_error_points": round(100 * error, 2) if n else float("nan"),
            "only_reference_right": int((reference_right & ~right).sum()), "only_model_right": int((right & ~reference_right).sum()),
            "rows": n}


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


def compare(logits: np.ndarray, reference: np.ndarray, labels: list[int] | None, latencies: list[float]) -> Metrics:
    if len(reference) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against")
    error = np.abs(logits - reference)
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
        cosine=cosine(logits, reference),
        top1_agreement=top1_agreement(logits, reference),
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
