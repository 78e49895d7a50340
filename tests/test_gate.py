"""The CI drift gate (`python -m pipeline validate`) on a real, tiny, deliberately bad ExecuTorch build.

One int8 .pte is built per session (calibrated on degenerate data: every calibration row is an empty text,
i.e. [CLS] [SEP] and padding only, so the activation ranges never see a real word), with the build's own
int8 thresholds loosened so that the folder is written at all. Every test works on its own copy of it.
Lowering on 2 shared cores takes 1-2 min, so nothing else is lowered except the one fallback candidate.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.core.config import PipelineConfig, Thresholds
from pipeline.core.data import sha256_file
from tiny import write_tiny_albert

MAX_LENGTH = 32
EVAL_LIMIT = 32
SHARPEN = 4.0  # makes the tiny model's logits depend on the text (see tests/test_tflite.py)
FAILURE = re.compile(r"(albert\.int8\.pte): (\w+) ([-+0-9.e]+) ([<>]) limit ([-+0-9.e]+)")


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`python -m pipeline ...` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def bad_build(tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file

    from pipeline.build import build

    root = tmp_path_factory.mktemp("gate")
    model = write_tiny_albert(root / "model")
    state = load_file(str(model / "model.safetensors"))
    state = {k: v * SHARPEN if v.dim() == 2 and "embeddings" not in k else v for k, v in state.items()}
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    degenerate = root / "degenerate.csv"
    degenerate.write_text("text\n" + '""\n' * 16)
    config = PipelineConfig()
    b = config.build
    b.model_dir, b.out_dir, b.max_length, b.eval_limit = str(model), str(root / "out"), MAX_LENGTH, EVAL_LIMIT
    b.runtimes, b.precisions, b.copy_to_apps = ["executorch"], ["int8"], False
    # PIPELINE_TEST_CACHE: reuse lowered files across sessions while iterating (the cache is content-keyed)
    b.calibration_data, b.cache_dir = str(degenerate), os.environ.get("PIPELINE_TEST_CACHE", str(root / "cache"))
    config.quantize.calibration_samples = 16
    config.quantize.activations = "static"  # calibrated activation ranges: what degenerate calibration breaks
    config.thresholds.per_precision["int8"] = Thresholds(1e9, -1.0, 0.0, 1.0)  # let the bad file through the build
    folder = build(config, lambda _: None)
    # The build records the calibration source in the manifest (see the build.py change in the gate's report);
    # until then, it is added here so the gate re-quantizes with the same texts.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.setdefault("calibration", {"source": str(degenerate), "rows": 16})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture
def folder(bad_build, tmp_path) -> Path:
    copy = tmp_path / "android"
    shutil.copytree(bad_build, copy)
    return copy


@pytest.fixture(scope="session")
def failed_gate(bad_build, tmp_path_factory):
    copy = tmp_path_factory.mktemp("failed") / "android"
    shutil.copytree(bad_build, copy)
    code, out, err = _run(["validate", "--artifacts", str(copy)])
    return copy, code, out, err


# (a) ------------------------------------------------------------------------------------------------------


def test_flipped_byte_is_a_hash_mismatch_naming_the_file(folder):
    path = folder / "albert.int8.pte"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    build_report = (folder / "report.json").read_text()
    code, out, err = _run(["validate", "--artifacts", str(folder)])
    assert code == 2
    assert "albert.int8.pte" in err and "sha256 mismatch" in err
    assert "(executorch):" not in out and (folder / "report.json").read_text() == build_report  # stopped before running


def test_truncated_tokenizer_is_a_size_mismatch(folder):
    path = folder / "vocab.txt"
    path.write_bytes(path.read_bytes()[:-3])
    code, _, err = _run(["validate", "--artifacts", str(folder)])
    assert code == 2 and "vocab.txt" in err and "size" in err


# (b) ------------------------------------------------------------------------------------------------------


def test_bad_int8_fails_naming_artifact_metric_value_limit(failed_gate):
    folder, code, out, err = failed_gate
    assert code == 1, (out, err)
    assert any(line.startswith("drift: ") for line in err.splitlines())  # (runtime C++ logs may precede it)
    failures = FAILURE.findall(err)
    assert failures, err
    report = json.loads((folder / "report.json").read_text())
    entry = next(a for a in report["artifacts"] if a["path"] == "albert.int8.pte")
    assert not entry["passed"] and not report["passed"]
    for _, metric, value, op, limit in failures:
        # the message's numbers are the measured value and the limit in force, and they really violate it
        measured = {"max_abs_error": entry["metrics"]["max_abs_error"], "cosine": entry["metrics"]["cosine"],
                    "top1_agreement": entry["metrics"]["top1_agreement"]}.get(metric)
        if measured is not None:
            assert float(value) == pytest.approx(measured, rel=1e-3)
        assert (float(value) > float(limit)) if op == ">" else (float(value) < float(limit))
    # thresholds used are the defaults (not the loose ones the build used) and are recorded
    assert report["thresholds_used"]["source"].startswith("defaults")
    assert entry["thresholds"]["max_abs_error"] == 0.5
    junit = (folder / "report.junit.xml").read_text()
    assert 'name="albert.int8.pte:max_abs_error"' in junit and "<failure" in junit
    assert (folder / "report_logits.png").stat().st_size > 0


def test_localization_names_where_the_error_starts(failed_gate):
    folder, code, out, _ = failed_gate
    report = json.loads((folder / "report.json").read_text())
    entry = next(a for a in report["artifacts"] if a["path"] == "albert.int8.pte")
    data = entry["details"]["localization_data"]
    profile, start = data["profile"], data["start"]
    # the reproduced int8 model is the artifact (same recipe, same calibration rows)
    assert data["reproduction"]["faithful"] and data["reproduction"]["top1_agreement"] == 1.0
    # profile covers embeddings, every encoder layer, pooler and logits, in execution order
    labels = [e["label"] for e in profile]
    assert labels[-1] == "classifier (logits)" and "pooler (dense)" in labels
    assert {"layer 1: output", "layer 2: output", "embedding mapping E->H"} <= set(labels)
    # the named start is the first call whose own int8 error is large; nothing before it is
    index = labels.index(start["label"])
    largest = max(e["local_error"] for e in profile)
    assert start["local_error"] >= 0.5 * largest
    assert all(e["local_error"] < 0.5 * largest for e in profile[:index])
    # degenerate calibration: the first activation quantized with ranges that never saw a word
    assert start["module"] == "albert.embeddings.word_embeddings" and start["local_error"] > 0.5
    assert f"error starts at {start['label']}" in out
    md = (folder / "report.md").read_text()
    assert "where the error starts" in md and start["label"] in md
    assert (folder / "report_layer_error.png").stat().st_size > 0


# (c) ------------------------------------------------------------------------------------------------------


def test_auto_fallback_makes_the_failing_build_pass(folder):
    before = json.loads((folder / "manifest.json").read_text())
    old = next(e for e in before["files"] if e["path"] == "albert.int8.pte")
    code, out, err = _run(["validate", "--artifacts", str(folder), "--auto-fallback"])
    assert code == 0, (out, err)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "albert.int8.pte")
    fallback = entry["details"]["fallback"]
    assert fallback["kept_float"] and set(fallback["kept_float"]) <= set(entry["details"]["quantization"]["kept_float"])
    assert entry["sha256"] != old["sha256"] and entry["sha256"] == sha256_file(folder / "albert.int8.pte")
    assert fallback["bytes_before"] == old["bytes"] and fallback["bytes_after"] == entry["bytes"]
    assert fallback["latency_ms_median_before"] > 0 and fallback["latency_ms_median_after"] > 0
    assert entry["passed"] and entry["thresholds"]["max_abs_error"] == 0.5
    assert manifest["thresholds_used"]["per_artifact"]["albert.int8.pte"]["max_abs_error"] == 0.5
    md = (folder / "report.md").read_text()
    assert "float fallback" in md and "bytes" in md and "latency" in md
    # golden.json follows the new file (the apps' self-check)
    from pipeline.runtimes import ExecuTorchRunner

    golden = json.loads((folder / "golden.json").read_text())
    runner = ExecuTorchRunner(folder / "albert.int8.pte", ["input_ids", "attention_mask", "token_type_ids"])
    case = golden["cases"][0]
    got = runner.run({k: np.asarray([case[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert np.allclose(got[0], case["expected"]["albert.int8.pte"], atol=1e-5)
    # an independent second run of the gate, without fallback, passes on the rewritten folder
    code, out, err = _run(["validate", "--artifacts", str(folder)])
    assert code == 0, (out, err)
    assert not list(folder.parent.glob(".android-fallback-*"))  # no staging left behind


# (d) ------------------------------------------------------------------------------------------------------


def test_unknown_runtime_in_manifest_is_exit_2(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    next(e for e in manifest["files"] if e["path"] == "albert.int8.pte")["runtime"] = "nonexistent"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = _run(["validate", "--artifacts", str(folder)])
    assert code == 2 and "albert.int8.pte" in err and "unknown runtime 'nonexistent'" in err
    assert "(executorch): PASS" not in out


def test_runtime_that_cannot_be_imported_is_exit_2(folder, tmp_path, monkeypatch):
    """The files run in a child process: there, executorch is shadowed by a package whose import fails, as on a
    machine where the runtime is not installed."""
    shadow = tmp_path / "shadow" / "executorch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'executorch.runtime\'")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    code, out, err = _run(["validate", "--artifacts", str(folder)])
    assert code == 2 and "ExecuTorch runtime is not installed" in err and "albert.int8.pte" in err
    assert "(executorch): PASS" not in out


def test_empty_eval_set_is_exit_2(folder, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    code, _, err = _run(["validate", "--artifacts", str(folder), "--eval-data", str(empty)])
    assert code == 2 and "empty.csv" in err and "no rows" in err
    code, _, err = _run(["validate", "--artifacts", str(folder), "--eval-limit", "0"])
    assert code == 2 and "eval set is empty" in err


def test_wrong_reference_model_is_exit_2(folder, tmp_path):
    other = write_tiny_albert(tmp_path / "other", seed=1)
    code, _, err = _run(["validate", "--artifacts", str(folder), "--model", str(other)])
    assert code == 2 and "not the model these artifacts were built from" in err


def test_thresholds_file_is_used_and_recorded(folder, tmp_path):
    loose = tmp_path / "gate.toml"
    loose.write_text("[thresholds.int8]\nmax_abs_error = 5.0\nmin_cosine = 0.9\n")
    code, out, err = _run(["validate", "--artifacts", str(folder), "--thresholds", str(loose)])
    assert code == 0, (out, err)
    report = json.loads((folder / "report.json").read_text())
    assert report["thresholds_used"]["source"] == str(loose)
    assert report["thresholds_used"]["per_artifact"]["albert.int8.pte"]["max_abs_error"] == 5.0
