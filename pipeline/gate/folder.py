"""What a bundled folder must be before anything in it runs, and what the gate checks it against:

    verify_files     (pipeline/core/artifact.py, bench checks folders too) every manifest entry is a regular file inside the folder (no absolute or `..` path, no link
                     that leaves it), listed once, with the recorded size and sha256; every model file is listed
    load_reference   the float reference the manifest names (or the one given), proven by its hash
    load_eval        the eval data as recorded (or the one given), never empty
    check_app_files  what the app reads beside the model files is the model's own: labels.json holds the model's
                     labels in its order; the tokenizer files are the checkpoint's, byte for byte, and
                     `check_tokenizer_behaviour` encodes the eval texts with them; the manifest's labels / golden
                     keys name listed assets (`app_file`) and its tokenizer section is the model's; golden.json's
                     inputs are what the tokenizer makes of its texts and its outputs what each file computes
                     (checked after the files ran, `check_golden`)
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
from pipeline.core.tokenization import TOKENIZER_FILES, encode, load_tokenizer, tokenizer_info
from pipeline.runtimes.contained import FileJob
from pipeline.runtimes.mediapipe import TEXT_INPUT

Log = Callable[[str], None]


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




def app_file(folder: Path, manifest: dict, key: str, default: str) -> Path:
    """A file the app finds through a manifest key (labels, golden): one of the folder's listed assets, by a plain
    name (a key pointing anywhere else would have the app read a file nothing checked)."""
    value = manifest.get(key, default)
    listed = {e.get("path") for e in manifest.get("assets", []) if isinstance(e, dict)}
    if not isinstance(value, str) or value not in listed:
        raise PipelineError(f"manifest key {key!r} = {value!r} is not one of the folder's listed assets: the app would "
                            "read a file the gate never checked", folder / "manifest.json")
    return folder / value


def check_app_files(folder: Path, manifest: dict, model) -> None:
    """labels.json is the model's labels in the model's order; the tokenizer files are the checkpoint's own, and
    what the manifest tells the app about labels and the tokenizer is the model's."""
    where = folder / "manifest.json"
    labels_path = app_file(folder, manifest, "labels", "labels.json")
    try:
        labels = json.loads(labels_path.read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot read the labels ({err})", labels_path) from None
    if labels != list(model.label_names):
        raise PipelineError(f"labels {labels} are not the model's {list(model.label_names)} in its order: the app "
                            "would show predictions under the wrong names", labels_path)
    if manifest.get("label_names", labels) != labels or (manifest.get("model") or {}).get("num_labels") != len(labels):
        raise PipelineError(f"label_names / model.num_labels are not the model's {len(labels)} labels "
                            f"{list(model.label_names)}", where)
    app_file(folder, manifest, "golden", "golden.json")
    listed = {e.get("path") for e in manifest.get("assets", []) if isinstance(e, dict)}
    for name in TOKENIZER_FILES:
        shipped, source = folder / name, model.model_dir / name
        if not source.is_file():
            if shipped.exists() or shipped.is_symlink():
                raise PipelineError("not one of the model's tokenizer files (its checkpoint has none of that name): "
                                    "the app's tokenizer could read it", shipped)
            continue
        if not shipped.is_file():
            raise PipelineError("the model's tokenizer file is missing from the folder", shipped)
        if name not in listed:
            raise PipelineError("the tokenizer file is not listed in manifest.json", shipped)
        if sha256_file(shipped) != sha256_file(source):
            raise PipelineError(f"not the model's tokenizer file (differs from {source.name} of the checkpoint): the app "
                                "would tokenize differently from the model", shipped)
    max_length = int(manifest["model"]["max_length"])
    recorded, expected = manifest.get("tokenizer") or {}, tokenizer_info(model, max_length)
    for key, value in expected.items():
        if recorded.get(key) != value:
            raise PipelineError(f"tokenizer.{key} is {recorded.get(key)!r}, the model's tokenizer has {value!r}: the "
                                "app would tokenize differently from the model", where)


def check_tokenizer_behaviour(folder: Path, texts: list[str], encoded) -> None:
    """The tokenizer the folder's files make encodes the eval texts exactly as the model's does (`encoded`): the
    files are compared byte for byte with the checkpoint's too, this catches what that cannot see (a file the
    tokenizer loader reads beside them)."""
    import numpy as np

    try:
        shipped = load_tokenizer(folder)
    except PipelineError as err:
        raise PipelineError(f"the folder's tokenizer files do not load ({err.message})", folder) from None
    mine = encode(shipped, texts, encoded.input_ids.shape[1])
    for index in range(len(texts)):
        if not (np.array_equal(mine.input_ids[index], encoded.input_ids[index])
                and np.array_equal(mine.attention_mask[index], encoded.attention_mask[index])):
            raise PipelineError(f"the folder's tokenizer files encode eval text {index} ({texts[index][:60]!r}) "
                                "differently from the model's tokenizer", folder)


def golden_jobs(path: Path, artifacts: list[Artifact], model, max_length: int):
    """golden.json's cases (at `path`), checked against the tokenizer, as run jobs for every file (ids in, or text
    in); what it tells the app about lengths is the folder's."""
    import numpy as np

    try:
        golden = json.loads(path.read_text())
        cases = golden["cases"]
        texts = [str(c["text"]) for c in cases]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"golden.json is not readable ({type(err).__name__}: {err})", path) from None
    if golden.get("max_length") != max_length:
        raise PipelineError(f"max_length {golden.get('max_length')!r} is not the folder's {max_length}: the app's "
                            "self-check would feed other lengths", path)
    ids_in = [a for a in artifacts if a.runtime != "mediapipe"]
    padding = "none" if ids_in and all(a.details.get("shapes") == "dynamic" for a in ids_in) else "max_length"
    if golden.get("padding") != padding:
        raise PipelineError(f"padding {golden.get('padding')!r} is not the files' {padding!r}", path)
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
    jobs = [FileJob(a, [{TEXT_INPUT: t} for t in texts] if a.runtime == "mediapipe" else rows, max_length=max_length)
            for a in artifacts]
    return golden, jobs


