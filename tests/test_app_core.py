"""The Android app's core (android_demo/core: everything the app computes that is not an Android or runtime call),
compiled with kotlinc and run on the JVM (AppCoreCli) against real builds of two tiny models: WordPiece with dynamic
shapes (conftest's `tiny_builds`, and `tiny_int4_build`: its 4-bit files) and SentencePiece with static shapes (built
here), each with ExecuTorch, LiteRT and MediaPipe files.

- inputs: for every golden text, and texts of other lengths (empty, accented, longer than max_length), the core
  builds exactly the arrays the pipeline's Python runners feed each file, recorded where they enter the runtime
  (ExecuTorch `Method.execute`, LiteRT `SignatureRunner.__call__`): same order, dtype, shape, values (and LiteRT
  interpreter positions and bytes); a static file gets a shorter encoding padded like the runners pad it.
- those arrays, fed to the real runtimes the way the app's adapters feed them, give outputs the self-check passes;
  the self-check passes golden.json's own outputs and fails a value moved past its file's tolerance, a NaN, a
  missing output, a missing tolerance, a runtime that does not load, a tokenizer that differs.
- MediaPipe: text normalization equals Python's `app_normalize` on its hard cases and varied texts; MediaPipe's real
  categories go back to label order as the Python runner puts them, and their names are labels.json's.
- outputs decode (float32, int8 / uint8 dequantized) like the Python LiteRT runner; logits give the same softmax and
  label as numpy; the JSON reader agrees with Python's on real bundle files and refuses what RFC 8259 refuses.
- the runtime is picked from the manifest, and broken manifests are refused with a message naming the problem.

What this cannot reach (no Android SDK, Maven or Swift compiler here): the adapters around Module.forward,
Interpreter.run and TextClassifier.classify, the Gradle and Xcode projects; see each app's README.
"""
from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from apps_support import run_core, varied_texts

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SP_MAX_LENGTH = 24  # not 32: S == H (the tiny hidden size) makes onnx2tf transpose wrongly into a wrong file
# besides golden.json's texts: every length from 1 token up, non-ASCII, and one longer than max_length (truncated)
EXTRA_TEXTS = ["", "a", "good", "Great tea!", "Café Crème naïve — not bad at all", "日本茶 😀\tand\nmore",
               "the best tea i ever bought, would buy again " * 6]
BUNDLES = ("wordpiece-dynamic", "sentencepiece-static", "wordpiece-dynamic-int4")


# ---------------------------------------------------------------------------------------------- builds

@pytest.fixture(scope="module")
def sentencepiece_static_build(tmp_path_factory) -> Path:
    """A tiny ALBERT with ALBERT's own tokenizer kind (SentencePiece) built with static shapes, every runtime."""
    from pipeline.build import build
    from pipeline.core.config import PipelineConfig
    from tiny import write_review_data, write_tiny_albert_sentencepiece

    root = tmp_path_factory.mktemp("app_core_sp")
    config = PipelineConfig()
    config.build.model_dir = str(write_tiny_albert_sentencepiece(root / "model"))
    config.build.out_dir = str(root / "artifacts")
    config.build.shapes = "static"
    config.build.max_length = SP_MAX_LENGTH
    config.build.eval_data = str(write_review_data(root / "eval.csv", count=24))
    config.build.calibration_data = config.build.eval_data
    config.build.cache_dir = str(root / "cache")
    config.build.copy_to_apps = False
    return build(config, log=lambda _: None)


@pytest.fixture(scope="module", params=BUNDLES)
def bundle(request) -> Path:
    if request.param == "wordpiece-dynamic":
        return request.getfixturevalue("tiny_builds")["android"]
    if request.param == "wordpiece-dynamic-int4":  # fp32 and 4-bit files: the apps run int4 from the manifest alone
        return request.getfixturevalue("tiny_int4_build")
    return request.getfixturevalue("sentencepiece_static_build")


def _json(folder: Path, name: str):
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _ids_in(manifest: dict) -> list[dict]:
    return [f for f in manifest["files"] if f["runtime"] != "mediapipe"]


def _text_in(manifest: dict) -> list[dict]:
    return [f for f in manifest["files"] if f["runtime"] == "mediapipe"]


