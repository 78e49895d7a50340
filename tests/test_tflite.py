"""The TFLite stage with the real toolchain (torch.onnx -> onnx2tf -> TF converter -> LiteRT) on tiny ALBERTs.

Each conversion takes ~25-45 s on 2 shared cores, so every case below is one conversion and covers one of the
known traps of the toolchain: max_length == embedding_size, no token_type_ids input, 3 labels,
max_length 64 (== intermediate_size: onnx2tf's strict mode) and 256, the size rule at vocab 30000, and the
onnxslim + folded-constant trap reproduced on purpose to show that a wrong file is refused, never returned.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.config import TFLiteConfig
from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import load_checkpoint
from pipeline.runtimes import LiteRTRunner
from pipeline.core.artifact import size_limit
from pipeline.core.metrics import cosine
from pipeline.lower import tflite as stage
from pipeline.lower.tflite import onnx_passes, patch
from pipeline.core.tokenization import Encoded, encode
from tiny import write_tiny_albert

TEXTS = [
    "the tea was great",
    "i hate this product very much, bad",
    "good coffee",
    "worst cookies ever, stale box",
    "i love the sweet fresh chips",
    "bitter taste, will not buy again",
    "best dog food ever",
    "the price is bad but the flavor is great",
]


SHARPEN = 4.0


def _load(path, max_length):
    """A tiny ALBERT whose logits depend on the text: random init at std 0.02 leaves [CLS] attending evenly,
    so every text gets the same logits to 3 decimals and top-1 would compare noise. Scaling the linears
    makes attention peaked and top-1 margins real."""
    model = load_checkpoint(path, max_length)
    with torch.no_grad():
        for module in model.export_model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(SHARPEN)
    return model


def _lower(tmp_path, model, max_length, quant="dynamic", use_token_type_ids=True):
    rows = encode(model.tokenizer, TEXTS, max_length)
    workdir = tmp_path / "out"
    job = stage.TFLiteJob(model, TFLiteConfig(converter="onnx2tf", quant=quant), max_length, rows, rows,
                          use_token_type_ids=use_token_type_ids)
    artifacts = stage.lower_tflite(job, workdir, stage.Hooks(log=lambda _: None))
    return artifacts, rows, workdir


def _assert_good(artifacts, model, rows, max_length, input_names, workdir):
    """Independent re-check of what the stage returned: files in place, signature specs, real accuracy."""
    assert [a.precision for a in artifacts] == ["fp32", "int8"]
    assert sorted(p.name for p in workdir.iterdir()) == ["albert.fp32.tflite", "albert.int8.tflite"]  # no scratch
    with torch.no_grad():
        args = [torch.from_numpy(getattr(rows, n)) for n in input_names]
        reference = model.export_model(*args).numpy()
    for artifact in artifacts:
        assert artifact.runtime == "litert" and artifact.path.is_file()
        assert sorted(t.name for t in artifact.inputs) == sorted(input_names)
        assert all(t.shape == [1, max_length] for t in artifact.inputs)
        assert [t.shape for t in artifact.outputs] == [[1, model.spec.num_labels]]
        assert artifact.details["converter"] == "onnx2tf"
        runner = LiteRTRunner(artifact.path)
        got = np.concatenate([runner.run(rows.row(i)) for i in range(len(rows))])
        error = float(np.abs(got - reference).max())
        assert error == pytest.approx(artifact.details["max_abs_error_check"], rel=1e-3, abs=1e-6)
        if artifact.precision == "fp32":
            assert error <= stage.FP32_MAX_ABS_ERROR
            assert artifact.details["quantization"] == "none"
        else:
            assert cosine(got, reference) >= stage.INT8_MIN_COSINE
        assert artifact.path.stat().st_size <= size_limit(model.num_parameters, model.spec.num_hidden_layers, artifact.precision)
    return reference


@pytest.fixture(scope="module")
def vocab30k(tmp_path_factory):
    """max_length == embedding_size == 128 (and intermediate_size == 128) with a 30000-token vocabulary."""
    tmp = tmp_path_factory.mktemp("tflite_vocab30k")
    path = write_tiny_albert(tmp / "model", vocab_size=30000, embedding_size=128, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2)
    model = _load(path, 128)
    artifacts, rows, workdir = _lower(tmp, model, 128)
    return model, artifacts, rows, workdir


def test_max_length_equal_to_embedding_size(vocab30k):
    model, artifacts, rows, workdir = vocab30k
    _assert_good(artifacts, model, rows, 128, ["input_ids", "attention_mask", "token_type_ids"], workdir)


def test_int8_size_stores_shared_layers_once(vocab30k):
    model, artifacts, _, _ = vocab30k
    sizes = {a.precision: a.path.stat().st_size for a in artifacts}
    # 2 layers sharing one set of weights; the 30000 x 128 word table dominates and is int8 in the int8 file
    assert sizes["int8"] <= 1.25 * model.num_parameters, (sizes, model.num_parameters)
    assert sizes["fp32"] <= 1.25 * 4 * model.num_parameters
    assert sizes["int8"] < 0.3 * sizes["fp32"]
    assert all(a.details["size_limit_bytes"] >= a.path.stat().st_size for a in artifacts)


def test_no_token_type_ids_three_labels(tmp_path):
    """The 2-input model at max_length == embedding_size: the summed position + type constant trap."""
    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=128, hidden_size=32, num_labels=3), 128)
    artifacts, rows, workdir = _lower(tmp_path, model, 128, use_token_type_ids=False)
    _assert_good(artifacts, model, rows, 128, ["input_ids", "attention_mask"], workdir)


def test_max_length_64_static_int8(tmp_path):
    """max_length == intermediate_size == 64 sends onnx2tf into strict mode; int8 calibrated on the rows."""
    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=16, hidden_size=32, intermediate_size=64), 64)
    artifacts, rows, workdir = _lower(tmp_path, model, 64, quant="static")
    _assert_good(artifacts, model, rows, 64, ["input_ids", "attention_mask", "token_type_ids"], workdir)
    assert artifacts[1].details["quantization"] == "static"


def test_max_length_256(tmp_path):
    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=16, hidden_size=32), 256)
    artifacts, rows, workdir = _lower(tmp_path, model, 256)
    _assert_good(artifacts, model, rows, 256, ["input_ids", "attention_mask", "token_type_ids"], workdir)


def test_wrong_conversion_is_refused_and_names_the_op(tmp_path, monkeypatch):
    """Reproduce the silent onnx2tf trap (onnxslim + folded [1,128,128] embedding constant, 2 inputs): the
    stage must raise, name the first diverging op, and leave no .tflite under its final name."""
    monkeypatch.setattr(onnx_passes, "USE_ONNXSLIM", True)
    monkeypatch.setattr(patch, "FOLD_EMBEDDING_CONSTANTS", True)
    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=128, hidden_size=32), 128)
    with pytest.raises(PipelineError) as raised:
        _lower(tmp_path, model, 128, use_token_type_ids=False)
    message = str(raised.value)
    assert "albert.fp32.tflite" in message and "first diverging op" in message and "embeddings" in message
    assert not list((tmp_path / "out").glob("*.tflite"))


# --- fast checks (no conversion) -------------------------------------------------------------------------


def test_onnx_export_stores_shared_layer_once(tmp_path):
    import onnx

    path = write_tiny_albert(tmp_path / "model", num_hidden_layers=6, hidden_size=32, embedding_size=16)
    model = load_checkpoint(path, 32)
    rows = encode(model.tokenizer, TEXTS[:1], 32)
    onnx_path = tmp_path / "m.onnx"
    onnx_passes.export_onnx(model, 32, onnx_path, ["input_ids", "attention_mask", "token_type_ids"], rows.row(0))
    onnx_passes.dedupe_initializers(onnx_path)
    onnx_passes.promote_scalar_constants(onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    stored = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    assert stored <= model.num_parameters  # 6 layers, one set of weights (positions sliced to max_length)
    assert not [i for i in graph.initializer if len(i.dims) == 0 and i.data_type == onnx.TensorProto.FLOAT]


def test_bad_config_and_inputs(tiny_albert, tmp_path):
    model = load_checkpoint(tiny_albert, 16)
    rows = encode(model.tokenizer, TEXTS[:2], 16)
    with pytest.raises(PipelineError, match="unknown TFLite converter"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(converter="tflite-magic"), 16, rows, rows), tmp_path)
    with pytest.raises(PipelineError, match="unknown TFLite quantization"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(quant="float8"), 16, rows, rows), tmp_path)
    with pytest.raises(PipelineError, match=r"unknown \[tflite\] int8_tables 'some'"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(int8_tables="some"), 16, rows, rows), tmp_path)
    nothing = np.zeros((0, 16), dtype=np.int64)
    empty = Encoded(nothing, nothing, nothing, 0)
    with pytest.raises(PipelineError, match="no check rows"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), 16, rows, empty), tmp_path)
    with pytest.raises(PipelineError, match="expected max_length 32"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), 32, rows, rows), tmp_path)


def test_litert_torch_missing_is_a_clear_error(tiny_albert, tmp_path):
    pytest.importorskip("ai_edge_litert")
    try:
        import litert_torch  # noqa: F401

        pytest.skip("litert-torch is installed")
    except ImportError:
        pass
    model = load_checkpoint(tiny_albert, 16)
    rows = encode(model.tokenizer, TEXTS[:2], 16)
    with pytest.raises(PipelineError, match=r"litert-torch is not installed; pip install '\.\[litert-torch\]'"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(converter="litert-torch"), 16, rows, rows), tmp_path)


def test_litert_torch_route(tmp_path):
    """Runs only where the optional extra is installed (pip install '.[litert-torch]')."""
    pytest.importorskip("litert_torch")
    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=16, hidden_size=32), 64)
    rows = encode(model.tokenizer, TEXTS, 64)
    artifacts = stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(converter="litert-torch"), 64, rows, rows),
                                   tmp_path / "out", stage.Hooks(log=lambda _: None))
    assert [a.precision for a in artifacts] == ["fp32", "int8"]
    for artifact in artifacts:
        assert artifact.details["converter"] == "litert-torch"
        assert sorted(t.name for t in artifact.inputs) == ["attention_mask", "input_ids", "token_type_ids"]
        assert artifact.path.stat().st_size <= size_limit(model.num_parameters, model.spec.num_hidden_layers, artifact.precision)
    assert artifacts[0].details["max_abs_error_check"] <= stage.FP32_MAX_ABS_ERROR


def test_stop_kills_the_converter_before_it_writes(tiny_albert, tmp_path):
    """What build.py does when the build leaves early while the TFLite stage runs beside the ExecuTorch lowering:
    the onnx2tf subprocess is killed at once (not left writing into the work folder) and the stage says so."""
    import threading
    import time

    import psutil

    model = _load(tiny_albert, 16)
    rows = encode(model.tokenizer, TEXTS, 16)
    stop = threading.Event()
    workdir = tmp_path / "out"
    me = psutil.Process()
    began = time.perf_counter()
    with pytest.raises(PipelineError, match="stopped"):
        stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), 16, rows, rows), workdir,
                           stage.Hooks(lambda _: None, stop, stop.set))  # stop as soon as the converter starts
    assert time.perf_counter() - began < 30, "the converter was not killed promptly"
    assert not [p for p in me.children(recursive=True) if "_worker" in " ".join(p.cmdline())], "converter still running"
    scratch = workdir / ".albert.tflite-work"
    assert (scratch / "model.onnx").is_file(), "the stage stopped before the converter started"
    assert not list(scratch.rglob("*.tflite")) and not (scratch / "saved_model").exists(), "the converter wrote output"


def _gather_tables(tflite: bytes) -> dict[tuple[int, ...], tuple[str, np.ndarray | None]]:
    """{table shape: (type name, float values or None)} of every GATHER's table in the file."""
    from pipeline.formats.tflite_flatbuffer import builtin_code, constant, litert_schema, read_model

    schema = litert_schema()
    model = read_model(tflite)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tables = {}
    for op in graph.operators:
        if builtin_code(model, op) == schema.BuiltinOperator.GATHER:
            tensor = graph.tensors[op.inputs[0]]
            values = constant(model, tensor, np.float32) if tensor.type == schema.TensorType.FLOAT32 else None
            tables[tuple(int(s) for s in tensor.shape)] = (names[tensor.type], values)
    return tables


