"""The shape contract of the artifacts: `[build] shapes = "dynamic" | "static"`.

dynamic  every artifact takes [1, S] for any 1 <= S <= max_length: feed exactly the tokens, no padding.
         ExecuTorch: torch.export with a bounded `Dim("seq", min=1, max=max_length)` (memory planned for
         max_length); LiteRT: a .tflite whose inputs have shape_signature [1, -1] (the interpreter resizes).
static   every artifact takes exactly [1, max_length]: pad with [PAD] ids, attention_mask 0, token types 0.

Both runtimes use one mechanism (a bounded dynamic dimension), not buckets: on ExecuTorch every bucket method
repacks the weights in memory (+60 MB RSS per loaded method on the default model, measured), and on LiteRT the
dynamic file converts with the same size and costs what the text costs (see README, "Variable length").

Also here: cutting padded rows to their real length (validation feeds what apps feed), padding for static
files, and the validation length sweep.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import PipelineError

SHAPES = ("dynamic", "static")
MIN_LENGTH = 1
SWEEP_FIXED = (1, 2, 37)  # always in the sweep (when <= max_length), with max_length itself
BANDS = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512))


def check_shapes(shapes: str) -> str:
    if shapes not in SHAPES:
        raise PipelineError(f"[build] shapes must be one of {list(SHAPES)}, not {shapes!r}")
    return shapes


@dataclass(frozen=True)
class ShapeContract:
    shapes: str
    max_length: int
    min_length: int = MIN_LENGTH

    @property
    def dynamic(self) -> bool:
        return self.shapes == "dynamic"

    def to_manifest(self) -> dict:
        if self.dynamic:
            return {"shapes": "dynamic", "min_length": self.min_length, "max_length": self.max_length,
                    "buckets": [], "padding": "none: feed exactly the tokens ([CLS] ... [SEP]), shape [1, S]; "
                                              "texts longer than max_length are truncated by the tokenizer"}
        return {"shapes": "static", "min_length": self.max_length, "max_length": self.max_length, "buckets": [],
                "padding": "pad to max_length with the tokenizer's pad id, attention_mask 0, token_type_ids 0"}


def is_dynamic(artifact) -> bool:
    """An artifact whose inputs take any length (a -1 in their declared shape)."""
    return any(-1 in t.shape for t in artifact.inputs)


def real_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Per row of an [N, S] mask: one past the last attended position (any padding side is safe: nothing real is
    cut); at least 1."""
    attended = np.asarray(attention_mask).astype(bool)
    last = attended.shape[1] - np.argmax(attended[:, ::-1], axis=1)
    return np.where(attended.any(axis=1), last, 1)


def real_length(attention_mask: np.ndarray) -> int:
    """The same for one [1, S] (or [S]) mask."""
    return int(real_lengths(np.asarray(attention_mask).reshape(1, -1))[0])


def trim(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A padded [1, max_length] row cut after its last real token: what an app feeds a dynamic file."""
    length = real_length(row["attention_mask"])
    return {k: np.ascontiguousarray(v[:, :length]) for k, v in row.items()}


def pad(row: dict[str, np.ndarray], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """A [1, S] row padded to [1, length] (ids with pad_id, mask and token types with 0)."""
    current = next(iter(row.values())).shape[1]
    if current == length:
        return row
    out = {}
    for name, value in row.items():
        filler = pad_id if name == "input_ids" else 0
        extra = np.full((value.shape[0], length - current), filler, dtype=value.dtype)
        out[name] = np.concatenate([value, extra], axis=1)
    return out


def too_long(length: int, max_length: int) -> str:
    return (f"input length {length} exceeds the model's maximum {max_length} tokens: truncate the text to "
            f"max_length tokens before running it")


def sweep_lengths(max_length: int, buckets: tuple[int, ...] = ()) -> list[int]:
    """1, 2, 37, every bucket edge and max_length (those <= max_length), sorted."""
    return sorted({n for n in (*SWEEP_FIXED, *buckets, max_length) if 1 <= n <= max_length})


def synthetic_row(length: int, cls_id: int, sep_id: int, ordinary_ids, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A [1, length] row: [CLS] + random ids drawn from `ordinary_ids` + [SEP] (length 1: [CLS] only)."""
    ids = [cls_id] + list(rng.choice(ordinary_ids, size=max(length - 2, 0))) + ([sep_id] if length >= 2 else [])
    ids = np.asarray([ids[:length]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def sweep_rows(tokenizer, max_length: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One synthetic row per sweep length, of the tokenizer's ordinary (non-special) tokens."""
    rng = np.random.default_rng(seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(min(len(tokenizer), 30000)) if i not in special]
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else vocab[0]
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else vocab[0]
    return [synthetic_row(length, cls_id, sep_id, vocab, rng) for length in sweep_lengths(max_length)]


def band(length: int) -> str:
    for low, high in BANDS:
        if low <= length <= high:
            return f"{low}-{high}"
    return f">{BANDS[-1][1]}"


def eval_rows(encoded, dynamic: bool, names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    """The rows as apps feed them: cut to their own lengths (dynamic) or padded to max_length (static); only the
    inputs in `names` when given."""
    rows = [encoded.row(i) for i in range(len(encoded))]
    if names is not None:
        rows = [{k: v for k, v in row.items() if k in names} for row in rows]
    return [trim(r) for r in rows] if dynamic else rows


def length_drift(lengths: np.ndarray, logits: np.ndarray, reference: np.ndarray, sweep: dict[int, float]) -> dict:
    """Drift per length band on the eval texts (max and mean abs logit error, rows) and per sweep length."""
    error = np.abs(np.asarray(logits, dtype=np.float64) - reference).max(axis=1)
    bands = {}
    for low, high in BANDS:
        rows = (lengths >= low) & (lengths <= high)
        if rows.any():
            bands[f"{low}-{high}"] = {"rows": int(rows.sum()), "max_abs_error": float(error[rows].max()),
                                      "mean_abs_error": float(error[rows].mean())}
    return {"bands": bands, "sweep_max_abs_error": {str(k): v for k, v in sorted(sweep.items())}}
