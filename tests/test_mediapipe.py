"""MediaPipe-ready files through the real MediaPipe Tasks TextClassifier (no mocks): a tiny ALBERT of each tokenizer
kind (WordPiece vocab.txt, SentencePiece spiece.model) built with LiteRT, the extra `.mediapipe.tflite` files
gated text in, the tokenizer drift measured, broken or missing metadata refused with a one-line error (exit 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from folder_support import rewrite_file
from pipeline.core.errors import PipelineError

MAX_LENGTH = 24  # not 32: the tiny hidden size (S == H makes onnx2tf transpose wrongly)
TEXTS = ["the best tea i ever bought", "Not good. Stale cookies, bitter taste!", "love this coffee, great price",
         "worst product ever <br />will not buy again"]


def _build(root: Path, model_dir: Path, cache: Path) -> Path:
    from pipeline.build import build
    from pipeline.core.config import PipelineConfig
    from tiny import write_review_data

    config = PipelineConfig()
    config.build.model_dir = str(model_dir)
    config.build.out_dir = str(root / "artifacts")
    config.build.runtimes = ["litert"]
    config.build.max_length = MAX_LENGTH
    config.build.eval_data = str(write_review_data(root / "eval.csv", count=24))
    config.build.calibration_data = config.build.eval_data
    config.build.cache_dir = str(cache)
    config.build.copy_to_apps = False
    return build(config, log=print)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    from tiny import write_tiny_albert, write_tiny_albert_sentencepiece

    root = tmp_path_factory.mktemp("mediapipe")
    cache = root / "cache"
    return {
        "wordpiece": _build(root / "wp", write_tiny_albert(root / "wp" / "model"), cache),
        "sentencepiece": _build(root / "sp", write_tiny_albert_sentencepiece(root / "sp" / "model"), cache),
    }


def _reference_probabilities(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Reference tokenizer + eager HF model + softmax, computed here independently of the pipeline's gate."""
    import torch

    from pipeline.runtimes.eager import load_eager
    from pipeline.core.tokenization import encode, load_tokenizer

    encoded = encode(load_tokenizer(model_dir), texts, MAX_LENGTH)
    model = load_eager(model_dir, "torch-hf")
    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(encoded.input_ids), attention_mask=torch.from_numpy(encoded.attention_mask),
                       token_type_ids=torch.from_numpy(encoded.token_type_ids)).logits
    return torch.softmax(logits, -1).numpy()


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_build_ships_mediapipe_files_that_classify_text_like_the_float_model(builds, kind):
    from pipeline.runtimes import open_runner

    folder = builds[kind]
    manifest = json.loads((folder / "manifest.json").read_text())
    entries = {e["path"]: e for e in manifest["files"]}
    for precision in ("fp32", "int8"):
        plain, ready = entries[f"albert.{precision}.tflite"], entries[f"albert.{precision}.mediapipe.tflite"]
        assert plain["runtime"] == "litert" and plain["inputs"][0]["dtype"] == "int64"  # the plain contract is kept
        assert ready["runtime"] == "mediapipe" and ready["passed"] and ready["details"]["tokenizer"] == kind
        assert ready["metrics"]["rows"] == 24 and ready["metrics"]["top1_agreement"] >= ready["thresholds"]["min_top1_agreement"]
        assert ready["details"]["labels"] == manifest["label_names"]
    # independent of the gate: MediaPipe's classify(text) vs reference tokenizer + eager model
    runner = open_runner(folder / "albert.fp32.mediapipe.tflite", "mediapipe")
    got = runner.run({"text": TEXTS})
    runner.close()
    np.testing.assert_allclose(got, _reference_probabilities(folder.parent.parent / "model", TEXTS), atol=1e-4)
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    # reports carry the MediaPipe rows and the tokenizer drift
    report = json.loads((folder / "report.json").read_text())
    assert {a["path"] for a in report["artifacts"] if a["runtime"] == "mediapipe"} == {
        "albert.fp32.mediapipe.tflite", "albert.int8.mediapipe.tflite"}
    assert report["tokenizer_drift"]["tokenizer"] == kind and manifest["tokenizer_drift"]["sets"]["hard_cases"]["texts"] > 20
    assert "Tokenizer drift" in (folder / "report.md").read_text()
    junit = (folder / "report.junit.xml").read_text()
    assert "albert.fp32.mediapipe.tflite:top1_agreement" in junit and "tokenizer_drift:hard_cases" in junit
    golden = json.loads((folder / "golden.json").read_text())
    assert golden["outputs"]["albert.fp32.mediapipe.tflite"] == "probabilities"


def test_the_twin_is_deterministic(builds, tmp_path):
    """Same plain file, labels and tokenizer -> the same bytes (the gate's outputs are cached by file hash)."""
    from pipeline.formats.mediapipe import device_tokenizer, make_mediapipe_ready

    folder = builds["sentencepiece"]
    model_dir = folder.parent.parent / "model"
    again = tmp_path / "again.tflite"
    make_mediapipe_ready(folder / "albert.int8.tflite", again, ["great", "other"], device_tokenizer(model_dir))
    assert again.read_bytes() == (folder / "albert.int8.mediapipe.tflite").read_bytes()