def _canonical(name: str) -> str:
    return next((n for n in INPUT_NAMES if n in name), name)


def test_the_builds_cover_both_tokenizers_both_shape_contracts_and_every_runtime(tiny_builds, sentencepiece_static_build):
    for folder, kind, shapes in [(tiny_builds["android"], "wordpiece", "dynamic"),
                                 (sentencepiece_static_build, "sentencepiece", "static")]:
        manifest = _json(folder, "manifest.json")
        assert (manifest["tokenizer"]["kind"], manifest["shape_contract"]["shapes"]) == (kind, shapes)
        assert {f["runtime"] for f in manifest["files"]} == {"executorch", "litert", "mediapipe"}
        dims = {d for f in _ids_in(manifest) for t in f["inputs"] for d in t["shape"]}
        assert (-1 in dims) == (shapes == "dynamic")
        assert len(_json(folder, "golden.json")["cases"]) >= 4


# ---------------------------------------------------------------------------------------------- the Python side

@contextmanager
def recorded_feeds():
    """Every array a runtime is fed, where it enters the runtime: ExecuTorch's `Method.execute` (a list, by
    position) and LiteRT's `SignatureRunner.__call__` (by signature input name). Only calls that returned."""
    from ai_edge_litert.interpreter import SignatureRunner
    from executorch.runtime import Method

    calls: list = []
    execute, call = Method.execute, SignatureRunner.__call__

    def recording_execute(self, inputs):
        out = execute(self, inputs)
        calls.append([np.array(t.numpy(), copy=True) for t in inputs])
        return out

    def recording_call(self, **kwargs):
        out = call(self, **kwargs)
        calls.append({k: np.array(v, copy=True) for k, v in kwargs.items()})
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Method, "execute", recording_execute)
        patch.setattr(SignatureRunner, "__call__", recording_call)
        yield calls


def run_artifact(artifact, rows):
    """A file on rows as the run worker does it (pipeline/runtimes/worker.py), in this process so feeds are recorded."""
    from pipeline.runtimes import open_runner, run_rows

    return run_rows(open_runner(artifact.path, artifact.runtime, [t.name for t in artifact.inputs]), rows)


def python_feeds(folder: Path, entry: dict, rows: list[dict[str, np.ndarray]]) -> list[list[tuple[str, np.ndarray]]]:
    """What the pipeline's runners feed the file for each row (the run worker's open_runner + run_rows), as (name, array) in
    the order the file takes them: ExecuTorch by position; LiteRT by interpreter input position."""
    from pipeline.core.artifact import Artifact

    with recorded_feeds() as calls:
        run_artifact(Artifact.from_dict(folder, entry), rows)
    assert len(calls) >= len(rows), f"{entry['path']}: {len(calls)} runtime calls for {len(rows)} rows"
    calls = calls[-len(rows):]  # before them: warm-up runs (run_rows runs the first row once before timing)
    if entry["runtime"] == "executorch":
        names = [t["name"] for t in entry["inputs"]]
        return [list(zip(names, fed)) for fed in calls]
    positions = litert_positions(folder / entry["path"])
    return [sorted(fed.items(), key=lambda item: positions[item[0]]) for fed in calls]


