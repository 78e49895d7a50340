"""Errors the CLI turns into one-line messages and exit codes.

Exit codes (documented in README): 0 all passed, 1 drift beyond thresholds, 2 bad usage or input.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Bad usage or bad input: a missing or corrupt file, a wrong config, an unusable runtime. Exit 2."""

    exit_code = 2

    def __init__(self, message: str, path: object | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class DriftError(Exception):
    """An artifact exceeded its accuracy thresholds. Exit 1."""

    exit_code = 1

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("; ".join(failures))
