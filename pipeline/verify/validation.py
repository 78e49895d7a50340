"""The one validation path: run a list of artifacts of any kind and judge them against the float reference.

    results = validate(artifacts, evidence, thresholds)                       # here, each file in a child process
    results = validate(artifacts, evidence, thresholds, Where(run=cached))    # the build: outputs from its cache
    results = validate(artifacts, evidence.head(32), thresholds,
                       Where(run=emulated, label="arm64 i8mm", baseline=x86)) # the ARM64 gate, under QEMU

What each file is fed (`file_inputs`): ids-in files the eval rows as apps feed them (dynamic files each text at
its own length, unpadded; static files padded to max_length) plus the length sweep (1, 2, 37, max_length) whose
drift per length band is recorded and gated with the same max_abs_error limit; MediaPipe files the eval texts,
whose probabilities are judged against the float reference's softmax with the `mediapipe-<precision>` limits.
A file that cannot run (a runtime error, a crash, a hang) gets `error` and no metrics: callers report it as
exit 2 after writing the reports of the files that did run. Thresholds are in no cache key: changing them
re-judges, it re-runs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from pipeline.core.artifact import Artifact
from pipeline.core.config import ThresholdConfig, Thresholds
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import Metrics, check_thresholds, compare, max_abs_error, top1_agreement
from pipeline.core.shapes import eval_rows, is_dynamic, length_drift, pad, real_lengths
from pipeline.core.tokenization import Encoded
from pipeline.runtimes.contained import WITHOUT_DELEGATES, FileJob, FileOutputs, run_contained
from pipeline.runtimes.mediapipe import TEXT_INPUT

Log = Callable[[str], None]
Run = Callable[[list[FileJob]], dict[str, FileOutputs]]


@dataclass
class ArtifactResult:
    artifact: Artifact
    metrics: Metrics | None  # None: the file could not run (`error`)
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None  # outputs on the eval rows (probabilities for MediaPipe files)
    where: str = ""  # "" here; e.g. "arm64 i8mm" under emulation
    baseline: dict | None = None  # vs the same file's outputs elsewhere (x86): max_abs_diff, top1_agreement
    error: str | None = None
    evidence: dict = field(default_factory=dict)  # measured but not gated (e.g. LiteRT without XNNPACK)
    latencies: list[float] = field(default_factory=list)
    builtin_logits: np.ndarray | None = None  # a 4-bit .tflite's outputs with LiteRT's builtin kernels only
    length_drift: dict | None = None  # its sweep's drift per length band; validate records it in the details

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    @property
    def label(self) -> str:
        return self.artifact.file_name + (f" [{self.where}]" if self.where else "")


@dataclass
class Evidence:
    """What artifacts are judged against: the eval rows, their texts, the float reference, labels, length sweep."""

    encoded: Encoded
    texts: list[str]  # as the reference saw them (clean_text): what MediaPipe files are fed
    reference: np.ndarray  # float reference logits [N, classes]
    labels: list[int] | None = None
    sweep: list[dict[str, np.ndarray]] = field(default_factory=list)  # unpadded rows of chosen lengths
    sweep_reference: np.ndarray | None = None

    def head(self, rows: int) -> "Evidence":
        """The first `rows` eval rows, no sweep (the emulated ARM64 run: seconds per row)."""
        e = self.encoded
        return Evidence(Encoded(e.input_ids[:rows], e.attention_mask[:rows], e.token_type_ids[:rows], 0),
                        self.texts[:rows], self.reference[:rows], None if self.labels is None else list(self.labels)[:rows])


@dataclass
class Where:
    """Where the files run: `run` gives their outputs (default: a child process here, see runtimes/contained.py);
    `label` names the place in every line; `baseline` holds other outputs of the same files to compare with."""

    run: Run = run_contained
    label: str = ""
    baseline: dict[str, np.ndarray] | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def takes_text(artifact: Artifact) -> bool:
    return artifact.runtime == "mediapipe"


def limits_for(artifact: Artifact, thresholds: ThresholdConfig) -> Thresholds:
    precision = artifact.precision
    if takes_text(artifact):
        precision = f"mediapipe-{'int8' if precision.startswith('int8') else precision}"
    return thresholds.for_artifact(artifact.file_name, precision)


def file_inputs(artifact: Artifact, evidence: Evidence) -> list[dict]:
    """What the file is fed: eval rows then sweep rows as it takes them, or the eval texts."""
    if takes_text(artifact):
        return [{TEXT_INPUT: text} for text in evidence.texts]
    dynamic = is_dynamic(artifact)
    width = evidence.encoded.input_ids.shape[1]
    return eval_rows(evidence.encoded, dynamic) + [r if dynamic else pad(r, width) for r in evidence.sweep]


def file_job(artifact: Artifact, evidence: Evidence) -> FileJob:
    """The file's inputs, and what it must declare (its manifest inputs and outputs, the rows' max_length)."""
    return FileJob(artifact, file_inputs(artifact, evidence), max_length=int(evidence.encoded.input_ids.shape[1]))


def judge(artifact: Artifact, got: FileOutputs, evidence: Evidence, thresholds: ThresholdConfig,
          where: Where) -> ArtifactResult:
    """One file's outputs -> metrics -> limits; its sweep's drift per length; its difference from the baseline."""
    limits = limits_for(artifact, thresholds)
    result = ArtifactResult(artifact, None, limits, where=where.label, error=got.error)
    label = result.label
    if got.error is not None:
        return result
    rows = len(evidence.reference)
    outputs, sweep = np.asarray(got.outputs), np.asarray(got.outputs)[rows:]
    reference = softmax(evidence.reference) if takes_text(artifact) else evidence.reference
    logits = outputs[:rows]
    if logits.shape != reference.shape:
        result.error = f"output shape {list(logits.shape)} does not match the reference's {list(reference.shape)}"
        return result
    result.logits, result.latencies = logits, list(got.latencies[:rows])
    result.metrics = compare(logits, reference, evidence.labels, result.latencies)
    other = (where.baseline or {}).get(artifact.file_name)
    # With a baseline (the ARM64 gate: a head of the eval rows, e.g. 32, where one row is 0.031 of top-1 agreement
    # and of accuracy), top-1 and accuracy are judged against the same file's run on the same rows (below), which
    # the full eval set judged against float; max_abs_error and cosine against float as everywhere.
    failures = check_thresholds(label, result.metrics, limits if other is None else
                                replace(limits, min_top1_agreement=0.0, max_accuracy_drop=1.0))
    if takes_text(artifact):
        failures = [f.replace("max_abs_error", "max_abs_error (probability)", 1) for f in failures]
    if len(sweep) and evidence.sweep_reference is not None:
        errors = {int(r["input_ids"].shape[1]): max_abs_error(g, e)
                  for r, g, e in zip(evidence.sweep, sweep, evidence.sweep_reference)}
        result.length_drift = length_drift(real_lengths(evidence.encoded.attention_mask), logits, reference, errors)
        failures += [f"{label}: max_abs_error {e:.4g} at length {n} > limit {limits.max_abs_error:.4g}"
                     for n, e in errors.items() if not e <= limits.max_abs_error]
    if other is not None:
        other = np.asarray(other)[:rows]
        result.baseline = {"max_abs_diff": max_abs_error(logits, other), "top1_agreement": top1_agreement(logits, other)}
        if not result.baseline["max_abs_diff"] <= limits.max_abs_error:
            failures.append(f"{label}: max_abs_diff {result.baseline['max_abs_diff']:.4g} vs the x86 run of the same "
                            f"file > limit {limits.max_abs_error:.4g}")
        if not result.baseline["top1_agreement"] >= limits.min_top1_agreement:
            failures.append(f"{label}: top1_agreement {result.baseline['top1_agreement']:.4f} with the x86 run of the "
                            f"same file < limit {limits.min_top1_agreement}")
    builtin = got.status.get("builtin")
    if builtin is not None:
        builtin = np.asarray(builtin)[:rows]
        result.evidence["no_xnnpack"] = {"max_abs_error": max_abs_error(builtin, reference),
                                         "top1_agreement": top1_agreement(builtin, reference)}
    result.failures = failures
    return result


def result_line(result: ArtifactResult) -> str:
    """The one line a validated file gets, wherever it ran."""
    what = f" ({result.artifact.runtime}{', text in' if takes_text(result.artifact) else ''})"
    if result.error is not None:
        return f"  {result.label}{what}: ERROR - {result.error}"
    m = result.metrics
    numbers = f" (max_abs {m.max_abs_error:.2e}, cosine {m.cosine:.6f}, top1 {m.top1_agreement:.4f})"
    return (f"  {result.label}{what}: {'PASS' if result.passed else 'FAIL'}{numbers}"
            + ("" if result.passed else " - " + "; ".join(result.failures)))


def checked_without_delegates(artifact: Artifact) -> bool:
    """4-bit .tflite files run a second time with LiteRT's builtin kernels only, gated like the first run: an app
    may not apply XNNPACK, and LiteRT's builtin 4-bit kernels compute blockwise weights wrongly (docs/int4.md)."""
    return artifact.runtime == "litert" and artifact.precision == "int4"


