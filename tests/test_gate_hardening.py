"""A gate that cannot be crashed or loosened: one test (or one parametrized test) per class of failure.

1. no crash escapes: a file that aborts its runtime, hangs it, or is another model's file is one line naming it,
   exit 2, with the report of the files that did run (validate, bench, the contained runner itself)
2. the folder is what its manifest says: no link leaving it, no absolute or `..` entry, nothing listed twice,
   no model file left unlisted
3. every value has a range: thresholds files and numeric options are refused (one line, exit 2) before any work
4. every OS error is one line: names too long for the file system, wherever they are
5. what the app reads is gated: labels.json, the tokenizer files, golden.json, whatever the manifest's hashes say
6. a text field of a few megabytes is read (and truncated by the tokenizer)

Every folder here is a copy of the session's real tiny build (tests/conftest.py `tiny_builds`), tampered with and
its manifest's sha256/bytes rewritten, so that only the new checks can catch it. Folders that must run are cut to
one or two model files (and their manifest entries) to keep the runs short.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli

REPO = Path(__file__).resolve().parents[1]
LONG = "x" * 300  # longer than any file name the file system takes (255 bytes)


# ---------------------------------------------------------------------------------------------- helpers


def run(argv: list[str]) -> tuple[int, str, str]:
    """`python -m pipeline ...` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def run_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A real `python -m pipeline ...` process: a native abort would show as a negative exit code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)


def one_error_line(code: int, err: str, *words: str) -> str:
    """Exit 2 and exactly one stderr line, `error: ...`, saying every word."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for word in words:
        assert word in lines[0], f"{lines[0]!r} does not say {word!r}"
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_folder(source: Path, target: Path, keep: list[str] | None = None) -> Path:
    """A copy of a built folder; with `keep`, only those model files (files and manifest entries)."""
    shutil.copytree(source, target)
    if keep is not None:
        manifest = read(target)
        for entry in manifest["files"]:
            if entry["path"] not in keep:
                (target / entry["path"]).unlink()
        manifest["files"] = [e for e in manifest["files"] if e["path"] in keep]
        golden = json.loads((target / "golden.json").read_text())
        golden["tolerance"] = {k: v for k, v in golden["tolerance"].items() if k in keep}
        golden["outputs"] = {k: v for k, v in golden["outputs"].items() if k in keep}
        for case in golden["cases"]:
            case["expected"] = {k: v for k, v in case["expected"].items() if k in keep}
        (target / "golden.json").write_text(json.dumps(golden))
        write(target, manifest)
    return target


def read(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write(folder: Path, manifest: dict) -> None:
    """The manifest with every listed file's sha256 and bytes made to match what is on disk (a tamperer's update)."""
    entries = [e for key in ("files", "assets") if isinstance(manifest.get(key), list) for e in manifest[key]]
    for entry in entries:
        path = folder / str(entry.get("path"))
        if isinstance(entry.get("path"), str) and len(entry["path"]) < 255 and path.is_file():
            entry["sha256"], entry["bytes"] = sha256(path), path.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def write_foreign_pte(path: Path, max_length: int = 32, rows: int = 8, labels: int = 2) -> Path:
    """A real .pte that is not ALBERT: an int8 table of `rows` rows (ExecuTorch's quantized embedding kernel, as in
    every int8 ALBERT file), mean-pooled, to `labels` logits; it takes the same three int64 inputs of any length up
    to `max_length`. A token id of `rows` or more makes the kernel assert: a native abort (SIGABRT) of the process,
    what another model's int8 file (a smaller vocabulary) does to the runtime."""
    import torch
    from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401  registers the op
    from executorch.exir import to_edge

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.register_buffer("table", torch.randint(-127, 127, (rows, 4), generator=generator, dtype=torch.int8))
            self.register_buffer("scales", torch.full((rows,), 0.01))
            self.head = torch.nn.Linear(4, labels)

        def forward(self, input_ids, attention_mask, token_type_ids):
            x = torch.ops.quantized_decomposed.embedding_byte.default(self.table, self.scales, None, -128, 127, input_ids)
            return self.head(x.mean(dim=1) + attention_mask.float().mean() + token_type_ids.float().mean())

    example = tuple(torch.ones(1, 4, dtype=torch.int64) for _ in range(3))
    seq = torch.export.Dim("seq", min=1, max=max_length)
    exported = torch.export.export(Foreign(), example, dynamic_shapes=tuple({1: seq} for _ in range(3)), strict=False)
    path.write_bytes(to_edge(exported).to_executorch().buffer)
    return path