def litert_positions(path: Path) -> dict[str, int]:
    """Signature input name -> interpreter input position (what Android's getInputTensor(i) / Interpreter.run use)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    by_tensor = {d["index"]: i for i, d in enumerate(interpreter.get_input_details())}
    signature = interpreter.get_signature_runner().get_input_details()
    return {name: by_tensor[d["index"]] for name, d in signature.items()}


def litert_tensor_names(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [d["name"] for d in Interpreter(model_path=str(path)).get_input_details()]


def python_rows(folder: Path, texts: list[str], dynamic: bool) -> list[dict[str, np.ndarray]]:
    """The texts as the pipeline tokenizes and feeds them (validate: `eval_rows`, cut to length for dynamic files)."""
    from pipeline.core.shapes import eval_rows
    from pipeline.core.tokenization import encode, load_tokenizer

    manifest = _json(folder, "manifest.json")
    return eval_rows(encode(load_tokenizer(folder), texts, manifest["tokenizer"]["max_length"]), dynamic)


def _ids_row(row: dict[str, np.ndarray]) -> dict:
    return {name: row[name][0].tolist() for name in INPUT_NAMES}


def _built_in_order(built: dict, entry: dict) -> list[dict]:
    """Kotlin's arrays in the order the runtime takes them (LiteRT: the core's interpreter order)."""
    arrays = built["arrays"]
    if entry["runtime"] == "litert":
        by_name = {a["name"]: a for a in arrays}
        arrays = [by_name[name] for name in built["interpreter_order"]]
    return arrays


# ---------------------------------------------------------------------------------------------- inputs

def test_core_feeds_every_file_exactly_what_the_python_runners_feed(bundle, tmp_path):
    manifest, golden = _json(bundle, "manifest.json"), _json(bundle, "golden.json")
    dynamic = manifest["shape_contract"]["shapes"] == "dynamic"
    texts = [case["text"] for case in golden["cases"]] + EXTRA_TEXTS
    rows = python_rows(bundle, texts, dynamic)
    for case, row in zip(golden["cases"], rows):  # golden.json holds the ids the pipeline fed for its texts
        assert _ids_row(row) == {name: case[name] for name in INPUT_NAMES}
    lengths = {int(r["attention_mask"].sum()) for r in rows}
    assert 2 in lengths and manifest["tokenizer"]["max_length"] in lengths and len(lengths) >= 5
    # a static file fed shorter rows (exactly the tokens): the runners pad them, so must the core
    short = [] if dynamic else [{k: v[:, : int(r["attention_mask"].sum())] for k, v in r.items()} for r in rows]
    request = {
        "bundle": str(bundle),
        "rows": [{"text": t} for t in texts] + [_ids_row(r) for r in short],
        "tensor_names": {f["path"]: litert_tensor_names(bundle / f["path"]) for f in manifest["files"] if f["runtime"] == "litert"},
    }
    answer = run_core("inputs", request, tmp_path)
    assert answer["runtimes"] == {f["path"]: f["runtime"] for f in manifest["files"]}
    for text, row, kotlin in zip(texts, rows, answer["rows"]):  # the Kotlin tokenizer under the bundle's contract
        assert kotlin["encoding"] == _ids_row(row), text

    feeds = {entry["path"]: python_feeds(bundle, entry, rows + short) for entry in _ids_in(manifest)}
    assert _compare_feeds(manifest, feeds, answer["rows"]) == len(feeds) * len(rows + short) * 3

    # LiteRT binds by position: the same feed whatever order the manifest lists the inputs in (these builds list
    # them in interpreter order, so the binding is only exercised with the order changed)
    reordered_dir = _copy_json_files(bundle, tmp_path / "reordered")
    reordered = _json(bundle, "manifest.json")
    for entry in reordered["files"]:
        if entry["runtime"] == "litert":
            entry["inputs"] = entry["inputs"][1:] + entry["inputs"][:1]
    (reordered_dir / "manifest.json").write_text(json.dumps(reordered))
    answer = run_core("inputs", {**request, "bundle": str(reordered_dir)}, tmp_path)
    litert = {path: feed for path, feed in feeds.items() if path.endswith(".tflite")}
    assert litert and _compare_feeds(reordered, litert, answer["rows"]) == len(litert) * len(rows + short) * 3


def _compare_feeds(manifest: dict, feeds: dict[str, list], kotlin_rows: list[dict]) -> int:
    """Kotlin's arrays against the Python runners' feeds, file by file, row by row; the number of arrays compared."""
    checked = 0
    for entry in [f for f in manifest["files"] if f["path"] in feeds]:
        for row_index, (fed, kotlin) in enumerate(zip(feeds[entry["path"]], kotlin_rows, strict=True)):
            built = kotlin["inputs"][entry["path"]]
            assert "error" not in built, built
            arrays = _built_in_order(built, entry)
            where = f"{entry['path']}, row {row_index}"
            assert [a["name"] for a in arrays] == [name for name, _ in fed], where
            for array, (name, expected) in zip(arrays, fed):
                assert array["dtype"] == expected.dtype.name, (where, name)
                assert array["shape"] == list(expected.shape), (where, name)
                assert array["values"] == expected.reshape(-1).tolist(), (where, name)
                assert array["longs"] == expected.reshape(-1).astype(np.int64).tolist(), (where, name)
                assert bytes.fromhex(array["hex"]) == np.ascontiguousarray(expected).tobytes(), (where, name)
                checked += 1
    return checked


def test_core_refuses_what_the_runners_refuse_and_picks_no_unknown_runtime(bundle, tmp_path):
    from pipeline.core.artifact import Artifact
    from pipeline.core.errors import PipelineError

    manifest = _json(bundle, "manifest.json")
    max_length = manifest["model"]["max_length"]
    too_long = {"input_ids": [[2] + [7] * max_length], "attention_mask": [[1] * (max_length + 1)],
                "token_type_ids": [[0] * (max_length + 1)]}
    entry = _ids_in(manifest)[0]
    with pytest.raises(PipelineError, match="exceeds the model's maximum"):
        run_artifact(Artifact.from_dict(bundle, entry), [{k: np.asarray(v, dtype=np.int64) for k, v in too_long.items()}])

    broken = _copy_json_files(bundle, tmp_path / "broken")
    edited = _json(broken, "manifest.json")
    files = _ids_in(edited)
    files[0]["runtime"] = "onnxruntime"
    files[1]["inputs"][0]["dtype"] = "float16"
    files[2]["inputs"][0]["name"] = "position_ids"
    (broken / "manifest.json").write_text(json.dumps(edited))
    litert = [f for f in _ids_in(manifest) if f["runtime"] == "litert"][-1]
    names = litert_tensor_names(bundle / litert["path"])
    answer = run_core("inputs", {"bundle": str(broken), "rows": [{k: v[0] for k, v in too_long.items()}],
                                 "tensor_names": {litert["path"]: names[:-1]}}, tmp_path)
    assert "unknown runtime 'onnxruntime'" in answer["runtimes"][files[0]["path"]]["error"]
    inputs = answer["rows"][0]["inputs"]
    assert "unknown runtime 'onnxruntime'" in inputs[files[0]["path"]]["error"]  # no inputs built for it either
    assert "input dtype 'float16'" in inputs[files[1]["path"]]["error"]
    assert "'position_ids' is not one the tokenizer produces" in inputs[files[2]["path"]]["error"]
    assert "exceeds the model's maximum" in inputs[files[3]["path"]]["error"]  # refused like the runner, never cut
    for tensor_names, message in [(names[:-1], f"no input tensor named like '{_canonical(names[-1])}'"),
                                  (names + ["serving_default_position_ids:0"], "do not bind one-to-one")]:
        bad = run_core("inputs", {"bundle": str(bundle), "rows": [{"text": "good"}],
                                  "tensor_names": {litert["path"]: tensor_names}}, tmp_path)
        assert message in bad["rows"][0]["inputs"][litert["path"]]["error"]

    for change, message in [
        (lambda m: m.update(schema_version=2), "schema_version 2: this app reads version 1"),
        (lambda m: m["model"].update(num_labels=m["model"]["num_labels"] + 1), "labels has"),
        (lambda m: m["tokenizer"].update(kind="wordpiece" if m["tokenizer"]["kind"] != "wordpiece" else "sentencepiece"),
         "manifest says tokenizer"),
        (lambda m: m["model"].pop("max_length"), "'model.max_length': key 'max_length' missing"),
    ]:
        edited = _json(bundle, "manifest.json")
        change(edited)
        (broken / "manifest.json").write_text(json.dumps(edited))
        result = run_core("inputs", {"bundle": str(broken), "rows": []}, tmp_path, expect_ok=False)
        assert result.returncode != 0 and message in result.stderr.decode(), (message, result.stderr.decode()[-500:])


def _copy_json_files(folder: Path, out: Path) -> Path:
    """The files the core reads (manifest, labels, golden, tokenizer), not the models."""
    out.mkdir(parents=True)
    for name in ("manifest.json", "labels.json", "golden.json", "tokenizer.json"):
        shutil.copy(folder / name, out / name)
    return out


# ---------------------------------------------------------------------------------------------- self-check

def _emulate_adapters(folder: Path, entry: dict, built: list[dict]) -> list[float]:
    """What the app's adapter does with the core's arrays, in the same runtime's Python binding: ExecuTorch
    forward(arrays by position, manifest dtype); LiteRT: resize each interpreter input, copy by position, invoke,
    decode output 0 (int8 / uint8 dequantized)."""
    if entry["runtime"] == "executorch":
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(folder / entry["path"]).load_method("forward")
        args = [torch.tensor(a["values"], dtype=getattr(torch, a["dtype"])).reshape(a["shape"]) for a in built]
        return method.execute(args)[0].numpy().reshape(-1).tolist()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / entry["path"]))
    details = interpreter.get_input_details()
    for position, array in enumerate(built):
        interpreter.resize_tensor_input(details[position]["index"], array["shape"])
    interpreter.allocate_tensors()
    for position, array in enumerate(built):
        interpreter.set_tensor(details[position]["index"], np.asarray(array["values"], dtype=array["dtype"]).reshape(array["shape"]))
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    out = interpreter.get_tensor(output["index"]).reshape(-1)
    if out.dtype in (np.int8, np.uint8):
        scale, zero = output["quantization"]
        out = (out.astype(np.float32) - zero) * scale
    return out.astype(np.float32).tolist()


def _golden_rows(golden: dict) -> list[dict]:
    return [{name: case[name] for name in INPUT_NAMES} for case in golden["cases"]]


def _replay_key(entry: dict, case: dict) -> list[list[int]]:
    """The arrays the core feeds a file for a golden case, in the manifest's order (what the replay runner matches)."""
    return [case[_canonical(t["name"])] for t in entry["inputs"]]


