"""`pipeline bench` on a tiny built folder: every artifact plus the eager and ONNX Runtime baselines, real runtimes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench import check_targets, render_markdown
from pipeline.cli import int_list
from pipeline.bench.profile import op_group
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import find_model_dir

MAX_LENGTH = 32  # the shared tiny build's max_length (dynamic shapes, the default)
WORKLOAD = 12  # eval texts of the workload figure


@pytest.fixture(scope="session")
def bench_run(tiny_builds, tmp_path_factory) -> tuple[Path, Path]:
    """`python -m pipeline bench --runs 5 --threads 1` on the shared tiny android build (tests/conftest.py), with
    the ios build's files (same model) as a `--compare` folder."""
    from pipeline.cli import main

    folder = tiny_builds["android"]
    out = tmp_path_factory.mktemp("bench") / "bench"
    code = main(["bench", "--artifacts", str(folder), "--threads", "1", "--runs", "5",
                 "--max-length", str(MAX_LENGTH), "--out", str(out), "--compare", str(tiny_builds["ios"]),
                 "--workload", str(WORKLOAD)])
    assert code == 0
    return folder, out


@pytest.fixture(scope="session")
def result(bench_run) -> dict:
    return json.loads((bench_run[1] / "bench.json").read_text())


def test_every_model_file_and_every_baseline_has_a_row(bench_run, result):
    folder, _ = bench_run
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"] if f["runtime"] in ("executorch", "litert")}  # ids in
    rows = {r["name"]: r for r in result["rows"]}
    assert set(files) <= set(rows), set(files) - set(rows)
    twins = [f["path"] for f in manifest["files"] if f["runtime"] == "mediapipe"]
    assert twins and all(any(t in note for note in result["notes"]) for t in twins)  # said, not silently dropped
    kinds = {r["kind"] for r in result["rows"]}
    assert {"torch-hf", "torch-export", "ort"} <= kinds
    assert {r["precision"] for r in result["rows"] if r["kind"] == "ort"} == {"fp32", "int8-dynamic"}
    for name, entry in files.items():
        assert rows[name]["bytes"] == entry["bytes"] == (folder / name).stat().st_size
        assert rows[name]["bytes_per_parameter"] == pytest.approx(entry["bytes"] / manifest["model"]["params"], rel=1e-3)


def test_latency_memory_and_load_are_measured(result):
    for r in result["rows"]:
        assert r["runs"] == 5, r["name"]
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"], r["name"]
        assert r["load_ms"] > 0, r["name"]
        if not r.get("compared"):
            assert r["peak_rss_delta_mb"] is not None and r["peak_rss_delta_mb"] >= 0, r["name"]
        assert r["seq"] == MAX_LENGTH and r["threads"] == 1
    assert result["settings"]["warmup_runs"] >= 1


def test_every_candidate_computes_the_same_function(result):
    for r in result["rows"]:
        if r.get("compared"):
            assert r["max_abs_diff_vs_export_model"] is None  # another model: no logit comparison
            continue
        limit = 1e-3 if r["precision"] == "fp32" else 5.0  # int8 of a random tiny model: only gross errors
        assert r["max_abs_diff_vs_export_model"] <= limit, (r["name"], r["max_abs_diff_vs_export_model"])


