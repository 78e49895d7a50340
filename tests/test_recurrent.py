"""The recurrent (GRU) ALBERT variant: built, exported and validated through both runtimes like the plain one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import PipelineConfig
from tiny import write_tiny_albert, write_review_data

MAX_LENGTH = 8


def write_tiny_gru_albert(out: Path, seed: int = 0, **overrides) -> Path:
    """A tiny ALBERT checkpoint with a GRU front end whose weights are random and non-zero (a freshly
    added GRU has a zero output projection, which would make it invisible to every test)."""
    from safetensors.torch import save_file

    from pipeline.model.albert import AlbertSpec, ExportAlbert
    from pipeline.model.checkpoint import load_checkpoint

    write_tiny_albert(out, seed=seed, **overrides)
    plain = load_checkpoint(out).export_model
    spec = AlbertSpec(**{**plain.spec.to_dict(), "recurrent": "gru"})
    model = ExportAlbert(spec)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("recurrent.") for k in missing), (missing, unexpected)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.recurrent.named_parameters():
            scale = 0.5 if name.startswith("gru.") else 0.3
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["recurrent"] = "gru"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def gru_model_dir(tmp_path_factory) -> Path:
    # E = 64: one copy of the GRU weights per unrolled step would break the size rule by far
    return write_tiny_gru_albert(tmp_path_factory.mktemp("gru") / "model", embedding_size=64)


def test_gru_checkpoint_loads_with_the_gru_in_use(gru_model_dir):
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.model.recurrent import GRUFrontEnd
    from pipeline.core.tokenization import encode

    model = load_checkpoint(gru_model_dir, MAX_LENGTH)
    assert model.spec.recurrent == "gru"
    assert isinstance(model.export_model.recurrent, GRUFrontEnd)
    assert model.reference is model.export_model  # transformers has no recurrent ALBERT
    assert float(model.export_model.recurrent.output.weight.detach().abs().sum()) > 0
    encoded = encode(model.tokenizer, ["i love this tea", "bad coffee, stale box"], MAX_LENGTH)
    ids, mask, types = (torch.from_numpy(a) for a in (encoded.input_ids, encoded.attention_mask, encoded.token_type_ids))
    with torch.no_grad():
        with_gru = model.export_model(ids, mask, types)
        recurrent, model.export_model.recurrent = model.export_model.recurrent, None
        try:
            without_gru = model.export_model(ids, mask, types)
        finally:
            model.export_model.recurrent = recurrent
    assert float((with_gru - without_gru).abs().max()) > 1e-2, "the GRU must change the logits"


def test_every_export_path_sees_the_unrolled_loop(gru_model_dir, tmp_path):
    """torch.export and the TorchScript ONNX exporter of the TFLite stage both get the explicit loop, never a
    fused GRU op (onnx2tf would make a TF while-loop of an ONNX GRU)."""
    import onnx

    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.model.recurrent import unrolled_recurrence
    from pipeline.lower.tflite.onnx_passes import export_onnx

    model = load_checkpoint(gru_model_dir, MAX_LENGTH)
    ids = torch.randint(5, 60, (1, MAX_LENGTH))
    mask = torch.ones_like(ids)
    exported = torch.export.export(model.export_model, (ids, mask, torch.zeros_like(ids)), strict=False)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("gru" in t.lower() for t in targets), targets
    assert any("sigmoid" in t for t in targets)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    export_onnx(model, MAX_LENGTH, tmp_path / "model.onnx", names, sample)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "GRU" not in ops and "Loop" not in ops and "Sigmoid" in ops, ops

    assert model.export_model.recurrent.uses_unrolled() is False  # eager keeps the fused nn.GRU
    with unrolled_recurrence(model.export_model):
        assert model.export_model.recurrent.uses_unrolled() is True
    assert model.export_model.recurrent.force_unrolled is False  # restored


@pytest.fixture(scope="module")
def gru_build(gru_model_dir, tmp_path_factory) -> Path:
    from pipeline.build import build

    root = tmp_path_factory.mktemp("gru_build")
    data = write_review_data(root / "eval.csv", count=16)
    config = PipelineConfig()
    config.build.model_dir = str(gru_model_dir)
    config.build.out_dir = str(root / "artifacts")
    config.build.max_length = MAX_LENGTH
    config.build.eval_limit = 16
    config.build.eval_data = str(data)
    config.build.calibration_data = str(data)
    config.build.runtimes = ["executorch", "litert"]
    config.build.precisions = ["fp32", "int8"]
    config.build.cache_dir = str(root / "cache")
    config.build.copy_to_apps = False
    return build(config, log=print)


def test_gru_build_passes_every_artifact_on_both_runtimes(gru_build):
    # the GRU is exported as a loop unrolled over max_length steps: the build keeps such a model static
    assert json.loads((gru_build / "manifest.json").read_text())["shape_contract"]["shapes"] == "static"
    manifest = json.loads((gru_build / "manifest.json").read_text())
    files = [f for f in manifest["files"] if f["runtime"] in ("executorch", "litert")]  # ids in (MediaPipe twins: text in)
    assert {(f["runtime"], f["precision"]) for f in files} == {
        ("executorch", "fp32"), ("executorch", "int8"), ("litert", "fp32"), ("litert", "int8")}
    for entry in files:
        assert entry["passed"] is True, entry["path"]


def test_gru_loop_runs_inside_the_xnnpack_delegate(gru_build):
    manifest = json.loads((gru_build / "manifest.json").read_text())
    for entry in (f for f in manifest["files"] if f["runtime"] == "executorch"):
        delegation = entry["details"]["delegation"]
        assert delegation["delegated_ops"].get("aten_sigmoid_default", 0) >= 2 * (MAX_LENGTH - 1), entry["path"]
        assert delegation["delegated_ops"].get("aten_tanh_default", 0) >= MAX_LENGTH, entry["path"]
        stray = set(delegation["undelegated_ops"]) & {"aten_select_copy_int", "aten_full_default", "aten_sigmoid_default",
                                                      "aten_tanh_default", "aten_linear_default"}
        assert not stray, (entry["path"], stray)


def test_gru_weights_are_stored_once(gru_build, gru_model_dir):
    """Every unrolled step reads the same GRU weights: each matrix is in each fp32 file exactly once, and
    every file keeps the build's size rule."""
    from safetensors.torch import load_file

    manifest = json.loads((gru_build / "manifest.json").read_text())
    files = [f for f in manifest["files"] if f["runtime"] in ("executorch", "litert")]
    state = load_file(str(gru_model_dir / "model.safetensors"))
    for entry in files:
        assert entry["bytes"] <= entry["details"]["size_limit_bytes"], entry["path"]
        if entry["precision"] != "fp32":
            continue
        data = (gru_build / entry["path"]).read_bytes()
        for key in ("recurrent.gru.weight_ih_l0", "recurrent.gru.weight_hh_l0", "recurrent.output.weight"):
            matrix = state[key].numpy().astype(np.float32)
            copies = data.count(matrix.tobytes()) + data.count(np.ascontiguousarray(matrix.T).tobytes())
            assert copies == 1, (entry["path"], key, copies)