def _mediapipe_probabilities(folder: Path, entry: dict, texts: list[str]) -> list[list[float]]:
    from pipeline.runtimes import open_runner

    runner = open_runner(folder / entry["path"], "mediapipe")
    try:
        return [runner.classify(t).tolist() for t in texts]
    finally:
        runner.close()


def test_core_inputs_in_the_real_runtimes_pass_the_self_check(bundle, tmp_path):
    """The loop the app runs at start, with the runtime calls made here: the core builds each golden case's arrays,
    the runtime (its Python binding, fed as the adapter feeds it) computes, the core's self-check judges."""
    manifest, golden = _json(bundle, "manifest.json"), _json(bundle, "golden.json")
    request = {"bundle": str(bundle), "rows": _golden_rows(golden),
               "tensor_names": {f["path"]: litert_tensor_names(bundle / f["path"]) for f in manifest["files"] if f["runtime"] == "litert"}}
    built = run_core("inputs", request, tmp_path)["rows"]
    outputs = {}
    for entry in _ids_in(manifest):
        outputs[entry["path"]] = [
            {"inputs": [a["values"] for a in row["inputs"][entry["path"]]["arrays"]],
             "output": _emulate_adapters(bundle, entry, _built_in_order(row["inputs"][entry["path"]], entry))}
            for row in built]
    texts = [case["text"] for case in golden["cases"]]
    for entry in _text_in(manifest):
        outputs[entry["path"]] = [{"text": t, "output": p} for t, p in zip(texts, _mediapipe_probabilities(bundle, entry, texts))]
    answer = run_core("selfcheck", {"bundle": str(bundle), "outputs": outputs}, tmp_path)
    results = {r["subject"]: r for r in answer["results"]}
    assert set(results) == {"tokenizer"} | {f["path"] for f in manifest["files"]}
    assert all(r["passed"] for r in results.values()), answer["summary"]
    assert answer["summary"].splitlines()[:2] == ["Self-check PASSED", f"✓ tokenizer: {len(texts)} texts, ids identical"]
    for entry in manifest["files"]:  # the runtimes' own numbers, not golden's: something was really compared
        assert 0 <= results[entry["path"]]["worst"] <= golden["tolerance"][entry["path"]]


