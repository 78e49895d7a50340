"""ARM64 gate: the tiny build's fp32 and int8 files in the aarch64 ExecuTorch and LiteRT runtimes under real QEMU
user-mode emulation (no mock). The environment comes from `python -m pipeline arm64-setup` (.ci/run provisions it):
when it is missing these tests FAIL with the provisioning command in the message; they never skip."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.cli import main

ROWS = 3  # emulation costs seconds per row on the CI machine; 3 rows x 4 files is enough to exercise every kernel path


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tiny_build_passes_on_arm64_in_both_runtimes(tiny_builds, tmp_path):
    from pipeline import api

    folder = copy_folder(tiny_builds["android"], tmp_path / "android")
    lines: list[str] = []
    assert api.validate(api.ValidateOptions(artifacts=folder, arm64=api.Arm64Options("i8mm", ROWS)), lines.append) == 0
    report = json.loads((folder / "report.json").read_text())
    run = report["arm64"]["i8mm"]
    assert run["passed"] and run["rows"] == ROWS and run["qemu_cpu"] == "max,sme=off"
    assert {"i8mm", "asimddp"} <= set(run["hwcaps"]) and "sme" not in run["hwcaps"]
    seen = {(a["runtime"], a["precision"].split("-")[0]) for a in run["artifacts"]}
    assert seen == {("executorch", "fp32"), ("executorch", "int8"), ("litert", "fp32"), ("litert", "int8")}
    assert set(run["not_checked"]) == {"albert.fp32.mediapipe.tflite", "albert.int8.mediapipe.tflite"}  # said, not passed
    for entry in run["artifacts"]:
        assert entry["error"] is None and entry["metrics"]["rows"] == ROWS
        limit = entry["thresholds"]["max_abs_error"]
        assert entry["metrics"]["max_abs_error"] <= limit and entry["x86_max_abs_diff"] <= limit
        if entry["precision"] == "fp32":  # same math on another ISA: tiny differences, never drift
            assert entry["x86_max_abs_diff"] < 1e-4
    junit = (folder / "report.junit.xml").read_text()
    assert 'name="albert.int8.pte[arm64:i8mm]:max_abs_error"' in junit
    assert 'name="albert.int8.tflite[arm64:i8mm]:x86_top1_agreement"' in junit and "<failure" not in junit
    assert '<testcase classname="pipeline.validate.arm64.i8mm" name="albert.int8.mediapipe.tflite[arm64:i8mm]:run"><skipped' in junit
    assert "## ARM64 (i8mm" in (folder / "report.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["arm64_validation"]["i8mm"]["passed"]
    assert any("rows" in line and "s/row" in line for line in lines)  # progress with timing


def test_4bit_files_pass_on_arm64_with_and_without_xnnpack(tiny_int4_build, tiny_int4_thresholds, tmp_path):
    """Both 4-bit files on the dot-product profile, the .tflite also with LiteRT's builtin kernels, each compared
    with the same run on x86 (the builtin run with x86's builtin run)."""
    from pipeline import api
    from pipeline.core.config import load_thresholds

    folder = copy_folder(tiny_int4_build, tmp_path / "android")
    lines: list[str] = []
    options = api.ValidateOptions(artifacts=folder, thresholds=load_thresholds(tiny_int4_thresholds),
                                  arm64=api.Arm64Options("cortex-a76", ROWS))
    assert api.validate(options, lines.append) == 0
    run = json.loads((folder / "report.json").read_text())["arm64"]["cortex-a76"]
    entries = {a["path"]: a for a in run["artifacts"] if a["precision"] == "int4"}
    assert set(entries) == {"albert.int4.pte", "albert.int4.tflite"} and all(a["passed"] for a in entries.values())
    assert all(a["x86_max_abs_diff"] <= a["thresholds"]["max_abs_error"] for a in entries.values())
    builtin = entries["albert.int4.tflite"]["no_xnnpack"]
    assert builtin["gated"] and builtin["max_abs_error"] <= entries["albert.int4.tflite"]["thresholds"]["max_abs_error"]
    assert any("albert.int4.tflite [arm64 cortex-a76, no XNNPACK] (litert): PASS" in line for line in lines), lines
    assert "albert.int4.tflite again without the XNNPACK delegate" in (report := (folder / "report.md").read_text())
    assert "(gated like the file)" in report and "evidence only" not in report


def test_wrong_file_fails_the_arm_gate_naming_artifact_profile_and_metric(tiny_builds, tmp_path):
    """An int8 file shipped under the fp32 name: the ARM gate (fp32 thresholds) must reject it."""
    from pipeline.core.artifact import read_manifest
    from pipeline.core.config import ThresholdConfig
    from pipeline.core.artifact import Artifact
    from pipeline.gate.folder import load_reference
    from pipeline.core.config import Thresholds
    from pipeline.verify.arm64.emulate import ArmRun, gate_arm64
    from pipeline.verify.validation import ArtifactResult, Evidence
    from pipeline.model.reference import reference_logits
    from pipeline.core.tokenization import encode

    folder = copy_folder(tiny_builds["android"], tmp_path / "android")
    shutil.copyfile(folder / "albert.int8.tflite", folder / "albert.fp32.tflite")
    manifest = read_manifest(folder)
    entry = next(e for e in manifest["files"] if e["path"] == "albert.fp32.tflite")
    artifact = Artifact.from_dict(folder, entry)
    model = load_reference(manifest, None)
    texts = ["a short review", "great food, would buy again", "not good"]
    encoded = encode(model.tokenizer, texts, int(manifest["model"]["max_length"]))
    evidence = Evidence(encoded, texts, reference_logits(model, encoded))
    run = gate_arm64([ArtifactResult(artifact, None, Thresholds())], evidence, ThresholdConfig(),
                     ArmRun("cortex-a76", ROWS), print)
    assert not run.passed
    assert any(f.startswith("albert.fp32.tflite [arm64 cortex-a76]: max_abs_error") for f in run.failures), run.failures
    assert run.results[0].metrics.max_abs_error > 1e-3  # fp32 limit


def test_missing_environment_is_one_line_naming_the_setup_command(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": [], "model": {}}))
    monkeypatch.setenv("PIPELINE_ARM64_HOME", str(tmp_path / "no-env"))
    assert main(["validate", "--artifacts", str(folder), "--arm64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m pipeline arm64-setup" in err[0] and "ARM64" in err[0]


def test_unknown_profile_is_exit_2(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": [], "model": {}}))
    code = main(["validate", "--artifacts", str(folder), "--arm64", "--arm-cpu", "pentium"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "pentium" in err[0] and "i8mm" in err[0]


def test_cuda_stubs_replace_the_nvidia_wheels():
    """The provisioned environment carries generated stubs instead of ~3 GB of NVIDIA libraries."""
    from pipeline.verify.arm64.env import find_env

    env = find_env()
    stubs = sorted(p.name for p in (env.root / "cuda-stubs").iterdir())
    assert "libcudart.so.13" in stubs and "libcublas.so.13" in stubs
    assert not (env.site / "nvidia").exists()
    assert sum(p.stat().st_size for p in (env.root / "cuda-stubs").iterdir()) < 5_000_000
