"""The iOS app's plain-Swift core (ios_demo/AlbertDemo/Core) mirrors the Android core (android_demo/core), which
tests/test_app_core.py compiles and checks against real builds. No Swift compiler is reachable here, so what can be
checked is checked: Core/ imports Foundation only (the Kotlin core: no Android or runtime package), every constant
group (manifest keys and values, the core's rules and character sets) has the same names and values on both sides,
and the two cores declare the same types and functions, with the differences listed here and why. That every Swift
file parses is tests/test_swift_sources.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from apps_support import ANDROID_DEMO, KOTLIN_CORE_PACKAGE, KOTLIN_CORE_SRC, SWIFT_CORE

KOTLIN_CONSTANT_FILES = [KOTLIN_CORE_PACKAGE / "ManifestKeys.kt", KOTLIN_CORE_PACKAGE / "Rules.kt"]
SWIFT_CONSTANT_FILES = [SWIFT_CORE / "ManifestKeys.swift", SWIFT_CORE / "Rules.swift"]
KOTLIN_APP = ANDROID_DEMO / "app" / "src" / "main" / "kotlin"

# Declared on one side only, and why (names compared without case and underscores).
SWIFT_ONLY_TYPES = {
    "bundleerror": "Swift's thrown error type (Kotlin throws the standard exceptions)",
    "encoding": "Kotlin's Encoding is the tokenizer module's (org.pipeline.demo.tokenizer)",
}
KOTLIN_ONLY_FUNCTIONS = {
    "long": "JSON integers as Long (Swift's Int is 64-bit: int)",
    "double": "not needed in Swift (tolerances are read as NSNumber)",
    "file": "ModelBundle.file(path): the Kotlin CLI's lookup",
    "encode": "ModelBundle.encode: the Kotlin tokenizer is the app's own; Swift's TextTokenizer adapter encodes",
    "longs": "int64 values for ExecuTorch's Tensor.fromBlob (Swift maps to Int64 in the adapter)",
    "intshape": "LiteRT's Java resizeInput takes IntArray",
    "tobuffer": "LiteRT's Java API takes a ByteBuffer (Swift: data())",
    "close": "AutoCloseable (Swift frees on deinit)",
    "report": "the Android result panel is one text (SwiftUI lays out a list)",
}
SWIFT_ONLY_FUNCTIONS = {
    "load": "ModelBundle.load(from: Bundle): the app bundle's resource folder",
    "url": "ModelBundle.url: files are read by URL",
    "readjson": "JSONSerialization (Kotlin: the tokenizer module's Json)",
    "integer": "a strict JSON integer from NSNumber (Kotlin: private)",
    "values": "Encoding.values (Kotlin: the tokenizer module's Encoding.byName)",
    "fixedlength": "truncate / pad swift-transformers' ids (the Kotlin tokenizer does it in encode)",
    "data": "the input as Data for LiteRT's copy(_:toInputAt:) (Kotlin: toBuffer)",
}


# ---------------------------------------------------------------------------------------------- constants

def _decode_string(literal: str, swift: bool) -> str:
    body = literal[1:-1]
    pattern = r"\\u\{([0-9A-Fa-f]{1,8})\}|\\(.)" if swift else r"\\u([0-9A-Fa-f]{4})|\\(.)"
    simple = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "'": "'", "\\": "\\", "$": "$", "0": "\0", "b": "\b"}

    def replace(match: re.Match) -> str:
        if match.group(1):
            return chr(int(match.group(1), 16))
        if match.group(2) not in simple:
            raise ValueError(f"unknown escape \\{match.group(2)} in {literal}")
        return simple[match.group(2)]

    return re.sub(pattern, replace, body)


def _evaluate(expr: str, group: str, raw: dict[str, dict[str, str]], swift: bool):
    expr = expr.strip()
    if expr.startswith('"') and expr.endswith('"'):
        return _decode_string(expr, swift)
    if re.fullmatch(r"-?\d+L?", expr):
        return int(expr.rstrip("L"))
    if re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", expr):
        return float(expr)
    if expr in ("true", "false"):
        return expr == "true"
    items = re.fullmatch(r"\[(.*)\]", expr, flags=re.S) if swift else re.fullmatch(r"listOf\((.*)\)", expr, flags=re.S)
    if items:
        parts = re.findall(r'"(?:[^"\\]|\\.)*"|[\w.\-]+', items.group(1))
        return [_evaluate(p, group, raw, swift) for p in parts]
    reference = re.fullmatch(r"(?:(\w+)\.)?(\w+)", expr)
    if reference:
        other = reference.group(1) or group
        return _evaluate(raw[other][reference.group(2)], other, raw, swift)
    raise ValueError(f"cannot read the constant expression {expr!r} ({group})")


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


def constants(files: list[Path], swift: bool) -> dict[str, dict[str, object]]:
    """{group: {name: value}} of every top-level `object` (Kotlin) / `enum` (Swift) in `files`; every line of such a
    block must be a constant (so none is written in a form this reader would skip)."""
    block = r"^enum (\w+) \{\n(.*?)^\}" if swift else r"^object (\w+) \{\n(.*?)^\}"
    entry = (r"static let (\w+)(?:\s*:\s*[\w\[\]<>?, ]+)?\s*=\s*(.+)" if swift
             else r"(?:const )?val (\w+)(?:\s*:\s*[\w<>?, ]+)?\s*=\s*(.+)")
    raw: dict[str, dict[str, str]] = {}
    for path in files:
        for match in re.finditer(block, _strip_comments(path.read_text()), flags=re.S | re.M):
            group, body = match.group(1), match.group(2)
            raw[group] = {}
            for line in filter(None, (line.strip() for line in body.splitlines())):
                found = re.fullmatch(entry, line)
                assert found, f"{path.name}, {group}: not a constant declaration: {line!r}"
                raw[group][found.group(1)] = found.group(2)
    return {group: {name: _evaluate(expr, group, raw, swift) for name, expr in entries.items()} for group, entries in raw.items()}


def _normalized(group: dict[str, object]) -> dict[str, object]:
    return {name.replace("_", "").lower(): value for name, value in group.items()}


def test_constant_reader_reads_both_languages():
    """The reader itself: escapes, numbers, lists and references of both languages."""
    raw = {"G": {"A": '"x"'}}
    assert _evaluate('"\\t\\n\\uFFFD"', "G", raw, swift=False) == "\t\n\ufffd"
    assert _evaluate('"\\t\\n\\u{FFFD}"', "G", raw, swift=True) == "\t\n\ufffd"
    assert _evaluate("-1L", "G", raw, swift=False) == -1 and _evaluate("5e-7", "G", raw, swift=True) == 5e-7
    assert _evaluate("listOf(A, G.A)", "G", raw, swift=False) == ["x", "x"]
    assert _evaluate('[A, "y"]', "G", raw, swift=True) == ["x", "y"]
    with pytest.raises(ValueError):
        _evaluate("A + 1", "G", raw, swift=True)


def test_swift_core_has_the_kotlin_core_constants():
    kotlin, swift = constants(KOTLIN_CONSTANT_FILES, swift=False), constants(SWIFT_CONSTANT_FILES, swift=True)
    assert {"AssetPaths", "ManifestKeys", "ManifestAssetKeys", "GoldenKeys", "ManifestValues", "CoreRules",
            "MediaPipeRules"} <= set(kotlin)
    assert set(swift) == set(kotlin)
    problems = []
    for group in sorted(kotlin):
        k, s = _normalized(kotlin[group]), _normalized(swift[group])
        for name in sorted(k.keys() | s.keys()):
            if name not in s or name not in k:
                problems.append(f"{group}.{name}: only in {'Kotlin' if name in k else 'Swift'}")
            elif k[name] != s[name]:
                problems.append(f"{group}.{name}: Kotlin {k[name]!r}, Swift {s[name]!r}")
    assert not problems, "\n".join(problems)
    assert kotlin["CoreRules"]["DYNAMIC_DIM"] == -1 and kotlin["MediaPipeRules"]["WORDPIECE_DROPPED"] == "\ufffd"


# ---------------------------------------------------------------------------------------------- imports, API

def test_cores_use_no_platform_or_runtime_api():
    for path in sorted(SWIFT_CORE.glob("*.swift")):
        imports = set(re.findall(r"^import (\w+)", path.read_text(), flags=re.M))
        assert imports <= {"Foundation"}, f"{path.name} imports {imports}"
    for path in sorted(KOTLIN_CORE_SRC.rglob("*.kt")):
        for module in re.findall(r"^import ([\w.]+)", path.read_text(), flags=re.M):
            assert module.startswith(("java.", "kotlin.", "org.pipeline.demo.core.", "org.pipeline.demo.tokenizer.")), \
                f"{path.name} imports {module}"
    # and the runtime calls are in the adapters, outside the cores
    adapters = "\n".join(p.read_text() for p in KOTLIN_APP.rglob("*.kt"))
    assert "org.pytorch.executorch" in adapters and "org.tensorflow.lite" in adapters and "com.google.mediapipe" in adapters


def _kotlin_api() -> tuple[set[str], set[str]]:
    code = "\n".join(_strip_comments(p.read_text()) for p in sorted(KOTLIN_CORE_SRC.rglob("*.kt")))
    types = set(re.findall(r"^(?:(?:data|enum|abstract|open|sealed) )*(?:class|object|interface) (\w+)", code, flags=re.M))
    functions = {m.group(2) for m in re.finditer(r"^\s*((?:private|internal) )?(?:override )?fun (\w+)\(", code, flags=re.M)
                 if not m.group(1)}
    return {t.lower() for t in types}, {f.lower() for f in functions}


def _swift_api() -> tuple[set[str], set[str]]:
    code = "\n".join(_strip_comments(p.read_text()) for p in sorted(SWIFT_CORE.glob("*.swift")))
    types = set(re.findall(r"^(?:final )?(?:struct|enum|class|protocol) (\w+)", code, flags=re.M))
    functions = {m.group(2) for m in re.finditer(r"^\s*((?:private|fileprivate) )?(?:static )?func (\w+)\(", code, flags=re.M)
                 if not m.group(1)}
    return {t.lower() for t in types}, {f.lower() for f in functions}


def test_swift_core_declares_the_kotlin_core_types_and_functions():
    kotlin_types, kotlin_functions = _kotlin_api()
    swift_types, swift_functions = _swift_api()
    assert {"modelbundle", "modelinputs", "selfcheck", "mediapipetext", "prediction", "runtime"} <= kotlin_types
    assert swift_types - kotlin_types == set(SWIFT_ONLY_TYPES), "types only in Swift"
    assert kotlin_types - swift_types == set(), "types only in Kotlin"
    assert {"build", "indices", "ordered", "decode", "compare", "checkmodel", "softmax", "inlabelorder", "normalize"} <= kotlin_functions
    assert kotlin_functions - swift_functions == set(KOTLIN_ONLY_FUNCTIONS), "functions only in Kotlin"
    assert swift_functions - kotlin_functions == set(SWIFT_ONLY_FUNCTIONS), "functions only in Swift"
