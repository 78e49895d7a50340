"""Tokenizer of a checkpoint directory, encoding to the fixed [N, max_length] int64 arrays the artifacts take."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "spiece.model")


@dataclass
class Encoded:
    input_ids: np.ndarray  # [N, S] int64
    attention_mask: np.ndarray  # [N, S] int64
    token_type_ids: np.ndarray  # [N, S] int64
    truncated: int  # how many texts were longer than max_length

    def row(self, index: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids[index : index + 1],
            "attention_mask": self.attention_mask[index : index + 1],
            "token_type_ids": self.token_type_ids[index : index + 1],
        }

    def __len__(self) -> int:
        return len(self.input_ids)


def load_tokenizer(model_dir: str | Path):
    """The checkpoint's own tokenizer (fast when tokenizer.json exists), from local files only."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt", "spiece.model")):
        raise PipelineError("no tokenizer files (tokenizer.json, vocab.txt or spiece.model)", model_dir)
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as err:  # transformers raises many types for unreadable tokenizer files
        raise PipelineError(f"tokenizer cannot be loaded ({type(err).__name__}: {err})", model_dir) from None


def tokenizer_files(model_dir: str | Path) -> list[Path]:
    return [Path(model_dir) / name for name in TOKENIZER_FILES if (Path(model_dir) / name).is_file()]


def tokenizer_info(model, max_length: int) -> dict:
    """What the manifest tells the apps about a loaded model's tokenizer (its `tokenizer` section); the gate
    checks a folder's section against it."""
    data = json.loads((model.model_dir / "tokenizer.json").read_text()) if (model.model_dir / "tokenizer.json").is_file() else {}
    kind = {"WordPiece": "wordpiece", "Unigram": "sentencepiece"}.get(data.get("model", {}).get("type"), "unknown")
    return {
        "kind": kind,
        "file": "tokenizer.json",
        "max_length": max_length,
        "lowercase": bool(getattr(model.tokenizer, "do_lower_case", False) or
                          (data.get("normalizer") or {}).get("lowercase", False)),
        "pad_id": model.tokenizer.pad_token_id,
        "cls_id": model.tokenizer.cls_token_id,
        "sep_id": model.tokenizer.sep_token_id,
        "unk_id": model.tokenizer.unk_token_id,
    }


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: object) -> str:
    """str(text) with lone UTF-16 surrogates (JSON "\\ud800" escapes decode to them) replaced by U+FFFD:
    the Rust tokenizers refuse such strings with a TypeError."""
    return _LONE_SURROGATE.sub("\ufffd", str(text))


def encode(tokenizer, texts: list[str], max_length: int) -> Encoded:
    """Pad to max_length and truncate longer texts (counted in `truncated`)."""
    if max_length < 2:
        raise PipelineError(f"max_length {max_length} is too small: [CLS] and [SEP] alone need 2 positions")
    texts = [clean_text(t) for t in texts]
    if not texts:
        empty = np.zeros((0, max_length), dtype=np.int64)
        return Encoded(empty, empty.copy(), empty.copy(), 0)
    batch = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=False,
        return_length=False,
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    lengths = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in lengths)
    return Encoded(
        input_ids=np.asarray(batch["input_ids"], dtype=np.int64),
        attention_mask=np.asarray(batch["attention_mask"], dtype=np.int64),
        token_type_ids=np.asarray(batch["token_type_ids"], dtype=np.int64),
        truncated=truncated,
    )
