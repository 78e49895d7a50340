from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import write_tiny_albert  # noqa: E402

# The slowest files first, so that with `-n 2 --dist loadfile` (pytest-xdist) neither worker is left alone with a
# long file at the end. (`--dist loadgroup` does not group with pytest 9.2 + xdist 3.8: measured, every test spread.)
SLOW_FIRST = ("test_robustness", "test_gate", "test_gate_hardening", "test_arm64", "test_cost_gate", "test_cost",
              "test_build", "test_app_core", "test_apps", "test_bench", "test_reproducible", "test_tflite", "test_int4",
              "test_recurrent", "test_disk_errors")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: order within a file kept


TINY_SHAPE = dict(vocab_size=30000, embedding_size=128, hidden_size=64, num_hidden_layers=2, num_hidden_groups=1,
                  intermediate_size=128)
# A random tiny model's logits have small margins: 4-bit weights move them more than a trained model's (cosine 0.97
# vs 0.99 on the default model), so the tiny 4-bit files are gated on a lower cosine; the rest as the defaults.
TINY_INT4_COSINE = 0.95


def _tiny_build(tmp_path_factory, name: str, targets: tuple[str, ...], precisions: list[str]) -> dict[str, Path]:
    """Real builds of the tiny ALBERT (TINY_SHAPE, max_length 32, 40 eval rows). Under pytest-xdist the stage cache
    is shared by the session's workers (their common tmp parent) and builds take turns (a file lock): a build reuses
    every file another one lowered (e.g. the 4-bit build the .tflite conversion of `tiny_builds`)."""
    import dataclasses
    import fcntl
    import os

    from pipeline.build import build
    from pipeline.core.config import PipelineConfig

    root = tmp_path_factory.mktemp(name)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    model_dir = write_tiny_albert(root / "model", **TINY_SHAPE)
    folders = {}
    for target in targets:
        config = PipelineConfig()
        config.build.target = target
        config.build.model_dir = str(model_dir)
        config.build.out_dir = str(root / "artifacts")
        config.build.max_length = 32
        config.build.eval_limit = 40
        config.build.precisions = precisions
        config.build.cache_dir = str(shared / "tiny-builds-cache")
        config.build.copy_to_apps = False
        int4 = config.thresholds.per_precision["int4"]
        config.thresholds.per_precision["int4"] = dataclasses.replace(int4, min_cosine=TINY_INT4_COSINE)
        with open(shared / "tiny-builds.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            folders[target] = build(config, log=print)
    return folders


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory) -> dict[str, Path]:
    """One real build per target of an ALBERT with vocab 30000 and E=128 (ALBERT-base's embedding table), 2 shared
    layers, max_length 32, fp32 and int8; the second target reuses the first one's lowered files."""
    return _tiny_build(tmp_path_factory, "build", ("android", "ios"), ["fp32", "int8"])


@pytest.fixture(scope="session")
def tiny_int4_build(tmp_path_factory) -> Path:
    """The same tiny ALBERT built fp32 and int4: albert.int4.pte, .tflite and its MediaPipe twin besides fp32, gated
    with the int4 thresholds at cosine TINY_INT4_COSINE (`tiny_int4_thresholds`)."""
    return _tiny_build(tmp_path_factory, "build_int4", ("android",), ["fp32", "int4"])["android"]


@pytest.fixture(scope="session")
def tiny_int4_thresholds(tmp_path_factory) -> Path:
    """The thresholds file `validate` takes for `tiny_int4_build`."""
    path = tmp_path_factory.mktemp("int4_thresholds") / "thresholds.toml"
    path.write_text(f"[thresholds.int4]\nmin_cosine = {TINY_INT4_COSINE}\n")
    return path


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory) -> Path:
    return write_tiny_albert(tmp_path_factory.mktemp("tiny_albert") / "model")


@pytest.fixture
def make_albert(tmp_path):
    def make(**overrides) -> Path:
        return write_tiny_albert(tmp_path / f"model_{len(list(tmp_path.iterdir()))}", **overrides)

    return make