def test_self_check_passes_golden_outputs_and_fails_each_kind_of_miss(bundle, tmp_path):
    manifest, golden = _json(bundle, "manifest.json"), _json(bundle, "golden.json")

    def replay(entry, cases=golden["cases"]):
        if entry["runtime"] == "mediapipe":
            return [{"text": c["text"], "output": list(c["expected"][entry["path"]])} for c in cases]
        return [{"inputs": _replay_key(entry, c), "output": list(c["expected"][entry["path"]])} for c in cases]

    outputs = {f["path"]: replay(f) for f in manifest["files"]}
    answer = run_core("selfcheck", {"bundle": str(bundle), "outputs": outputs}, tmp_path)
    assert all(r["passed"] for r in answer["results"]), answer["summary"]
    assert answer["summary"].splitlines()[0] == "Self-check PASSED"
    assert all(r["worst"] < 1e-5 for r in answer["results"][1:])  # float32 of golden's 6-decimal values

    ids_in, text_in = _ids_in(manifest), _text_in(manifest)
    tolerance = golden["tolerance"]
    moved = {}

    def move(entry, factor, case=1, value=0):
        entries = replay(entry)
        entries[case]["output"][value] += factor * tolerance[entry["path"]]
        moved[entry["path"]] = entries
        return entry["path"]

    past = move(ids_in[0], 1.02)
    within = move(ids_in[1], -0.98)
    nan = ids_in[2]["path"]
    moved[nan] = replay(ids_in[2])
    moved[nan][0]["output"][1] = None  # read as NaN
    missing = ids_in[3]["path"]
    moved[missing] = replay(ids_in[3])[:-1]  # the runtime has no answer for the last case
    past_probability = move(text_in[0], 1.02, case=0, value=1)
    unloadable = text_in[1]["path"]  # no outputs: the runner refuses to open
    outputs_moved = {**outputs, **moved}
    outputs_moved.pop(unloadable)
    answer = run_core("selfcheck", {"bundle": str(bundle), "outputs": outputs_moved}, tmp_path)
    results = {r["subject"]: r for r in answer["results"]}
    assert answer["summary"].splitlines()[0] == "Self-check FAILED"
    assert results["tokenizer"]["passed"]
    assert not results[past]["passed"] and math.isclose(results[past]["worst"], 1.02 * tolerance[past], rel_tol=1e-3)
    assert "max |Δlogit|" in results[past]["detail"]
    assert results[within]["passed"] and math.isclose(results[within]["worst"], 0.98 * tolerance[within], rel_tol=1e-3)
    assert not results[nan]["passed"] and results[nan]["detail"] == "output is NaN"
    assert not results[missing]["passed"] and results[missing]["detail"].startswith("could not run: no recorded output")
    assert not results[past_probability]["passed"] and "max |Δprobability|" in results[past_probability]["detail"]
    assert not results[unloadable]["passed"] and "runtime refused to load" in results[unloadable]["detail"]
    assert f"✗ {past}: max |Δlogit| " in answer["summary"] and f"✓ {within}: " in answer["summary"]

    # golden.json itself: a text the on-device tokenizer reads differently, a file without tolerance or values
    edited_dir = _copy_json_files(bundle, tmp_path / "edited")
    edited = json.loads(json.dumps(golden))
    edited["cases"][0]["text"] = "and more words " + edited["cases"][0]["text"]  # (the end may be cut off)
    del edited["tolerance"][ids_in[0]["path"]]
    for case in edited["cases"]:
        case["expected"][ids_in[1]["path"]].append(0.5)
    (edited_dir / "golden.json").write_text(json.dumps(edited))
    outputs_edited = {f["path"]: replay(f, edited["cases"]) for f in manifest["files"]}
    for entry in outputs_edited[ids_in[1]["path"]]:
        entry["output"] = entry["output"][:-1]  # what the runtime gives: one value fewer than golden now holds
    answer = run_core("selfcheck", {"bundle": str(edited_dir), "outputs": outputs_edited}, tmp_path)
    results = {r["subject"]: r for r in answer["results"]}
    shown = edited["cases"][0]["text"][:40]
    assert not results["tokenizer"]["passed"] and results["tokenizer"]["detail"] == f'1/{len(edited["cases"])} differ: "{shown}"'
    assert results[ids_in[0]["path"]]["detail"] == f"no tolerance for {ids_in[0]['path']} in golden.json"
    assert not results[ids_in[1]["path"]]["passed"] and "values, golden.json has" in results[ids_in[1]["path"]]["detail"]
    assert all(results[f["path"]]["passed"] for f in ids_in[2:] + text_in)