def test_bench_md_names_the_command_and_checks_the_targets(bench_run, result):
    text = (bench_run[1] / "bench.md").read_text()
    assert text.splitlines()[2].startswith("Command: `python -m pipeline bench --artifacts ")
    assert "## Targets" in text
    targets = text.split("## Targets", 1)[1]
    for phrase in ("int8 .pte latency <= 0.5 x eager PyTorch fp32", "int8 .pte latency <= ONNX Runtime dynamic int8",
                   "int8 .tflite latency <= ONNX Runtime dynamic int8", "fp32 .pte latency <= 1.2 x fp32 .tflite",
                   "bytes <= 1.15 x parameters"):
        assert phrase in targets, phrase
    assert {t["status"] for t in result["targets"]} <= {"PASS", "MISS", "N/A"}
    for t in result["targets"]:
        if t["status"] == "MISS":
            assert t["over_by_percent"] > 0 and "over" in t["detail"]
    png = bench_run[1] / "bench.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compared_folder_runs_in_the_same_rounds_and_counts_for_no_target(bench_run, tiny_builds, result):
    ios = json.loads((tiny_builds["ios"] / "manifest.json").read_text())
    label = ios["model"]["name"]
    compared = {r["name"]: r for r in result["rows"] if r.get("compared")}
    expected = {f"{label}: {f['path']}" for f in ios["files"] if f["runtime"] in ("executorch", "litert")}
    assert set(compared) == expected
    for r in compared.values():
        assert r["origin"] == f"--compare {tiny_builds['ios']}" and r["runs"] == 5
    subjects = " ".join(str(t.get("detail", "")) + str(t.get("subject", "")) for t in result["targets"])
    assert not any(name in subjects for name in compared), "a compared file was used for this folder's targets"
    assert "--compare" in result["command"]
    assert "run in the same interleaved rounds" in (bench_run[1] / "bench.md").read_text()


def _row(name, kind, precision, median, size=1000):
    return {"name": name, "kind": kind, "precision": precision, "seq": 128, "threads": 2, "median_ms": median,
            "p90_ms": median, "bytes": size}


def test_targets_say_by_how_much_they_are_missed():
    rows = [_row("m.int8.pte", "executorch", "int8", 6.0, size=1200), _row("m.fp32.pte", "executorch", "fp32", 10.0),
            _row("m.int8.tflite", "litert", "int8", 4.0, size=1100), _row("m.fp32.tflite", "litert", "fp32", 10.0),
            _row("eager", "torch-hf", "fp32", 10.0), _row("ort8", "ort", "int8-dynamic", 5.0)]
    checks = {c["target"]: c for c in check_targets(rows, 128, [2], params=1000)}
    eager = checks["int8 .pte latency <= 0.5 x eager PyTorch fp32"]
    assert eager["status"] == "MISS" and eager["ratio"] == 0.6 and eager["over_by_percent"] == 20.0
    assert checks["int8 .pte latency <= ONNX Runtime dynamic int8"]["status"] == "MISS"
    assert checks["int8 .tflite latency <= ONNX Runtime dynamic int8"]["status"] == "PASS"
    assert checks["fp32 .pte latency <= 1.2 x fp32 .tflite"]["status"] == "PASS"
    assert checks["m.int8.pte bytes <= 1.15 x parameters"]["status"] == "MISS"
    assert checks["m.int8.tflite bytes <= 1.15 x parameters"]["status"] == "PASS"
    missing = check_targets(rows[:1], 128, [2], params=1000)
    assert {c["status"] for c in missing if "latency" in c["target"]} == {"N/A"}


def test_list_arguments_and_missing_folder_are_clear_errors(tmp_path):
    from pipeline.cli import main

    assert int_list("64, 128,128", "--max-length") == [64, 128]
    for bad in ("0", "a", ","):
        with pytest.raises(PipelineError):
            int_list(bad, "--threads")
    assert main(["bench", "--artifacts", str(tmp_path)]) == 2


def test_markdown_renders_without_memory_or_profile():
    result = {"command": "python -m pipeline bench", "created": "now", "seconds": 1.0,
              "model": {"name": "m", "params": 10, "max_length": 128},
              "machine": {"cpu_count": 2, "versions": {}}, "notes": [],
              "settings": {"runs": 1, "warmup_runs": 1, "inputs": "x", "length_sources": {"64": "eager only"}},
              "rows": [{**_row("eager", "torch-hf", "fp32", 1.0), "bytes_per_parameter": 4.0, "load_ms": 1.0,
                        "vs_eager": 1.0}],
              "targets": check_targets([], 128, [1], 10)}
    text = render_markdown(result)
    assert "## Targets" in text and "N/A" in text


