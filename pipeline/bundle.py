"""The bundle: the artifact folder an app consumes, written whole to a temporary folder, then moved into place.

<out>/<target>/  model files, tokenizer files, labels.json, golden.json, manifest.json, report.*
The manifest is the single source of truth for the apps and for CI.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.data import sha256_file
from pipeline.core.shapes import real_length, real_lengths
from pipeline.model.checkpoint import LoadedModel
from pipeline.verify.report import result_dict, write_reports
from pipeline.core.stage import tool_versions
from pipeline.verify.validation import ArtifactResult, Evidence
from pipeline.core.tokenization import Encoded, tokenizer_files, tokenizer_info

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
APP_MODEL_DIRS = {
    "android": REPO_ROOT / "android_demo" / "app" / "src" / "main" / "assets" / "model",
    "ios": REPO_ROOT / "ios_demo" / "AlbertDemo" / "Resources" / "model",
}


def golden_indices(encoded: Encoded, count: int) -> list[int]:
    """`count` eval rows spread over the lengths (shortest, quantiles, longest): golden vectors cover short and
    long texts; the first rows when all have one length."""
    lengths = real_lengths(encoded.attention_mask)
    order = np.argsort(lengths, kind="stable")
    if len(order) <= count or lengths.min() == lengths.max():
        return list(range(min(count, len(encoded))))
    picks = [int(order[round(q * (len(order) - 1))]) for q in np.linspace(0, 1, count)]
    return sorted(dict.fromkeys(picks))


def golden_cases(results: list[ArtifactResult], encoded: Encoded, texts: list[str], count: int) -> dict:
    ids_in = [r for r in results if r.artifact.runtime != "mediapipe"]  # MediaPipe twins take text
    dynamic = bool(ids_in) and all(r.artifact.details.get("shapes") == "dynamic" for r in ids_in)
    cases = []
    for index in golden_indices(encoded, count):
        # dynamic files: exactly the tokens (no padding), as the apps feed them
        n = real_length(encoded.attention_mask[index]) if dynamic else encoded.input_ids.shape[1]
        cases.append({
            "text": texts[index],
            "input_ids": encoded.input_ids[index, :n].tolist(),
            "attention_mask": encoded.attention_mask[index, :n].tolist(),
            "token_type_ids": encoded.token_type_ids[index, :n].tolist(),
            "expected": {r.artifact.file_name: np.asarray(r.logits[index], dtype=float).round(6).tolist() for r in results},
        })
    # On a phone the same file runs on other CPU kernels: allow what the artifact was allowed against float.
    tolerance = {r.artifact.file_name: max(1e-4, r.thresholds.max_abs_error) for r in results}
    # MediaPipe files take the text and give probabilities (TextClassifier.classify(text)), the others ids -> logits.
    outputs = {r.artifact.file_name: "probabilities" if r.artifact.runtime == "mediapipe" else "logits" for r in results}
    return {"max_length": int(encoded.input_ids.shape[1]), "padding": "none" if dynamic else "max_length",
            "tolerance": tolerance, "outputs": outputs, "cases": cases}


@dataclass
class Bundle:
    """What goes into a target's folder: the verified results and what the apps read beside them."""

    model: LoadedModel
    target: str
    max_length: int
    results: list[ArtifactResult]
    evidence: Evidence  # the eval rows golden.json picks from, and the float reference for the report's plot
    texts: list[str]  # the eval texts as read (golden.json shows them)
    golden_count: int = 4
    eval_source: str = ""
    extra: dict = field(default_factory=dict)  # more manifest sections (shape contract, thresholds, drift, ...)


def manifest(b: Bundle, folder: Path) -> dict:
    model, target, max_length, results, eval_source, extra = b.model, b.target, b.max_length, b.results, b.eval_source, b.extra
    files = []
    for r in results:
        entry = result_dict(r)
        path = folder / r.artifact.file_name
        entry.update({
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "bytes_per_parameter": round(path.stat().st_size / model.num_parameters, 4),
        })
        files.append(entry)
    # Non-model files: hashed like the models, listed apart so that every `files` entry is a model.
    assets = [{"path": name, "sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
              for name in ["labels.json", "golden.json", *(p.name for p in tokenizer_files(model.model_dir))]]
    return {
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "model": {
            "name": model.model_dir.name,
            "params": int(model.num_parameters),
            "source_sha256": model.source_sha256,
            "max_length": max_length,
            "num_labels": len(model.label_names),
            "architecture": model.spec.to_dict(),
            "reference": model.reference_kind,
        },
        "tokenizer": tokenizer_info(model, max_length),
        "labels": "labels.json",
        "label_names": model.label_names,
        "golden": "golden.json",
        "eval_data": eval_source,
        "versions": tool_versions(),
        "files": files,
        "assets": assets,
        **extra,
    }


def replace_folder(staged: Path, final: Path) -> None:
    """Swap `staged` into `final`; the previous folder stays whole until the new one is in place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def bundle(b: Bundle, out_root: Path, copy_to_apps: bool) -> Path:
    """Write <out_root>/<target>/ atomically and copy it into the target's demo app."""
    model, target = b.model, b.target
    out_root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_root, prefix=f".{target}-staging-"))
    try:
        for r in b.results:
            shutil.copy2(r.artifact.path, staged / r.artifact.file_name)
        for path in tokenizer_files(model.model_dir):
            shutil.copy2(path, staged / path.name)
        (staged / "labels.json").write_text(json.dumps(model.label_names) + "\n")
        (staged / "golden.json").write_text(
            json.dumps(golden_cases(b.results, b.evidence.encoded, b.texts, b.golden_count)) + "\n")
        write_reports(staged, b.results, b.evidence.reference, f"{model.model_dir.name} for {target}",
                      {"target": target, "eval data": b.eval_source, "rows": len(b.evidence.encoded),
                       "max_length": b.max_length}, drift=b.extra.get("tokenizer_drift"))
        (staged / "manifest.json").write_text(json.dumps(manifest(b, staged), indent=2) + "\n")
        staged.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shipped and read by others
        final = out_root / target
        replace_folder(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if copy_to_apps:
        copy_to_app(final, target)
    return final


def copy_to_app(final: Path, target: str) -> None:
    """The bundled folder, whole, into the target's demo app (swapped in atomically), when the app is present."""
    if target not in APP_MODEL_DIRS or not APP_MODEL_DIRS[target].parent.parent.exists():
        return
    app_dir = APP_MODEL_DIRS[target]
    app_dir.parent.mkdir(parents=True, exist_ok=True)
    app_staged = Path(tempfile.mkdtemp(dir=app_dir.parent, prefix=".model-staging-"))
    shutil.copytree(final, app_staged, dirs_exist_ok=True)
    replace_folder(app_staged, app_dir)
