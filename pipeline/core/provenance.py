"""Where inputs are on this machine, kept out of everything that ships.

The manifest, reports and golden vectors name the model and data files by name and content hash only (no
absolute path of the build machine: those files go into apps and CI logs). To let `pipeline validate` and `bench`
find the same files again on the machine that built them, every checkpoint loaded and data file read is
remembered in a small local index, `$XDG_CACHE_HOME/albert-mobile-pipeline/local_files.json` (default
`~/.cache/...`): content hash -> absolute paths seen. On another machine the index is empty: the embedded
default model is found by name, anything else needs `--model` / `--eval-data` (the error says so).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from pipeline.core.errors import PipelineError

INDEX_ENV = "PIPELINE_LOCAL_INDEX"  # tests point it at a temp file
HASH_CHARS = 16  # the hash prefix shown in names: 64 bits are plenty to tell a user's files apart
# The embedded default model (pipeline/model/default.py loads it): found by name wherever the package is installed.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_path() -> Path:
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "albert-mobile-pipeline" / "local_files.json"


def remember(sha256: str, path: str | Path) -> None:
    """Record that content `sha256` is at `path` on this machine (best effort: a read-only home is no error)."""
    where = index_path()
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        with open(where.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = _read(where)
            paths = index.setdefault(sha256, [])
            resolved = str(Path(path).resolve())
            if resolved in paths:
                return
            paths.insert(0, resolved)
            del paths[8:]
            tmp = where.with_name(f".{where.name}.{os.getpid()}")
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
            os.replace(tmp, where)
    except OSError:
        pass


def recall(sha256: str | None) -> list[Path]:
    """Paths on this machine recorded for `sha256` (a full hash or a prefix), existing ones only."""
    if not sha256:
        return []
    index = _read(index_path())
    found = [p for key, paths in index.items() if key.startswith(sha256) for p in paths]
    return [Path(p) for p in found if Path(p).exists()]


def _read(where: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(where.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def portable_name(path: str | Path, sha256: str) -> str:
    """How a data file is named in what ships: `eval.csv (sha256 1a2b...)`."""
    return f"{Path(path).name} (sha256 {sha256[:HASH_CHARS]})"


_NAMED = re.compile(r"^(?P<name>.+) \(sha256 (?P<hash>[0-9a-f]{8,64})\)$")


def find_data_file(source: str, what: str, option: str) -> Path:
    """A data file named by `portable_name` (or, from older manifests, by path) on this machine."""
    match = _NAMED.match(source)
    if not match:
        return Path(source)
    name, digest = match["name"], match["hash"]
    for candidate in [*recall(digest), Path(name)]:
        if candidate.is_file() and sha256_file(candidate).startswith(digest):
            return candidate
    raise PipelineError(f"the {what} the manifest names ({source}) is not on this machine; pass {option} FILE")


def find_model_dir(recorded: dict, model_dir: str | Path | None = None) -> Path:
    """The checkpoint a manifest's `model` section names: --model, else this machine's copy (by content hash),
    else the embedded default (by name). The caller checks the hash of what it loads."""
    if model_dir:
        return Path(model_dir)
    if recorded.get("source") and Path(recorded["source"]).is_dir():  # manifests written before this module
        return Path(recorded["source"])
    for candidate in recall(recorded.get("source_sha256")):
        if candidate.is_dir():
            return candidate
    if recorded.get("name") == DEFAULT_MODEL_DIR.name:
        return DEFAULT_MODEL_DIR
    digest = str(recorded.get("source_sha256"))[:HASH_CHARS]
    raise PipelineError(f"the model these artifacts were built from ({recorded.get('name')!r}, sha256 {digest}...) "
                        "is not on this machine; pass --model DIR")
