"""Tokenizer drift: how often the tokenizer that runs on the phone (MediaPipe's, from the .tflite metadata) gives
other token ids than the reference tokenizer (the checkpoint's Hugging Face tokenizer) for the same text.

The device ids are observed, not re-implemented: a probe model with the same tokenizer metadata as the shipped
file, whose output echoes `ids` as scores (pipeline/formats/mediapipe.py, probe_model), runs in the real MediaPipe
`TextClassifier`; each category's score is the id at that position.

Measured on the eval texts plus HARD_CASES (accents, non-Latin scripts, emoji, zero-width and replacement
characters, control characters, very long words, HTML), twice: on the raw text, and on the text after
`app_normalize` (what an app should do to the text before `classify`, see APP_NORMALIZATION). The report says the
share of texts whose ids differ, by set, with examples as tokens.

Known, by construction of MediaPipe's tokenizers (bert_preprocessor_calculator.cc): it lowercases ASCII only and
strips no accents, so "Café" is [UNK] on the phone where the BERT tokenizer (lowercase + strip accents) reads
"cafe"; SentencePiece files get MediaPipe's ASCII lowercasing and the model's own normalizer, not the
Hugging Face ALBERT pre-processing (NFKD + accent stripping + lowercasing).
"""
from __future__ import annotations

import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.formats.mediapipe import DeviceTokenizer, device_tokenizer, probe_model
from pipeline.core.tokenization import clean_text, encode
from pipeline.runtimes.mediapipe import MediaPipeRunner

HARD_CASES: list[tuple[str, str]] = [
    ("accents", "Café Crème naïve"),
    ("accents", "jalapeño piñata résumé façade"),
    ("accents", "ÉCOLE ÜBER Ångström"),
    ("accents (combining)", "cafe\u0301 cre\u0300me"),
    ("non-Latin", "日本茶がとても好きです"),
    ("non-Latin", "Это отличный чай"),
    ("non-Latin", "شاي ممتاز جدا"),
    ("non-Latin", "मुझे यह चाय पसंद है"),
    ("non-Latin", "Ελληνικός καφές"),
    ("emoji", "love it 😍👍🏽"),
    ("emoji", "family pack 👨\u200d👩\u200d👧 ☕"),
    ("zero-width", "gre\u200bat t\u200cea"),
    ("zero-width", "\ufeffgood product\u2060"),
    ("replacement", "bad \ufffd product"),
    ("control", "tab\there\r\nnew line\x07"),
    ("whitespace", "great\u00a0tea\u3000cup"),
    ("fullwidth", "ＧＲＥＡＴ ｔｅａ"),
    ("ligature", "ﬁne ﬂavor"),
    ("quotes", "it’s “great” — really"),
    ("long word", "a" * 300),
    ("long word", "supercalifragilisticexpialidocious" * 4),
    ("HTML", "Great<br /><br />tea &amp; cookies"),
    ("HTML", "<a href=\"http://www.amazon.com/dp/B000\">link</a> 5/5!!!"),
    ("numbers", "100% 5/5 stars $3.99 #1"),
    ("empty", ""),
]

APP_NORMALIZATION = {
    "wordpiece": "lowercase, Unicode NFD, drop combining marks (Mn), drop format/control characters and U+FFFD, "
                 "tabs/newlines and Unicode spaces (Zs, e.g. no-break space) become ASCII spaces",
    "sentencepiece": "Unicode NFKD, drop combining marks (Mn), lowercase, collapse whitespace",
}
MAX_EXAMPLES = 8


def app_normalize(text: str, kind: str) -> str:
    """What an app applies to the text before `classify` so MediaPipe's tokenizer sees what the reference's saw
    (Kotlin/Swift versions in the demo apps do the same)."""
    if kind == "wordpiece":
        text = unicodedata.normalize("NFD", text.lower())
        out = []
        for ch in text:
            cat = unicodedata.category(ch)
            if cat == "Mn" or ch == "\ufffd" or (cat in ("Cc", "Cf") and ch not in "\t\n\r"):
                continue
            out.append(" " if ch in "\t\n\r" or cat == "Zs" else ch)  # MediaPipe splits on ASCII spaces only
        return "".join(out)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()
    return " ".join(text.split())


@dataclass
class DriftSet:
    name: str
    texts: int = 0
    differ: int = 0
    differ_normalized: int = 0
    examples: list[dict] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.differ / self.texts if self.texts else 0.0

    @property
    def share_normalized(self) -> float:
        return self.differ_normalized / self.texts if self.texts else 0.0

    def to_dict(self) -> dict:
        return {"texts": self.texts, "differ": self.differ, "share": round(self.share, 6),
                "differ_after_app_normalization": self.differ_normalized,
                "share_after_app_normalization": round(self.share_normalized, 6), "examples": self.examples}


