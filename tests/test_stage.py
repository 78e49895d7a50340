"""One stage shape (pipeline/core/stage.py): cache keys from inputs and tool versions, one runner through the cache."""
from __future__ import annotations

import numpy as np

from pipeline.core import stage as stage_module
from pipeline.core.artifact import Artifact, TensorSpec
from pipeline.core.cache import StageCache
from pipeline.core.config import PipelineConfig, Thresholds
from pipeline.core.stage import ARRAY, ARTIFACTS, Context, Stage, run_cached


def _ctx(tmp_path, log=None) -> Context:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return Context(StageCache(tmp_path / "cache"), work, log or (lambda m: None))


def test_a_changed_input_changes_the_key():
    assert Stage("s", [1, "a"], lambda: 0, ARRAY).key() != Stage("s", [1, "b"], lambda: 0, ARRAY).key()
    assert Stage("s", [1, "a"], lambda: 0, ARRAY).key() == Stage("s", [1, "a"], lambda: 1, ARRAY).key()


def test_a_changed_tool_version_changes_the_key(monkeypatch):
    before = Stage("s", [1], lambda: 0, ARRAY).key()
    versions = dict(stage_module.tool_versions())
    monkeypatch.setattr(stage_module, "tool_versions", lambda: {**versions, "executorch": "99.0"})
    assert Stage("s", [1], lambda: 0, ARRAY).key() != before


def test_a_changed_threshold_does_not_change_the_runtime_outputs_key(tmp_path):
    from pipeline.build import outputs_stage
    from pipeline.runtimes.contained import FileJob

    model_file = tmp_path / "m.pte"
    model_file.write_bytes(b"program")
    artifact = Artifact(model_file, "executorch", "int8", [TensorSpec("input_ids", [1, 4], "int64")], [])
    ids = np.ones((1, 4), dtype=np.int64)
    rows = [{"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0}]
    config = PipelineConfig()
    key = outputs_stage(FileJob(artifact, rows), lambda: None).key()
    config.thresholds.per_precision["int8"] = Thresholds(max_abs_error=9.0)
    assert outputs_stage(FileJob(artifact, rows), lambda: None).key() == key  # thresholds are no input of any cached stage
    model_file.write_bytes(b"another program")
    assert outputs_stage(FileJob(artifact, rows), lambda: None).key() != key


def test_run_cached_runs_once_then_restores_from_the_cache(tmp_path):
    calls = []

    def run():
        calls.append(1)
        return np.arange(6.0).reshape(2, 3)

    ctx = _ctx(tmp_path)
    first = run_cached(Stage("reference", ["x"], run, ARRAY), ctx)
    second = run_cached(Stage("reference", ["x"], run, ARRAY), ctx)
    assert len(calls) == 1 and np.array_equal(first, second)
    run_cached(Stage("reference", ["y"], run, ARRAY), ctx)
    assert len(calls) == 2


def test_artifacts_come_back_as_files_in_the_work_folder(tmp_path):
    made = tmp_path / "made.tflite"
    made.write_bytes(b"flatbuffer")
    artifact = Artifact(made, "litert", "fp32", [TensorSpec("input_ids", [1, 8], "int32")],
                        [TensorSpec("logits", [1, 2], "float32")], {"converter": "onnx2tf"})
    ctx = _ctx(tmp_path)
    run_cached(Stage("litert", ["k"], lambda: [artifact], ARTIFACTS), ctx)
    made.unlink()
    restored = run_cached(Stage("litert", ["k"], lambda: [], ARTIFACTS), _ctx(tmp_path))
    assert len(restored) == 1
    assert restored[0].path.parent == ctx.workdir and restored[0].path.read_bytes() == b"flatbuffer"
    assert restored[0].inputs[0].dtype == "int32" and restored[0].details == {"converter": "onnx2tf"}


def test_a_corrupted_entry_is_rebuilt_not_used(tmp_path):
    ctx = _ctx(tmp_path)
    run_cached(Stage("reference", ["x"], lambda: np.zeros(3), ARRAY), ctx)
    entry = next((tmp_path / "cache").glob("reference-*"))
    (entry / "value.npy").write_bytes(b"garbage")
    again = run_cached(Stage("reference", ["x"], lambda: np.ones(3), ARRAY), ctx)
    assert np.array_equal(again, np.ones(3))
