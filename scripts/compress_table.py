"""Print the README's compression table from the model cards that `pipeline compress` wrote.

    python scripts/compress_table.py pipeline/assets/default_model compressed/no_sharing compressed/no_factorization
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folders: list[str]) -> None:
    cards = [(Path(f), json.loads((Path(f) / "model_card.json").read_text())) for f in folders]
    first = cards[0][1]
    teacher = first["teacher"]
    print("| model | E | sharing | distill epochs | parameters | % of teacher | fp32 MB | test accuracy |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    print(f"| teacher: all-MiniLM-L6-v2 fine-tuned ({first['settings']['teacher_epochs']} epochs) | 384 | none | - | "
          f"{teacher['params']:,} | 100% | {teacher['fp32_bytes'] / 1e6:.1f} | {teacher['test_accuracy']:.3f} |")
    for folder, card in cards:
        s, settings = card["student"], card["settings"]
        print(f"| {folder.name} | {s['spec']['embedding_size']} | {settings['share']} | {settings['epochs']} | "
              f"{s['params']:,} | {s['params'] / teacher['params']:.1%} | {s['fp32_bytes'] / 1e6:.1f} | "
              f"{s['test_accuracy']:.3f} |")
    print(f"| majority class (`great`) | | | | | | | {first['majority_baseline']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