def test_op_profiles_say_where_each_runtime_spends_its_time(bench_run, result):
    """ETDump (XNNPACK per-op events) for every .pte, ONNX Runtime's node profile for both ORT files."""
    folder, out = bench_run
    profile = result["op_profile"]
    assert profile["seq"] == MAX_LENGTH and profile["threads"] == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    expected = {f["path"] for f in manifest["files"] if f["runtime"] == "executorch"}
    expected |= {"onnxruntime fp32", "onnxruntime dynamic int8"}
    assert set(profile["candidates"]) == expected
    for name, p in profile["candidates"].items():
        assert p["run_ms"] > 0 and p["top_ops"], name
        assert p["groups_ms"].get("matrix multiply", 0) > 0, (name, p["groups_ms"])
        # per-op times add up to the groups (the op times and the run time come from different passes, and their
        # ratio depends on the CPU and its load: measured 1.66 vs 0.94 ms for ORT fp32 on a loaded AVX-512 EPYC)
        assert p["ops_ms"] > 0 and sum(p["groups_ms"].values()) == pytest.approx(p["ops_ms"], abs=0.01), (name, p)
    int8_pte = next(p for n, p in profile["candidates"].items() if n.endswith(".int8.pte"))
    fp32_pte = next(p for n, p in profile["candidates"].items() if n.endswith(".fp32.pte"))
    # The property, never a kernel's name (each CPU gets its own kernel family): the int8 file's time goes to
    # matrix multiplies that the fp32 file does not run, i.e. its quantized GEMMs ran.
    fp32_ops = {o["op"] for o in fp32_pte["top_ops"]}
    int8_gemms = [o for o in int8_pte["top_ops"]
                  if op_group(o["op"]) == "matrix multiply" and o["op"] not in fp32_ops and o["ms"] > 0]
    assert int8_gemms, (int8_pte["top_ops"], fp32_pte["top_ops"])
    assert "## Where the time goes (op-level profiles" in (out / "bench.md").read_text()


def test_ort_int8_baseline_quantizes_every_linear_layer(tiny_builds, tmp_path):
    """ALBERT's shared weights reach layers 2..N through Identity nodes; quantize_dynamic alone left them fp32."""
    import onnx

    from pipeline.bench import INPUT_NAMES, ort_candidates
    from pipeline.model.checkpoint import load_checkpoint

    manifest = json.loads((tiny_builds["android"] / "manifest.json").read_text())
    model = load_checkpoint(find_model_dir(manifest["model"]))  # the manifest names it by hash, not path
    made = {c["precision"]: c for c in ort_candidates(model, MAX_LENGTH, list(INPUT_NAMES), tmp_path, model.num_parameters)}
    graph = onnx.load(made["int8-dynamic"]["path"]).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Identity" and n.input[0] in constants for o in n.output}
    float_linears = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    quantized = [n for n in graph.node if n.op_type == "MatMulInteger"]
    layers = model.spec.num_hidden_layers
    assert not float_linears, float_linears
    assert len(quantized) >= 6 * layers  # q, k, v, dense, ffn, ffn_output per layer call


def test_length_table_has_every_file_at_every_length_and_the_workload(bench_run, tiny_builds, result):
    """Latency against length (8, 16, ..., max_length) for every model file, and the workload figure."""
    import math

    folder, out = bench_run
    manifest = json.loads((folder / "manifest.json").read_text())
    files = [f["path"] for f in manifest["files"] if f["runtime"] in ("executorch", "litert")]
    section = result["lengths"]
    assert section["lengths"] == [8, 16, 32] and section["workload_texts"] == WORKLOAD
    rows = section["rows"]
    for name in files:
        for n in (8, 16, 32):
            got = [r for r in rows if r["name"] == name and r["point"] == "length" and r["seq"] == n]
            assert len(got) == 1, (name, n, got)
            assert math.isfinite(got[0]["median_ms"]) and got[0]["median_ms"] > 0 and got[0]["runs"] == 5, got[0]
            assert got[0]["shapes"] == "dynamic" and got[0]["max_length"] == MAX_LENGTH
        workload = [r for r in rows if r["name"] == name and r["point"] == "workload"]
        assert len(workload) == 1, (name, workload)
        w = workload[0]
        assert w["texts"] == WORKLOAD and math.isfinite(w["mean_ms"]) and w["mean_ms"] > 0, w
        assert 2 < w["mean_tokens"] <= MAX_LENGTH, w  # real lengths, capped at max_length: not all padded
        assert {"16", "max"} <= set(section["memory"][name]) and section["memory"][name]["16"] >= 0
        if name.endswith(".pte"):
            assert section["memory"][name]["planned_bytes"] > 0, name
    own = {r["name"] for r in rows if r["role"] == "artifact"}
    assert own == set(files)
    ios = json.loads((tiny_builds["ios"] / "manifest.json").read_text())  # the --compare folder: same sweep
    compared = {r["name"] for r in rows if r["role"] == "compare"}
    assert compared == {f"{ios['model']['name']}: {f['path']}" for f in ios["files"]
                        if f["runtime"] in ("executorch", "litert")}, compared
    # no --static folder: the variable-length targets are N/A and say how to get them
    length_checks = [t for t in result["targets"] if "x static" in t["target"]]
    assert len(length_checks) == 2 * len(files) and {t["status"] for t in length_checks} == {"N/A"}
    assert all("--static" in t["detail"] for t in length_checks)
    text = (out / "bench.md").read_text()
    table = text.split("## Latency against length", 1)[1].split("\n## ", 1)[0]
    for name in files:
        assert f"| {name} | dynamic | {MAX_LENGTH} |" in table, name