# ---------------------------------------------------------------------------------------------- MediaPipe, labels

NORMALIZATION_EXTRA = [
    "İstanbul ΟΔΟΣ ΣΊΣΥΦΟΣ ẞtraße ǅemo",  # special lowercasing: dotted I, final sigma, capital sharp s, titlecase
    "tag \U000e0001 chars \U000e0041 and variation \ufe0f selector",  # supplementary format (Cf) characters
    "file\x1cgroup\x1drecord\x1eunit\x1fsep \x85next \u2028line \u2029para",  # Python's extra whitespace
    "e\u0301\u0302 \u1e9b\u0323 ﬁ ℌ ① ¼ ㎏ Ǆ",  # stacked marks, compatibility forms
    "\t\n\r \u00a0\u2003\u3000",
]


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_mediapipe_normalization_equals_python(kind, tmp_path):
    from pipeline.verify.tokenizer_drift import HARD_CASES, app_normalize

    texts = [text for _, text in HARD_CASES] + NORMALIZATION_EXTRA + varied_texts(400, seed=11)
    kotlin = run_core("normalize", {"kind": kind, "texts": texts}, tmp_path)
    python = [app_normalize(t, kind) for t in texts]
    differ = [(t, p, k) for t, p, k in zip(texts, python, kotlin) if p != k]
    assert not differ, f"{len(differ)}/{len(texts)} differ, e.g.:\n" + "\n".join(
        f"{t!r}:\n  python {p!r}\n  kotlin {k!r}" for t, p, k in differ[:5])
    assert sum(p != t for p, t in zip(python, texts)) > 150  # the step really changes texts (205 / 210 of 430)


