from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import write_tiny_albert  # noqa: E402

# The slowest files first, so that with `-n 2` (pytest-xdist) neither worker is left alone with a long file at the end.
SLOW_FIRST = ("test_robustness", "tiny_builds", "test_gate", "test_tflite", "test_recurrent", "test_compress")


def pytest_collection_modifyitems(config, items) -> None:
    """One xdist group per test file, so a file's module and session fixtures are built by one worker only; the
    files sharing the session's tiny builds (`tiny_builds`) form one group. Run with `-n 2 --dist loadgroup`."""
    shared = {item.path for item in items if "tiny_builds" in getattr(item, "fixturenames", ())}
    groups = {}
    for item in items:
        group = "tiny_builds" if item.path in shared else item.path.stem
        groups[item.nodeid] = group
        item.add_marker(pytest.mark.xdist_group(group))
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))  # stable: file order kept within a group


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory) -> dict[str, Path]:
    """One real build per target of an ALBERT with vocab 30000 and E=128 (the issue's size case), 2 shared
    layers, max_length 32; the second target reuses the first one's lowered files from the stage cache."""
    from pipeline.build import build
    from pipeline.config import PipelineConfig

    root = tmp_path_factory.mktemp("build")
    model_dir = write_tiny_albert(root / "model", vocab_size=30000, embedding_size=128, hidden_size=64,
                                  num_hidden_layers=2, num_hidden_groups=1, intermediate_size=128)
    folders = {}
    for target in ("android", "ios"):
        config = PipelineConfig()
        config.build.target = target
        config.build.model_dir = str(model_dir)
        config.build.out_dir = str(root / "artifacts")
        config.build.max_length = 32
        config.build.eval_limit = 40
        config.build.cache_dir = str(root / "cache")
        config.build.copy_to_apps = False
        folders[target] = build(config, log=print)
    return folders


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory) -> Path:
    return write_tiny_albert(tmp_path_factory.mktemp("tiny_albert") / "model")


@pytest.fixture
def make_albert(tmp_path):
    def make(**overrides) -> Path:
        return write_tiny_albert(tmp_path / f"model_{len(list(tmp_path.iterdir()))}", **overrides)

    return make
