"""Validate stage: every artifact in its real runtime on the eval rows (outputs cached by the artifact's content
hash and the rows), judged against the float reference with the configured thresholds (`pipeline/numerics.py`).
Thresholds are not part of the cache key: changing them re-judges, it re-runs nothing."""
from __future__ import annotations

import numpy as np

from pipeline.artifact import Artifact
from pipeline.config import ThresholdConfig
from pipeline.data import sha256_file
from pipeline.numerics import ArtifactResult, judge, run_artifact
from pipeline.stage import OUTPUTS, Context, Stage, run_cached
from pipeline.tokenization import Encoded


def outputs_stage(artifact: Artifact, evaluation: Encoded) -> Stage[tuple[np.ndarray, list[float]]]:
    return Stage("outputs", [sha256_file(artifact.path), artifact.runtime, evaluation.input_ids.tolist(),
                             evaluation.attention_mask.tolist(), evaluation.token_type_ids.tolist()],
                 lambda: run_artifact(artifact, evaluation), OUTPUTS, label=f"run {artifact.file_name}")


def validate(artifacts: list[Artifact], evaluation: Encoded, reference: np.ndarray, labels: list[int] | None,
             thresholds: ThresholdConfig, ctx: Context) -> list[ArtifactResult]:
    results = []
    for artifact in artifacts:
        logits, latencies = run_cached(outputs_stage(artifact, evaluation), ctx)
        limits = thresholds.for_artifact(artifact.file_name, artifact.precision)
        result = judge(artifact, logits, latencies, reference, labels, limits)
        results.append(result)
        ctx.log(f"  {artifact.file_name}: {'PASS' if result.passed else 'FAIL'}"
                + ("" if result.passed else " — " + "; ".join(result.failures)))
    return results
