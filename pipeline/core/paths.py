"""Paths a command will write to, checked before any work starts: a name the file system refuses (too long, a
file where a folder must be) is one line naming it, not a failure after minutes of work."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline.core.errors import PipelineError


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """`path` is, or can become, a folder this process writes to; else one PipelineError naming it."""
    path = Path(path)
    try:
        if path.exists():
            if not path.is_dir():
                raise PipelineError(f"{what} is not writable (a file, not a folder)", path)
        else:
            probe = path.parent
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if not probe.is_dir():
                raise PipelineError(f"{what} is not writable ({os.strerror(errno.ENOTDIR)}: {probe})", path)
            _check_names(path)  # a missing parent hides a part that is too long from stat()
    except OSError as err:
        raise PipelineError(f"{what} is not writable ({err.strerror or err})", path) from None
    return path  # permissions and read-only file systems: the first write says which (cli.os_error_line)


def _check_names(path: Path) -> None:
    """ENAMETOOLONG for a path whose name or any of its parts is longer than the file system takes."""
    name_max = 255
    try:
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        name_max = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        pass
    if any(len(os.fsencode(part)) > name_max for part in path.parts) or len(os.fsencode(str(path))) >= 4096:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))


def replace_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, renamed into place: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
