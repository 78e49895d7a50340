"""Students' agreement with their teacher on the dev texts plus corrupted copies (the dev measure `compress`
logs per epoch), and each student's paired difference in agreement from the first one named (its standard error
counts a dev text and its copies as one draw).

    python scripts/compress_agreement.py .pipeline_cache/teacher-<key> pipeline/assets/default_model compressed/<run> ...

The dev split is re-made from the first student's model card (its data, seed and dev fraction); every student
must come from the same teacher and split. No test text is read.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.core.config import CompressConfig
from pipeline.core.data import DEFAULT_LABELS
from pipeline.compress.batches import Batches, _run_logits, split_dev
from pipeline.model.checkpoint import load_checkpoint
from pipeline.compress.command import _teacher_fn, agreement_texts, load_compress_data
from pipeline.core.metrics import paired_accuracy_gap, teacher_agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("students", nargs="+")
    args = parser.parse_args()
    card = json.loads((Path(args.students[0]) / "model_card.json").read_text())
    known = {f.name for f in fields(CompressConfig)}
    cfg = CompressConfig(**{k: v for k, v in card["settings"].items() if k in known})
    tokenizer = AutoTokenizer.from_pretrained(args.students[0], local_files_only=True)  # the teacher's, kept by compress
    train_data, _ = load_compress_data(cfg, None if cfg.train_data else list(DEFAULT_LABELS))
    train, dev = split_dev(Batches(tokenizer, train_data, cfg.max_length), cfg.dev_fraction, cfg.seed)
    texts = agreement_texts(dev, train, tokenizer, cfg.seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, local_files_only=True).eval()
    teacher_logits = _run_logits(_teacher_fn(teacher), texts).numpy()
    follows_teacher = teacher_logits.argmax(-1)  # "right" below means: agrees with the teacher
    first = None
    for path in args.students:
        student = load_checkpoint(path)
        logits = _run_logits(lambda i, m: student.export_model(i, m), texts).numpy()
        row = {"student": path, **teacher_agreement(logits, teacher_logits)}
        if first is None:
            first = logits
        else:
            diff = paired_accuracy_gap(logits, first, follows_teacher, groups=np.arange(len(follows_teacher)) % len(dev))
            row["agreement_minus_first_points"] = diff["points"]
            row["paired_standard_error_points"] = diff["paired_standard_error_points"]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
