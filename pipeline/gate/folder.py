"""`pipeline validate`: the CI gate over an existing artifact folder.

    1. manifest.json: every file listed exists, and its size and sha256 match       (else exit 2, file named)
    2. the float reference: the checkpoint the manifest names (or --model), whose
       hash must equal the manifest's model.source_sha256                            (else exit 2)
    3. the eval data: as recorded in the manifest (or --eval-data), never empty     (else exit 2)
    4. every model file in its real runtime vs the float reference (MediaPipe files: text in, through
       MediaPipe's TextClassifier, plus the tokenizer drift), thresholds from
       --thresholds (TOML) or the defaults; a runtime that is missing or cannot run
       the file is exit 2, never a skip                                              (drift: exit 1)
    5. for a failing int8 ExecuTorch file: where the error starts (gate/localize.py);
       with --auto-fallback, the most sensitive modules are kept float until the
       thresholds hold and the file, golden.json and the manifest are rewritten
       atomically (gate/fallback.py)
    6. with --arm64: every file again in the aarch64 runtimes under QEMU for one CPU profile (gate/arm64.py), on
       the first --arm-rows eval rows, same thresholds, plus its difference from the x86 run; a missing
       emulation environment is exit 2 naming `python -m pipeline arm64-setup`, checked before anything runs
    7. report.json / report.md / report.junit.xml / PNGs into the folder (or --report-dir); with --arm64 also
       manifest.json's `arm64_validation.<profile>`

Thresholds come from the file given or the defaults, deliberately not from the manifest: a folder must
not be able to loosen its own gate.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.artifact import Artifact, read_manifest
from pipeline.config import ThresholdConfig, load_thresholds
from pipeline.data import LabeledTexts, load_labeled_file, load_small_fine_foods, sha256_file
from pipeline.errors import DriftError, PipelineError
from pipeline.numerics import ArtifactResult, evaluate
from pipeline.provenance import find_data_file, find_model_dir
from pipeline.tokenization import Encoded, encode

Log = Callable[[str], None]
MODEL_SUFFIXES = (".pte", ".tflite")
LOCALIZE_ROWS = 32


def verify_files(folder: Path, manifest: dict) -> int:
    """Every listed file exists with the recorded size and sha256; no model file is left unlisted."""
    listed = set()
    for entry in manifest["files"] + manifest.get("assets", []):
        name = entry.get("path")
        if not name or Path(name).name != name:
            raise PipelineError(f"manifest entry with a bad path {name!r}", folder / "manifest.json")
        listed.add(name)
        path = folder / name
        if not path.is_file():
            raise PipelineError("listed in manifest.json but missing", path)
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise PipelineError(f"size {size} bytes does not match the manifest's {entry.get('bytes')}", path)
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise PipelineError(f"sha256 mismatch: file {digest}, manifest {entry.get('sha256')} "
                                "(the file was changed after the build)", path)
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix in MODEL_SUFFIXES and p.name not in listed)
    if unlisted:
        raise PipelineError(f"model file(s) not in manifest.json: {unlisted}", folder)
    return len(listed)


def model_entries(manifest: dict) -> list[dict]:
    entries = [e for e in manifest["files"] if e.get("runtime") is not None]
    if not entries:
        raise PipelineError("manifest lists no model files: nothing to validate")
    return entries


def load_reference(manifest: dict, model_dir: str | None):
    """The float reference the artifacts were built from, proven by its hash."""
    from pipeline.model.checkpoint import load_checkpoint

    recorded = manifest["model"]
    path = find_model_dir(recorded, model_dir)  # --model, this machine's copy by hash, or the default by name
    model = load_checkpoint(path, recorded.get("max_length"))
    if model.source_sha256 != recorded.get("source_sha256"):
        raise PipelineError(f"checkpoint hash {model.source_sha256[:16]}... is not the manifest's "
                            f"{str(recorded.get('source_sha256'))[:16]}...: not the model these artifacts were built from "
                            "(pass --model DIR with that checkpoint)",
                            path)
    return model


def load_eval(source: str | None, eval_data: str | None, label_names: list[str]) -> LabeledTexts:
    """--eval-data, else what the manifest records: 'small_fine_foods:<split>[ (texts only)]' or a file path."""
    if eval_data:
        return load_labeled_file(eval_data, label_names)
    if not source:
        raise PipelineError("the manifest records no eval data; pass --eval-data")
    if source.startswith("small_fine_foods:"):
        split = source.split(":", 1)[1].split(" ", 1)[0]
        if split not in ("train", "test"):
            raise PipelineError(f"unknown small_fine_foods split in manifest eval_data {source!r}")
        texts = load_small_fine_foods(split)
        if label_names != texts.label_names or source.endswith("(texts only)"):
            texts = LabeledTexts(texts.texts, None, label_names, texts.source + " (texts only)")
        return texts
    return load_labeled_file(find_data_file(source, "eval data", "--eval-data"), label_names)


def load_calibration(manifest: dict, calibration_data: str | None, label_names: list[str]) -> LabeledTexts:
    """The calibration texts of the build: --calibration-data, manifest calibration.source, else small_fine_foods:train."""
    source = calibration_data or (manifest.get("calibration") or {}).get("source") or "small_fine_foods:train"
    if source.startswith("small_fine_foods:"):
        texts = load_small_fine_foods(source.split(":", 1)[1].split(" ", 1)[0])
    else:
        path = source if calibration_data else find_data_file(source, "calibration data", "--calibration-data")
        texts = load_labeled_file(path, label_names, with_labels=False)
    return LabeledTexts(texts.texts, None, label_names, texts.source)


def run_one(artifact: Artifact, encoded: Encoded, reference: np.ndarray, labels, thresholds: ThresholdConfig,
            log: Log) -> ArtifactResult:
    from pipeline.shapes import eval_rows, is_dynamic

    # a dynamic file runs each text at its own length, as apps feed it (its inputs declare [1, -1])
    result = evaluate(artifact, eval_rows(encoded, is_dynamic(artifact)), reference, labels,
                      thresholds.for_artifact(artifact.file_name, artifact.precision))
    log(f"  {artifact.file_name} ({artifact.runtime}): {'PASS' if result.passed else 'FAIL'}"
        + ("" if result.passed else " - " + "; ".join(result.failures)))
    return result


def run_mediapipe(artifact: Artifact, texts: LabeledTexts, reference: np.ndarray, thresholds: ThresholdConfig,
                  log: Log) -> ArtifactResult:
    """A MediaPipe-ready file end to end, text in, through MediaPipe's TextClassifier (stages/mediapipe.py)."""
    from pipeline.stages import mediapipe as mediapipe_stage
    from pipeline.tokenization import clean_text

    probabilities, latencies = mediapipe_stage.run_texts(artifact, [clean_text(t) for t in texts.texts])
    [result] = mediapipe_stage.validate([artifact], [], reference, texts.labels, thresholds, log,
                                        outputs=lambda _: (probabilities, latencies))
    return result


