"""Student minus teacher test accuracy with its paired standard error, for a student `compress` wrote earlier.

    python scripts/compress_gap.py pipeline/assets/default_model .pipeline_cache/teacher-<key> [--eval-data bbc_news:test]

The teacher is the fine-tuned one `compress` cached (its folder is named in the compress log); newer model cards
carry the same figures as `test_gap_to_teacher`.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.core.config import DEFAULT_MAX_LENGTH
from pipeline.core.data import load_labeled_file, load_small_fine_foods
from pipeline.compress.batches import Batches, _run_logits
from pipeline.model.checkpoint import load_checkpoint
from pipeline.compress.command import _teacher_fn
from pipeline.core.metrics import paired_accuracy_gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("teacher")
    parser.add_argument("--eval-data", help="as compress --eval-data (default: small_fine_foods:test)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="as compress --max-length")
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification

    student = load_checkpoint(args.student)
    names = student.label_names
    test = load_labeled_file(args.eval_data, names, require_labels=True) if args.eval_data else load_small_fine_foods("test")
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, local_files_only=True).eval()
    batches = Batches(student.tokenizer, test, args.max_length)  # the student keeps the teacher's tokenizer
    student_logits = _run_logits(lambda i, m: student.export_model(i, m), batches)
    teacher_logits = _run_logits(_teacher_fn(teacher), batches)
    gap = paired_accuracy_gap(student_logits.numpy(), teacher_logits.numpy(), np.asarray(test.labels))
    print(json.dumps({"student": args.student, "teacher": args.teacher, "data": test.source, **gap}))


if __name__ == "__main__":
    main()