def test_mediapipe_categories_go_back_to_label_order_and_logits_to_labels(bundle, tmp_path):
    from mediapipe.tasks import python as mp_python
    from mediapipe.tasks.python import text as mp_text

    manifest, golden = _json(bundle, "manifest.json"), _json(bundle, "golden.json")
    labels = _json(bundle, "labels.json")
    texts = [case["text"] for case in golden["cases"]] + EXTRA_TEXTS
    categories, expected = [], []
    for entry in _text_in(manifest):
        options = mp_text.TextClassifierOptions(base_options=mp_python.BaseOptions(model_asset_path=str(bundle / entry["path"])),
                                                max_results=-1)
        with mp_text.TextClassifier.create_from_options(options) as classifier:
            for text in texts:
                found = classifier.classify(text).classifications[0].categories
                assert {c.category_name for c in found} == set(labels)
                for c in found:  # the app names a score by its index in labels.json: so must MediaPipe
                    assert labels[c.index] == c.category_name
                categories.append([[c.index, c.score] for c in found])
        expected += _mediapipe_probabilities(bundle, entry, texts)
    # MediaPipe sorts by score; a model that always ranks label 0 first would not exercise the mapping: the same
    # categories in reverse order too
    categories += [c[::-1] for c in categories]
    expected += expected
    logits = [case["expected"][f["path"]] for case in golden["cases"] for f in _ids_in(manifest)] + [[0.5, 0.5], [-1e3, 1e3]]
    broken = [[[0, 0.5]], [[0, 0.5], [0, 0.5]], [[0, 0.5], [len(labels), 0.5]]]
    answer = run_core("predict", {"bundle": str(bundle), "logits": logits, "categories": categories + broken}, tmp_path)

    assert answer["labels"] == labels
    got = answer["categories"]
    for row, want in zip(got, expected):
        assert row["probabilities"] == want  # float32 scores, exactly the Python runner's label order
        assert row["label"] == labels[int(np.argmax(want))]
    assert "returned 1 categories for" in got[-3]["error"]
    assert "returned twice" in got[-2]["error"] and "outside the" in got[-1]["error"]
    for row, values in zip(answer["logits"], logits):
        x = np.asarray(values, dtype=np.float32).astype(np.float64)
        softmax = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        np.testing.assert_allclose(row["probabilities"], softmax, rtol=1e-12, atol=1e-300)
        assert row["best"] == int(np.argmax(softmax)) and row["label"] == labels[row["best"]]
        report = row["report"].splitlines()
        assert report[0] == f"Prediction: {row['label']}"
        assert report[2:2 + len(labels)] == [f"{label:<16} {100 * p:6.2f} %" for label, p in zip(labels, softmax)]
        assert report[-1] in ("tokenize 1.25 ms · inference 2.50 ms",)
    assert answer["logits"][-2]["best"] == 0  # a tie: the first label, like numpy's argmax


