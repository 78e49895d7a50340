"""The CLI's output is its own: third-party lines (Python warnings, logging, native writes to fd 2) go to the
log file, `--verbose` shows them, progress shows rate and ETA on a terminal and single lines elsewhere."""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import console as console_module
from pipeline.core.console import Console, progress

REPO = Path(__file__).resolve().parents[1]


NOISE = ("FutureWarning", "a library's logging line", "Failed to open midr file", "printed on stdout")
SCRIPT = """
import logging, os, sys, warnings
from pathlib import Path
from pipeline.core.console import Console, say
logging.basicConfig()  # a handler made before the console starts, as at a library's import
console = Console(verbose=sys.argv[1] == "1", command="test").start()
warnings.warn("a library's FutureWarning", FutureWarning)
logging.getLogger("torch.some_module").warning("a library's logging line")
os.write(2, b"native: Failed to open midr file\\n")  # what C/C++ code (cpuinfo, TF, torchao) does
os.write(1, b"native: printed on stdout\\n")
say("[stage] our own line")
print(console.stop(Path(sys.argv[2])))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_lines_go_to_the_log_and_verbose_shows_them(tmp_path, verbose):
    log = tmp_path / "test.log"
    result = subprocess.run([sys.executable, "-c", SCRIPT, "1" if verbose else "0", str(log)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[stage] our own line" in result.stdout and result.stdout.strip().endswith(str(log))
    shown = result.stdout + result.stderr
    for text in NOISE:
        assert (text in shown) == verbose, (text, shown)
    kept = log.read_text()
    assert "[stage] our own line" in kept
    if not verbose:  # nothing is lost: every hidden line is in the file
        for text in NOISE:
            assert text in kept, (text, kept)


def test_progress_outside_the_cli_is_the_plain_iterable():
    assert console_module.active() is None
    assert list(progress(range(3), desc="x")) == [0, 1, 2]


def test_progress_without_a_terminal_is_periodic_single_lines(monkeypatch):
    monkeypatch.setattr(console_module, "LINE_EVERY_S", 0.0)
    console = Console(command="test")
    console.out, console.err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(console_module, "_active", console)
    assert list(progress(range(5), desc="validate", unit="row")) == list(range(5))
    lines = console.out.getvalue().splitlines()
    assert len(lines) >= 5 and all("\r" not in line for line in lines), lines
    assert "validate" in lines[-1] and "5/5" in lines[-1] and "row/s" in lines[-1], lines[-1]
    assert console.err.getvalue() == ""


def test_progress_on_a_terminal_is_a_bar_with_rate_and_eta(monkeypatch):
    import fcntl
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    console = Console(command="test")
    console.out = io.StringIO()
    console.err = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(console_module, "_active", console)
    try:
        for _ in progress(range(50), desc="reference", unit="batch"):
            time.sleep(0.03)
        console.err.flush()
        import select

        ready, _, _ = select.select([master], [], [], 10)  # never hang the suite: nothing written is a failure
        shown = os.read(master, 65536).decode(errors="replace") if ready else ""
    finally:
        console.err.close()
        os.close(master)
    assert "reference" in shown and "/50 [" in shown and "batch/s]" in shown and "<00:0" in shown, shown  # elapsed<ETA


def test_a_rejected_build_prints_only_our_lines_and_keeps_the_log_beside_the_outputs(tmp_path):
    from tiny import write_tiny_albert

    model = write_tiny_albert(tmp_path / "model", max_position_embeddings=64)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_LOCAL_INDEX": str(tmp_path / "index.json")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-m", "pipeline", "build", "--model", str(model), "--out", str(out),
                             "--max-length", "128"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    ours = ("build: ", "[", "  ")
    assert all(line.startswith(ours) for line in result.stdout.splitlines()), result.stdout
    log = (out / "build.log").read_text()
    assert "build: target android" in log and "max_position_embeddings 64" in log
