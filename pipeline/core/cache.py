"""Stage cache: results keyed by a content hash of their inputs, config and tool versions.

An entry is a folder with the stage's files and entry.json listing each file's sha256; an entry whose
files do not match is treated as absent (and removed), so a corrupted cache is rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipeline.core.data import sha256_file


def content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process, or not a pid we can judge: leave its files alone
    return True


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove `<folder>/<prefix><pid>-*` left behind by killed processes (pid no longer alive); never a live one's."""
    removed = []
    try:
        candidates = list(Path(folder).glob(f"{prefix}*"))
    except OSError:
        return removed
    for path in candidates:
        pid_text = path.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class StageCache:
    def __init__(self, root: str | Path, enabled: bool = True, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.enabled = enabled
        self.log = log or (lambda message: None)
        self.dropped: list[str] = []  # entries found corrupt (and removed) in this run

    def get(self, stage: str, key: str) -> tuple[Path, dict] | None:
        """(entry folder, metadata) when a valid entry exists."""
        if not self.enabled:
            return None
        entry = self.root / f"{stage}-{key}"
        if not entry.exists():
            return None
        try:
            record = json.loads((entry / "entry.json").read_text())
            for name, digest in record["files"].items():
                if sha256_file(entry / name) != digest:
                    raise ValueError(f"{name} does not match its sha256")
            meta = record["meta"]
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:  # corrupt entry: drop it, rebuild
            shutil.rmtree(entry, ignore_errors=True)
            self.dropped.append(entry.name)
            reason = str(err) if isinstance(err, ValueError) and not isinstance(err, json.JSONDecodeError) else \
                f"{type(err).__name__}: {err}"
            self.log(f"[cache] {entry}: corrupt entry ({reason}); dropped, rebuilding")
            return None
        self.log(f"  cache hit: {entry.name} (files match their sha256)")
        return entry, meta

    def put(self, stage: str, key: str, files: dict[str, Path], meta: dict) -> Path | None:
        if not self.enabled:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale(self.root, f".{stage}-")  # staging folders of builds that were killed
        staged = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{stage}-{os.getpid()}-"))
        record = {"files": {}, "meta": meta}
        try:
            for name, path in files.items():
                shutil.copy2(path, staged / name)
                record["files"][name] = sha256_file(staged / name)
            (staged / "entry.json").write_text(json.dumps(record, default=str))
        except OSError as err:  # a full or read-only disk: no half-written entry, and the message names the cache
            shutil.rmtree(staged, ignore_errors=True)
            raise OSError(err.errno, err.strerror, str(err.filename2 or err.filename or self.root)) from None
        entry = self.root / f"{stage}-{key}"
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(staged, entry)
        except OSError:  # another build stored the same entry first
            shutil.rmtree(staged, ignore_errors=True)
        return entry
