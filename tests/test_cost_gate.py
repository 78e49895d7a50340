"""`--cost` on validate and build (pipeline/gate/cost.py): counts recorded in manifest.json and the reports, gated
against a baseline with [thresholds.cost] max_increase.

The counting tests run the real emulator with the project's TCG plugin (environment from `python -m pipeline
arm64-setup`; missing, they FAIL naming that command). They count LiteRT-only folders of the tiny model of
tests/conftest.py (its stage cache: no lowering again): the emulated process then never imports torch, so a count
takes seconds. Each count runs once per module: the recording run's manifest is the baseline of the others."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import build_options, main, parser, validate_options
from pipeline.core.config import PipelineConfig, load_config, load_thresholds
from pipeline.core.errors import PipelineError
from pipeline.gate.cost import cost_markdown, cost_ratios

MAX = 32  # tiny_builds' max_length
TEXTS = ("albert.fp32.tflite", "albert.int8.tflite")


def _config(tiny_builds, tmp_path_factory, out: Path, shapes: str) -> PipelineConfig:
    """The tiny_builds model and settings, LiteRT only, no MediaPipe twins, on tiny_builds' stage cache."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    config = PipelineConfig()
    config.build.model_dir = str(Path(tiny_builds["android"]).parent.parent / "model")
    config.build.out_dir = str(out)
    config.build.max_length = MAX
    config.build.eval_limit = 40
    config.build.cache_dir = str(shared / "tiny-builds-cache")
    config.build.copy_to_apps = False
    config.build.runtimes = ["litert"]
    config.build.mediapipe = False
    config.build.shapes = shapes
    return config


