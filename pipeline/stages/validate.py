"""Validate stage: every artifact in its real runtime on the eval rows as apps feed them (dynamic files: each text
at its own length, unpadded; static files: padded to max_length), plus a length sweep (1, 2, 37, max_length)
with the drift per length band; outputs cached by the artifact's content hash and the rows, judged against the
float reference with the configured thresholds (`pipeline/numerics.py`). Thresholds are not part of any cache
key: changing them re-judges, it re-runs nothing."""
from __future__ import annotations

import numpy as np

from pipeline.artifact import Artifact
from pipeline.config import ThresholdConfig
from pipeline.data import sha256_file
from pipeline.numerics import ArtifactResult, judge, run_artifact
from pipeline.shapes import eval_rows, is_dynamic, length_drift, pad, real_lengths, sweep_reference, sweep_rows
from pipeline.stage import OUTPUTS, Context, Stage, run_cached
from pipeline.tokenization import Encoded


def outputs_stage(artifact: Artifact, rows: list[dict[str, np.ndarray]]) -> Stage[tuple[np.ndarray, list[float]]]:
    """The artifact's outputs on `rows` (input dicts as the file takes them) in its own runtime."""
    return Stage("outputs", [sha256_file(artifact.path), artifact.runtime,
                             [{k: v.tolist() for k, v in sorted(r.items())} for r in rows]],
                 lambda: run_artifact(artifact, rows), OUTPUTS, label=f"run {artifact.file_name}")


def validate(artifacts: list[Artifact], evaluation: Encoded, reference: np.ndarray, labels: list[int] | None,
             thresholds: ThresholdConfig, ctx: Context, model=None) -> list[ArtifactResult]:
    """With `model`, every artifact also runs the length sweep against the float reference; its drift per length
    band goes to its details (`length_drift`) and is gated with the same max_abs_error limit."""
    lengths = real_lengths(evaluation.attention_mask)
    sweep = sweep_rows(model.tokenizer, evaluation.input_ids.shape[1]) if model is not None else []
    sweep_expected = sweep_reference(model, sweep) if sweep else None
    results = []
    for artifact in artifacts:
        rows = eval_rows(evaluation, is_dynamic(artifact))
        swept = sweep if is_dynamic(artifact) else [pad(r, evaluation.input_ids.shape[1]) for r in sweep]
        # One run (one load of the file) for the eval rows and the sweep rows; latencies are the eval rows' only.
        outputs, latencies = run_cached(outputs_stage(artifact, rows + swept), ctx)
        logits, got, latencies = outputs[: len(rows)], outputs[len(rows):], latencies[: len(rows)]
        limits = thresholds.for_artifact(artifact.file_name, artifact.precision)
        result = judge(artifact, logits, latencies, reference, labels, limits)
        if sweep:
            errors = {int(r["input_ids"].shape[1]): float(np.abs(np.asarray(g, np.float64) - e).max())
                      for r, g, e in zip(sweep, got, sweep_expected)}
            artifact.details["length_drift"] = length_drift(lengths, logits, reference, errors)
            result.failures += [f"{artifact.file_name}: max_abs_error {e:.4g} at length {n} > limit {limits.max_abs_error:.4g}"
                                for n, e in errors.items() if not e <= limits.max_abs_error]
        results.append(result)
        ctx.log(f"  {artifact.file_name}: {'PASS' if result.passed else 'FAIL'}"
                + ("" if result.passed else " — " + "; ".join(result.failures)))
    return results
