"""An albert-base-shaped checkpoint for the gate: 12 layers, E=128, H=768, 12 heads, intermediate
3072, vocab 30000, a SentencePiece tokenizer (spiece.model, AlbertTokenizer) and 3 labels, plus a 3-label eval CSV.

    python scripts/albert_base_shaped.py OUT_DIR        # OUT_DIR/model, eval3.csv, select3.csv (~10 min)
    python -m pipeline build --target android --model OUT_DIR/model --eval-data OUT_DIR/eval3.csv \\
        --eval-limit 1000 --no-copy-to-apps --out OUT_DIR/build

The texts are generated: three words from the label's word group (positive / negative / neutral) among 2-40
filler words that include the other groups' words, so the label follows from the text but not always plainly.
By default the whole model (random init) is fine-tuned on 900 such texts (300 steps of 16, AdamW, seeded), as a
user's classifier would be: eval accuracy 0.842.

--random-encoder keeps the encoder random and fits only a ridge linear probe on the pooled output, the held-out
model of earlier measurements (docs/variable_length.md). A random 12-layer shared ALBERT's pooled outputs differ
little between texts, so the probe reads a small residual: with a ridge strength that keeps its weight norm near
tests/tiny.py's classifier (~12) its int8 files pass, but 4-bit weights swamp that residual (docs/int4.md). An
unregularized probe (norm 389) amplified even int8 noise ~20x; a random classifier predicts one class for every text
(top-1 agreement trivially 1.0).
"""
from __future__ import annotations

import argparse
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


def write_texts(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def fit_ridge_probe(model, tokenizer, rows: list[tuple[str, str]]) -> None:
    """The classifier as a ridge probe on the (random) encoder's pooled output; the encoder is left as it is."""
    feats = []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            enc = tokenizer([t for t, _ in rows[i : i + 32]], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            feats.append(model.albert(**enc).pooler_output)
    x = torch.cat(feats).double()
    mean = x.mean(0)
    centered = x - mean
    y = torch.full((len(rows), 3), -2.0, dtype=torch.double)
    for i, (_, label) in enumerate(rows):
        y[i, NAMES.index(label)] = 4.0
    ridge = centered.pow(2).sum() / len(rows)  # strength 1 x the mean feature energy: weight norm ~12
    w = torch.linalg.solve(centered.T @ centered + ridge * torch.eye(x.shape[1], dtype=torch.double), centered.T @ y)
    b = y.mean(0) - mean @ w
    with torch.no_grad():
        model.classifier.weight.copy_(w.T.float())
        model.classifier.bias.copy_(b.float())


def fine_tune(model, tokenizer, rows: list[tuple[str, str]], steps: int = 300, batch: int = 16, lr: float = 1e-4) -> None:
    """The whole model on the labeled rows: AdamW, 10% linear warm-up then linear decay, gradients clipped at 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.02)
        model.classifier.bias.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (0.1 * steps)) * max(0.0, (steps - step) / steps))
    rng, order = random.Random(0), []
    model.train()
    for step in range(steps):
        if len(order) < batch:
            order += rng.sample(range(len(rows)), len(rows))
        picked = [rows[order.pop()] for _ in range(batch)]
        enc = tokenizer([t for t, _ in picked], padding=True, truncation=True, max_length=128, return_tensors="pt")
        labels = torch.tensor([NAMES.index(label) for _, label in picked])
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    model.eval()


def main(out: Path, random_encoder: bool) -> None:
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
    evaluation = texts(1000, 0)
    write_texts(out / "eval3.csv", evaluation)
    write_texts(out / "select3.csv", texts(1000, 2))  # for choosing recipes: in neither the training nor the eval set

    tokenizer = AlbertTokenizer.from_pretrained(str(model_dir))
    model = AlbertForSequenceClassification.from_pretrained(str(model_dir)).eval()
    (fit_ridge_probe if random_encoder else fine_tune)(model, tokenizer, texts(900, 1))
    with torch.no_grad():
        enc = tokenizer([t for t, _ in evaluation], padding=True, truncation=True, max_length=128, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1)
    accuracy = (predicted == torch.tensor([NAMES.index(label) for _, label in evaluation])).float().mean().item()
    model.save_pretrained(str(model_dir))
    print(f"wrote {model_dir} ({model.num_parameters():,} parameters, {'random encoder + ridge probe' if random_encoder else 'fine-tuned'}, "
          f"eval accuracy {accuracy:.3f}, classifier weight norm {model.classifier.weight.norm():.1f}), eval3.csv, select3.csv")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--random-encoder", action="store_true",
                        help="keep the encoder random and fit only a ridge probe (the earlier held-out model)")
    arguments = parser.parse_args()
    main(arguments.out, arguments.random_encoder)