def _one_line(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    return err[0], captured.out


@pytest.fixture(scope="module")
def built(tiny_builds, tmp_path_factory):
    """`build --cost` of the tiny model, LiteRT only (dynamic, max_length 32), i8mm at 16 tokens: the count runs on
    the bundled folder after the build's own validation, which is not run again."""
    from pipeline import api

    out = tmp_path_factory.mktemp("cost-build")
    lines: list[str] = []
    [folder] = api.build(api.BuildOptions(config=_config(tiny_builds, tmp_path_factory, out, "dynamic"),
                                          cost=api.CostOptions(profiles=["i8mm"], lengths=[16])), lines.append)
    return Path(folder), lines


@pytest.fixture(scope="module")
def recorded(built, tmp_path_factory):
    """`validate --cost` with the defaults (cortex-a76 and i8mm; 16, 64, max: 64 is over this folder's 32) on a
    copy of the built folder: its manifest is the baseline of the other tests."""
    folder = tmp_path_factory.mktemp("cost-recorded") / "android"
    shutil.copytree(built[0], folder)
    code = main(["validate", "--artifacts", str(folder), "--cost"])
    return folder, code


def test_build_cost_counts_the_bundled_folder_without_validating_it_again(built):
    folder, lines = built
    manifest = json.loads((folder / "manifest.json").read_text())
    cost = manifest["arm64_cost"]
    assert set(cost["counts"]) == {"i8mm"} and sorted(cost["counts"]["i8mm"]) == sorted(TEXTS)
    assert all(set(per) == {"16"} for per in cost["counts"]["i8mm"].values())
    assert cost["qemu"].startswith("qemu-aarch64 version") and cost["plugin"].startswith("cost_plugin ")
    assert cost["lengths"] == [16] and cost["steady_runs"] == 2 and cost["not_counted"] == {}
    assert manifest["thresholds"]["cost"] == {"max_increase": 0.05}  # the limit in force, as data
    assert not any(line.startswith("validate: ") for line in lines)  # no second x86 validation
    assert any("NOT gated" in line for line in lines)
    assert "arm64_cost" in json.loads((folder / "report.json").read_text())


def test_validate_cost_records_counts_and_an_unchanged_folder_passes_its_own_baseline(recorded, tmp_path, capsys):
    folder, code = recorded
    assert code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = manifest["arm64_cost"]["counts"]
    assert sorted(counts) == ["cortex-a76", "i8mm"]
    for profile in counts:
        assert sorted(counts[profile]) == sorted(TEXTS)
        for name, per in counts[profile].items():
            assert set(per) == {"16", "32"}, (name, per)
            assert per["32"]["steady"] > per["16"]["steady"] > 100_000
            assert per["16"]["first"] > per["16"]["steady"]  # LiteRT plans and packs at the first call
    report = json.loads((folder / "report.json").read_text())
    assert report["arm64_cost"]["counts"]["i8mm"]["albert.int8.tflite"]["32"] == counts["i8mm"]["albert.int8.tflite"]["32"]
    assert report["arm64_cost"]["gate"] == {"baseline": None, "max_increase": 0.05, "failures": [], "notes": []}
    md = (folder / "report.md").read_text()
    assert "## Cost: aarch64 instructions per inference" in md and "| albert.int8.tflite | i8mm | 32 |" in md
    assert "| int8 / fp32 | albert.int8.tflite / albert.fp32.tflite | cortex-a76 |" in md
    assert "| i8mm / cortex-a76 | albert.int8.tflite |" in md and "16 / 32 tokens" in md
    assert "not gated" in md
    assert (folder / "report_cost.png").stat().st_size > 10_000
    assert not list(folder.glob("*.tmp"))

    baseline = tmp_path / "baseline.json"
    shutil.copy(folder / "manifest.json", baseline)
    capsys.readouterr()
    assert main(["validate", "--artifacts", str(folder), "--cost", "--cost-baseline", str(baseline)]) == 0
    gate = json.loads((folder / "report.json").read_text())["arm64_cost"]["gate"]
    assert gate["baseline"] == "baseline.json" and gate["failures"] == [], gate
    assert "cost gate passed" in capsys.readouterr().out


def test_a_padded_static_file_is_caught_by_the_cost_gate(recorded, tiny_builds, tmp_path_factory, capsys):
    """The same model built with a static shape (fp32 only, to lower one file): 16 tokens are padded to 32,
    roughly twice the instructions of the dynamic file at 16 tokens (the baseline). Exit 1, one line from
    compare_costs; what the baseline has and this folder lacks is a note."""
    from pipeline.build import build

    folder, _ = recorded
    config = _config(tiny_builds, tmp_path_factory, tmp_path_factory.mktemp("cost-static"), "static")
    config.build.precisions = ["fp32"]
    static = build(config, log=lambda _: None)
    capsys.readouterr()
    code = main(["validate", "--artifacts", str(static), "--cost", "--arm-cpu", "i8mm", "--cost-lengths", "16",
                 "--cost-baseline", str(folder / "manifest.json")])
    line, out = _one_line(capsys)
    assert code == 1, line
    assert line.startswith("drift: cost drift: albert.fp32.tflite [i8mm, 16 tokens]: "), line
    assert "instructions > 1.05 x baseline" in line and "(+" in line
    assert "cost gate FAILED" in out
    report = json.loads((static / "report.json").read_text())
    assert report["passed"] is False and len(report["arm64_cost"]["gate"]["failures"]) == 1
    notes = report["arm64_cost"]["gate"]["notes"]  # the baseline's other counts are notes, not failures
    assert any(n.startswith("cost: albert.int8.tflite [i8mm, 16 tokens]: in the baseline, not counted now") for n in notes)


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read the cost baseline"),
    ("{not json", "cannot read the cost baseline"),
    ('{"files": []}', "no `arm64_cost`"),
    ('{"arm64_cost": {"counts": {"i8mm": {"albert.int8.tflite": {"16": {"steady": "many"}}}}}}', "arm64_cost.counts"),
    ('{"arm64_cost": {"counts": {"i8mm": {"albert.int8.tflite": {"x": {"steady": 5}}}}}}', "arm64_cost.counts"),
])
def test_a_bad_baseline_is_one_line_exit_2_before_anything_runs(built, tmp_path, capsys, content, problem):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    before = (built[0] / "manifest.json").read_bytes()
    code = main(["validate", "--artifacts", str(built[0]), "--cost-baseline", str(path)])
    line, out = _one_line(capsys)
    assert code == 2 and line.startswith(f"error: {path}: ") and problem in line, line
    assert "float reference" not in out  # refused before the x86 validation
    assert (built[0] / "manifest.json").read_bytes() == before