def check_golden(golden: dict, outputs: dict, artifacts: list[Artifact], path: Path,
                 limits: dict[str, float] | None = None) -> None:
    """Every golden output is what its file computes on that input, within the golden tolerance (and within the
    file's max_abs_error limit in force, `limits`: a folder cannot hide moved outputs behind a wide tolerance)."""
    import numpy as np

    tolerance = golden.get("tolerance") or {}
    if not isinstance(tolerance, dict):
        raise PipelineError("tolerance is not a table of file names", path)
    for artifact in artifacts:
        name = artifact.file_name
        got = outputs.get(name)
        if got is None or got.error is not None:
            continue  # the file's own run reports it
        limit = tolerance.get(name)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not np.isfinite(limit) or limit < 0:
            raise PipelineError(f"no valid tolerance for {name}", path)
        if limits and name in limits:
            limit = min(limit, max(1e-4, limits[name]))  # as the build sets it: max(1e-4, max_abs_error)
        for index, case in enumerate(golden["cases"]):
            expected = (case.get("expected") or {}).get(name) if isinstance(case, dict) else None
            try:
                expected = np.asarray(expected, dtype=np.float64).reshape(-1)
                diff = float(np.abs(np.asarray(got.outputs[index], np.float64).reshape(-1) - expected).max())
            except (TypeError, ValueError):
                raise PipelineError(f"case {index} has no valid expected outputs for {name}", path) from None
            if not diff <= limit:
                raise PipelineError(f"case {index}: {name} computes outputs {diff:.4g} away from the expected ones "
                                    f"(tolerance {limit:.4g}): the apps' self-check would fail", path)
