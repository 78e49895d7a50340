"""`--auto-fallback`: keep the most sensitive modules of a failing int8 ExecuTorch artifact in float until
its thresholds hold, then rewrite the file, golden.json and manifest.json atomically.

Search. Candidates are the modules ranked by their *local* int8 error (gate/localize.py): first the
quantized leaves (Linear layers; the word-embedding table, kept float by turning off its int8 table),
then whole blocks (attention, layer) for error that comes from ops between the Linears (bmm, softmax,
adds). Each candidate set is a prefix of that ranking. A prefix is first judged cheaply: the PT2E int8
model with those modules float, run eagerly in PyTorch on the eval rows, against the thresholds. Prefix
sizes grow 1, 2, 4, ... until the eager model passes, then a bisection finds the shortest passing
prefix. Only that candidate is lowered to a .pte (the expensive step) and judged where it counts: in
the ExecuTorch runtime, against the same thresholds. Should the runtime disagree with the eager
prediction, the next longer prefix is lowered, and so on. What stays float and what it costs (bytes,
median latency before/after on the eval rows) is recorded in the artifact's manifest entry and the report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.core.artifact import Artifact
from pipeline.core.config import QuantizeConfig, ThresholdConfig
from pipeline.core.data import LabeledTexts, sha256_file
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import Metrics, check_thresholds, compare
from pipeline.core.shapes import is_dynamic
from pipeline.core.tokenization import Encoded, encode
from pipeline.gate.localize import Localization, eager_logits, recipe_from_details
from pipeline.lower.executorch import executorch_file
from pipeline.lower.quantize import calibrate_and_convert
from pipeline.lower.trace import trace
from pipeline.bundle import replace_folder
from pipeline.verify.report import result_dict
from pipeline.verify.validation import ArtifactResult, Evidence, evaluate
from pipeline.runtimes.contained import FileJob, run_contained

Log = Callable[[str], None]
WORD_EMBEDDING = "albert.embeddings.word_embeddings"
LEAF_KINDS = ("Linear", "Embedding")
BLOCK_KINDS = ("AlbertAttention", "AlbertLayer")
MIN_LOCAL_ERROR = 1e-6  # modules whose own error is below this are already float (nothing to gain)


def candidates(localization: Localization, recipe: QuantizeConfig) -> list[str]:
    """Module names to keep float, most sensitive first.

    A module's local error includes the quantization of its output activation, which XNNPACK's quantizer
    places at the *consumer*'s input: for the word-embedding lookup that is the add of the embedding block,
    so the lookup is fixed by keeping `albert.embeddings` float (its int8 table is per-row and rarely the
    cause; turning the table fp32 is the last resort)."""
    ranked = [e for e in localization.ranking if e["local_error"] > MIN_LOCAL_ERROR]
    leaves = [e["module"].rsplit(".", 1)[0] if e["kind"] == "Embedding" else e["module"]
              for e in ranked if e["kind"] in LEAF_KINDS]
    blocks = [e["module"] for e in ranked if e["kind"] in BLOCK_KINDS]
    done = set(recipe.keep_float_names)
    if not recipe.quantize_embedding:
        done.add(WORD_EMBEDDING)
    ordered = list(dict.fromkeys(leaves + blocks + [WORD_EMBEDDING]))
    return [m for m in ordered if m not in done]


def _recipe_with(recipe: QuantizeConfig, keep: list[str]) -> QuantizeConfig:
    names = list(recipe.keep_float_names)
    names += [m for m in keep if m != WORD_EMBEDDING and m not in names]
    return replace(recipe, keep_float=list(recipe.keep_float), keep_float_names=names,
                   quantize_embedding=recipe.quantize_embedding and WORD_EMBEDDING not in keep)


def _summary(metrics: Metrics, failures: list[str]) -> dict:
    return {"max_abs_error": metrics.max_abs_error, "cosine": metrics.cosine, "top1_agreement": metrics.top1_agreement,
            "accuracy_delta": metrics.accuracy_delta, "passed": not failures, "failures": failures}


@dataclass
class Fallback:
    """What the fallback works from: the folder and its manifest, the float reference, the eval evidence, the
    calibration texts of the build and the thresholds."""

    folder: Path
    manifest: dict
    model: object  # LoadedModel
    evidence: Evidence
    calibration: LabeledTexts
    thresholds: ThresholdConfig
    thresholds_source: str = "defaults"


class Search:
    def __init__(self, fb: Fallback, result: ArtifactResult, recipe: QuantizeConfig, calibration: Encoded,
                 workdir: Path, log: Log):
        self.model, self.result, self.recipe = fb.model, result, recipe
        encoded = fb.evidence.encoded
        self.calibration, self.evidence = calibration, fb.evidence
        self.encoded, self.reference, self.labels = encoded, fb.evidence.reference, fb.evidence.labels
        self.limits = result.thresholds
        self.workdir, self.log = workdir, log
        self.input_names = [t.name for t in result.artifact.inputs]
        check = Encoded(encoded.input_ids[:8], encoded.attention_mask[:8], encoded.token_type_ids[:8], 0)
        dynamic = is_dynamic(result.artifact)  # keep the file's shape contract
        self.traced = trace(self.model, check, use_token_type_ids="token_type_ids" in self.input_names,
                            shapes="dynamic" if dynamic else "static")
        self.trials: list[dict] = []
        self.lowerings = 0
        self._eager: dict[int, bool] = {}

    def eager_passes(self, keep: list[str]) -> bool:
        key = len(keep)
        if key in self._eager:
            return self._eager[key]
        recipe = _recipe_with(self.recipe, keep)
        with torch.no_grad():
            graph = torch.export.export(self.model.export_model, self.traced.example_inputs,
                                        dynamic_shapes=self.traced.dynamic_shapes, strict=False).module()
        converted = calibrate_and_convert(graph, self.calibration, self.input_names, recipe, dynamic=self.traced.dynamic)
        logits = eager_logits(converted, self.encoded, self.input_names)
        metrics = compare(logits, self.reference, self.labels, [])
        failures = check_thresholds(self.result.artifact.file_name, metrics, self.limits)
        self.trials.append({"kept_float": list(keep), "where": "eager PyTorch int8", **_summary(metrics, failures)})
        self.log(f"    float {keep}: eager {'PASS' if not failures else 'FAIL'} (max_abs {metrics.max_abs_error:.3g}, "
                 f"cosine {metrics.cosine:.5f}, top1 {metrics.top1_agreement:.3f})")
        self._eager[key] = not failures
        return not failures

    def lower(self, keep: list[str]) -> ArtifactResult:
        recipe = _recipe_with(self.recipe, keep)
        name = self.result.artifact.file_name
        out = self.workdir / f"{len(keep)}" / name
        artifact = executorch_file(self.model, self.traced, "int8", recipe, self.calibration, out)
        artifact.precision = self.result.artifact.precision
        if not recipe.quantize_embedding:
            artifact.details["quantization"]["kept_float"].append(WORD_EMBEDDING)
        self.lowerings += 1
        result = evaluate(artifact, self.evidence, ThresholdConfig(per_artifact={artifact.file_name: self.limits}))
        metrics, failures = result.metrics, result.failures
        self.trials.append({"kept_float": list(keep), "where": "ExecuTorch runtime", **_summary(metrics, failures)})
        self.log(f"    float {keep}: .pte in the runtime {'PASS' if not failures else 'FAIL'} "
                 f"(max_abs {metrics.max_abs_error:.3g}, cosine {metrics.cosine:.5f})")
        return result

    def run(self, ranked: list[str]) -> tuple[ArtifactResult | None, list[str]]:
        if not ranked:
            return None, []
        low, size = 0, 1  # prefix `low` fails eagerly (0 = the failing artifact itself)
        while not self.eager_passes(ranked[:size]):
            if size == len(ranked):
                return None, []
            low, size = size, min(2 * size, len(ranked))
        while size - low > 1:  # shortest passing prefix in (low, size]
            middle = (low + size) // 2
            if self.eager_passes(ranked[:middle]):
                size = middle
            else:
                low = middle
        for length in range(size, len(ranked) + 1):
            candidate = self.lower(ranked[:length])
            if candidate.passed:
                return candidate, ranked[:length]
        return None, []


def fallback_artifact(fb: Fallback, result: ArtifactResult, localization: Localization, workdir: Path,
                      log: Log) -> ArtifactResult | None:
    recipe = recipe_from_details(result.artifact.details)
    max_length = fb.evidence.encoded.input_ids.shape[1]
    cal = encode(fb.model.tokenizer, fb.calibration.texts[: recipe.calibration_samples], max_length)
    ranked = candidates(localization, recipe)
    log(f"  auto-fallback {result.artifact.file_name}: candidates by local int8 error: {ranked}")
    search = Search(fb, result, recipe, cal, workdir, log)
    found, kept = search.run(ranked)
    if found is None:
        log(f"  auto-fallback {result.artifact.file_name}: no mixed-precision variant passes")
        result.artifact.details["fallback_attempt"] = {"trials": search.trials, "lowerings": search.lowerings,
                                                       "result": "no candidate passed"}
        return None
    before, after = result.artifact.path.stat().st_size, found.artifact.path.stat().st_size
    found.artifact.details["fallback"] = {
        "kept_float": kept,
        "bytes_before": before, "bytes_after": after,
        "latency_ms_median_before": result.metrics.latency_ms_median,
        "latency_ms_median_after": found.metrics.latency_ms_median,
        "failures_before": list(result.failures),
        "localization_start": localization.start["label"],
        "thresholds": vars(found.thresholds),
        "trials": search.trials, "lowerings": search.lowerings,
    }
    for key in ("localization", "localization_data"):  # where the error started, for the report
        if key in result.artifact.details:
            found.artifact.details[key] = result.artifact.details[key]
    log(f"  auto-fallback {result.artifact.file_name}: PASS with {kept} in float; {before:,} -> {after:,} bytes, "
        f"{result.metrics.latency_ms_median:.3f} -> {found.metrics.latency_ms_median:.3f} ms median")
    return found


def _golden_update(path: Path, artifact: Artifact, limits) -> None:
    """The new file's outputs on golden.json's inputs, run like every file: in a contained child process."""
    golden = json.loads(path.read_text())
    cases = golden.get("cases", [])
    rows = [{k: np.asarray([case[k]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            for case in cases]
    got = run_contained([FileJob(artifact, rows)]).get(artifact.file_name) if rows else None
    if rows and (got is None or got.error is not None):
        raise PipelineError(got.error if got is not None else "no outputs came back", artifact.path)
    for index, case in enumerate(cases):
        case["expected"][artifact.file_name] = np.asarray(got.outputs[index], dtype=float).round(6).tolist()
    golden.setdefault("tolerance", {})[artifact.file_name] = max(1e-4, limits.max_abs_error)
    path.write_text(json.dumps(golden) + "\n")


def rewrite_folder(folder: Path, manifest: dict, replaced: list[ArtifactResult], thresholds_used: dict) -> None:
    """Copy the folder, put the new files, golden.json and manifest.json in the copy, then swap it in."""

    staged = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-fallback-"))
    try:
        shutil.copytree(folder, staged, dirs_exist_ok=True)
        params = int(manifest["model"].get("params") or 1)
        entries = {e["path"]: e for e in manifest["files"] + manifest.get("assets", [])}
        for result in replaced:
            name = result.artifact.file_name
            shutil.copy2(result.artifact.path, staged / name)
            if (staged / "golden.json").is_file():
                _golden_update(staged / "golden.json", Artifact(staged / name, result.artifact.runtime,
                               result.artifact.precision, result.artifact.inputs, result.artifact.outputs), result.thresholds)
            details = {k: v for k, v in result.artifact.details.items() if not k.startswith("localization")}
            entry = entries[name]
            entry.update({k: v for k, v in result_dict(result).items() if k != "details"})
            entry.update({"details": details, "sha256": sha256_file(staged / name), "bytes": (staged / name).stat().st_size,
                          "bytes_per_parameter": round((staged / name).stat().st_size / params, 4)})
            manifest.setdefault("fallback", {})[name] = {k: v for k, v in details["fallback"].items() if k != "trials"}
        if "golden.json" in entries:
            entries["golden.json"].update({"sha256": sha256_file(staged / "golden.json"),
                                           "bytes": (staged / "golden.json").stat().st_size})
        manifest["thresholds_used"] = thresholds_used
        tmp = staged / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, default=float) + "\n")
        os.replace(tmp, staged / "manifest.json")
        replace_folder(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def fallback_folder(fb: Fallback, results: list[ArtifactResult], localizations: dict[str, Localization],
                    log: Log) -> list[ArtifactResult]:
    """Results with every fixable failing int8 artifact replaced by its passing mixed-precision variant."""
    folder, manifest = fb.folder, fb.manifest
    out = list(results)
    replaced = []
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-fallback-"))
    try:
        for index, result in enumerate(results):
            if result.passed:
                continue
            name = result.artifact.file_name
            if name not in localizations:
                log(f"  auto-fallback: {name} cannot be fixed by float fallback (only PT2E int8 ExecuTorch files "
                    "with a localization are)")
                continue
            try:
                found = fallback_artifact(fb, result, localizations[name], workdir, log)
            except Exception as err:  # the drift stays reported (exit 1); the folder is left as it was
                log(f"  auto-fallback of {name} failed ({type(err).__name__}: {str(err).splitlines()[0][:300]})")
                result.artifact.details["fallback_attempt"] = {"result": f"failed: {type(err).__name__}: {err}"[:500]}
                continue
            if found is not None:
                out[index] = found
                replaced.append(found)
        if replaced:
            used = {"source": fb.thresholds_source, "per_artifact": {r.artifact.file_name: vars(r.thresholds) for r in out}}
            rewrite_folder(folder, manifest, replaced, used)
            for result in replaced:  # point at the file now in the folder
                result.artifact.path = folder / result.artifact.file_name
            log(f"  auto-fallback: rewrote {[r.artifact.file_name for r in replaced]}, golden.json and manifest.json "
                f"in {folder}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out
