"""Print the README's compression table from the model cards that `pipeline compress` wrote.

    python scripts/compress_table.py pipeline/assets/default_model compressed/no_sharing compressed/no_factorization
    python scripts/compress_table.py --ablation compressed/r1_baseline compressed/r2_hidden1 ...   # the recipe ablation table
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
        groups = settings.get("groups", 1)
        sharing = settings["share"] + (f", {groups} groups" if groups > 1 else "")
        print(f"| {folder.name} | {s['spec']['embedding_size']} | {sharing} | {settings['epochs']} | "
              f"{s['params']:,} | {s['params'] / teacher['params']:.1%} | {s['fp32_bytes'] / 1e6:.1f} | "
              f"{s['test_accuracy']:.3f} |")
    print(f"| majority class (`great`) | | | | | | | {first['majority_baseline']:.3f} |")


def ablation(folders: list[str]) -> None:
    """One row per recipe: its ingredients, dev accuracy and agreement (decisions), test accuracy (reported), size,
    wall time."""
    cards = [(Path(f), json.loads((Path(f) / "model_card.json").read_text())) for f in folders]
    print("| run | distill epochs | hidden w | attention w | aug copies | parameters | % of teacher | teacher dev / test "
          "| student dev | dev agreement with teacher | student test | gap to teacher (test) | wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for folder, card in cards:
        s, t, g = card["student"], card["teacher"], card["settings"]
        dev = "" if s.get("dev_accuracy") is None else f"{s['dev_accuracy']:.3f}"
        tdev = "-" if t.get("dev_accuracy") is None else f"{t['dev_accuracy']:.3f}"
        follows = "-" if not s.get("dev_teacher_agreement") else f"{s['dev_teacher_agreement']['top1_agreement']:.4f}"
        print(f"| {folder.name} | {g['epochs']} | {g.get('hidden_weight', 0):g} | {g.get('attention_weight', 0):g} | "
              f"{g.get('augment_copies', 0)} | {s['params']:,} | {s['params'] / t['params']:.1%} | "
              f"{tdev} / {t['test_accuracy']:.3f} | {dev} | {follows} | {s['test_accuracy']:.3f} | "
              f"{100 * (s['test_accuracy'] - t['test_accuracy']):+.1f} pt | {card['seconds'] / 60:.0f} min |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ablation"]:
        ablation(sys.argv[2:])
    else:
        main(sys.argv[1:])
