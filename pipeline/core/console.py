"""What the CLI prints is its own: its lines, progress, errors. Everything else goes to a log file.

Third-party libraries speak on the process's stderr in three ways: Python `warnings`, `logging` handlers, and
native C/C++ code writing to file descriptor 2 (XNNPACK's cpuinfo "Failed to open midr file", TensorFlow's INFO
lines, torchao's "Failed to load ..._C_mxfp8" at import). Only redirecting the descriptor catches the last kind, so
`Console.start()` points fds 1 and 2 (and `sys.stdout` / `sys.stderr`) at a log file and keeps private duplicates
of the original stdout and stderr for the CLI's own lines. With `--verbose` nothing is redirected: everything
reaches the terminal as the libraries wrote it.

The log is written to a temporary file while the command runs (the output folder may not exist yet, and a
rejected input must leave that folder empty) and moved next to the command's outputs at the end, e.g.
`<out>/build.log` (see `log_path_for` in cli.py); the CLI's own lines are in it too, so it reads as one story.

`progress()` is the one progress helper (tqdm): a bar with rate and ETA on a terminal, a single line every
`LINE_EVERY_S` seconds when stdout is not a terminal (CI logs), and nothing at all outside the CLI (library use,
tests), so the library code can wrap its loops unconditionally.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
LINE_EVERY_S = 30.0  # not a terminal: one progress line per loop at most this often (plus the last one)

_active: "Console | None" = None


class Console:
    def __init__(self, verbose: bool = False, command: str = "pipeline"):
        self.verbose = verbose
        self.command = command
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.log_path: Path | None = None  # the temporary log while running
        self._log: TextIO | None = None
        self._saved: list[tuple[int, int]] = []
        self._saved_streams = (sys.stdout, sys.stderr)
        self._repointed: list = []
        self._lock = threading.Lock()
        self.bars = 0

    # --------------------------------------------------------------------------------------------------- set-up
    def start(self) -> "Console":
        global _active
        fd, name = tempfile.mkstemp(prefix=f"pipeline-{self.command}-", suffix=".log")
        self.log_path = Path(name)
        self._log = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
        self.out, self.err = self._private(sys.stdout, 1), self._private(sys.stderr, 2)
        if not self.verbose:
            self._redirect()
        _active = self
        return self

    def _private(self, stream: TextIO, fd: int) -> TextIO:
        """A stream for the CLI's own lines that survives the redirection of `fd` (pytest's capsys: kept as is)."""
        try:
            if stream.fileno() != fd:
                return stream
        except (AttributeError, OSError, ValueError):
            return stream
        stream.flush()
        return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                         errors="replace")

    def _redirect(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd in (1, 2):
            try:
                self._saved.append((fd, os.dup(fd)))
                os.dup2(self._log.fileno(), fd)
            except OSError:  # no such descriptor (a daemon): the Python-level redirection still holds
                pass
        sys.stdout = sys.stderr = self._log
        # logging handlers made before (e.g. at an import) hold the old stream objects: point them at the log too
        import logging

        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and handler.stream in self._saved_streams:
                    self._repointed.append((handler, handler.stream))
                    handler.setStream(self._log)

    def stop(self, final_log: Path | None = None) -> Path | None:
        """Undo the redirection; move the log to `final_log` (its folder must exist) and return where it is."""
        global _active
        _active = None
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd, saved in reversed(self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        sys.stdout, sys.stderr = self._saved_streams
        for handler, stream in self._repointed:
            handler.setStream(stream)
        self._repointed.clear()
        if self._log is not None:
            self._log.close()
            self._log = None
        for stream, original in ((self.out, sys.stdout), (self.err, sys.stderr)):
            if stream is not original:
                try:
                    stream.close()
                except OSError:
                    pass
        where = self.log_path
        try:  # a log path the file system refuses (too long, not a folder, no permission) keeps the temp log
            movable = final_log is not None and where is not None and final_log.parent.is_dir()
        except OSError:
            movable = False
        if movable:
            try:
                tmp = final_log.with_name(f".{final_log.name}.{os.getpid()}")
                shutil.copyfile(where, tmp)
                os.replace(tmp, final_log)
                where.unlink()
                where = final_log
            except OSError:
                pass  # a full or read-only disk: the log stays in the temp dir
        return where

    # ---------------------------------------------------------------------------------------------- messages
    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            if self.bars and stream_is_tty(self.err):
                from tqdm import tqdm

                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
            stream.flush()
            if self._log is not None and not self._log.closed:
                self._log.write(text + "\n")

    def to_log(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(text + "\n")

    def line(self, text: str) -> None:
        self._write(self.out, text)

    def error(self, text: str) -> None:
        self._write(self.err, text)


PROGRESS_FDS_ENV = "PIPELINE_PROGRESS_FDS"


def child_progress() -> tuple[dict[str, str], tuple[int, ...]]:
    """(env, pass_fds) for a worker subprocess whose loops should show progress on this CLI's console."""
    if _active is None:
        return {}, ()
    try:
        fds = (_active.out.fileno(), _active.err.fileno())
    except (AttributeError, OSError, ValueError):
        return {}, ()
    return {PROGRESS_FDS_ENV: f"{fds[0]},{fds[1]}"}, fds


