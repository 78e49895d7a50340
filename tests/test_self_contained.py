"""Committed source, tests, scripts, app projects and CI name nothing outside the repository: no document of another
folder, no tracker's issue number, no absolute path of a build machine (each fact is stated where it is used)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["pipeline", "tests", "scripts", "android_demo", "ios_demo", ".github", ".ci", "pyproject.toml"]
SKIPPED_SUFFIXES = {".safetensors", ".png", ".jpg", ".jar", ".pte", ".tflite", ".onnx", ".npz", ".pkl", ".bin", ".model"}
SKIPPED_NAMES = {"vocab.txt", "tokenizer.json"}  # word-piece vocabularies: words, not references
OUTSIDE = re.compile("|".join([
    r"TOOLCHAIN\.md", r"DESIGN\.md", r"\.\./shared\b",  # documents of a folder beside the repository
    r"\b[Ii]ssue\s+#?\d", r"\(issue\b", r"\bissue #\d",  # a tracker's numbers
    r"/work/", r"/root/", r"/\.venv/", r"site-packages/",  # a machine's absolute paths
]))


def _files() -> list[Path]:
    out = []
    for name in CHECKED:
        base = ROOT / name
        candidates = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in candidates:
            parts = path.relative_to(ROOT).parts
            if any(part in ("build", ".gradle", "__pycache__", "Pods", ".pipeline_cache") for part in parts):
                continue
            if path.suffix in SKIPPED_SUFFIXES or path.name in SKIPPED_NAMES or path == Path(__file__).resolve():
                continue
            out.append(path)
    return out


def test_committed_files_name_nothing_outside_the_repository():
    found = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = OUTSIDE.search(line)
            if match:
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r} in {line.strip()[:120]!r}")
    assert found == []


def test_the_pattern_finds_what_it_is_for():
    # split literals, so that this file does not itself hold what the scan refuses
    for line in ("see ../sha" "red/NOTES.md", "(iss" "ue 14)", "Iss" "ue 7, item 5", "litert-torch iss" "ue #870",
                 "/wor" "k/main/.venv/lib/python3.11/site-packages/x", "DES" "IGN.md"):
        assert OUTSIDE.search(line), line
    for line in ("~/.cache/pipeline/tools", "python3 -m venv .venv && . .venv/bin/activate", "the issue's targets"):
        assert not OUTSIDE.search(line), line
