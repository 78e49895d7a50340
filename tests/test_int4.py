"""4-bit files on a tiny ALBERT whose vocabulary table is most of its weights, with the real toolchains:
`albert.int4.pte` (torchao -> XNNPACK) in executorch.runtime and `albert.int4.tflite` (AI Edge Quantizer) in LiteRT
with and without XNNPACK, both with the dynamic length, close to the float model; the size rule refuses a file
labelled int4 that kept 8-bit weights; a blockwise .tflite is refused when LiteRT's builtin kernels get it wrong.

One layer (the lowering of 4-bit linears with a dynamic length is slow: torch's symbolic shapes, per layer call):
one onnx2tf conversion and one ExecuTorch lowering for the module. Then int4 as a build precision (conftest's
`tiny_int4_build`): both files and the MediaPipe twin bundled with their recipes, `validate` running the .tflite with
and without XNNPACK, and a 4-bit .tflite that only LiteRT's builtin kernels get wrong failed by the gate."""
from __future__ import annotations

import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from folder_support import rewrite_file
from pipeline.core.artifact import Artifact, check_size, size_limit
from pipeline.core.config import DEFAULT_THRESHOLDS, Int4Recipe, TFLiteConfig, load_config
from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import load_checkpoint
from pipeline.core.metrics import cosine, top1_agreement
from pipeline.runtimes import LiteRTRunner, open_runner
from pipeline.core.shapes import eval_rows
from pipeline.core.tokenization import Encoded, encode

MAX = 32
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
TEXTS = ["the tea was great", "i hate this product very much, bad", "good coffee", "worst cookies ever, stale box",
         "i love the sweet fresh chips", "bitter taste, will not buy again", "best dog food ever",
         "the price is bad but the flavor is great", "great", "not good, not bad", "i will buy it again",
         "stale chips in a box, the worst"]
