from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import write_tiny_albert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory) -> Path:
    return write_tiny_albert(tmp_path_factory.mktemp("tiny_albert") / "model")


@pytest.fixture
def make_albert(tmp_path):
    def make(**overrides) -> Path:
        return write_tiny_albert(tmp_path / f"model_{len(list(tmp_path.iterdir()))}", **overrides)

    return make