def test_length_targets_are_ratios_against_the_static_file_of_the_same_runtime_and_precision():
    from pipeline.bench.lengths import length_targets

    def rows(name, role, shapes, at16, at128, workload, precision="int8"):
        common = {"name": name, "role": role, "runtime": "executorch", "precision": precision, "shapes": shapes,
                  "max_length": 128, "threads": 1}
        return [{**common, "point": "length", "seq": 16, "median_ms": at16},
                {**common, "point": "length", "seq": 128, "median_ms": at128},
                {**common, "point": "workload", "seq": None, "mean_ms": workload, "texts": 10, "mean_tokens": 70.0}]

    table = (rows("a.int8.pte", "artifact", "dynamic", 2.0, 10.0, 6.0) + rows("static: a.int8.pte", "static", "static",
             10.0, 10.0, 10.0) + rows("a.fp32.pte", "artifact", "dynamic", 3.0, 10.0, 7.0, precision="fp32"))
    checks = {c["target"]: c for c in length_targets(table, [1])}
    assert checks["a.int8.pte workload latency <= 0.65 x static"]["status"] == "PASS"
    assert checks["a.int8.pte workload latency <= 0.65 x static"]["ratio"] == 0.6
    short = checks["a.int8.pte latency at 16 tokens <= 0.25 x static"]
    assert short["status"] == "PASS" and short["ratio"] == 0.2
    assert checks["a.fp32.pte workload latency <= 0.65 x static"]["status"] == "N/A"  # no static fp32 file
    table[0]["median_ms"] = 3.0
    short = {c["target"]: c for c in length_targets(table, [1])}["a.int8.pte latency at 16 tokens <= 0.25 x static"]
    assert short["status"] == "MISS" and short["over_by_percent"] == 20.0


def test_a_longer_max_length_build_is_checked_at_the_lengths_both_builds_take():
    from pipeline.bench.lengths import MAX_LENGTH_COST, max_length_checks

    def rows(name, max_length, times, runtime="executorch"):
        common = {"name": name, "role": "artifact", "runtime": runtime, "precision": "int8", "shapes": "dynamic",
                  "max_length": max_length, "threads": 1, "point": "length"}
        return [{**common, "seq": n, "median_ms": ms} for n, ms in times.items()]

    table = (rows("a.int8.pte", 128, {16: 1.0, 128: 5.0}) + rows("dyn512: a.int8.pte", 512, {16: 1.05, 128: 5.0, 512: 30.0})
             + rows("a.int8.tflite", 128, {16: 1.0}, runtime="litert"))
    (check,) = max_length_checks(table, [1])
    assert check["subject"] == "dyn512: a.int8.pte" and check["baseline"] == "a.int8.pte"
    assert check["status"] == "PASS" and check["seq"] == 16 and check["ratio"] == 1.05  # 512 is not compared
    table[1 + 0]["median_ms"] = 5.0 / (MAX_LENGTH_COST + 0.05)
    (check,) = max_length_checks(table, [1])
    assert check["status"] == "MISS" and check["seq"] == 128
