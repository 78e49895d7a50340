"""A full disk or a read-only folder at any stage: one line `error: <path>: <strerror>`, exit 2, nothing half-written.

Real small file systems (tmpfs mounted for the test; needs root, as in this project's CI container), real
`python -m pipeline build` processes: the line must also survive third-party output (it goes to the log file).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import write_review_data, write_tiny_albert

REPO = Path(__file__).resolve().parents[1]


def _mount(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=1m", *options]), "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root")


@pytest.fixture
def mounts(tmp_path):
    made: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        path = tmp_path / name
        _mount(path, *options)
        made.append(path)
        return path

    yield mount
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path) -> None:
    """Fill the file system under `folder`: every later write there gets ENOSPC."""
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def _build(tmp_path: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    model = write_tiny_albert(tmp_path / "model")
    data = write_review_data(tmp_path / "eval.csv", count=8)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PIPELINE_LOCAL_INDEX": str(tmp_path / "idx.json")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    (tmp_path / "c.toml").write_text(f'[build]\ncache_dir = "{cache}"\nprecisions = ["fp32"]\n')
    return subprocess.run([sys.executable, "-m", "pipeline", "build", "--model", str(model), "--out", str(out),
                           "--max-length", "16", "--eval-data", str(data), "--runtimes", "executorch",
                           "--no-copy-to-apps", "--config", str(tmp_path / "c.toml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_full_disk_is_one_line_naming_the_folder_and_leaves_nothing_half_written(tmp_path, mounts):
    full = mounts("full")
    _fill(full)
    result = _build(tmp_path, tmp_path / "out", full / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {full}") and lines[0].endswith("No space left on device"), lines[0]
    assert not (tmp_path / "out" / "android").exists()
    leftovers = [p.name for p in (full / "cache").rglob("*")] if (full / "cache").exists() else []
    assert not [n for n in leftovers if n.startswith(".")], leftovers  # no staging folder left in the cache


def test_read_only_output_folder_is_one_line(tmp_path, mounts):
    read_only = mounts("ro", "ro")
    result = _build(tmp_path, read_only / "out", tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {read_only}"), result.stderr[-3000:]
    assert "Read-only file system" in lines[0], lines[0]


def test_an_os_error_without_a_file_name_is_blamed_on_the_full_folder(tmp_path, mounts):
    import errno

    from pipeline import cli

    full = mounts("full2")
    _fill(full)
    cli.WRITES[:] = [tmp_path / "elsewhere", full / "out"]
    try:
        line = cli.os_error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    finally:
        cli.WRITES.clear()
    assert line == f"error: {full / 'out'}: No space left on device"
