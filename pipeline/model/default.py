"""The embedded default model: made by one `pipeline compress` run with the defaults (see README)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.provenance import DEFAULT_MODEL_DIR

REPRODUCE = "python -m pipeline compress --out pipeline/assets/default_model"


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise PipelineError(f"the embedded default model is missing; make it with `{REPRODUCE}`", DEFAULT_MODEL_DIR)
    return DEFAULT_MODEL_DIR