# ---------------------------------------------------------------------------------------------- outputs, JSON

def test_outputs_decode_like_the_python_litert_runner(tmp_path):
    rng = np.random.default_rng(0)
    floats = rng.normal(0, 3, 7).astype(np.float32)
    q8 = rng.integers(-128, 128, 9).astype(np.int8)
    u8 = rng.integers(0, 256, 9).astype(np.uint8)
    items = [{"hex": floats.tobytes().hex(), "dtype": "float32", "count": 7},
             {"hex": q8.tobytes().hex(), "dtype": "int8", "count": 9, "scale": 0.0123, "zero_point": -3},
             {"hex": u8.tobytes().hex(), "dtype": "uint8", "count": 9, "scale": 0.5, "zero_point": 128},
             {"hex": "00", "dtype": "float16", "count": 1}]
    got = run_core("decode", {"items": items}, tmp_path)
    assert got[0] == floats.tolist()
    # pipeline/runtimes/litert.py: (out.astype(np.float32) - zero) * scale, in float32
    assert got[1] == ((q8.astype(np.float32) - -3) * np.float32(0.0123)).astype(np.float32).tolist()
    assert got[2] == ((u8.astype(np.float32) - 128) * np.float32(0.5)).astype(np.float32).tolist()
    assert "output dtype 'float16' is not supported" in got[3]["error"]


VALID_JSON = ['{"a":1}', "[]", "{}", "0", "-0", "1E+2", "1e-7", "-12.5e3", "3.141592653589793", "1.7976931348623157e308",
              "5e-324", "9223372036854775807", "-9223372036854775808", "123456789012345678901234567890", '""',
              '"\\u00e9\\ud83d\\ude00 \\u0000"', '"\\"\\\\\\/\\b\\f\\n\\r\\t"', " \n\t [ 1 , 2 ] \r\n", "true", "null",
              '{"a":{"b":[true,false,null,{"c":[]}]}}', '{"a":1,"a":2}', "[" * 200 + "]" * 200, '"日本 😀 é"']
INVALID_JSON = ["", " ", "01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "1.e5", "[1,]", '{"a":1,}', "{a:1}", "'x'",
                '"\x01"', '"\\x"', '"\\u12"', "tru", "nul", "[1 2]", '{"a" 1}', "NaN", "Infinity", "-Infinity", "[",
                '"abc', "1 2", "{}x", '{"a":1 "b":2}', "[1,,2]", "0x10"]


def _python_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse, parse_int=lambda s: int(s) if abs(int(s)) < 2 ** 63 else float(s))


def test_json_reader_agrees_with_python_and_refuses_what_rfc_8259_refuses(tiny_builds, tmp_path):
    bundle = tiny_builds["android"]
    real = [(bundle / name).read_text(encoding="utf-8") for name in ("manifest.json", "golden.json", "labels.json", "tokenizer.json")]
    for text in INVALID_JSON:  # the test data is right: Python refuses these too
        with pytest.raises(ValueError):
            _python_json(text)
    answer = run_core("json", {"documents": real + VALID_JSON + INVALID_JSON}, tmp_path)
    for text, got in zip(real + VALID_JSON, answer):
        assert "value" in got, (text[:80], got)
        assert _python_json(got["value"]) == _python_json(text), text[:80]
    for text, got in zip(INVALID_JSON, answer[len(real) + len(VALID_JSON):]):
        assert "error" in got, (text, got)