class DeviceIds:
    """MediaPipe's token ids for a text, through the probe model."""

    def __init__(self, tokenizer: DeviceTokenizer, max_length: int, workdir: Path):
        self.path = probe_model(Path(workdir) / f"probe.{tokenizer.kind}.{max_length}.tflite", max_length, tokenizer)
        self.runner = MediaPipeRunner(self.path)

    def __call__(self, text: str) -> np.ndarray:
        return np.rint(self.runner.classify(text)).astype(np.int64)

    def close(self) -> None:
        self.runner.close()


def _tokens(tokenizer, ids: np.ndarray) -> list[str]:
    ids = [int(i) for i in ids]
    while ids and ids[-1] == 0:  # padding
        ids.pop()
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def measure(reference_tokenizer, device: DeviceTokenizer, max_length: int, eval_texts: list[str],
            hard_cases: list[tuple[str, str]] | None = None, workdir: Path | None = None) -> dict:
    """Drift of `device` (MediaPipe) against `reference_tokenizer` on the eval texts and the hard cases.

    Returns {"tokenizer", "app_normalization", "sets": {"eval": ..., "hard_cases": ...}, "share", ...}: per set,
    how many texts got other ids on the device, raw and after `app_normalize`, with examples (tokens)."""
    cases = list(HARD_CASES if hard_cases is None else hard_cases)
    with tempfile.TemporaryDirectory() as tmp:
        probe = DeviceIds(device, max_length, Path(workdir or tmp))
        try:
            sets = {"eval": DriftSet("eval"), "hard_cases": DriftSet("hard_cases")}
            for set_name, items in (("eval", [("eval", t) for t in eval_texts]), ("hard_cases", cases)):
                drift = sets[set_name]
                if not items:
                    continue
                texts = [clean_text(t) for _, t in items]
                reference = encode(reference_tokenizer, texts, max_length).input_ids
                for (case, text), ref in zip(items, reference):
                    raw = probe(text)
                    normalized = probe(app_normalize(text, device.kind))
                    drift.texts += 1
                    differs = not np.array_equal(raw, ref)
                    drift.differ += differs
                    drift.differ_normalized += not np.array_equal(normalized, ref)
                    if differs and len(drift.examples) < MAX_EXAMPLES:
                        first = int(np.flatnonzero(raw != ref)[0])
                        window = slice(max(0, first - 3), first + 12)  # tokens around the first difference
                        drift.examples.append({
                            "case": case, "text": text[:160], "first_difference": first,
                            "reference": _tokens(reference_tokenizer, ref[window]),
                            "device": _tokens(reference_tokenizer, raw[window]),
                            "device_after_app_normalization": _tokens(reference_tokenizer, normalized[window]),
                        })
        finally:
            probe.close()
    total = sum(s.texts for s in sets.values())
    return {
        "tokenizer": device.kind,
        "device_tokenizer": f"MediaPipe {'BertTokenizer' if device.kind == 'wordpiece' else 'SentencePieceTokenizer'} "
                            f"({device.file_name})",
        "app_normalization": APP_NORMALIZATION[device.kind],
        "texts": total,
        "share": round(sum(s.differ for s in sets.values()) / total, 6) if total else 0.0,
        "share_after_app_normalization": round(sum(s.differ_normalized for s in sets.values()) / total, 6) if total else 0.0,
        "sets": {name: s.to_dict() for name, s in sets.items()},
    }


def drift_report(model, max_length: int, texts: list[str], log=print) -> dict:
    """Tokenizer drift of the MediaPipe tokenizer vs the checkpoint's, on `texts` + the hard cases, logged per set."""
    started = time.perf_counter()
    found = measure(model.tokenizer, device_tokenizer(model.model_dir), max_length, texts)
    found["seconds"] = round(time.perf_counter() - started, 2)
    for name, s in found["sets"].items():
        log(f"  tokenizer drift ({found['tokenizer']}), {name}: {s['differ']}/{s['texts']} texts get other ids on "
            f"the device ({s['share']:.2%}); after app normalization {s['differ_after_app_normalization']}")
    return found


def markdown(drift: dict) -> list[str]:
    """The drift section of report.md."""
    lines = ["## Tokenizer drift (MediaPipe on the device vs the reference tokenizer)", "",
             f"Device tokenizer: {drift['device_tokenizer']}. Share of texts whose token ids differ:", "",
             "| set | texts | differ | share | after app normalization |", "|---|---:|---:|---:|---:|"]
    for name, s in drift["sets"].items():
        lines.append(f"| {name} | {s['texts']} | {s['differ']} | {s['share']:.2%} | "
                     f"{s['differ_after_app_normalization']} ({s['share_after_app_normalization']:.2%}) |")
    lines += ["", f"What an app must do before `classify(text)`: {drift['app_normalization']} "
              "(`app_normalize` in pipeline/verify/tokenizer_drift.py; the demo apps do it in MediaPipe mode).", ""]
    for name, s in drift["sets"].items():
        for ex in s["examples"][:4]:
            lines.append(f"- {name} / {ex['case']} (token {ex['first_difference']}): `{ex['text'][:60]!r}` reference {' '.join(ex['reference'][:10])} "
                         f"| device {' '.join(ex['device'][:10])} | normalized {' '.join(ex['device_after_app_normalization'][:10])}")
    return lines