def localizable(result: ArtifactResult) -> bool:
    a = result.artifact
    return (not result.passed and a.runtime == "executorch" and a.precision.startswith("int8")
            and str((a.details.get("quantization") or {}).get("scheme", "")).startswith("pt2e-"))


def validate_folder(args: argparse.Namespace, log: Log = print) -> int:
    from pipeline.report import plot_layer_errors, drift_table, write_reports
    from pipeline.stages.reference import reference_logits

    folder = Path(args.artifacts)
    report_dir = Path(getattr(args, "report_dir", None) or folder)
    manifest = read_manifest(folder)
    log(f"validate: {folder}")
    arm = None
    if getattr(args, "arm64", False):
        from pipeline.gate import arm64 as gate_arm64

        profile = gate_arm64.resolve_profile(getattr(args, "arm_cpu", None))[0]
        arm = (gate_arm64.require_env(), profile)
    count = verify_files(folder, manifest)
    log(f"  {count} files: sizes and sha256 match manifest.json")
    entries = model_entries(manifest)
    model = load_reference(manifest, getattr(args, "model_dir", None))
    log(f"  float reference {model.model_dir} ({model.reference_kind}), hash matches the manifest")
    if getattr(args, "thresholds", None):
        thresholds, thresholds_source = load_thresholds(args.thresholds), str(args.thresholds)
    else:
        thresholds, thresholds_source = ThresholdConfig(), "defaults (pipeline/config.py)"
    texts = load_eval(manifest.get("eval_data"), getattr(args, "eval_data", None), model.label_names)
    limit = getattr(args, "eval_limit", None)
    if limit is None and not getattr(args, "eval_data", None):
        limit = (manifest.get("eval") or {}).get("rows")  # the rows the build validated on
    texts = texts.head(limit)
    if len(texts) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against", getattr(args, "eval_data", None) or texts.source)
    max_length = int(manifest["model"]["max_length"])
    encoded = encode(model.tokenizer, texts.texts, max_length)
    reference = reference_logits(model, encoded)
    log(f"  eval: {len(encoded)} texts from {texts.source}; thresholds: {thresholds_source}")

    results = [run_mediapipe(Artifact.from_dict(folder, e), texts, reference, thresholds, log)
               if e.get("runtime") == "mediapipe" else
               run_one(Artifact.from_dict(folder, e), encoded, reference, texts.labels, thresholds, log) for e in entries]
    drift = None
    if any(e.get("runtime") == "mediapipe" for e in entries):
        from pipeline.stages import mediapipe as mediapipe_stage
        from pipeline.tokenization import clean_text

        drift = mediapipe_stage.drift(model, max_length, [clean_text(t) for t in texts.texts], log)
    localizations = {}
    calibration = None
    for result in results:
        if not localizable(result):
            continue
        from pipeline.gate import localize as loc

        try:
            if calibration is None:
                calibration = load_calibration(manifest, getattr(args, "calibration_data", None), model.label_names)
            recipe = loc.recipe_from_details(result.artifact.details)
            cal = encode(model.tokenizer, calibration.texts[: recipe.calibration_samples], max_length)
            names = [t.name for t in result.artifact.inputs]
            example = tuple(torch.from_numpy(np.ascontiguousarray(encoded.row(0)[n])) for n in names)
            found = loc.localize(model.export_model, example, names, recipe, cal, encoded, result.logits, LOCALIZE_ROWS)
        except Exception as err:  # localization explains a failure; it never hides or replaces it
            message = err if isinstance(err, PipelineError) else f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            result.artifact.details["localization"] = f"not available: {message}"
            log(f"  localization of {result.artifact.file_name} not available: {message}")
            continue
        localizations[result.artifact.file_name] = found
        result.artifact.details["localization"] = found.markdown()
        result.artifact.details["localization_data"] = found.to_dict()
        log(f"  {result.artifact.file_name}: error starts at {found.start['label']} ({found.start['module']}, "
            f"local error {found.start['local_error']:.1%})")

    context = {"artifacts": folder.name, "target": manifest.get("target"), "eval data": texts.source,
               "rows": len(encoded), "thresholds": thresholds_source,  # no absolute path: reports ship with the folder
               "reference": f"{model.model_dir.name} (sha256 {model.source_sha256[:16]}..., verified)",
               "files verified": count}
    if getattr(args, "auto_fallback", False) and any(not r.passed for r in results):
        from pipeline.gate.fallback import fallback_folder

        if calibration is None:
            calibration = load_calibration(manifest, getattr(args, "calibration_data", None), model.label_names)
        results = fallback_folder(folder, manifest, model, results, localizations, encoded, texts, reference,
                                  calibration, thresholds, log, thresholds_source)
        context["auto-fallback"] = "; ".join(f"{r.artifact.file_name}: kept float {r.artifact.details['fallback']['kept_float']}"
                                             for r in results if "fallback" in r.artifact.details) or "nothing to fix"

    arm_run = None
    if arm:
        arm_run = gate_arm64.gate_arm64([r.artifact for r in results], encoded, reference, texts.labels,
                                        {r.artifact.file_name: r.logits for r in results}, thresholds, arm[1],
                                        getattr(args, "arm_rows", None), log, env=arm[0])
        context[f"arm64 ({arm_run.profile})"] = (f"qemu -cpu {arm_run.qemu_cpu}, {arm_run.rows} rows: "
                                                  + ("passed" if arm_run.passed else "FAILED"))
    try:
        write_reports(report_dir, results, reference, f"Drift gate: {folder.name}", context, drift=drift)
        data = json.loads((report_dir / "report.json").read_text())
        data["thresholds_used"] = {"source": thresholds_source,
                                   "per_artifact": {r.artifact.file_name: vars(r.thresholds) for r in results}}
        (report_dir / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
        if arm_run is not None:
            gate_arm64.extend_reports(report_dir, arm_run)
            gate_arm64.record_in_manifest(folder, arm_run)
        if localizations:
            plot_layer_errors({name: l.profile for name, l in localizations.items()}, report_dir / "report_layer_error.png")
    except OSError as err:
        raise PipelineError(f"cannot write the reports ({err.strerror or err})", report_dir) from None
    for line in drift_table(results):
        log(line)
    failures = [f for r in results for f in r.failures] + (arm_run.failures if arm_run else [])
    if failures:
        log(f"validation FAILED: {len(failures)} threshold(s) exceeded; report in {report_dir}")
        raise DriftError(failures)
    log(f"validation passed: {len(results)} artifact(s) within thresholds"
        + (f" on x86 and on arm64 ({arm_run.profile})" if arm_run else "") + f"; report in {report_dir}")
    return 0