def test_dynamic_int8_puts_every_table_but_the_vocabulary_back_to_float(tmp_path):
    """TFLite gives an int8 table one scale: the position table goes back to float (exactly the fp32 file's
    values), the vocabulary table stays int8, and a float file that does not match is refused, not used."""
    from pipeline.lower.tflite.float_tables import keep_tables_float
    from pipeline.formats.tflite_flatbuffer import constant, litert_schema, pack_model, read_model

    model = _load(write_tiny_albert(tmp_path / "model", embedding_size=16, hidden_size=32), 32)
    rows = encode(model.tokenizer, TEXTS, 32)
    artifacts = stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(int8_tables="all"), 32, rows, rows,
                                                   shapes="dynamic"), tmp_path / "out", stage.Hooks(log=lambda _: None))
    fp32, int8 = (a.path.read_bytes() for a in artifacts)
    vocab = (model.spec.vocab_size, 16)
    position = (model.spec.max_position_embeddings, 16)
    assert "float_tables" not in artifacts[1].details
    assert {k: v[0] for k, v in _gather_tables(int8).items() if k in (vocab, position)} == {vocab: "INT8", position: "INT8"}

    restored, report = keep_tables_float(int8, fp32, model.spec.vocab_size)
    assert [(r["shape"], r["bytes_added"]) for r in report] == [(list(position), 3 * position[0] * position[1])]
    tables = _gather_tables(restored)
    assert tables[vocab][0] == "INT8" and tables[position][0] == "FLOAT32"
    weights = model.export_model.albert.embeddings.position_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(tables[position][1], weights)
    path = tmp_path / "restored.tflite"
    path.write_bytes(restored)
    runner = LiteRTRunner(path)
    reference = LiteRTRunner(artifacts[0].path)
    for i in (0, 3):
        row = {k: v[:, : int(rows.attention_mask[i].sum())] for k, v in rows.row(i).items()}
        assert np.abs(runner.run(row) - reference.run(row)).max() < 0.15

    other = read_model(fp32)  # the fp32 file with its position table changed by more than half an int8 step
    for tensor in other.subgraphs[0].tensors:
        values = constant(other, tensor, np.float32) if tensor.type == litert_schema().TensorType.FLOAT32 else None
        if values is not None and values.shape == position:
            other.buffers[tensor.buffer].data = np.frombuffer((values * 1.5).astype(np.float32).tobytes(), np.uint8)
    with pytest.raises(PipelineError, match=r"int8 table .* has no float counterpart in the fp32 file"):
        keep_tables_float(int8, pack_model(other, len(fp32)), model.spec.vocab_size)