def test_plain_litert_interpreter_still_runs_the_mediapipe_file(builds):
    from ai_edge_litert.interpreter import Interpreter

    folder = builds["wordpiece"]
    golden = json.loads((folder / "golden.json").read_text())
    case = golden["cases"][0]
    runner = Interpreter(model_path=str(folder / "albert.fp32.mediapipe.tflite")).get_signature_runner()
    out = runner(ids=np.array([case["input_ids"]], np.int32), mask=np.array([case["attention_mask"]], np.int32),
                 segment_ids=np.array([case["token_type_ids"]], np.int32))["probability"]
    logits = np.array(case["expected"]["albert.fp32.tflite"])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_drift_shows_known_differences_and_the_app_normalization_fixes_them(builds):
    from pipeline.formats.mediapipe import device_tokenizer
    from pipeline.core.tokenization import load_tokenizer
    from pipeline.verify.tokenizer_drift import app_normalize, measure

    model_dir = builds["wordpiece"].parent.parent / "model"
    cases = [("accents", "Café crème"), ("zero-width", "gre\u200bat tea"), ("ascii", "great tea, love it")]
    found = measure(load_tokenizer(model_dir), device_tokenizer(model_dir), MAX_LENGTH, ["the best tea"], cases)
    hard = found["sets"]["hard_cases"]
    assert hard["differ"] == 2 and hard["differ_after_app_normalization"] == 0
    assert [e["case"] for e in hard["examples"]] == ["accents", "zero-width"]
    assert "[UNK]" in hard["examples"][0]["device"] and "[UNK]" not in hard["examples"][0]["reference"]
    assert found["sets"]["eval"]["differ"] == 0
    assert app_normalize("Café\u200b Crème", "wordpiece") == "cafe creme"
    assert app_normalize("Ｃafé  crème", "sentencepiece") == "cafe creme"


def test_broken_or_missing_metadata_is_refused_with_one_line(builds, tmp_path):
    from pipeline.cli import main
    from pipeline.formats.mediapipe import attach_metadata, check_metadata, metadata_buffer, rewrite_graph, DeviceTokenizer

    folder = builds["wordpiece"]
    plain = (folder / "albert.fp32.tflite").read_bytes()
    graph, _, _ = rewrite_graph(plain)
    vocab = folder / "vocab.txt"
    good = metadata_buffer(["great", "other"], DeviceTokenizer("wordpiece", vocab), "t", "t")
    broken = {
        "no TFLite metadata": graph,
        "not packed": attach_metadata(graph, good, {"labels.txt": b"great\nother\n"}),  # vocab.txt missing
        "2 outputs": attach_metadata(graph, metadata_buffer(["great", "other", "x"], DeviceTokenizer("wordpiece", vocab),
                                                            "t", "t"), {"labels.txt": b"great\nother\nx\n",
                                                                        "vocab.txt": vocab.read_bytes()}),
        "must be int32": attach_metadata(plain, good, {"labels.txt": b"a\nb\n", "vocab.txt": vocab.read_bytes()}),
    }
    for expected, data in broken.items():
        path = tmp_path / "broken.tflite"
        path.write_bytes(data)
        with pytest.raises(PipelineError, match=expected) as err:
            check_metadata(path)
        assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match="vocab.txt .*or spiece.model"):  # a build of such a checkpoint stops here
        from pipeline.lower.mediapipe import make_files

        make_files([], tmp_path, ["a", "b"], tmp_path)

    copy = tmp_path / "folder"
    shutil.copytree(folder, copy)
    rewrite_file(copy, "albert.int8.mediapipe.tflite", broken["no TFLite metadata"])
    assert main(["validate", "--artifacts", str(copy), "--report-dir", str(tmp_path / "r")]) == 2


def test_validate_folder_runs_mediapipe_files_text_in(builds, tmp_path, capsys):
    from pipeline.cli import main

    copy = tmp_path / "folder"
    shutil.copytree(builds["sentencepiece"], copy)
    assert main(["validate", "--artifacts", str(copy), "--report-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "albert.int8.mediapipe.tflite (mediapipe, text in): PASS" in out and "tokenizer drift (sentencepiece)" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["tokenizer_drift"]["sets"]["eval"]["texts"] == 24
    # a tighter gate fails the MediaPipe int8 file on its probability error: exit 1, the file named
    (tmp_path / "t.toml").write_text('[thresholds.mediapipe-int8]\nmax_abs_error = 1e-9\n')
    assert main(["validate", "--artifacts", str(copy), "--report-dir", str(tmp_path / "r2"),
                 "--thresholds", str(tmp_path / "t.toml")]) == 1
    assert "albert.int8.mediapipe.tflite: max_abs_error (probability)" in capsys.readouterr().err
