"""`pipeline build` end to end on a tiny ALBERT: real torch.export, XNNPACK lowering, ExecuTorch runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.data import sha256_file
from pipeline.runtimes import open_runner

# Ops allowed outside the XNNPACK delegate in the fp32 .pte, and why:
#   aten_embedding_default: XNNPACK has no gather (word and token-type lookups);
#   dim_order_ops__to_dim_order_copy_default: the int64 -> float cast of the attention mask, before the delegate;
#   getitem: tuple plumbing of delegate outputs, no compute;
#   with the default dynamic length: aten_slice_copy_tensor (the first S rows of the position table and of the
#   constant [CLS] selector: XNNPACK refuses slices of a symbolic size; S x E floats copied before the delegate)
#   and sym_size (reading S).
FP32_UNDELEGATED_ALLOWED = {"aten_embedding_default", "dim_order_ops__to_dim_order_copy_default", "getitem",
                            "aten_slice_copy_tensor", "sym_size"}


@pytest.fixture(scope="session")
def tiny_build(tiny_builds) -> Path:
    return tiny_builds["android"]


@pytest.fixture(scope="session")
def manifest(tiny_build) -> dict:
    return json.loads((tiny_build / "manifest.json").read_text())


def model_files(manifest: dict) -> list[dict]:
    return [f for f in manifest["files"] if f["runtime"] is not None]


def test_manifest_has_the_contract_fields(manifest, tiny_build):
    assert manifest["target"] == "android"
    assert set(manifest["model"]) >= {"name", "params", "source_sha256"}
    assert isinstance(manifest["model"]["params"], int) and manifest["model"]["params"] > 0
    assert manifest["versions"]["executorch"] and manifest["versions"]["torch"]
    for entry in model_files(manifest):
        assert set(entry) >= {"path", "sha256", "bytes", "runtime", "precision", "inputs", "outputs", "metrics", "passed"}
        assert set(entry["metrics"]) >= {"max_abs_error", "cosine", "top1_agreement", "accuracy"}
        assert entry["passed"] is True
        for tensor in entry["inputs"]:
            assert set(tensor) == {"name", "shape", "dtype"}
    assert manifest["shape_contract"] == {"shapes": "dynamic", "min_length": 1, "max_length": 32, "buckets": [],
                                          "padding": manifest["shape_contract"]["padding"]}
    for entry in [e for e in model_files(manifest) if e["runtime"] != "mediapipe"]:  # ids in: any length 1..32 (-1)
        assert [t["shape"] for t in entry["inputs"]] == [[1, -1]] * len(entry["inputs"]), entry["path"]
        assert set(entry["details"]["length_drift"]["sweep_max_abs_error"]) == {"1", "2", "32"}, entry["path"]
    pte = {(f["precision"]) for f in model_files(manifest) if f["runtime"] == "executorch"}
    assert pte == {"fp32", "int8"}
    for name in ("labels.json", "golden.json", "report.md", "tokenizer.json"):
        assert (tiny_build / name).is_file(), name


def test_every_sha256_matches(manifest, tiny_build):
    assert {a["path"] for a in manifest["assets"]} >= {"labels.json", "golden.json", "tokenizer.json"}
    for entry in manifest["files"] + manifest["assets"]:
        assert sha256_file(tiny_build / entry["path"]) == entry["sha256"], entry["path"]
        assert (tiny_build / entry["path"]).stat().st_size == entry["bytes"]


def test_every_pte_runs_in_executorch_and_reproduces_golden(manifest, tiny_build):
    golden = json.loads((tiny_build / "golden.json").read_text())
    assert golden["cases"]
    ptes = [f for f in model_files(manifest) if f["runtime"] == "executorch"]
    for entry in ptes:
        runner = open_runner(tiny_build / entry["path"], "executorch", [t["name"] for t in entry["inputs"]])
        for case in golden["cases"]:
            inputs = {k: np.asarray([case[k]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            logits = runner.run(inputs)
            assert np.allclose(logits[0], case["expected"][entry["path"]], atol=1e-5), entry["path"]


def test_int8_pte_is_small_because_shared_layers_and_embedding_are_int8_once(manifest):
    params = manifest["model"]["params"]
    assert params > 30000 * 128  # the embedding table alone
    int8 = next(f for f in model_files(manifest) if f["runtime"] == "executorch" and f["precision"] == "int8")
    fp32 = next(f for f in model_files(manifest) if f["runtime"] == "executorch" and f["precision"] == "fp32")
    assert int8["bytes"] <= 1.25 * params, (int8["bytes"], params)
    assert fp32["bytes"] <= 1.25 * 4 * params


def test_fp32_pte_transformer_is_fully_delegated(manifest):
    fp32 = next(f for f in model_files(manifest) if f["runtime"] == "executorch" and f["precision"] == "fp32")
    delegation = fp32["details"]["delegation"]
    undelegated = set(delegation["undelegated_ops"])
    assert undelegated <= FP32_UNDELEGATED_ALLOWED, undelegated - FP32_UNDELEGATED_ALLOWED
    assert delegation["delegates"] == 1
    for op in ("aten_linear_default", "aten_bmm_default", "aten__softmax_default", "aten_mean_dim"):
        assert delegation["delegated_ops"].get(op, 0) > 0, op


def test_refused_converter_files_are_moved_out_of_the_work_folder(tmp_path):
    """The TFLite stage leaves a refused file in its scratch folder inside the build's work folder, which the build
    deletes; keep_rejected moves it to <out>/<target>.failed/ first (the error message points there)."""
    from pipeline.build import keep_rejected

    work = tmp_path / ".android-work-123-abc"
    scratch = work / ".albert.tflite-work"
    scratch.mkdir(parents=True)
    (scratch / "fp32.tflite.rejected").write_bytes(b"x")
    (work / "albert.fp32.pte").write_bytes(b"y")  # a lowered file is not a scratch folder: it stays
    failed = tmp_path / "android.failed"
    assert keep_rejected(work, failed) == failed
    assert (failed / "albert.tflite-work" / "fp32.tflite.rejected").read_bytes() == b"x"
    assert not scratch.exists() and (work / "albert.fp32.pte").exists()
    assert keep_rejected(work, failed) is None  # nothing left to keep
    assert keep_rejected(tmp_path / "missing", failed) is None