def test_a_missing_counting_environment_is_one_line_naming_the_setup_command(built, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_ARM64_HOME", str(tmp_path / "no-env"))
    code = main(["validate", "--artifacts", str(built[0]), "--cost"])
    line, out = _one_line(capsys)
    assert code == 2 and "python -m pipeline arm64-setup" in line and "instruction-counting" in line, line
    assert "float reference" not in out  # refused before the x86 validation


@pytest.mark.parametrize("value, problem", [("-1", "must be 0.0 or more"), ('"x"', "expected float"),
                                            ("nan", "finite"), ("0.05\nmax_decrease = 1", "unknown key")])
def test_a_bad_cost_limit_is_one_line_exit_2(built, tmp_path, capsys, value, problem):
    toml = tmp_path / "thresholds.toml"
    toml.write_text(f"[thresholds.cost]\nmax_increase = {value}\n")
    code = main(["validate", "--artifacts", str(built[0]), "--thresholds", str(toml), "--cost"])
    line, _ = _one_line(capsys)
    assert code == 2 and line.startswith(f"error: {toml}: ") and "thresholds.cost" in line and problem in line, line
    with pytest.raises(PipelineError, match="thresholds.cost"):
        load_config(toml)  # the build's --config reads the same section


def test_the_cost_limit_loads_from_the_thresholds_file_and_the_build_config(tmp_path):
    toml = tmp_path / "pipeline.toml"
    toml.write_text("[build]\nmax_length = 64\n[thresholds.cost]\nmax_increase = 0.2\n[thresholds.int8]\nmax_abs_error = 0.4\n")
    assert load_thresholds(toml).cost.max_increase == 0.2
    config = load_config(toml)
    assert config.thresholds.cost.max_increase == 0.2 and config.thresholds.per_precision["int8"].max_abs_error == 0.4
    assert PipelineConfig().thresholds.cost.max_increase == 0.05


def test_cost_options_from_the_command_line(tmp_path, capsys):
    def options(*argv):
        return validate_options(parser().parse_args(["validate", *argv]))

    assert options().cost is None
    cost = options("--cost").cost
    assert cost.profiles == ["cortex-a76", "i8mm"] and cost.lengths == [16, 64, "max"] and cost.baseline is None
    cost = options("--arm-cpu", "i8mm", "--arm-cpu", "cortex-a76,i8mm", "--cost-lengths", "8, max,128", "--cost").cost
    assert cost.profiles == ["i8mm", "cortex-a76"] and cost.lengths == [8, "max", 128]
    cost = options("--cost-baseline", "b.json").cost  # a baseline implies --cost
    assert cost is not None and cost.baseline == "b.json"
    assert options("--arm64", "--arm-cpu", "cortex-a76").arm64.profile == "cortex-a76"
    build = build_options(parser().parse_args(["build", "--cost", "--arm-cpu", "i8mm", "--cost-lengths", "max"]))
    assert build.cost.profiles == ["i8mm"] and build.cost.lengths == ["max"] and build.arm64 is None
    for argv, problem in ((["--arm64", "--arm-cpu", "i8mm,cortex-a76"], "--arm64 runs one CPU profile"),
                          (["--cost", "--arm-cpu", "pentium"], "pentium"),
                          (["--cost", "--cost-lengths", "16,0"], "--cost-lengths"),
                          (["--cost", "--cost-lengths", "16,mx"], "--cost-lengths"),
                          (["--cost", "--cost-lengths", ","], "--cost-lengths")):
        assert main(["validate", "--artifacts", str(tmp_path / "nowhere"), *argv]) == 2
        line, _ = _one_line(capsys)
        assert line.startswith("error: ") and problem in line, (argv, line)


def test_report_ratios_of_both_runtimes_profiles_and_lengths():
    counts = {}
    for profile, scale in (("cortex-a76", 1.0), ("i8mm", 0.75)):
        for name, base in (("albert.fp32.pte", 66), ("albert.int8.pte", 22), ("albert.fp32.tflite", 68),
                           ("albert.int8.tflite", 24)):
            factor = scale if ".int8." in name else 1.0
            counts.setdefault(profile, {})[name] = {
                16: {"steady": int(base * factor * 1e6), "first": int(base * factor * 1e6) + 5},
                128: {"steady": int(base * 8 * factor * 1e6), "first": int(base * 8 * factor * 1e6) + 5}}
    recorded = {"counts": counts, "steady_runs": 2, "qemu": "qemu 7.2", "plugin": "cost_plugin 2 x",
                "not_counted": {"albert.int8.mediapipe.tflite": "mediapipe"}}
    rows = {(r, what, profile): value for r, what, profile, value in cost_ratios(recorded)}
    assert rows[("int8 / fp32", "albert.int8.pte / albert.fp32.pte", "cortex-a76")] == "0.333 / 0.333"
    assert rows[(".tflite / .pte", "albert.int8.tflite / albert.int8.pte", "i8mm")] == "1.091 / 1.091"
    assert rows[("16 / 128 tokens", "albert.fp32.tflite", "i8mm")] == "0.125"
    assert rows[("i8mm / cortex-a76", "albert.int8.pte", "-")] == "0.750 / 0.750"
    assert rows[("i8mm / cortex-a76", "albert.fp32.pte", "-")] == "1.000 / 1.000"
    md = cost_markdown(recorded, {"baseline": "b.json", "max_increase": 0.05, "failures": ["cost drift: x"],
                                  "notes": ["cost: y"]})
    assert "| albert.int8.pte | i8mm | 128 | 132.00 | 132.00 |" in md
    assert "not counted: albert.int8.mediapipe.tflite: mediapipe" in md and "baseline b.json, max_increase 0.05: FAILED" in md
    assert "  - cost drift: x" in md and "  - cost: y" in md


def test_the_committed_default_baseline_is_the_embedded_default_counted_with_this_plugin():
    """pipeline/assets/default_cost_baseline.json (the default folder's manifest.json after `validate --cost`)
    counts the embedded model's files with the current counting plugin: a change to either needs a new
    measurement (docs/arm64_cost.md says how), else the workflow's cost gate compares unlike counts."""
    from pipeline.gate.cost import load_baseline
    from pipeline.model.checkpoint import hash_files
    from pipeline.core.provenance import DEFAULT_MODEL_DIR
    from pipeline.verify.arm64.cost_env import plugin_version

    path = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "default_cost_baseline.json"
    cost = load_baseline(path)
    data = json.loads(path.read_text())
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert data["model"]["source_sha256"] == hash_files([DEFAULT_MODEL_DIR / "config.json", weights])
    assert cost["plugin"] == plugin_version() and cost["qemu"].startswith("qemu-aarch64 version 7.2")
    files = {"albert.fp32.pte", "albert.int8.pte", "albert.fp32.tflite", "albert.int8.tflite"}
    for profile in ("cortex-a76", "i8mm"):
        assert set(cost["counts"][profile]) >= files
        for name in files:
            assert set(cost["counts"][profile][name]) == {"16", "64", "128"}
    assert 150e6 < cost["counts"]["i8mm"]["albert.int8.pte"]["128"]["steady"] < 160e6
