"""Helpers for tests that change a built folder."""
from __future__ import annotations

import json
from pathlib import Path


def rewrite_file(folder: Path, name: str, data: bytes) -> None:
    """Replace a model file and record its sha256 and size in the manifest, as a build that wrote it so would have."""
    from pipeline.core.data import sha256_file

    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"], entry["bytes"] = sha256_file(folder / name), len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))
