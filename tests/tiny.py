"""Tiny ALBERT checkpoints written in well under a second, for tests that run the real toolchain."""
from __future__ import annotations

import string
from pathlib import Path

import torch

WORDS = (
    "the a an and or but not very good great bad tea coffee taste love hate dog food product price "
    "bought buy order will again best worst ever sweet bitter fresh stale box bag cookies chips "
    "is was are it this that i my we you they flavor smell great other amazon"
).split()


def write_vocab(path: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens += WORDS
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def write_tiny_albert(
    out: Path,
    *,
    vocab_size: int | None = None,
    embedding_size: int = 16,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_hidden_groups: int = 1,
    inner_group_num: int = 1,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    num_labels: int = 2,
    hidden_act: str = "gelu_new",
    max_position_embeddings: int = 512,
    seed: int = 0,
    label_names: list[str] | None = None,
) -> Path:
    """An AlbertForSequenceClassification with random weights and a WordPiece tokenizer, saved HF-style."""
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokens = write_vocab(out / "vocab.txt").read_text().split()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.save_pretrained(str(out))
    labels = label_names or ["great", "other", "third", "fourth"][:num_labels]
    config = AlbertConfig(
        vocab_size=vocab_size or tokenizer.vocab_size,
        embedding_size=embedding_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_hidden_groups=num_hidden_groups,
        inner_group_num=inner_group_num,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        hidden_act=hidden_act,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    model = AlbertForSequenceClassification(config)
    # Random init gives near-zero logits; widen the classifier so top-1 comparisons mean something.
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(str(out))
    return out


def write_tiny_bert(out: Path, *, hidden_size: int = 32, num_hidden_layers: int = 2, seed: int = 0) -> Path:
    """A tiny BERT (the `compress` teacher) with a WordPiece tokenizer, saved HF-style."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokens = write_vocab(out / "vocab.txt").read_text().split()
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(str(out))
    config = BertConfig(vocab_size=len(tokens), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=4, intermediate_size=hidden_size * 2, max_position_embeddings=128)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(out))
    return out


def write_review_data(path: Path, count: int = 48, seed: int = 0) -> Path:
    """A small labeled CSV whose label follows from its words (so a model can learn it)."""
    import csv
    import random

    rng = random.Random(seed)
    good = ["great", "love", "best", "sweet", "fresh", "good"]
    bad = ["bad", "hate", "worst", "stale", "bitter", "not"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(count):
            label = "great" if i % 2 == 0 else "other"
            words = rng.sample(good if label == "great" else bad, 3) + rng.sample(WORDS, 4)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return path


def write_tiny_albert_sentencepiece(out: Path, *, vocab_size: int = 80, seed: int = 0, **model_args) -> Path:
    """A tiny AlbertForSequenceClassification with ALBERT's own tokenizer kind: a SentencePiece model (spiece.model,
    trained here in well under a second on sentences made of WORDS, plus accented and non-Latin words) loaded by
    AlbertTokenizer (lowercase, accents stripped), saved HF-style without vocab.txt."""
    import random

    import sentencepiece as spm
    from transformers import AlbertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    extra = ["cafe", "creme", "naive", "resume", "jalapeno", "the best tea", "not good", "chai", "matcha"]
    lines = [" ".join(rng.choice(WORDS + extra) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    corpus = out / "spm_corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "spiece"), vocab_size=vocab_size,
                                   pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, model_type="unigram", hard_vocab_limit=False,
                                   control_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2)
    corpus.unlink()
    (out / "spiece.vocab").unlink(missing_ok=True)
    tokenizer = AlbertTokenizer.from_pretrained(str(out))  # ALBERT's defaults: lowercase, accents stripped
    tokenizer.save_pretrained(str(out))
    (out / "vocab.txt").unlink(missing_ok=True)  # ALBERT ships spiece.model, not a WordPiece vocab
    write_tiny_albert(out / ".weights", vocab_size=tokenizer.vocab_size, seed=seed, **model_args)
    for path in (out / ".weights").iterdir():  # weights and config from the WordPiece writer, tokenizer from here
        if path.name in ("config.json", "model.safetensors"):
            path.replace(out / path.name)
    import shutil

    shutil.rmtree(out / ".weights")
    return out
