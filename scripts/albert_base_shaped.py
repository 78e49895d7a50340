"""An albert-base-shaped checkpoint for the gate: 12 layers, E=128, H=768, 12 heads, intermediate
3072, vocab 30000, a SentencePiece tokenizer (spiece.model, AlbertTokenizer) and 3 labels, plus a 3-label eval CSV.

    python scripts/albert_base_shaped.py OUT_DIR        # writes OUT_DIR/model and OUT_DIR/eval3.csv
    python -m pipeline build --target android --model OUT_DIR/model --eval-data OUT_DIR/eval3.csv \\
        --eval-limit 100 --no-copy-to-apps --out OUT_DIR/build

The encoder weights are random. Its classifier is a ridge linear probe on the pooled output, fitted on 900 generated
texts whose label follows from their words (positive / negative / neutral word groups), so predictions follow the
text (eval accuracy 0.84) and top-1 agreement means something. The ridge strength is the one that keeps the
classifier's weight norm near that of tests/tiny.py's scaled random classifier (~12 vs ~19): a random 12-layer
shared ALBERT's pooled outputs differ little between texts, and an unregularized probe (norm 389, eval accuracy
0.76) amplifies int8 noise ~20x (the int8 .tflite was then rejected at cosine 0.96). A random classifier instead
predicts one class for every text (top-1 agreement trivially 1.0).
"""
from __future__ import annotations

import csv
import random
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import WORDS, write_tiny_albert, write_tiny_albert_sentencepiece  # noqa: E402

LABELS = {"positive": ["great", "love", "best", "sweet", "fresh", "good"],
          "negative": ["bad", "hate", "worst", "stale", "bitter", "not"],
          "neutral": ["box", "bag", "order", "price", "product", "amazon"]}
NAMES = list(LABELS)


def texts(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = NAMES[i % 3]
        words = rng.sample(LABELS[label], 3) + [rng.choice(WORDS) for _ in range(rng.randint(2, 40))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def main(out: Path) -> None:
    from transformers import AlbertForSequenceClassification, AlbertTokenizer

    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    write_tiny_albert_sentencepiece(model_dir, vocab_size=200, num_labels=3)  # tokenizer kept, tiny weights replaced
    weights = out / ".weights"
    shutil.rmtree(weights, ignore_errors=True)
    write_tiny_albert(weights, vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, num_labels=3, label_names=NAMES)
    for name in ("config.json", "model.safetensors"):
        (weights / name).replace(model_dir / name)
    shutil.rmtree(weights)
    with open(out / "eval3.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(texts(150, 0))

    tokenizer = AlbertTokenizer.from_pretrained(str(model_dir))
    model = AlbertForSequenceClassification.from_pretrained(str(model_dir)).eval()

    def pooled(rows):
        feats = []
        with torch.no_grad():
            for i in range(0, len(rows), 32):
                enc = tokenizer([t for t, _ in rows[i : i + 32]], padding=True, truncation=True, max_length=128,
                                return_tensors="pt")
                feats.append(model.albert(**enc).pooler_output)
        return torch.cat(feats).double()

    train = texts(900, 1)
    x = pooled(train)
    mean = x.mean(0)
    centered = x - mean
    y = torch.full((len(train), 3), -2.0, dtype=torch.double)
    for i, (_, label) in enumerate(train):
        y[i, NAMES.index(label)] = 4.0
    ridge = centered.pow(2).sum() / len(train)  # strength 1 x the mean feature energy: weight norm ~12
    w = torch.linalg.solve(centered.T @ centered + ridge * torch.eye(x.shape[1], dtype=torch.double), centered.T @ y)
    b = y.mean(0) - mean @ w
    with torch.no_grad():
        model.classifier.weight.copy_(w.T.float())
        model.classifier.bias.copy_(b.float())
    model.save_pretrained(str(model_dir))
    print(f"wrote {model_dir} ({model.num_parameters():,} parameters, classifier weight norm {w.norm():.1f}) "
          f"and {out / 'eval3.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
