"""`pipeline compress` end to end on a tiny BERT teacher (seconds), and the factorization's exactness."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import CompressConfig
from pipeline.errors import PipelineError
from pipeline.model import compress as C
from tiny import write_review_data, write_tiny_bert


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    teacher = write_tiny_bert(root / "teacher", hidden_size=32, num_hidden_layers=3)
    return root, teacher, write_review_data(root / "train.csv", 64), write_review_data(root / "test.csv", 32, seed=1)


def test_compress_cli_writes_a_loadable_albert_with_model_card(teacher_and_data):
    from transformers import AlbertForSequenceClassification

    root, teacher, train, test = teacher_and_data
    out = root / "student"
    code = main(["compress", "--teacher", str(teacher), "--out", str(out), "--train-data", str(train),
                 "--eval-data", str(test), "--embedding-size", "8", "--epochs", "1", "--teacher-epochs", "1",
                 "--batch-size", "16", "--max-length", "32"])
    assert code == 0
    model = AlbertForSequenceClassification.from_pretrained(str(out), local_files_only=True)
    assert model.config.embedding_size == 8 and model.config.num_hidden_groups == 1
    card = json.loads((out / "model_card.json").read_text())
    assert card["student"]["params"] < card["teacher"]["params"]
    assert card["student"]["params"] == sum(p.numel() for p in model.parameters())
    for key in ("test_accuracy",):
        assert 0.0 <= card["teacher"][key] <= 1.0 and 0.0 <= card["student"][key] <= 1.0
    assert 0.5 <= card["majority_baseline"] <= 1.0
    assert set(card["shared_layer_probe"]) == {"layer 0", "layer 1", "layer 2"}
    assert card["settings"]["seed"] == 0 and (out / "model_card.md").is_file()
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def _student_vs_teacher(teacher_dir, data_path, embedding_size: int) -> float:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.data import load_labeled_file

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    batches = C.Batches(tokenizer, load_labeled_file(data_path, ["great", "other"]), 32)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), num_labels=2).eval()
    cfg = CompressConfig(embedding_size=embedding_size, share="none")
    spec = C.student_spec(AutoConfig.from_pretrained(str(teacher_dir)), cfg, 2)
    student = C.build_student(spec, teacher, C.factorize_embeddings(teacher.bert.embeddings, batches, embedding_size),
                              0, "none").eval()
    ids, mask, _ = batches.batch(np.arange(16))
    with torch.no_grad():
        return float((teacher(input_ids=ids, attention_mask=mask).logits - student(ids, mask)).abs().max())


def test_unfactorized_unshared_student_equals_teacher(teacher_and_data):
    """E = H, no sharing: the LayerNorm-aware mapping makes the ALBERT student exactly the BERT teacher."""
    _, teacher, train, _ = teacher_and_data
    assert _student_vs_teacher(teacher, train, 32) < 1e-5


def test_factorized_student_stays_close_to_teacher(teacher_and_data):
    _, teacher, train, _ = teacher_and_data
    assert _student_vs_teacher(teacher, train, 16) < 0.05


def test_packaged_dataset_with_wrong_hash_is_refused(monkeypatch):
    from pipeline import data

    monkeypatch.setitem(data.PINNED_SHA256, "testing_data.pkl.compress", "0" * 64)
    with pytest.raises(PipelineError, match="refusing to unpickle"):
        data.load_small_fine_foods("test")


def test_packaged_dataset_loads_with_pinned_hash():
    from pipeline.data import load_small_fine_foods

    test = load_small_fine_foods("test")
    assert len(test) == 1000 and sum(1 for y in test.labels if y == 0) == 658