@pytest.fixture(scope="session")
def android(tiny_builds) -> Path:
    return tiny_builds["android"]


@pytest.fixture(scope="session")
def foreign(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    return {"aborts": write_foreign_pte(root / "aborts.pte"),
            "short": write_foreign_pte(root / "short.pte", max_length=16, rows=30000),
            "three_labels": write_foreign_pte(root / "three.pte", rows=30000, labels=3)}


def swapped(android: Path, target: Path, name: str, replacement: Path, keep: list[str] | None = None) -> Path:
    """A copy of the folder with `name` replaced by another file, the manifest's sha256 and bytes updated."""
    folder = copy_folder(android, target, keep)
    shutil.copyfile(replacement, folder / name)
    write(folder, read(folder))
    return folder


# ---------------------------------------------------------------------------------------------- 1. no crash escapes


def test_a_file_that_aborts_its_runtime_is_one_line_and_the_other_files_are_reported(android, foreign, tmp_path):
    folder = swapped(android, tmp_path / "android", "albert.fp32.pte", foreign["aborts"],
                     keep=["albert.fp32.pte", "albert.int8.tflite"])
    # the native abort is real: the runtime itself ends the process that feeds it a real token id
    probe = subprocess.run([sys.executable, "-c", (
        "import numpy as np; from pipeline.runtimes import open_runner; "
        f"r = open_runner({str(folder / 'albert.fp32.pte')!r}, 'executorch'); "
        "r.run({n: np.asarray([[2, 40, 3]]) for n in ('input_ids', 'attention_mask', 'token_type_ids')})")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert probe.returncode == -6, (probe.returncode, probe.stderr[-2000:])  # SIGABRT

    result = run_process(["validate", "--artifacts", str(folder), "--report-dir", str(tmp_path / "report")], tmp_path)
    line = one_error_line(result.returncode, result.stderr, "albert.fp32.pte", "SIGABRT", "Index out of bounds")
    assert "albert.int8.tflite (litert): PASS" in result.stdout, result.stdout[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [a["path"] for a in report["artifacts"]] == ["albert.int8.tflite"], line  # the file that did run


def test_another_models_file_is_refused_before_anything_is_fed_to_it(android, foreign, tmp_path):
    """Checked against its manifest entry in the child, before the first row: a file with another max_length or
    another label count is a one-line error naming what differs; the good file beside it still runs."""
    from pipeline.core.artifact import Artifact
    from pipeline.runtimes.contained import FileJob, run_contained

    manifest = read(android)
    entry = next(e for e in manifest["files"] if e["path"] == "albert.fp32.pte")
    rows = [{"input_ids": np.asarray([[2, 40, 41, 3]]), "attention_mask": np.ones((1, 4), np.int64),
             "token_type_ids": np.zeros((1, 4), np.int64)}]
    jobs = []
    for name in ("short", "three_labels"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(foreign[name], folder / "albert.fp32.pte")
        jobs.append(FileJob(Artifact.from_dict(folder, entry), rows, max_length=32))
    jobs.append(FileJob(Artifact.from_dict(android, next(e for e in manifest["files"]
                                                         if e["path"] == "albert.int8.tflite")), rows, max_length=32))
    short, three, good = (run_contained([job]) for job in jobs)  # same file names: one run each
    assert "not the model its manifest entry describes" in short["albert.fp32.pte"].error
    assert "at most 16 tokens, the folder's max_length is 32" in short["albert.fp32.pte"].error
    assert "output" in three["albert.fp32.pte"].error and "[1, 3]" in three["albert.fp32.pte"].error
    assert good["albert.int8.tflite"].error is None and good["albert.int8.tflite"].outputs.shape == (1, 2)


def test_a_hung_runtime_is_killed_after_its_time_limit_and_named(android, monkeypatch):
    from pipeline.core.artifact import Artifact
    from pipeline.runtimes import contained

    monkeypatch.setattr(contained, "START_SECONDS", 2.0)
    # a child that announces the file and then never answers: what a runtime stuck in a native loop looks like
    hang = [sys.executable, "-c", "import sys, time; print('start 0', flush=True); time.sleep(600)"]
    artifact = Artifact.from_dict(android, read(android)["files"][0])
    got = contained.run_contained([contained.FileJob(artifact, [{}])], contained.Worker(prefix=hang, seconds_per_row=1.0))
    error = got[artifact.file_name].error
    assert "the runtime hung (killed)" in error and "no answer after 3 s" in error, error


def test_bench_names_the_file_that_crashes_its_runtime_before_timing_anything(android, foreign, tmp_path):
    folder = swapped(android, tmp_path / "android", "albert.int8.pte", foreign["aborts"],
                     keep=["albert.fp32.pte", "albert.int8.pte"])
    result = run_process(["bench", "--artifacts", str(folder), "--out", str(tmp_path / "bench"), "--runs", "1",
                          "--threads", "1", "--max-length", "32", "--lengths", "none"], tmp_path)
    one_error_line(result.returncode, result.stderr, "albert.int8.pte", "SIGABRT")
    assert not (tmp_path / "bench" / "bench.json").exists()


# ---------------------------------------------------------------------------------------------- 2. the folder is what it says


def _entry(manifest: dict, name: str) -> dict:
    return next(e for e in manifest["files"] + manifest["assets"] if e["path"] == name)


def _symlink_outside(folder: Path, manifest: dict) -> str:
    outside = folder.parent / "outside_labels.json"
    shutil.copyfile(folder / "labels.json", outside)
    (folder / "labels.json").unlink()
    (folder / "labels.json").symlink_to(outside)  # same bytes, same hash: only the link gives it away
    return "labels.json"


def _absolute(folder: Path, manifest: dict) -> str:
    outside = folder.parent / "outside_labels.json"
    shutil.copyfile(folder / "labels.json", outside)
    _entry(manifest, "labels.json")["path"] = str(outside)
    return str(outside)


def _dotdot(folder: Path, manifest: dict) -> str:
    shutil.copyfile(folder / "labels.json", folder.parent / "outside_labels.json")
    _entry(manifest, "labels.json")["path"] = "../outside_labels.json"
    return "../outside_labels.json"


def _twice(folder: Path, manifest: dict) -> str:
    manifest["files"].append(dict(manifest["files"][0]))
    return manifest["files"][0]["path"]


def _unlisted(folder: Path, manifest: dict) -> str:
    shutil.copyfile(folder / "albert.int8.pte", folder / "extra.int8.pte")
    return "extra.int8.pte"


def _directory(folder: Path, manifest: dict) -> str:
    (folder / "labels.json").unlink()
    (folder / "labels.json").mkdir()
    return "labels.json"


def _not_a_list(folder: Path, manifest: dict) -> str:
    manifest["assets"] = {"path": "labels.json"}
    return "'assets'"


FOLDER_CASES = {"symlink_outside": _symlink_outside, "absolute_path": _absolute, "dotdot_path": _dotdot,
                "listed_twice": _twice, "unlisted_model_file": _unlisted, "entry_is_a_folder": _directory,
                "entries_not_a_list": _not_a_list}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_the_folder_is_what_its_manifest_says(android, tmp_path, case):
    folder = copy_folder(android, tmp_path / "android")
    manifest = read(folder)
    named = FOLDER_CASES[case](folder, manifest)
    write(folder, manifest)
    code, out, err = run(["validate", "--artifacts", str(folder), "--report-dir", str(tmp_path / "report")])
    one_error_line(code, err, named)
    assert "PASS" not in out and not (tmp_path / "report" / "report.json").exists()  # stopped before anything ran


# ---------------------------------------------------------------------------------------------- 3. every value has a range


THRESHOLDS = {
    "agreement_below_zero": ("[thresholds.int8]\nmin_top1_agreement = -0.5\n", "min_top1_agreement", "0.0 or more"),
    "error_limit_inf": ("[thresholds.fp32]\nmax_abs_error = inf\n", "max_abs_error", "finite"),
    "error_limit_nan": ("[thresholds.fp32]\nmax_abs_error = nan\n", "max_abs_error", "finite"),
    "cosine_above_one": ("[thresholds.int8]\nmin_cosine = 1.5\n", "min_cosine", "1.0 or less"),
    "accuracy_drop_negative": ("[thresholds.int8]\nmax_accuracy_drop = -0.1\n", "max_accuracy_drop", "0.0 or more"),
    "per_artifact_nan": ('[thresholds.artifacts."albert.int8.pte"]\nmin_cosine = nan\n', "min_cosine", "finite"),
    "misspelt_precision": ("[thresholds.in8]\nmax_abs_error = 0.1\n", "thresholds.in8", "unknown section"),
    "unknown_artifact": ('[thresholds.artifacts."albert.int8.ptee"]\nmax_abs_error = 0.1\n', "albert.int8.ptee",
                         "no such model file"),
    "string_limit": ('[thresholds.int8]\nmax_abs_error = "0.5"\n', "max_abs_error", "expected float"),
}


@pytest.mark.parametrize("case", sorted(THRESHOLDS))
def test_a_thresholds_file_cannot_switch_a_check_off(android, tmp_path, case):
    text, key, words = THRESHOLDS[case]
    path = tmp_path / "gate.toml"
    path.write_text(text)
    code, out, err = run(["validate", "--artifacts", str(android), "--thresholds", str(path),
                          "--report-dir", str(tmp_path / "report")])
    one_error_line(code, err, key, words)
    assert "(executorch)" not in out and "float reference" not in out  # refused before any work


OPTIONS = {
    "compress_negative_epochs": (["compress", "--epochs", "-1"], "epochs", "0 or more"),
    "compress_lr_nan": (["compress", "--lr", "nan"], "lr", "finite"),
    "compress_lr_inf": (["compress", "--lr", "inf"], "lr", "finite"),
    "compress_lr_zero": (["compress", "--lr", "0"], "lr", "more than 0.0"),
    "compress_weight_above_one": (["compress", "--distill-weight", "1.5"], "distill_weight", "1.0 or less"),
    "compress_negative_copies": (["compress", "--augment-copies", "-1"], "augment_copies", "0 or more"),
    "compress_hidden_weight_inf": (["compress", "--hidden-weight", "1e400"], "hidden_weight", "finite"),
    "compress_augment_prob_nan": (["compress", "--augment-prob", "nan"], "augment_prob", "finite"),
    "compress_max_length_huge": (["compress", "--max-length", "99999999999999999999"], "max_length", "or less"),
    "bench_zero_runs": (["bench", "--runs", "0"], "runs", "1 or more"),
    "bench_zero_threads": (["bench", "--threads", "0"], "--threads", "1 or more"),
    "bench_too_many_threads": (["bench", "--threads", "100000"], "threads", "256 or less"),
    "bench_length_one": (["bench", "--max-length", "1"], "max_lengths", "2 or more"),
    "bench_negative_workload": (["bench", "--workload", "-1"], "workload", "0 or more"),
    "build_max_length_one": (["build", "--max-length", "1"], "max_length", "2 or more"),
    "build_unknown_runtime": (["build", "--runtimes", "coreml"], "coreml", "unknown runtime"),
    "validate_zero_arm_rows": (["validate", "--arm-rows", "0"], "rows", "1 or more"),
    "validate_unknown_arm_cpu": (["validate", "--arm-cpu", "pentium"], "pentium", "choose one of"),
    "validate_negative_eval_limit": (["validate", "--eval-limit", "-1"], "eval_limit", "0 or more"),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_numeric_and_choice_options_are_refused_before_any_work(android, tmp_path, case):
    argv, key, words = OPTIONS[case]
    command = argv[0]
    where = {"compress": ["--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "out")],
             "bench": ["--artifacts", str(android), "--out", str(tmp_path / "out")],
             "build": ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")],
             "validate": ["--artifacts", str(android), "--report-dir", str(tmp_path / "out")]}[command]
    code, out, err = run(argv + where)
    one_error_line(code, err, key, words)
    assert not (tmp_path / "out").exists() and "validate:" not in out and "bench:" not in out


CONFIGS = {
    "compress_negative_epochs": ("compress", "[compress]\nepochs = -1\n", "epochs"),
    "compress_teacher_lr_inf": ("compress", "[compress]\nteacher_lr = inf\n", "teacher_lr"),
    "compress_unknown_share": ("compress", '[compress]\nshare = "most"\n', "share"),
    "compress_unknown_device": ("compress", '[compress]\ndevice = "tpu"\n', "device"),
    "build_unknown_shapes": ("build", '[build]\nshapes = "ragged"\n', "shapes"),
    "build_file_name_with_a_slash": ("build", '[build]\nname = "../albert"\n', "name"),
    "build_unknown_precision": ("build", '[build]\nprecisions = ["fp8"]\n', "precisions"),
    "quantize_unknown_activations": ("build", '[quantize]\nactivations = "sometimes"\n', "activations"),
    "quantize_nan_is_not_an_int": ("build", "[quantize]\ncalibration_samples = nan\n", "calibration_samples"),
    "tflite_unknown_converter": ("build", '[tflite]\nconverter = "tf1"\n', "converter"),
    "cost_negative_increase": ("build", "[thresholds.cost]\nmax_increase = -0.1\n", "max_increase"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_values_outside_their_range_or_choices_are_refused(tmp_path, case):
    command, text, key = CONFIGS[case]
    config = tmp_path / "config.toml"
    config.write_text(text)
    where = (["--teacher", str(tmp_path / "teacher")] if command == "compress" else ["--model", str(tmp_path / "model")])
    code, _, err = run([command, "--config", str(config), "--out", str(tmp_path / "out"), *where])
    one_error_line(code, err, str(config), key)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- 4. every OS error is one line


@pytest.mark.parametrize("case", ["build_out", "validate_report_dir", "validate_artifacts", "bench_out", "compress_out",
                                  "config_file", "thresholds_file", "eval_data", "manifest_entry"])
def test_a_name_too_long_for_the_file_system_is_one_line(android, tmp_path, case):
    long = tmp_path / LONG
    argv = {
        "build_out": ["build", "--model", str(tmp_path / "model"), "--out", str(long)],
        "validate_report_dir": ["validate", "--artifacts", str(android), "--report-dir", str(long)],
        "validate_artifacts": ["validate", "--artifacts", str(long)],
        "bench_out": ["bench", "--artifacts", str(android), "--out", str(long / "bench")],
        "compress_out": ["compress", "--teacher", str(tmp_path / "teacher"), "--out", str(long / "student")],
        "config_file": ["build", "--config", str(long / "c.toml"), "--out", str(tmp_path / "out")],
        "thresholds_file": ["validate", "--artifacts", str(android), "--thresholds", str(long),
                            "--report-dir", str(tmp_path / "out")],
        "eval_data": ["validate", "--artifacts", str(android), "--eval-data", str(long),
                      "--report-dir", str(tmp_path / "out")],
        "manifest_entry": None,
    }[case]
    if case == "manifest_entry":
        folder = copy_folder(android, tmp_path / "android")
        manifest = read(folder)
        manifest["assets"].append({"path": LONG, "sha256": "0" * 64, "bytes": 1})
        write(folder, manifest)
        argv = ["validate", "--artifacts", str(folder), "--report-dir", str(tmp_path / "out")]
    code, out, err = run(argv)
    one_error_line(code, err, "File name too long")
    assert "PASS" not in out


# ---------------------------------------------------------------------------------------------- 5. what the app reads


def _reorder_labels(folder: Path, manifest: dict) -> tuple[str, str]:
    labels = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps(labels[::-1]) + "\n")
    return "labels.json", "not the model's"


def _swap_vocab_tokens(folder: Path, manifest: dict) -> tuple[str, str]:
    tokens = (folder / "vocab.txt").read_text().split("\n")
    a, b = tokens.index("tea"), tokens.index("coffee")
    tokens[a], tokens[b] = tokens[b], tokens[a]
    (folder / "vocab.txt").write_text("\n".join(tokens))
    return "vocab.txt", "not the model's tokenizer file"


def _tokenizer_normalizes_differently(folder: Path, manifest: dict) -> tuple[str, str]:
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = not data["normalizer"].get("lowercase", True)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return "tokenizer.json", "not the model's tokenizer file"


def _extra_tokenizer_file(folder: Path, manifest: dict) -> tuple[str, str]:
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[SEP]"}))
    manifest["assets"].append({"path": "special_tokens_map.json"})
    return "special_tokens_map.json", "not one of the model's tokenizer files"


def _manifest_says_no_lowercase(folder: Path, manifest: dict) -> tuple[str, str]:
    manifest["tokenizer"]["lowercase"] = False
    return "tokenizer.lowercase", "the model's tokenizer has True"


def _labels_pointer_elsewhere(folder: Path, manifest: dict) -> tuple[str, str]:
    (folder / "my_labels.json").write_text(json.dumps(["other", "great"]))
    manifest["labels"] = "my_labels.json"  # not a listed asset: the app would read an unchecked file
    return "my_labels.json", "not one of the folder's listed assets"


def _golden_moved(folder: Path, manifest: dict) -> tuple[str, str]:
    golden = json.loads((folder / "golden.json").read_text())
    golden["cases"][1]["expected"]["albert.fp32.pte"][0] += 3.0
    (folder / "golden.json").write_text(json.dumps(golden))
    return "golden.json", "case 1: albert.fp32.pte computes outputs 3 away"


def _golden_moved_behind_a_wide_tolerance(folder: Path, manifest: dict) -> tuple[str, str]:
    golden = json.loads((folder / "golden.json").read_text())
    golden["cases"][0]["expected"]["albert.fp32.pte"][1] -= 3.0
    golden["tolerance"]["albert.fp32.pte"] = 10.0
    (folder / "golden.json").write_text(json.dumps(golden))
    return "golden.json", "case 0: albert.fp32.pte computes outputs 3 away"


APP_CASES = {"reordered_labels": _reorder_labels, "swapped_vocab_tokens": _swap_vocab_tokens,
             "tokenizer_normalizes_differently": _tokenizer_normalizes_differently,
             "extra_tokenizer_file": _extra_tokenizer_file, "manifest_tokenizer_lowercase": _manifest_says_no_lowercase,
             "labels_pointer_elsewhere": _labels_pointer_elsewhere, "golden_moved": _golden_moved,
             "golden_moved_behind_wide_tolerance": _golden_moved_behind_a_wide_tolerance}


@pytest.mark.parametrize("case", sorted(APP_CASES))
def test_what_the_app_reads_is_the_models_whatever_the_hashes_say(android, tmp_path, case):
    folder = copy_folder(android, tmp_path / "android", keep=["albert.fp32.pte"])
    manifest = read(folder)
    named, words = APP_CASES[case](folder, manifest)
    write(folder, manifest)
    code, out, err = run(["validate", "--artifacts", str(folder), "--report-dir", str(tmp_path / "report")])
    one_error_line(code, err, named, words)


def test_the_folders_tokenizer_must_encode_the_eval_texts_as_the_models(android, tmp_path):
    from pipeline.core.errors import PipelineError
    from pipeline.core.tokenization import encode, load_tokenizer
    from pipeline.gate.folder import check_tokenizer_behaviour

    texts = ["Great TEA, would buy again", "bad coffee"]
    encoded = encode(load_tokenizer(android), texts, 32)
    check_tokenizer_behaviour(android, texts, encoded)  # the build's own folder: the same ids
    folder = copy_folder(android, tmp_path / "android")
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["tea"], vocab["coffee"] = vocab["coffee"], vocab["tea"]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(PipelineError, match="encode eval text 0 .* differently from the model's tokenizer"):
        check_tokenizer_behaviour(folder, texts, encoded)


def test_the_untampered_cut_folder_passes(android, tmp_path):
    """The control of the class-5 cases: the same cut folder, untouched, passes."""
    folder = copy_folder(android, tmp_path / "android", keep=["albert.fp32.pte"])
    code, out, err = run(["validate", "--artifacts", str(folder), "--report-dir", str(tmp_path / "report")])
    assert code == 0, (out[-3000:], err[-3000:])


# ---------------------------------------------------------------------------------------------- 6. legal but large input


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_text_of_a_few_megabytes_is_read_and_truncated_by_the_tokenizer(tiny_albert, tmp_path, suffix):
    from pipeline.core.data import load_labeled_file
    from pipeline.core.tokenization import encode, load_tokenizer

    big = ("great tea, would buy again " * 75_000).strip()  # 2 MB in one cell
    path = tmp_path / f"big{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"text": big, "label": "great"}) + "\n" + json.dumps({"text": "bad", "label": "other"}))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text(f"text{sep}label\n\"{big}\"{sep}great\nbad{sep}other\n")
    data = load_labeled_file(path, ["great", "other"], require_labels=True)
    assert data.texts == [big, "bad"] and data.labels == [0, 1]
    encoded = encode(load_tokenizer(tiny_albert), data.texts, 32)
    assert encoded.input_ids.shape == (2, 32) and encoded.truncated == 1
