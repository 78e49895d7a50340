"""The gate's numerics, defined once in pipeline/core/metrics.py."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import Thresholds
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import Metrics, check_thresholds, compare, cosine, paired_accuracy_gap, teacher_agreement, top1_agreement


def test_cosine_of_identical_and_opposite_logits():
    a = np.array([[1.0, -2.0], [0.5, 3.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_top1_agreement_counts_every_row_including_near_ties():
    reference = np.array([[1.0, 0.0], [0.5, 0.4999], [0.0, 1.0], [2.0, 1.0]])
    flipped_tie = np.array([[1.0, 0.0], [0.4999, 0.5], [0.0, 1.0], [2.0, 1.0]])
    assert top1_agreement(reference, reference) == 1.0
    assert top1_agreement(flipped_tie, reference) == 0.75


def test_paired_gap_counts_discordant_rows_and_its_error_shrinks_when_models_agree():
    labels = np.array([0, 1] * 50)
    teacher = np.eye(2)[labels]  # right everywhere
    student = teacher.copy()
    student[:4] = student[:4, ::-1]  # wrong on the first 4 rows only
    gap = paired_accuracy_gap(student, teacher, labels)
    assert gap["points"] == -4.0 and gap["only_reference_right"] == 4 and gap["only_model_right"] == 0
    assert gap["paired_standard_error_points"] == pytest.approx(100 * np.sqrt(0.04 * 0.96 / 100), abs=0.01)
    # the same accuracies from models that disagree on 20 rows: a larger error of the same gap
    student[4:12] = student[4:12, ::-1]
    teacher_wrong = teacher.copy()
    teacher_wrong[12:20] = teacher_wrong[12:20, ::-1]
    wide = paired_accuracy_gap(student, teacher_wrong, labels)
    assert wide["points"] == -4.0 and wide["paired_standard_error_points"] > gap["paired_standard_error_points"]


def test_paired_gap_with_groups_counts_each_group_once_in_its_error():
    labels = np.zeros(100, dtype=int)
    reference = np.eye(2)[labels]
    model = reference.copy()
    model[:10] = model[:10, ::-1]  # wrong on rows 0-9
    spread = paired_accuracy_gap(model, reference, labels, groups=np.arange(100) % 50)  # the misses in 10 groups
    clumped = paired_accuracy_gap(model, reference, labels, groups=np.arange(100) // 10)  # all misses in one group
    rows = paired_accuracy_gap(model, reference, labels)
    assert spread["points"] == clumped["points"] == rows["points"] == -10.0
    assert clumped["paired_standard_error_points"] > rows["paired_standard_error_points"]
    assert spread["paired_standard_error_points"] < clumped["paired_standard_error_points"]
    # one group of ten rows out of ten groups: the mean's error is that of a single draw in ten
    assert clumped["paired_standard_error_points"] == pytest.approx(100 * np.sqrt(0.1 * 0.9 / 9), abs=0.01)


def test_teacher_agreement_is_top1_share_and_kl_which_is_zero_only_for_the_teacher_itself():
    teacher = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 3.0]])
    assert teacher_agreement(teacher, teacher) == {"top1_agreement": 1.0, "kl": 0.0, "rows": 4}
    student = teacher.copy()
    student[2] = [0.5, 1.0]  # flips one arg-max
    follows = teacher_agreement(student, teacher)
    p, q = np.exp([1.0, 0.5]) / np.exp([1.0, 0.5]).sum(), np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
    assert follows["top1_agreement"] == 0.75 and follows["kl"] == pytest.approx((p * np.log(p / q)).sum() / 4, abs=1e-4)
    assert teacher_agreement(student + 7.0, teacher) == follows  # a shift of all logits changes no probability


def test_compare_reports_accuracy_delta_and_confusion():
    reference = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    logits = np.array([[2.0, 0.1], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    m = compare(logits, reference, [0, 1, 0, 0], [0.001, 0.002, 0.003, 0.004])
    assert m.max_abs_error == pytest.approx(2.0)
    assert m.top1_agreement == 0.75
    assert m.reference_accuracy == 0.75 and m.accuracy == 0.5 and m.accuracy_delta == pytest.approx(-0.25)
    assert m.confusion == [[1, 2], [0, 1]]
    assert m.latency_ms_median == pytest.approx(2.5)
    assert m.rows == 4


def test_compare_refuses_an_empty_eval_set():
    with pytest.raises(PipelineError, match="empty"):
        compare(np.zeros((0, 2)), np.zeros((0, 2)), None, [])


def _metrics(**changes) -> Metrics:
    base = dict(max_abs_error=0.1, mean_abs_error=0.01, cosine=0.999, top1_agreement=0.99, accuracy=0.8,
                reference_accuracy=0.81, accuracy_delta=-0.01, confusion=None, latency_ms_median=1.0, rows=100)
    return Metrics(**{**base, **changes})


def test_each_violated_limit_is_one_message_naming_artifact_metric_value_and_limit():
    limits = Thresholds(max_abs_error=0.5, min_cosine=0.99, min_top1_agreement=0.95, max_accuracy_drop=0.02)
    assert check_thresholds("a.pte", _metrics(), limits) == []
    failures = check_thresholds("a.pte", _metrics(max_abs_error=0.7, cosine=0.9, top1_agreement=0.5,
                                                  accuracy=0.7, accuracy_delta=-0.11), limits)
    assert len(failures) == 4
    assert all(f.startswith("a.pte: ") and "limit" in f for f in failures)
    assert "max_abs_error 0.7 > limit 0.5" in failures[0]


def test_nan_never_passes():
    limits = Thresholds(max_abs_error=0.5, min_cosine=0.99, min_top1_agreement=0.95, max_accuracy_drop=0.02)
    failures = check_thresholds("a.tflite", _metrics(max_abs_error=float("nan"), cosine=float("nan")), limits)
    assert len(failures) == 2
