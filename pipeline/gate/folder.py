"""What a bundled folder must be before anything in it runs, and what the gate checks it against:

    verify_files     every manifest entry is a regular file inside the folder (no absolute or `..` path, no link
                     that leaves it), listed once, with the recorded size and sha256; every model file is listed
    load_reference   the float reference the manifest names (or the one given), proven by its hash
    load_eval        the eval data as recorded (or the one given), never empty
    check_app_files  what the app reads beside the model files is the model's own: labels.json holds the model's
                     labels in its order; the tokenizer files are the checkpoint's; golden.json's inputs are what
                     the tokenizer makes of its texts and its outputs what each file computes (checked after the
                     files ran, `check_golden`)
Every problem is one PipelineError naming the entry (exit 2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipeline.core.artifact import Artifact, read_manifest
from pipeline.core.data import LabeledTexts, load_labeled_file, load_small_fine_foods, sha256_file
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import find_data_file, find_model_dir
from pipeline.core.tokenization import encode, tokenizer_files
from pipeline.runtimes.contained import FileJob
from pipeline.runtimes.mediapipe import TEXT_INPUT

Log = Callable[[str], None]
MODEL_SUFFIXES = (".pte", ".tflite")


def verify_files(folder: Path, manifest: dict) -> int:
    """Every listed file is a regular file inside the folder, listed once, with the recorded size and sha256; no
    model file of the folder is left unlisted."""
    listed = set()
    root = folder.resolve()
    where = folder / "manifest.json"
    for entry in manifest["files"] + manifest.get("assets", []):
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise PipelineError(f"manifest entry with a bad path {name!r} (a file name inside the folder)", where)
        if name in listed:
            raise PipelineError(f"manifest lists {name!r} twice", where)
        listed.add(name)
        path = folder / name
        if path.is_symlink() and path.resolve().parent != root:
            raise PipelineError("a link to a file outside the folder", path)
        if not path.is_file():
            raise PipelineError("listed in manifest.json but missing (or not a regular file)", path)
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise PipelineError(f"size {size} bytes does not match the manifest's {entry.get('bytes')}", path)
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise PipelineError(f"sha256 mismatch: file {digest}, manifest {entry.get('sha256')} "
                                "(the file was changed after the build)", path)
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix in MODEL_SUFFIXES and p.name not in listed)
    if unlisted:
        raise PipelineError(f"model file(s) not in manifest.json: {unlisted}", folder)
    return len(listed)


def model_entries(manifest: dict) -> list[dict]:
    entries = [e for e in manifest["files"] if e.get("runtime") is not None]
    if not entries:
        raise PipelineError("manifest lists no model files: nothing to validate")
    return entries


def load_reference(manifest: dict, model_dir: str | None):
    """The float reference the artifacts were built from, proven by its hash."""
    from pipeline.model.checkpoint import load_checkpoint

    recorded = manifest["model"]
    path = find_model_dir(recorded, model_dir)  # --model, this machine's copy by hash, or the default by name
    model = load_checkpoint(path, recorded.get("max_length"))
    if model.source_sha256 != recorded.get("source_sha256"):
        raise PipelineError(f"checkpoint hash {model.source_sha256[:16]}... is not the manifest's "
                            f"{str(recorded.get('source_sha256'))[:16]}...: not the model these artifacts were built from "
                            "(pass --model DIR with that checkpoint)",
                            path)
    return model


def load_eval(source: str | None, eval_data: str | None, label_names: list[str]) -> LabeledTexts:
    """--eval-data, else what the manifest records: 'small_fine_foods:<split>[ (texts only)]' or a file path."""
    if eval_data:
        return load_labeled_file(eval_data, label_names)
    if not source:
        raise PipelineError("the manifest records no eval data; pass --eval-data")
    if source.startswith("small_fine_foods:"):
        split = source.split(":", 1)[1].split(" ", 1)[0]
        if split not in ("train", "test"):
            raise PipelineError(f"unknown small_fine_foods split in manifest eval_data {source!r}")
        texts = load_small_fine_foods(split)
        if label_names != texts.label_names or source.endswith("(texts only)"):
            texts = LabeledTexts(texts.texts, None, label_names, texts.source + " (texts only)")
        return texts
    return load_labeled_file(find_data_file(source, "eval data", "--eval-data"), label_names)


def load_calibration(manifest: dict, calibration_data: str | None, label_names: list[str]) -> LabeledTexts:
    """The calibration texts of the build: --calibration-data, manifest calibration.source, else small_fine_foods:train."""
    source = calibration_data or (manifest.get("calibration") or {}).get("source") or "small_fine_foods:train"
    if source.startswith("small_fine_foods:"):
        texts = load_small_fine_foods(source.split(":", 1)[1].split(" ", 1)[0])
    else:
        path = source if calibration_data else find_data_file(source, "calibration data", "--calibration-data")
        texts = load_labeled_file(path, label_names, with_labels=False)
    return LabeledTexts(texts.texts, None, label_names, texts.source)




def check_app_files(folder: Path, manifest: dict, model) -> None:
    """labels.json is the model's labels in the model's order; the tokenizer files are the checkpoint's own."""
    labels_path = folder / str(manifest.get("labels") or "labels.json")
    try:
        labels = json.loads(labels_path.read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot read the labels ({err})", labels_path) from None
    if labels != list(model.label_names):
        raise PipelineError(f"labels {labels} are not the model's {list(model.label_names)} in its order: the app "
                            "would show predictions under the wrong names", labels_path)
    for source in tokenizer_files(model.model_dir):
        shipped = folder / source.name
        if not shipped.is_file():
            raise PipelineError("the model's tokenizer file is missing from the folder", shipped)
        if sha256_file(shipped) != sha256_file(source):
            raise PipelineError(f"not the model's tokenizer file (differs from {source.name} of the checkpoint): the app "
                                "would tokenize differently from the model", shipped)


def golden_jobs(folder: Path, artifacts: list[Artifact], model, max_length: int):
    """golden.json's cases, checked against the tokenizer, as run jobs for every file (ids in, or text in)."""
    import numpy as np

    path = folder / "golden.json"
    try:
        golden = json.loads(path.read_text())
        cases = golden["cases"]
        texts = [c["text"] for c in cases]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"golden.json is not readable ({type(err).__name__}: {err})", path) from None
    encoded = encode(model.tokenizer, texts, max_length)
    rows = []
    for index, case in enumerate(cases):
        try:
            row = {k: np.asarray([case[k]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        except (KeyError, TypeError, ValueError) as err:
            raise PipelineError(f"case {index} has no valid inputs ({err})", path) from None
        n = row["input_ids"].shape[1]
        if n > max_length or not np.array_equal(row["input_ids"][0], encoded.input_ids[index, :n]) or \
                int(encoded.attention_mask[index].sum()) > n:
            raise PipelineError(f"case {index}: its input_ids are not what the model's tokenizer makes of its text",
                                path)
        rows.append(row)
    jobs = [FileJob(a, [{TEXT_INPUT: t} for t in texts] if a.runtime == "mediapipe" else rows) for a in artifacts]
    return golden, jobs


def check_golden(golden: dict, outputs: dict, artifacts: list[Artifact], path: Path) -> None:
    """Every golden output is what its file computes on that input, within the golden tolerance."""
    import numpy as np

    tolerance = golden.get("tolerance") or {}
    for artifact in artifacts:
        name = artifact.file_name
        got = outputs.get(name)
        if got is None or got.error is not None:
            continue  # the file's own run reports it
        limit = tolerance.get(name)
        if not isinstance(limit, (int, float)) or not np.isfinite(limit) or limit < 0:
            raise PipelineError(f"no valid tolerance for {name}", path)
        for index, case in enumerate(golden["cases"]):
            expected = (case.get("expected") or {}).get(name)
            try:
                expected = np.asarray(expected, dtype=np.float64).reshape(-1)
                diff = float(np.abs(np.asarray(got.outputs[index], np.float64).reshape(-1) - expected).max())
            except (TypeError, ValueError):
                raise PipelineError(f"case {index} has no valid expected outputs for {name}", path) from None
            if not diff <= limit:
                raise PipelineError(f"case {index}: {name} computes outputs {diff:.4g} away from the expected ones "
                                    f"(tolerance {limit:.4g}): the apps' self-check would fail", path)
