"""What ships names no path of the build machine; the model is identified by name and content hash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]


def _machine_paths(folder: Path) -> list[str]:
    """Absolute paths of this build that must not appear: the build's tmp root, the repo, the home folder."""
    build_root = folder.parent.parent  # <tmp>/build0 holding model/ and artifacts/
    return [str(build_root), str(build_root.resolve()), str(REPO), str(Path.home())]


@pytest.mark.parametrize("target", ["android", "ios"])
def test_no_built_file_holds_an_absolute_path_of_the_build_machine(tiny_builds, target):
    folder = tiny_builds[target]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.suffix == ".pte" for p in files)
    found = []
    for path in files:
        data = path.read_bytes()
        found += [(path.name, text) for text in _machine_paths(folder) if text.encode() in data]
    assert not found, found


def test_manifest_names_the_model_by_name_and_content_hash(tiny_builds):
    manifest = json.loads((tiny_builds["android"] / "manifest.json").read_text())
    model = manifest["model"]
    assert model["name"] == "model" and len(model["source_sha256"]) == 64
    assert "source" not in model
    assert "sha256 " in manifest["eval_data"] or manifest["eval_data"].startswith("small_fine_foods:")


def test_validate_finds_the_model_here_by_hash_and_elsewhere_asks_for_model(tiny_builds, tmp_path, monkeypatch):
    from pipeline.model.default import DEFAULT_MODEL_DIR
    from pipeline.core.provenance import INDEX_ENV, find_model_dir

    recorded = json.loads((tiny_builds["android"] / "manifest.json").read_text())["model"]
    found = find_model_dir(recorded)  # this machine: the index the build wrote
    assert (found / "config.json").is_file() and found.name == recorded["name"]

    monkeypatch.setenv(INDEX_ENV, str(tmp_path / "empty-index.json"))  # another machine: nothing recorded
    with pytest.raises(PipelineError, match="pass --model DIR"):
        find_model_dir(recorded)
    assert find_model_dir(recorded, found) == found
    assert find_model_dir({"name": DEFAULT_MODEL_DIR.name, "source_sha256": "0" * 64}) == DEFAULT_MODEL_DIR


def test_data_files_are_named_by_name_and_hash_and_found_again(tmp_path, monkeypatch):
    from pipeline.core.data import load_labeled_file
    from pipeline.core.provenance import INDEX_ENV, find_data_file

    monkeypatch.setenv(INDEX_ENV, str(tmp_path / "index.json"))
    data = tmp_path / "deep" / "eval.csv"
    data.parent.mkdir()
    data.write_text("text,label\ngood,great\n")
    source = load_labeled_file(data, ["great", "other"]).source
    assert source.startswith("eval.csv (sha256 ") and str(tmp_path) not in source
    assert find_data_file(source, "eval data", "--eval-data") == data.resolve()
    data.write_text("text,label\nchanged,other\n")  # same name, other content: not silently used
    with pytest.raises(PipelineError, match="pass --eval-data"):
        find_data_file(source, "eval data", "--eval-data")