def validate(artifacts: list[Artifact], evidence: Evidence, thresholds: ThresholdConfig, where: Where | None = None,
             log: Log = print) -> list[ArtifactResult]:
    """Every artifact run where `where` says and judged against the float reference (one line each; a 4-bit
    .tflite a second line for its builtin-kernel run, whose failures and error are the file's)."""
    if len(evidence.reference) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against")
    where = where or Where()
    jobs = [file_job(a, evidence) for a in artifacts]
    jobs += [replace(j, delegates=False) for j in jobs if checked_without_delegates(j.artifact)]
    outputs = where.run(jobs)
    results = []
    for artifact in artifacts:
        got = outputs.get(artifact.file_name) or FileOutputs(error="no outputs came back")
        result = judge(artifact, got, evidence, thresholds, where)
        if result.length_drift is not None:
            artifact.details["length_drift"] = result.length_drift
        log(result_line(result))
        if checked_without_delegates(artifact):
            fold_builtin_run(result, outputs.get(artifact.file_name + WITHOUT_DELEGATES), evidence, thresholds, where, log)
        results.append(result)
    return results


def fold_builtin_run(result: ArtifactResult, got: FileOutputs | None, evidence: Evidence, thresholds: ThresholdConfig,
                     where: Where, log: Log) -> None:
    """The file's builtin-kernel run judged like the file (its own line), its verdict made the file's."""
    label = f"{where.label}, " if where.label else ""
    name = result.artifact.file_name
    baseline = None if where.baseline is None else {name: where.baseline.get(name + WITHOUT_DELEGATES)}
    builtin = judge(result.artifact, got or FileOutputs(error="no outputs came back"), evidence, thresholds,
                    Where(label=label + "no XNNPACK", baseline=baseline))
    result.builtin_logits = builtin.logits
    log(result_line(builtin))
    if builtin.error is not None and result.error is None:
        result.error = f"without XNNPACK: {builtin.error}"
    if builtin.metrics is not None:
        m = builtin.metrics
        result.evidence["no_xnnpack"] = {"max_abs_error": m.max_abs_error, "cosine": m.cosine,
                                         "top1_agreement": m.top1_agreement, "accuracy": m.accuracy, "gated": True}
        if builtin.baseline is not None:  # vs the builtin run of the same rows elsewhere (x86)
            result.evidence["no_xnnpack"].update({f"x86_{k}": v for k, v in builtin.baseline.items()})
    result.failures += builtin.failures


def run_errors(results: list[ArtifactResult]) -> PipelineError | None:
    """The one-line error for the files that could not run (exit 2), None when every file ran."""
    broken = [r for r in results if r.error is not None]
    if not broken:
        return None
    first = broken[0]
    more = f" (and {len(broken) - 1} other file(s): {', '.join(r.label for r in broken[1:])})" if len(broken) > 1 else ""
    return PipelineError(f"{first.error}{more}", first.label)


def evaluate(artifact: Artifact, evidence: Evidence, thresholds: ThresholdConfig) -> ArtifactResult:
    """One artifact through `validate` with no sweep and no log (the fallback's trials)."""
    [result] = validate([artifact], replace(evidence, sweep=[], sweep_reference=None), thresholds, log=lambda _: None)
    if result.error is not None:
        raise PipelineError(result.error, artifact.path)
    return result