# Loose: a random tiny model at 4 bits (the default model's figures and thresholds are in docs/int4.md).
MIN_COSINE = 0.95
MIN_TOP1 = 0.75


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Vocabulary 30000 x E 64: 1.92 M of the 2.0 M parameters are the table, so a table kept at 8 bits is
    outside the int4 size limit (the graph allowance is small beside it), as on the default model."""
    from tiny import write_tiny_albert

    path = write_tiny_albert(tmp_path_factory.mktemp("int4") / "m", vocab_size=30000, embedding_size=64,
                             hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    loaded = load_checkpoint(path, MAX)
    with torch.no_grad():  # peaked attention: logits that depend on the text (see test_tflite.SHARPEN)
        for net in (loaded.export_model, loaded.reference):
            for module in net.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(4.0)
    return loaded


@pytest.fixture(scope="module")
def encoded(model) -> Encoded:
    return encode(model.tokenizer, TEXTS, MAX)


@pytest.fixture(scope="module")
def rows(encoded) -> list[dict[str, np.ndarray]]:
    return eval_rows(encoded, True, NAMES)  # cut to their own lengths, as apps feed a dynamic file


@pytest.fixture(scope="module")
def reference(model, rows) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model.export_model(*(torch.from_numpy(r[n]) for n in NAMES)).numpy() for r in rows])


@pytest.fixture(scope="module")
def float_tflite(model, encoded, tmp_path_factory):
    from pipeline.lower import tflite as stage

    artifacts = stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), MAX, encoded, encoded, shapes="dynamic"),
                                   tmp_path_factory.mktemp("int4_tflite"), stage.Hooks(log=lambda _: None))
    return next(a for a in artifacts if a.precision == "fp32")


def _assert_close(logits, reference, what):
    assert np.isfinite(logits).all(), what
    assert cosine(logits, reference) >= MIN_COSINE, (what, cosine(logits, reference))
    assert top1_agreement(logits, reference) >= MIN_TOP1, (what, top1_agreement(logits, reference))


def test_int4_tflite_runs_with_and_without_xnnpack(model, float_tflite, rows, reference):
    from pipeline.core.config import default_int4_litert
    from pipeline.lower.tflite.int4 import lower_int4_tflite, run_litert

    recipe = default_int4_litert()
    artifact = lower_int4_tflite(float_tflite, model, recipe, rows, reference)
    assert artifact.path.name == "albert.int4.tflite" and artifact.precision == "int4"
    assert all(t.shape == [1, -1] for t in artifact.inputs)
    details = artifact.details["quantization"]
    assert details["recipe"] == asdict(recipe)
    assert "albert.encoder.embedding_hidden_mapping_in" in details["int8_linears"]
    # the vocabulary table at 4 bits, every linear at 4 bits but those the recipe keeps at 8, none left float
    types = details["weights_by_type"]
    assert types["EMBEDDING_LOOKUP int4"] == 1 and "FULLY_CONNECTED float32" not in types
    assert types["FULLY_CONNECTED int8"] == details["int8_fully_connected"] >= 1 and types["FULLY_CONNECTED int4"] >= 5
    assert artifact.path.stat().st_size <= artifact.details["size_limit_bytes"]
    for delegates in (True, False):
        logits = run_litert(artifact.path, rows, delegates=delegates)
        _assert_close(logits, reference, f"delegates={delegates}")
    check = artifact.details["check"]
    assert check["builtin_rows"] == len(rows) and check["builtin"]["cosine"] >= MIN_COSINE
    runner = open_runner(artifact.path, "litert")
    assert runner.static is False and runner.max_length == MAX
    with pytest.raises(PipelineError, match="exceeds the model's maximum"):
        runner.run({n: np.ones((1, MAX + 1), dtype=np.int64) for n in NAMES})


def test_int4_tflite_keeps_named_linears_at_8_bits(model, float_tflite, rows, reference, tmp_path):
    from pipeline.lower.tflite.int4 import lower_int4_tflite

    recipe = Int4Recipe(weights="channel", embedding_group_size=0, keep_int8=["classifier", "attention.value"])
    artifact = lower_int4_tflite(float_tflite, model, recipe, rows, reference, out_path=tmp_path / "kept.int4.tflite")
    details = artifact.details["quantization"]
    assert details["int8_linears"] == ["albert.encoder.albert_layer_groups.0.albert_layers.0.attention.value", "classifier"]
    assert details["weights_by_type"]["FULLY_CONNECTED int8"] == 2
    with pytest.raises(PipelineError, match="keep_int8 names no linear"):
        lower_int4_tflite(float_tflite, model, Int4Recipe(keep_int8=["no_such_layer"]), rows, reference,
                          out_path=tmp_path / "x.int4.tflite")


def test_size_rule_refuses_an_int4_file_that_kept_8_bit_weights(model, float_tflite, tmp_path):
    from pipeline.lower.int4_executorch import linear_names
    from pipeline.lower.tflite.int4 import quantize_tflite

    modules = dict(model.export_model.named_modules())
    linears = {n: modules[n].weight.detach().numpy() for n in linear_names(model.export_model)}
    made = {}
    for label, recipe in {"int4": Int4Recipe(weights="channel", embedding_group_size=0),
                          "int8 table": Int4Recipe(weights="channel", embedding_group_size=0, embedding_bits=8),
                          "all int8": Int4Recipe(weights="channel", embedding_bits=8, embedding_group_size=0,
                                                 keep_int8=list(linears))}.items():
        data, details = quantize_tflite(float_tflite.path.read_bytes(), recipe, model.spec.vocab_size, linears)
        path = tmp_path / f"{label.replace(' ', '_')}.int4.tflite"
        path.write_bytes(data)
        made[label] = (Artifact(path, "litert", "int4", [], []), details)
    assert made["all int8"][1]["weights_by_type"]["EMBEDDING_LOOKUP int8"] == 1
    check_size(made["int4"][0], model.num_parameters, model.spec.num_hidden_layers)  # passes
    for label in ("int8 table", "all int8"):
        with pytest.raises(PipelineError, match="exceed"):
            check_size(made[label][0], model.num_parameters, model.spec.num_hidden_layers)
    # the same int8 file is within the int8 limit: the rule knows what 4 bits must weigh
    int8 = made["all int8"][0]
    assert int8.path.stat().st_size <= size_limit(model.num_parameters, model.spec.num_hidden_layers, "int8")


def test_blockwise_tflite_that_builtin_kernels_get_wrong_is_refused(model, float_tflite, rows, reference, tmp_path):
    """LiteRT's builtin FULLY_CONNECTED computes blockwise 4-bit weights wrongly (XNNPACK computes them right):
    check_int4_tflite runs both and refuses the file, naming the builtin kernels."""
    from pipeline.lower.tflite.int4 import lower_int4_tflite

    out = tmp_path / "blockwise.int4.tflite"
    with pytest.raises(PipelineError, match="builtin kernels"):
        lower_int4_tflite(float_tflite, model, Int4Recipe(weights="group", group_size=32, embedding_group_size=0),
                          rows, reference, out_path=out)
    assert not out.exists() and out.with_name(out.name + ".rejected").exists()


def test_int4_pte_runs_in_executorch_with_a_dynamic_length(model, encoded, rows, reference, tmp_path):
    from pipeline.core.config import default_int4_executorch
    from pipeline.lower.int4_executorch import lower_int4_checked
    from pipeline.lower.trace import trace

    traced = trace(model, encoded, shapes="dynamic")
    recipe = default_int4_executorch()
    artifact = lower_int4_checked(model, traced, tmp_path / "albert.int4.pte", recipe)
    assert artifact.precision == "int4" and all(t.shape == [1, -1] for t in artifact.inputs)
    assert artifact.details["quantization"]["recipe"]["weights"] == recipe.weights
    assert artifact.details["delegation"]["delegates"] == 1
    assert artifact.path.stat().st_size <= artifact.details["size_limit_bytes"]
    # 4-bit: well under the int8 file's bytes (the 1.92 M-value table alone is 1.92 MB at 8 bits)
    assert artifact.path.stat().st_size < 0.7 * model.num_parameters
    runner = open_runner(artifact.path, "executorch", NAMES)
    logits = np.concatenate([runner.run(r) for r in rows])
    _assert_close(logits, reference, "pte")
    assert runner.static is False
    with pytest.raises(PipelineError, match="exceeds the model's maximum"):
        runner.run({n: np.ones((1, MAX + 1), dtype=np.int64) for n in NAMES})


def test_int4_config_section_and_thresholds(tmp_path):
    assert "int4" in DEFAULT_THRESHOLDS
    config = tmp_path / "c.toml"
    config.write_text('[int4.litert]\nkeep_int8 = ["classifier"]\n[thresholds.int4]\nmin_top1_agreement = 0.9\n')
    loaded = load_config(config)
    assert loaded.int4.litert.keep_int8 == ["classifier"]
    assert loaded.int4.litert.weights == "channel"  # the rest: that runtime's defaults
    assert loaded.thresholds.for_artifact("albert.int4.pte", "int4").min_top1_agreement == 0.9
    for text, message in (('[int4.litert]\nweights = "row"\n', "weights must be one of"),
                          ('[int4.executorch]\nembedding_bits = 2\n', "must be 4 or more"),
                          ('[int4.tflite]\nweights = "group"\n', "unknown key")):
        config.write_text(text)
        with pytest.raises(PipelineError, match=message):
            load_config(config)


# --- int4 as a build precision: the build, the gate, the builtin-kernel run -------------------------------------

def _run_cli(*args: str) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)


def test_build_with_int4_bundles_both_4bit_files_and_a_mediapipe_twin_within_the_size_rule(tiny_int4_build):
    import json

    from pipeline.core.config import default_int4_executorch, default_int4_litert

    manifest = json.loads((tiny_int4_build / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert {"albert.int4.pte", "albert.int4.tflite", "albert.int4.mediapipe.tflite"} <= set(files)
    assert not any(".int8." in name for name in files)  # only the precisions asked for
    params = manifest["model"]["params"]
    for name, recipe in (("albert.int4.pte", default_int4_executorch()), ("albert.int4.tflite", default_int4_litert())):
        entry = files[name]
        assert entry["precision"] == "int4" and entry["passed"]
        assert entry["details"]["quantization"]["recipe"] == asdict(recipe)  # the recipe as data
        assert all(-1 in t["shape"] for t in entry["inputs"])  # the dynamic length the other files have
        # the size rule's int4 limit (the default model's files are at 0.60-0.62 B/param: docs/int4.md; a tiny model's
        # fixed parts weigh more), and well under the 1 B/param an 8-bit file needs
        layers = manifest["model"]["architecture"]["num_hidden_layers"]
        assert entry["bytes"] <= size_limit(params, layers, "int4") and entry["bytes"] < 0.7 * params
    builtin = files["albert.int4.tflite"]["no_xnnpack"]  # run again without XNNPACK, and gated
    assert builtin["gated"] and builtin["top1_agreement"] >= DEFAULT_THRESHOLDS["int4"].min_top1_agreement
    assert manifest["thresholds"]["int4"]["min_top1_agreement"] == DEFAULT_THRESHOLDS["int4"].min_top1_agreement
    twin = files["albert.int4.mediapipe.tflite"]
    assert twin["runtime"] == "mediapipe" and twin["passed"] and twin["bytes"] < files["albert.int4.tflite"]["bytes"] * 1.1


def test_validate_runs_the_4bit_tflite_with_and_without_xnnpack(tiny_int4_build, tiny_int4_thresholds, tmp_path):
    import json

    done = _run_cli("validate", "--artifacts", str(tiny_int4_build), "--thresholds", str(tiny_int4_thresholds),
                    "--report-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "albert.int4.tflite" in line and "PASS" in line]
    assert any("[no XNNPACK]" in line for line in lines) and any("[no XNNPACK]" not in line for line in lines)
    report = json.loads((tmp_path / "report.json").read_text())
    entry = next(a for a in report["artifacts"] if a["path"] == "albert.int4.tflite")
    assert entry["no_xnnpack"]["gated"]
    assert "builtin kernels only" in (tmp_path / "report.md").read_text()


def test_validate_fails_a_4bit_tflite_that_only_the_builtin_kernels_get_wrong(tiny_int4_build, tiny_int4_thresholds,
                                                                              tmp_path):
    """A blockwise 4-bit .tflite passes with XNNPACK and is wrong with LiteRT's builtin kernels: the gate fails it
    (exit 1), naming the builtin run, though its XNNPACK run passes."""
    from pipeline.lower.int4_executorch import linear_names
    from pipeline.lower.tflite.int4 import quantize_tflite

    model = load_checkpoint(tiny_int4_build.parent.parent / "model", 32)
    modules = dict(model.export_model.named_modules())
    linears = {n: modules[n].weight.detach().numpy() for n in linear_names(model.export_model)}
    blockwise, _ = quantize_tflite((tiny_int4_build / "albert.fp32.tflite").read_bytes(),
                                   Int4Recipe(weights="group", group_size=32, embedding_group_size=32),
                                   model.spec.vocab_size, linears)
    folder = tmp_path / "folder"
    shutil.copytree(tiny_int4_build, folder)
    rewrite_file(folder, "albert.int4.tflite", blockwise)
    done = _run_cli("validate", "--artifacts", str(folder), "--thresholds", str(tiny_int4_thresholds))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "albert.int4.tflite [no XNNPACK]" in done.stderr
    passed = [line for line in done.stdout.splitlines() if line.strip().startswith("albert.int4.tflite (litert): PASS")]
    assert passed, done.stdout[-2000:]