def attach_from_env() -> None:
    """In a worker started with `child_progress()`: progress() writes to the parent's console."""
    global _active
    value = os.environ.get(PROGRESS_FDS_ENV)
    if not value or _active is not None:
        return
    try:
        out_fd, err_fd = (int(v) for v in value.split(","))
        console = Console(command="worker")
        console.out = os.fdopen(out_fd, "w", buffering=1, closefd=False)
        console.err = os.fdopen(err_fd, "w", buffering=1, closefd=False)
    except (ValueError, OSError):
        return
    _active = console


def stream_is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def active() -> Console | None:
    return _active


def say(text: str) -> None:
    """The CLI's own line on stdout (plain print outside the CLI)."""
    if _active is not None:
        _active.line(text)
    else:
        print(text, flush=True)


class Progress:
    """A loop's progress, updated by hand: a tqdm bar with rate and ETA on the CLI's terminal; otherwise one line
    (count, rate, ETA) at most every `interval` seconds through the CLI's console, or through `log` when no CLI
    runs (e.g. compress called as a library). `enabled=False` (a non-reporting torchrun rank) shows nothing."""

    def __init__(self, total: int | None, desc: str = "", log=None, enabled: bool = True,
                 interval: float | None = None, unit: str = "it"):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = LINE_EVERY_S if interval is None else interval
        self.console = _active
        self.log = log if self.console is None else None
        self.enabled = enabled and (self.console is not None or log is not None)
        self.n, self.started = 0, time.monotonic()
        self.last = self.started
        self.bar = None
        if not self.enabled:
            return
        from tqdm import tqdm  # only when something is shown: the emulated aarch64 worker has no tqdm

        self._format = tqdm.format_meter
        if self.console is not None and stream_is_tty(self.console.err):
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.console.err, leave=False,
                            dynamic_ncols=True, mininterval=0.5)
            self.console.bars += 1

    def _line(self, text: str) -> None:
        if self.console is not None:
            self.console.line(text)
        elif self.log is not None:
            self.log(text)

    def _meter(self, postfix: str = "") -> str:
        return "  " + self._format(self.n, self.total, time.monotonic() - self.started, prefix=self.desc,
                                   unit=self.unit, postfix=postfix or None, ncols=0)

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.interval and (self.total is None or self.n < self.total):
            self.last = now
            self._line(self._meter(postfix))

    def close(self) -> float:
        """Ends the bar (a long loop without one also says when it finished); returns the seconds it took."""
        elapsed = time.monotonic() - self.started
        if self.bar is not None:
            self.bar.close()
            self.console.bars -= 1
            self.bar = None
        elif self.enabled and elapsed >= self.interval:
            self._line(self._meter())
        return elapsed


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """`iterable`, with a progress bar (terminal) or periodic lines (no terminal) while the CLI runs; silent
    outside the CLI (library use, tests), so library code can wrap its loops unconditionally."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = Progress(total, desc, unit=unit)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
