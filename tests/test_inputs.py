"""Inputs as people have them: CSV/JSONL files saved by spreadsheets and editors, config files with mistakes.

Each case either works or is refused with one PipelineError (one line, exit 2) naming the file and the problem.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.core.data import load_labeled_file
from pipeline.core.errors import PipelineError

LABELS = ["great", "other"]
ROWS = [("good tea, would buy again", "great"), ("stale, bitter\nand late", "other"), ("fine", "1")]


def _csv(rows=ROWS, header=("text", "label")) -> str:
    def cell(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v

    return "".join(",".join(cell(v) for v in row) + "\r\n" for row in [header, *rows])


def test_csv_from_a_spreadsheet_bom_crlf_multiline_cells_header_case_works(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv(header=("Text", "LABEL")).encode("utf-8"))
    data = load_labeled_file(path, LABELS, require_labels=True)
    assert data.texts == ["good tea, would buy again", "stale, bitter\nand late", "fine"]
    assert data.labels == [0, 1, 1]


def test_plain_utf8_csv_with_lf_still_works(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text(_csv().replace("\r\n", "\n"), encoding="utf-8")
    assert load_labeled_file(path, LABELS, require_labels=True).labels == [0, 1, 1]


def test_jsonl_with_bom_crlf_and_header_case_works(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"Text": t, "Label": lab}, ensure_ascii=False) for t, lab in ROWS]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    data = load_labeled_file(path, LABELS, require_labels=True)
    assert data.texts[1] == "stale, bitter\nand late" and data.labels == [0, 1, 1]


@pytest.mark.parametrize("encoding, words", [("utf-16", ["UTF-16", "UTF-8"]), ("latin-1", ["not UTF-8", "line 2"])])
def test_csv_in_another_encoding_is_one_line_naming_file_and_encoding(tmp_path, encoding, words):
    path = tmp_path / f"{encoding}.csv"
    path.write_bytes("text,label\ncafé crème,great\n".encode(encoding))
    with pytest.raises(PipelineError) as caught:
        load_labeled_file(path, LABELS)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert all(w in message for w in words), message


def test_two_headers_matching_ignoring_case_are_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,Text,label\na,b,great\n")
    with pytest.raises(PipelineError, match="ignoring case"):
        load_labeled_file(path, LABELS, text_column="TEXT")


@pytest.mark.parametrize("toml, words", [
    ('[build]\nmax_length = "abc"\n', ["max_length", "'abc'", "expected int"]),
    ("[build]\neval_limit = -3\n", ["eval_limit", "0 or more"]),
    ("[build]\nmax_length = 1\n", ["max_length", "2 or more"]),
    ("[build]\nruntimes = \"executorch\"\n", ["runtimes", "expected list[str]"]),
    ("[build]\ncopy_to_apps = 1\n", ["copy_to_apps", "expected bool"]),
    ("[quantize]\ncalibration_samples = 0\n", ["calibration_samples", "1 or more"]),
    ('[thresholds.int8]\nmax_abs_error = "big"\n', ["max_abs_error", "expected float"]),
    ("[thresholds]\nint8 = 3\n", ["thresholds.int8", "table"]),
    ("[build]\nmax_lenght = 64\n", ["unknown key", "max_lenght"]),
    ("build = 3\n", ["[build]", "table"]),
])
def test_bad_config_values_are_one_line_naming_file_and_key(tmp_path, toml, words):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(PipelineError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert all(w in message for w in words), message


def test_good_config_values_of_every_type_load(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text('[build]\nmax_length = 64\neval_limit = 0\nmodel_dir = "m"\nruntimes = ["executorch"]\n'
                    "[thresholds.int8]\nmax_abs_error = 1\n[compress]\nlr = 0.001\nlayers = 3\n")
    config = load_config(path)
    assert config.build.max_length == 64 and config.thresholds.per_precision["int8"].max_abs_error == 1
    assert config.compress.layers == 3


@pytest.mark.parametrize("args, words", [
    (["build", "--eval-limit", "-2"], ["eval_limit", "0 or more"]),
    (["build", "--max-length", "1"], ["max_length", "2 or more"]),
    (["build", "--max-length", "abc"], ["--max-length", "abc"]),
    (["build", "--no-such-option"], ["--no-such-option"]),
])
def test_bad_options_exit_2_with_one_line_before_any_work(tmp_path, args, words):
    result = subprocess.run([sys.executable, "-m", "pipeline", *args, "--out", str(tmp_path / "out")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out").exists()
