"""Variable-length artifacts on tiny ALBERTs with the real toolchains: a dynamic artifact of each runtime
runs at lengths never used at export time and matches eager; a length above the maximum is refused by the
project's runners with a one-line PipelineError; a static file keeps working through the same runner (padded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.config import QuantizeConfig, TFLiteConfig
from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import load_checkpoint
from pipeline.runtimes import open_runner
from pipeline.core.shapes import pad, sweep_lengths, trim
from pipeline.core.tokenization import encode

MAX = 40  # 37 (a prime) and 40 are never the example length (the first text's own length)
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
TEXTS = ["the tea was great", "i hate this product very much, bad", "good coffee", "worst cookies ever, stale box",
         "i love the sweet fresh chips", "bitter taste, will not buy again", "best dog food ever", "great"]


def _row(length: int, vocab: int = 100) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(length).integers(5, vocab, (1, length))
    ids[0, 0] = 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _eager(model, row) -> np.ndarray:
    with torch.no_grad():
        return model.export_model(*(torch.from_numpy(row[n]) for n in NAMES)).numpy()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny import write_tiny_albert

    loaded = load_checkpoint(write_tiny_albert(tmp_path_factory.mktemp("varlen") / "m", hidden_size=32), MAX)
    with torch.no_grad():  # peaked attention: logits that depend on the text (see test_tflite.SHARPEN); the
        for model in (loaded.export_model, loaded.reference):  # reference too: trace compares the two
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(4.0)
    return loaded


@pytest.fixture(scope="module")
def rows(model):
    return encode(model.tokenizer, TEXTS, MAX)


def _assert_refuses_too_long(runner):
    with pytest.raises(PipelineError) as err:
        runner.run(_row(MAX + 1))
    message = str(err.value)
    assert "exceeds the model's maximum 40" in message and "\n" not in message


def test_sweep_and_padding_helpers():
    assert sweep_lengths(128) == [1, 2, 37, 128]
    assert sweep_lengths(32, (8, 16)) == [1, 2, 8, 16, 32]
    row = pad(_row(3), 6)
    assert row["input_ids"].shape == (1, 6) and row["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]
    assert {k: v.tolist() for k, v in trim(row).items()} == {k: v.tolist() for k, v in _row(3).items()}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dynamic_pte_runs_any_length_and_refuses_longer(model, rows, tmp_path, precision):
    from pipeline.lower.executorch import lower_executorch
    from pipeline.lower.quantize import quantize
    from pipeline.lower.trace import trace

    traced = trace(model, rows, shapes="dynamic")
    example_length = traced.example_inputs[0].shape[1]
    assert example_length not in (1, 37, MAX)
    exported = traced.exported if precision == "fp32" else quantize(model, traced, rows, QuantizeConfig()).exported
    artifact = lower_executorch(exported, tmp_path / f"m.{precision}.pte", precision, NAMES, 2, dynamic=True)
    assert artifact.inputs[0].shape == [1, -1]
    if precision == "fp32":
        delegation = artifact.details["delegation"]
        assert delegation["delegates"] == 1, delegation
        assert set(delegation["undelegated_ops"]) <= {
            "aten_embedding_default", "dim_order_ops__to_dim_order_copy_default", "getitem",
            "aten_slice_copy_tensor", "sym_size"}, delegation["undelegated_ops"]
    runner = open_runner(artifact.path, "executorch", NAMES)
    for length in (1, 2, 37, MAX):
        row = _row(length)
        got = runner.run(row)
        assert got.shape == (1, 2)
        if precision == "fp32":
            assert np.abs(got - _eager(model, row)).max() <= 1e-5, (length, got, _eager(model, row))
        else:
            # int8 drifts from float most at lengths 1-2 (static files as much: quantization, not the dynamic
            # shape; README). What the dynamic length must not change: the same text padded to MAX (masked) gives
            # the same logits (XNNPACK quantizes activations per token), and the drift stays within the int8 gate.
            padded = runner.run(pad(row, MAX))
            assert np.abs(got - padded).max() <= 1e-3, (length, got, padded)
            assert np.abs(got - _eager(model, row)).max() <= 0.5, (length, got, _eager(model, row))
    assert runner.static is False and runner.max_length == MAX
    _assert_refuses_too_long(runner)


def test_static_pte_pads_shorter_inputs_and_refuses_longer(model, rows, tmp_path):
    from pipeline.lower.executorch import lower_executorch
    from pipeline.lower.trace import trace

    traced = trace(model, rows, shapes="static")
    artifact = lower_executorch(traced.exported, tmp_path / "s.pte", "fp32", NAMES, 2)
    runner = open_runner(artifact.path, "executorch", NAMES)
    row = _row(5)
    assert np.abs(runner.run(row) - _eager(model, row)).max() <= 1e-5
    assert runner.static is True
    _assert_refuses_too_long(runner)


def test_dynamic_tflite_runs_any_length_and_refuses_longer(model, rows, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.lower import tflite as stage

    artifacts = stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), MAX, rows, rows, shapes="dynamic"),
                                   tmp_path / "out", stage.Hooks(log=lambda _: None))
    assert [a.precision for a in artifacts] == ["fp32", "int8"]
    position_table = [model.spec.max_position_embeddings, model.spec.embedding_size]
    assert [t["shape"] for t in artifacts[1].details["float_tables"]] == [position_table]
    for artifact in artifacts:
        signatures = [d["shape_signature"].tolist() for d in Interpreter(model_path=str(artifact.path)).get_input_details()]
        assert signatures == [[1, -1]] * 3
        assert all(t.shape == [1, -1] for t in artifact.inputs)
        runner = open_runner(artifact.path, "litert")
        assert runner.static is False and runner.max_length == MAX
        limit = 1e-4 if artifact.precision == "fp32" else 0.15
        for length in (1, 2, 37, MAX):
            row = _row(length)
            assert np.abs(runner.run(row) - _eager(model, row)).max() <= limit, (artifact.path.name, length)
        _assert_refuses_too_long(runner)
