"""Shared helpers of the demo-app tests: where the app tools live, the Kotlin modules compiled once (cached by
source hash), and the varied texts tokenizers are checked on."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANDROID_DEMO = REPO / "android_demo"
IOS_DEMO = REPO / "ios_demo"
KOTLIN_TOKENIZER_SRC = ANDROID_DEMO / "tokenizer" / "src" / "main" / "kotlin"
KOTLIN_CORE_SRC = ANDROID_DEMO / "core" / "src" / "main" / "kotlin"
KOTLIN_CORE_CLI_SRC = ANDROID_DEMO / "core" / "src" / "test" / "kotlin"  # AppCoreCli: the core on the JVM, for tests
KOTLIN_CORE_PACKAGE = KOTLIN_CORE_SRC / "org" / "pipeline" / "demo" / "core"
SWIFT_CORE = IOS_DEMO / "AlbertDemo" / "Core"
# Everything the tests run on the JVM, in one jar: the tokenizer module, the core module, the core's CLI.
KOTLIN_JAR_SOURCES = (KOTLIN_TOKENIZER_SRC, KOTLIN_CORE_SRC, KOTLIN_CORE_CLI_SRC)
KOTLIN_JARS_KEPT = 8
KOTLIN_COMPILER_VERSION = "2.4.20"
INSTALL_SCRIPT = REPO / ".ci" / "install_app_tools.sh"


def tools_dir() -> Path:
    """Where .ci/install_app_tools.sh installs the app toolchain (PIPELINE_TOOLS_DIR overrides)."""
    return Path(os.environ.get("PIPELINE_TOOLS_DIR") or Path.home() / ".cache" / "pipeline" / "tools")


def find_kotlinc() -> Path | None:
    """$KOTLINC, else the npm kotlin-compiler in the tools dir, else kotlinc on PATH."""
    env = os.environ.get("KOTLINC")
    if env:
        return Path(env) if Path(env).is_file() else None
    candidate = tools_dir() / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
    if candidate.is_file():
        return candidate
    found = shutil.which("kotlinc")
    return Path(found) if found else None


def kotlin_stdlib(kotlinc: Path) -> Path:
    """kotlin-stdlib.jar of the compiler distribution kotlinc belongs to."""
    jar = kotlinc.resolve().parent.parent / "lib" / "kotlin-stdlib.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"kotlin-stdlib.jar not found next to {kotlinc} (expected {jar})")
    return jar


# ---------------------------------------------------------------------------------------------- compiled Kotlin

def _jar_key(kotlinc: Path, sources: list[Path]) -> str:
    digest = hashlib.sha256(f"{KOTLIN_COMPILER_VERSION}\0{kotlinc.resolve()}\0".encode())
    for path in sources:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=None)
def kotlin_jar() -> tuple[Path, Path]:
    """(jar, kotlin-stdlib.jar): the tokenizer module, the core module and the core's CLI compiled by kotlinc.

    kotlinc takes 6 to 50 s, so the jar is kept in the tools dir under a hash of the compiler and of every source
    (path and bytes): compiled once per change of the sources, shared by the session's tests and its pytest-xdist
    workers (a file lock), reused by the next session. A missing kotlinc or java is a failure, never a skip: the
    acceptance criterion is that CI runs these checks."""
    kotlinc = find_kotlinc()
    if kotlinc is None:
        pytest.fail(
            f"kotlinc not found (looked at $KOTLINC, {tools_dir()}/node_modules/kotlin-compiler/bin/kotlinc and PATH). "
            f"Install it with `bash {INSTALL_SCRIPT.relative_to(REPO)}` "
            f"(npm kotlin-compiler@{KOTLIN_COMPILER_VERSION}) or set KOTLINC=/path/to/kotlinc."
        )
    if shutil.which("java") is None:
        pytest.fail("java not found on PATH: kotlinc and the compiled Kotlin need a JDK (17 or newer)")
    sources = sorted(p for root in KOTLIN_JAR_SOURCES for p in root.rglob("*.kt"))
    assert sources, f"no Kotlin sources under {KOTLIN_JAR_SOURCES}"
    jars = tools_dir() / "kotlin-jars"
    jars.mkdir(parents=True, exist_ok=True)
    jar = jars / f"app-{_jar_key(kotlinc, sources)}.jar"
    with open(jars / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not jar.is_file():
            partial = jar.with_suffix(f".{os.getpid()}.partial.jar")
            result = subprocess.run([str(kotlinc), *map(str, sources), "-d", str(partial)],
                                    capture_output=True, text=True, timeout=900)
            assert result.returncode == 0 and partial.is_file(), f"kotlinc failed:\n{result.stdout}\n{result.stderr}"
            os.replace(partial, jar)
            for old in sorted(jars.glob("app-*.jar"), key=lambda p: p.stat().st_mtime)[:-KOTLIN_JARS_KEPT]:
                old.unlink(missing_ok=True)
    return jar, kotlin_stdlib(kotlinc)


def run_jvm(main_class: str, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    jar, stdlib = kotlin_jar()
    return subprocess.run(["java", "-cp", f"{jar}:{stdlib}", main_class, *args], capture_output=True, timeout=timeout)


CORE_CLI_CLASS = "org.pipeline.demo.core.AppCoreCliKt"


def run_core(command: str, request: dict, workdir: Path, expect_ok: bool = True):
    """One AppCoreCli command on `request`: its JSON answer (or, with expect_ok=False, the finished process)."""
    path = Path(workdir) / f"request-{command}-{len(list(Path(workdir).glob('request-*')))}.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    result = run_jvm(CORE_CLI_CLASS, [command, str(path)])
    if not expect_ok:
        return result
    assert result.returncode == 0, f"AppCoreCli {command} failed:\n{result.stderr.decode('utf-8', 'replace')}"
    return json.loads(result.stdout.decode("utf-8"))


# ---------------------------------------------------------------------------------------------- texts

_FIXED = [
    "",
    " ",
    "   \t\n  ",
    "\n",
    "a",
    "A",
    "Hello, world!",
    "hello world",
    "This movie was GREAT!!! 10/10 would watch again.",
    "I didn't like it... at all?!",
    "Price: $12.99 (was $15) -- 20% off; e-mail me@example.com #deal @shop",
    "``quoted'' text and 'single' and \"double\" quotes",
    "naïve café résumé façade coöperate Ångström Øre straße",
    "ÉCOLE ÉLÉMENTAIRE, ÇA VA? ¿Qué tal? ¡Olé!",
    "İstanbul ΣΊΣΥΦΟΣ Ölçü",
    "Ελληνικά κείμενα με τόνους",
    "Русский текст, ёлка и Йошкар-Ола.",
    "日本語のテキストです。東京は大きい。",
    "中文文本，包含标点符号！还有数字123。",
    "한국어 텍스트입니다. 안녕하세요!",
    "ภาษาไทย ไม่มีช่องว่าง",
    "हिन्दी पाठ, किताब",
    "مرحبا بالعالم",
    "שלום עולם",
    "emoji 😀😂👍🏽 ❤️ 👨‍👩‍👧 🇫🇷 🥰 🫠",
    "keycap 1️⃣ and 1⃣ and ©®™ ½ ¼ ① ㎏ ﬁ Ⅻ ǅ",
    "fullwidth ＡＢＣ１２３ and halfwidth ｶﾞ",
    "combining e\u0301 a\u0308 n\u0303 o\u0302\u0323 x\u0336",
    "control\x00chars\x01here\x07\x1b[0m\x7f and \u200b zero width \u200d joiner \ufeff bom",
    "tabs\tand\r\nnewlines\rand\x0bvertical\x0cform",
    "non\u00a0breaking\u2007figure\u202fnarrow\u3000ideographic\u2028line\u2029para",
    "private \ue000 use and replacement \ufffd char",
    "unassigned \u0378 and \U000e0001 tag",
    "[CLS] [SEP] [MASK] [PAD] [UNK] <pad> <unk> special tokens in text",
    "x[MASK]y and [mask] lowercase",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 99,
    "a" * 100,
    "a" * 101,
    "b" * 250,
    "▁already ▁meta▁space",
    "under_score snake_case CamelCase kebab-case",
    "1234567890 3.14159 1,000,000 -42 +7 1e10",
    "ﬀ ﬃ ＂quotes＂ ‘curly’ “double” «guillemets» „low“",
    "…ellipsis—em dash–en dash",
    "𝐛𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 𝔣𝔯𝔞𝔨𝔱𝔲𝔯",
    "𠀀 𪜀 𫝀 𫠠 CJK extension chars 丽 㐀",
    "Ǆ ǈ ǋ ǲ titlecase letters",
    "ǅemo",
]

_WORDS = (
    "the a an this that product taste flavor coffee tea great good bad awful love hate would buy again never "
    "price shipping box arrived quickly slowly broken fresh stale sweet salty bitter dog cat food treats my "
    "kids family really very not too much little organic gluten-free healthy snack chocolate vanilla "
    "recommend amazon order packaging bottle can jar bag delicious disappointing okay fine best worst"
).split()
_PUNCT = list(".,!?;:'\"()[]{}-_/\\@#$%^&*+=<>|~`")
_EXOTIC = list("éèêëàâäçñøåœßæ") + list("日本中文한국어") + ["😀", "👍", "❤️", "🔥", "\u0301", "\u200d", "\t", "\n"]


def varied_texts(count: int, seed: int = 0, corpus: list[str] | None = None) -> list[str]:
    """`count` texts: fixed edge cases, real reviews (when a corpus is given) and random mixtures."""
    rng = random.Random(seed)
    texts = list(_FIXED)
    corpus = [t for t in (corpus or []) if t]
    while len(texts) < count:
        kind = rng.randrange(6)
        if kind == 0 and corpus:
            texts.append(rng.choice(corpus))
        elif kind == 1 and corpus:  # long real text: truncated to max_length
            texts.append(" ".join(rng.sample(corpus, min(5, len(corpus)))))
        elif kind == 2:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 40))]
            texts.append(" ".join(w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.2 else w for w in words))
        elif kind == 3:
            parts = []
            for _ in range(rng.randint(1, 30)):
                r = rng.random()
                parts.append(rng.choice(_WORDS) if r < 0.5 else rng.choice(_PUNCT) if r < 0.75 else rng.choice(_EXOTIC))
                parts.append(rng.choice(["", " ", " ", "  ", "\t"]))
            texts.append("".join(parts))
        elif kind == 4:  # random code points from many scripts and blocks
            ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
                      (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2100, 0x21FF),
                      (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F)]
            chars = []
            for _ in range(rng.randint(1, 60)):
                lo, hi = rng.choice(ranges)
                cp = rng.randint(lo, hi)
                chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else " ")
                if rng.random() < 0.2:
                    chars.append(" ")
            texts.append("".join(chars))
        else:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(100, 300))]
            texts.append(" ".join(words))
    return texts[:count]
