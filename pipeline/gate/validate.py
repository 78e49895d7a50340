"""`pipeline validate`: the CI gate over an existing artifact folder, on the same functions the build uses.

    0. the thresholds (every value in its range) and the report folder, before anything else   (else exit 2)
    1. the folder is what its manifest says (gate/folder.py)                         (else exit 2, entry named)
    2. the float reference the manifest names (or the given one), proven by its hash   (else exit 2)
    3. the eval data as recorded in the manifest (or the given one), never empty     (else exit 2)
    4. labels.json, the tokenizer files (their bytes, and their ids on the eval texts) and what the manifest
       tells the app about them are the model's own                                  (else exit 2)
    5. every model file in its runtime, in a child process, first checked against its manifest entry (inputs,
       outputs, max_length), vs the float reference (pipeline/verify/validation.py: MediaPipe files text in; a
       file that is another model's, crashes, hangs or cannot run is exit 2 with the reports of the others
       written); golden.json's outputs are what each file computes, within its tolerance (else exit 2)
                                                                                      (drift: exit 1)
    6. for a failing int8 ExecuTorch file: where the error starts (gate/localize.py); with auto_fallback, the most
       sensitive modules are kept float until the thresholds hold and the file, golden.json and the manifest are
       rewritten atomically (gate/fallback.py)
    7. with arm64: every file again in the aarch64 runtimes under QEMU for one CPU profile, on the first rows, same
       thresholds, plus its difference from the x86 run (pipeline/verify/arm64/emulate.py)
    8. report.json / report.md / report.junit.xml / PNGs into the folder (or report_dir); with arm64 also
       manifest.json's `arm64_validation.<profile>`
    9. with cost, once everything above passed: every .pte / .tflite's aarch64 instructions per inference counted
       under QEMU per CPU profile and length, recorded (manifest.json and report.* `arm64_cost`, report_cost.png)
       and, with a baseline, gated by [thresholds.cost] max_increase (gate/cost.py)      (drift: exit 1)

Thresholds come from the options or the defaults, deliberately not from the manifest: a folder must not be able
to loosen its own gate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipeline.core.artifact import Artifact, read_manifest, verify_files
from pipeline.core.config import ThresholdConfig, load_thresholds
from pipeline.core.errors import DriftError, PipelineError
from pipeline.core.options import ValidateOptions
from pipeline.core.paths import check_output_folder
from pipeline.core.shapes import sweep_rows
from pipeline.core.tokenization import clean_text, encode
from pipeline.gate.cost import cost_folder, prepare_cost
from pipeline.gate.folder import (app_file, check_app_files, check_golden, check_tokenizer_behaviour, golden_jobs,
                                  load_calibration, load_eval, load_reference, model_entries)
from pipeline.runtimes.contained import run_contained
from pipeline.verify.arm64 import emulate
from pipeline.verify.report import drift_table, plot_layer_errors, write_reports
from pipeline.verify.tokenizer_drift import drift_report
from pipeline.verify.validation import ArtifactResult, Evidence, run_errors, validate

Log = Callable[[str], None]


def thresholds_of(options: ValidateOptions) -> tuple[ThresholdConfig, str]:
    if isinstance(options.thresholds, ThresholdConfig):
        return options.thresholds, "given"
    if options.thresholds:
        return load_thresholds(options.thresholds), str(options.thresholds)
    return ThresholdConfig(), "defaults (pipeline/core/config.py)"


def evidence_for(manifest: dict, model, options: ValidateOptions, log: Log) -> tuple[Evidence, str]:
    """The eval rows and their float reference, as the build had them (its rows, its length sweep)."""
    from pipeline.model.reference import reference_logits, sweep_reference

    texts = load_eval(manifest.get("eval_data"), options.eval_data, model.label_names)
    limit = options.eval_limit
    if limit is None and not options.eval_data:
        limit = (manifest.get("eval") or {}).get("rows")  # the rows the build validated on
    texts = texts.head(limit)
    if len(texts) == 0:
        raise PipelineError("the eval set is empty: nothing to validate against", options.eval_data or texts.source)
    max_length = int(manifest["model"]["max_length"])
    encoded = encode(model.tokenizer, texts.texts, max_length)
    sweep = sweep_rows(model.tokenizer, max_length)
    evidence = Evidence(encoded, [clean_text(t) for t in texts.texts], reference_logits(model, encoded), texts.labels,
                        sweep, sweep_reference(model, sweep))
    log(f"  eval: {len(encoded)} texts from {texts.source}")
    return evidence, texts.source


def localize_failures(results: list[ArtifactResult], manifest: dict, model, evidence: Evidence,
                      options: ValidateOptions, log: Log) -> dict:
    """Where the error of each failing PT2E int8 ExecuTorch file starts (explains a failure, never hides one)."""
    from pipeline.gate import localize as loc

    found, calibration = {}, None
    for result in results:
        a = result.artifact
        if result.passed or result.metrics is None or a.runtime != "executorch" or not a.precision.startswith("int8") \
                or not str((a.details.get("quantization") or {}).get("scheme", "")).startswith("pt2e-"):
            continue
        try:
            if calibration is None:
                calibration = load_calibration(manifest, options.calibration_data, model.label_names)
            recipe = loc.recipe_from_details(a.details)
            cal = encode(model.tokenizer, calibration.texts[: recipe.calibration_samples], evidence.encoded.input_ids.shape[1])
            where = loc.localize(model.export_model, [t.name for t in a.inputs], recipe, cal, evidence.encoded, result.logits)
        except Exception as err:  # noqa: BLE001 - localization explains a failure; it never hides or replaces it
            message = err if isinstance(err, PipelineError) else f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            a.details["localization"] = f"not available: {message}"
            log(f"  localization of {a.file_name} not available: {message}")
            continue
        found[a.file_name] = where
        a.details["localization"] = where.markdown()
        a.details["localization_data"] = where.to_dict()
        log(f"  {a.file_name}: error starts at {where.start['label']} ({where.start['module']}, "
            f"local error {where.start['local_error']:.1%})")
    return found


def validate_folder(options: ValidateOptions, log: Log = print) -> int:
    folder = Path(options.artifacts)
    report_dir = Path(options.report_dir or folder)
    thresholds, thresholds_source = thresholds_of(options)  # a bad thresholds file fails before anything runs
    manifest = read_manifest(folder)
    check_output_folder(report_dir, "report folder")
    log(f"validate: {folder}")
    arm = None
    if options.arm64 is not None:  # a missing emulation environment fails before anything runs
        arm = (emulate.require_env(), emulate.resolve_profile(options.arm64.profile)[0])
    cost = prepare_cost(options.cost, thresholds.cost.max_increase) if options.cost is not None else None
    count = verify_files(folder, manifest)
    log(f"  {count} files: sizes and sha256 match manifest.json")
    entries = model_entries(manifest)
    unknown = sorted(set(thresholds.per_artifact) - {e["path"] for e in entries})
    if unknown and not isinstance(options.thresholds, ThresholdConfig):  # a misspelt file name would gate nothing
        raise PipelineError(f"thresholds for {unknown}: no such model file in {folder}", thresholds_source)
    model = load_reference(manifest, options.model_dir)
    log(f"  float reference {model.model_dir} ({model.reference_kind}), hash matches the manifest")
    check_app_files(folder, manifest, model)
    evidence, source = evidence_for(manifest, model, options, log)
    check_tokenizer_behaviour(folder, evidence.texts, evidence.encoded)
    log(f"  thresholds: {thresholds_source}")
    artifacts = [Artifact.from_dict(folder, e) for e in entries]
    results = validate(artifacts, evidence, thresholds, log=log)
    golden, jobs = golden_jobs(app_file(folder, manifest, "golden", "golden.json"), artifacts, model,
                               int(manifest["model"]["max_length"]))
    golden_outputs = run_contained(jobs)
    drift = None
    if any(a.runtime == "mediapipe" for a in artifacts):
        drift = drift_report(model, int(manifest["model"]["max_length"]), evidence.texts, log)
    localizations = localize_failures(results, manifest, model, evidence, options, log)
    context = {"artifacts": folder.name, "target": manifest.get("target"), "eval data": source,
               "rows": len(evidence.encoded), "thresholds": thresholds_source,  # no absolute path: reports ship with it
               "reference": f"{model.model_dir.name} (sha256 {model.source_sha256[:16]}..., verified)",
               "files verified": count}
    broken = run_errors(results)
    if options.auto_fallback and broken is None and any(not r.passed for r in results):
        from pipeline.gate.fallback import Fallback, fallback_folder

        calibration = load_calibration(manifest, options.calibration_data, model.label_names)
        results = fallback_folder(Fallback(folder, manifest, model, evidence, calibration, thresholds, thresholds_source),
                                  results, localizations, log)
        context["auto-fallback"] = "; ".join(f"{r.artifact.file_name}: kept float {r.artifact.details['fallback']['kept_float']}"
                                             for r in results if "fallback" in r.artifact.details) or "nothing to fix"
    arm_run = None
    if arm is not None and broken is None:
        arm_run = emulate.gate_arm64(results, evidence, thresholds, emulate.ArmRun(arm[1], options.arm64.rows, arm[0]), log)
        context[f"arm64 ({arm_run.profile})"] = (f"qemu -cpu {arm_run.qemu_cpu}, {arm_run.rows} rows: "
                                                  + ("passed" if arm_run.passed else "FAILED"))
    ran = [r for r in results if r.error is None]
    try:
        write_reports(report_dir, ran, evidence.reference, f"Drift gate: {folder.name}", context, drift=drift)
        data = json.loads((report_dir / "report.json").read_text())
        data["thresholds_used"] = {"source": thresholds_source,
                                   "per_artifact": {r.artifact.file_name: vars(r.thresholds) for r in results}}
        (report_dir / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
        if arm_run is not None:
            emulate.extend_reports(report_dir, arm_run)
            emulate.record_in_manifest(folder, arm_run)
        if localizations:
            plot_layer_errors({name: l.profile for name, l in localizations.items()}, report_dir / "report_layer_error.png")
    except OSError as err:
        raise PipelineError(f"cannot write the reports ({err.strerror or err})", report_dir) from None
    if broken is not None:
        raise broken
    if not any("fallback" in r.artifact.details for r in results):  # a rewritten folder has a new golden.json
        check_golden(golden, golden_outputs, artifacts, app_file(folder, manifest, "golden", "golden.json"),
                     {r.artifact.file_name: r.thresholds.max_abs_error for r in results})
    for line in drift_table(results):
        log(line)
    failures = [f for r in results for f in r.failures] + (arm_run.failures if arm_run else [])
    if failures:
        log(f"validation FAILED: {len(failures)} threshold(s) exceeded; report in {report_dir}")
        raise DriftError(failures)
    log(f"validation passed: {len(results)} artifact(s) within thresholds"
        + (f" on x86 and on arm64 ({arm_run.profile})" if arm_run else "") + f"; report in {report_dir}")
    if cost is not None:
        cost_folder(folder, cost, report_dir, evidence.encoded, log)
    return 0
