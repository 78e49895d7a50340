"""Robustness of `python -m pipeline build`, always through real `python -m pipeline` processes.

1. bad input -> exit 2, exactly one "error: <path>: <problem>" line, nothing written to the out folder
2. a build interrupted mid-lowering (SIGINT, SIGKILL) leaves the previous artifact folder intact and valid
3. a second build into the same out folder refuses (exit 2) while the first holds the lock; no interleaving
4. the stage cache: an unchanged rebuild reuses every stage; a corrupted entry is detected and rebuilt

Tiny models (tests/tiny.py), max_length 16, ExecuTorch fp32 only: one lowering is 30-60 s on a loaded 2-core box,
so the whole module lowers three times (the session build, the concurrency test's build, the cache rebuild).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tiny import write_review_data, write_tiny_albert, write_tiny_bert

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = "16"
LOWERING = ("[lower albert.", "[quantize albert.")  # the lines build.py logs as a lowering stage starts
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "spiece.model")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # one thread per build: on a loaded CI box, busy-waiting OpenMP pools make builds many times slower
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


class Workspace:
    """Tiny checkpoints, eval data and a config whose stage cache lives in the test's tmp dir."""

    def __init__(self, root: Path):
        self.root = root
        self.m0 = write_tiny_albert(root / "albert_seed0", seed=0)
        self.m1 = write_tiny_albert(root / "albert_seed1", seed=1)
        self.eval = write_review_data(root / "eval.csv", count=24)
        self.cache = root / "stage_cache"
        self.config = root / "build.toml"
        self.config.write_text(f'[build]\ncache_dir = "{self.cache}"\nprecisions = ["fp32"]\n')
        self.out = root / "out"

    def build_args(self, model: Path, out: Path | None = None, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pipeline", *self.cli_args(model, out, *extra)]

    def cli_args(self, model: Path, out: Path | None = None, *extra: str) -> list[str]:
        return ["build", "--target", "android", "--model", str(model), "--out", str(out or self.out),
                "--max-length", MAX_LENGTH, "--eval-data", str(self.eval), "--eval-limit", "20",
                "--runtimes", "executorch", "--no-copy-to-apps", "--config", str(self.config), *extra]

    def run(self, args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=self.root, env=_env(), capture_output=True, text=True, timeout=timeout)

    def start(self, args: list[str]) -> "Running":
        return Running(args, self.root)


class Running:
    """A build in the background whose stdout is read line by line (so the test can act at a given stage)."""

    def __init__(self, args: list[str], cwd: Path):
        self.stderr_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
        self._stderr = open(self.stderr_path, "w")
        # A parent started in the background may ignore SIGINT, and the child would inherit that: restore it.
        self.proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._seen = threading.Event()
        self._prefixes: tuple[str, ...] = ()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._prefixes and line.startswith(self._prefixes):
                self._seen.set()
        self._seen.set()  # EOF: the process ended

    def wait_for(self, prefixes: tuple[str, ...], timeout: float = 1200) -> None:
        self._prefixes = prefixes
        if any(line.startswith(prefixes) for line in self.lines):
            return
        self._seen.wait(timeout)
        assert any(line.startswith(prefixes) for line in self.lines), (
            f"the build never reached {prefixes}; rc {self.proc.poll()}\n" + self.output())

    def finish(self, timeout: float = 1800) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._reader.join(10)
            self._stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.finish(60)

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def output(self) -> str:
        return self.stdout + "\n--- stderr ---\n" + self.stderr_path.read_text()[-4000:]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def snapshot(folder: Path) -> dict:
    """manifest.json's text and the sha256 of every file it lists, checked against the files on disk."""
    from pipeline.core.data import sha256_file

    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    hashes = {entry["path"]: entry["sha256"] for entry in manifest["files"] + manifest.get("assets", [])}
    assert any(name.endswith(".pte") for name in hashes) and "golden.json" in hashes, sorted(hashes)
    for name, digest in hashes.items():
        assert (folder / name).is_file(), f"{folder / name} listed in the manifest is missing"
        assert sha256_file(folder / name) == digest, f"{folder / name} does not match its manifest sha256"
    return {"manifest": text, "hashes": hashes, "source": manifest["model"]["source_sha256"]}


def assert_runs_golden(folder: Path) -> None:
    """Every .pte of the folder, in the ExecuTorch runtime, reproduces golden.json (what `validate` and the apps check)."""
    from pipeline.runtimes import open_runner

    manifest = json.loads((folder / "manifest.json").read_text())
    golden = json.loads((folder / "golden.json").read_text())
    artifacts = [e for e in manifest["files"] if e.get("runtime") == "executorch"]
    assert artifacts, "no ExecuTorch artifact in the folder"
    for entry in artifacts:
        runner = open_runner(folder / entry["path"], "executorch", [t["name"] for t in entry["inputs"]])
        for case in golden["cases"]:
            inputs = {k: np.asarray([case[k]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            got = runner.run(inputs)[0]
            expected = np.asarray(case["expected"][entry["path"]], dtype=np.float32)
            assert np.abs(got - expected).max() <= golden["tolerance"][entry["path"]] + 1e-6, (entry["path"], got, expected)


def visible(folder: Path) -> list[str]:
    """What a user sees next to the target folders: no staging or work folder (the build's log file is expected)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != "build.log")


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("robustness"))


@pytest.fixture(scope="session")
def built(ws) -> dict:
    """The previous build every later test must leave intact: the seed-0 tiny model, with the stage cache on."""
    started = time.perf_counter()
    result = ws.run(ws.build_args(ws.m0))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"session build: {time.perf_counter() - started:.1f} s")
    return snapshot(ws.out / "android")


# ---------------------------------------------------------------------------------------------------------------
# 1. Bad input: exit 2, one line naming the file and the problem, nothing written


def _bad_cases(ws: Workspace) -> dict[str, tuple[list[str], Path, str, list[str]]]:
    """name -> (argv, out dir, text the error line must name (the path), words the problem must contain)."""
    root = ws.root / "bad"
    root.mkdir()

    def model_copy(name: str) -> Path:
        target = root / name
        shutil.copytree(ws.m0, target)
        return target

    truncated = model_copy("truncated_weights")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    garbage = model_copy("garbage_weights")
    (garbage / "model.safetensors").write_bytes(os.urandom(4096))
    no_tokenizer = model_copy("no_tokenizer")
    for name in TOKENIZER_FILES:
        (no_tokenizer / name).unlink(missing_ok=True)
    config_list = model_copy("config_not_object")
    (config_list / "config.json").write_text("[1, 2]\n")
    short_positions = write_tiny_albert(root / "positions64", max_position_embeddings=64)
    bert = write_tiny_bert(root / "bert")
    no_text = root / "no_text.csv"
    no_text.write_text("review,label\ngreat tea,great\nbad tea,other\n")
    no_label = root / "no_label.csv"
    no_label.write_text("text,stars\ngreat tea,5\nbad tea,1\n")
    three_labels = root / "three_labels.csv"
    three_labels.write_text("text,label\ngreat tea,great\nbad tea,other\nso so,third\n")
    label_id = root / "label_id.jsonl"
    label_id.write_text('{"text": "great tea", "label": 0}\n{"text": "bad tea", "label": 2}\n')
    empty = root / "empty.csv"
    empty.write_text("text,label\n")  # a header, no rows
    not_objects = root / "not_objects.jsonl"
    not_objects.write_text("5\n")
    a_file = root / "a_regular_file"
    a_file.write_text("not a folder\n")

    cases = {}

    def case(name, model, path_text, words, *extra, out=None):
        out = out or root / name / "out"
        cases[name] = (ws.cli_args(model, out, *extra), out, str(path_text), words)

    # each bad input in its own `python -m pipeline build` process
    case("missing_model_dir", root / "no_such_model", root / "no_such_model", ["not found"])
    case("bert_checkpoint", bert, bert / "config.json", ["not ALBERT", "compress"])
    case("truncated_weights", truncated, weights, ["corrupt or truncated"])
    case("missing_tokenizer", no_tokenizer, no_tokenizer, ["no tokenizer files"])
    case("unknown_target", ws.m0, "'windows'", ["unknown target"], "--target", "windows")
    case("eval_without_text_column", ws.m0, no_text, ["no text column 'text'"], "--eval-data", str(no_text))
    case("eval_labels_not_the_models", ws.m0, three_labels, ["'third'", "2 labels"], "--eval-data", str(three_labels))
    case("max_length_beyond_positions", short_positions, short_positions / "config.json",
         ["max_length 128", "max_position_embeddings 64"], "--max-length", "128")
    case("empty_eval_set", ws.m0, empty, ["no rows"], "--eval-data", str(empty))
    case("out_under_a_file", ws.m0, a_file / "out", ["not writable"], out=a_file / "out")
    # more of the same kind, run in-process through pipeline.cli.main (a process each costs ~10 s of imports here)
    case("garbage_weights", garbage, garbage / "model.safetensors", ["corrupt or truncated"])
    case("config_not_object", config_list, config_list / "config.json", ["not an object"])
    case("eval_without_label_column", ws.m0, no_label, ["no label column 'label'"], "--eval-data", str(no_label))
    case("eval_label_id_out_of_range", ws.m0, label_id, ["row 2", "2 labels"], "--eval-data", str(label_id))
    case("eval_rows_not_objects", ws.m0, not_objects, ["line 1", "not an object"], "--eval-data", str(not_objects))
    case("max_length_too_small", ws.m0, "max_length = 1", ["2 or more"], "--max-length", "1")
    case("eval_limit_zero", ws.m0, ws.eval, ["eval set is empty"], "--eval-limit", "0")
    case("negative_eval_limit", ws.m0, "eval_limit = -3", ["0 or more"], "--eval-limit", "-3")
    case("unknown_runtime", ws.m0, "'coreml'", ["unknown runtime"], "--runtimes", "coreml")
    case("out_under_proc", ws.m0, "/proc/pipeline-out", ["not writable"], out=Path("/proc/pipeline-out"))
    return cases


SUBPROCESS_CASES = ["missing_model_dir", "bert_checkpoint", "truncated_weights", "missing_tokenizer", "unknown_target",
                    "eval_without_text_column", "eval_labels_not_the_models", "max_length_beyond_positions",
                    "empty_eval_set", "out_under_a_file"]
IN_PROCESS_CASES = ["garbage_weights", "config_not_object", "eval_without_label_column", "eval_label_id_out_of_range", "eval_rows_not_objects",
                    "max_length_too_small", "eval_limit_zero", "negative_eval_limit", "unknown_runtime", "out_under_proc"]


@pytest.fixture(scope="module")
def bad_cases(ws) -> dict:
    cases = _bad_cases(ws)
    assert sorted(cases) == sorted(SUBPROCESS_CASES + IN_PROCESS_CASES)
    return cases


@pytest.fixture(scope="module")
def bad_runs(ws, bad_cases) -> dict:
    """The listed bad-input builds as real processes, two at a time (each fails before any lowering)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(ws.run, [sys.executable, "-m", "pipeline", *bad_cases[name][0]])
                   for name in SUBPROCESS_CASES}
        return {name: futures[name].result() for name in SUBPROCESS_CASES}


def _assert_bad_input(case, code: int, stdout: str, stderr: str) -> None:
    args, out, path_text, words = case
    assert code == 2, f"exit {code}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    # the whole of stderr is that one line: third-party warnings and native log lines go to the log file
    assert len(lines) == 1 and stderr.strip().splitlines() == lines, stderr[-3000:]
    line = lines[0]
    assert path_text in line, f"{line!r} does not name {path_text!r}"
    for word in words:
        assert word in line, f"{line!r} does not say {word!r}"
    # nothing written: no target folder, no staging or work folders, at most the (empty) lock file
    if out.is_dir():
        assert sorted(p.name for p in out.iterdir() if p.name != "build.log") in ([], [".android.lock"]), sorted(out.iterdir())
    assert not (out / "android").exists()


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_cases, bad_runs, name):
    result = bad_runs[name]
    _assert_bad_input(bad_cases[name], result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("name", IN_PROCESS_CASES)
def test_more_bad_input_in_process(bad_cases, name, capsys):
    from pipeline.cli import main

    code = main(bad_cases[name][0])
    captured = capsys.readouterr()
    _assert_bad_input(bad_cases[name], code, captured.out, captured.err)


# ---------------------------------------------------------------------------------------------------------------
# 2. Atomic output: interrupting a build mid-lowering leaves the previous folder intact


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_interrupted_build_leaves_previous_artifacts_intact(ws, built, sig):
    folder = ws.out / "android"
    before = snapshot(folder)
    running = ws.start(ws.build_args(ws.m1, None, "--no-cache"))  # another model: its files would differ
    try:
        running.wait_for(LOWERING)
        time.sleep(0.5)  # inside the lowering (it takes tens of seconds here, seconds on a fast machine)
        assert running.proc.poll() is None, "the build finished before it could be interrupted\n" + running.output()
        running.proc.send_signal(getattr(signal, sig))
        code = running.finish(120)
    finally:
        running.kill()
    assert not any(line.startswith("artifacts:") for line in running.lines), running.output()
    if sig == "SIGINT":
        assert code == 130, running.output()
        assert "interrupted" in running.stderr_path.read_text()
    else:
        assert code == -signal.SIGKILL
    after = snapshot(folder)  # every file still matches the manifest
    assert after == before, "the previous artifact folder changed"
    assert_runs_golden(folder)
    assert visible(ws.out) == ["android"], "a staging or work folder is visible next to the target"
    leftovers = [p.name for p in ws.out.iterdir() if p.name.startswith(".android") and p.name != ".android.lock"]
    if sig == "SIGINT":
        assert leftovers == [], "an interrupted build must clean up after itself"
        return
    # SIGKILL cannot be cleaned up by the killed process: its work folder carries its pid, and the next build of
    # this target (pid dead, lock held) removes it without reading it (test_concurrent_build_... runs one;
    # test_leftovers_of_killed_builds_are_cleared checks the rule itself).
    assert all(name.startswith(f".android-work-{running.proc.pid}-") for name in leftovers), leftovers


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_leftovers_of_killed_builds_are_cleared(tmp_path):
    """Under the build lock: dead builds' work folders go, a folder moved aside mid-swap comes back, live ones stay."""
    from pipeline.build import build_lock
    from pipeline.core.cache import StageCache

    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "out"
    out.mkdir()
    (out / f".android-work-{dead}-abc").mkdir()
    (out / f".android-work-{dead}-abc" / "albert.fp32.pte").write_bytes(b"half a file")
    (out / f".android-work-{alive}-def").mkdir()  # a live process's: not ours to delete
    (out / f".ios-work-{dead}-ghi").mkdir()  # another target's: its own builds clear it
    moved = out / f".android.old-{dead}"  # killed between bundle.replace_folder's two renames
    moved.mkdir()
    (moved / "manifest.json").write_text("{}")
    with build_lock(out, "android"):
        names = sorted(p.name for p in out.iterdir())
    assert names == [".android-work-%d-def" % alive, ".android.lock", f".ios-work-{dead}-ghi", "android"], names
    assert (out / "android" / "manifest.json").read_text() == "{}"

    cache = StageCache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f".executorch-{dead}-xyz").mkdir()
    (tmp_path / "cache" / f".executorch-{alive}-uvw").mkdir()
    source = tmp_path / "file.bin"
    source.write_bytes(b"data")
    cache.put("executorch", "k1", {"file.bin": source}, {"m": 1})
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f".executorch-{alive}-uvw", "executorch-k1"]
    assert cache.get("executorch", "k1")[1] == {"m": 1}


# ---------------------------------------------------------------------------------------------------------------
# 3. Two builds into one out folder: the second refuses while the first holds the lock


def test_concurrent_build_refuses_and_never_interleaves(ws, built):
    folder = ws.out / "android"
    before = snapshot(folder)
    first = ws.start(ws.build_args(ws.m1, None, "--no-cache"))
    try:
        first.wait_for(LOWERING)
        first.proc.send_signal(signal.SIGSTOP)  # paused mid-lowering, holding the lock: no race with its end
        try:
            second = ws.run(ws.build_args(ws.m0))
        finally:
            first.proc.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-3000:]
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and str(ws.out) in lines[0] and "another build" in lines[0], second.stderr[-3000:]
        assert snapshot(folder) == before, "the refused build touched the target folder"
        code = first.finish()
    finally:
        first.kill()
    assert code == 0, first.output()
    after = snapshot(folder)  # the first build's files only, whole
    assert after["source"] != before["source"], "the first build's model should now be in place"
    assert_runs_golden(folder)
    assert visible(ws.out) == ["android"]
    # whatever earlier builds left (a SIGKILLed build's work folder), this build, holding the lock, cleared it
    assert [p.name for p in ws.out.iterdir() if p.name.startswith(".android-")] == []


# ---------------------------------------------------------------------------------------------------------------
# 4. Stage cache: content-keyed reuse, corrupted entries rebuilt and never used


def test_unchanged_rebuild_reuses_every_stage(ws, built):
    result = ws.run(ws.build_args(ws.m0))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout
    for stage in ("reference-", "executorch-", "outputs-"):
        assert f"cache hit: {stage}" in log, f"stage {stage} was not reused\n{log}"
    assert "[cached] lower albert.fp32.pte" in log, log
    assert "[trace]" not in log and "[lower albert" not in log, log
    assert_runs_golden(ws.out / "android")


def test_corrupted_cache_entry_is_rebuilt_not_used(ws, built):
    from pipeline.core.data import sha256_file

    entries = [p for p in ws.cache.glob("executorch-*") if (p / "albert.fp32.pte").is_file()]
    assert entries, sorted(ws.cache.iterdir())
    corrupt = set()
    for entry in entries:  # one per key the session's builds used (one, unless the config changed between them)
        cached = entry / "albert.fp32.pte"
        data = bytearray(cached.read_bytes())
        data[len(data) // 2] ^= 0xFF
        cached.write_bytes(bytes(data))
        corrupt.add(sha256_file(cached))

    result = ws.run(ws.build_args(ws.m0))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout
    assert "corrupt entry" in log and "albert.fp32.pte does not match its sha256" in log and "rebuilding" in log, log
    assert "[lower albert.fp32.pte] ..." in log, "the artifact was not rebuilt"
    assert "[cached] lower albert.fp32.pte" not in log, "the corrupted entry was used"
    folder = ws.out / "android"
    snapshot(folder)
    assert sha256_file(folder / "albert.fp32.pte") not in corrupt
    assert_runs_golden(folder)
    stored = [p for p in ws.cache.glob("executorch-*") if (p / "entry.json").is_file()]
    assert stored, "the rebuilt artifact was not stored again"
    for entry in stored:  # what is in the cache now is whole
        record = json.loads((entry / "entry.json").read_text())
        assert record["files"]["albert.fp32.pte"] == sha256_file(entry / "albert.fp32.pte")
        assert record["files"]["albert.fp32.pte"] not in corrupt


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "bad_entry_json", "no_entry_json"])
def test_damaged_cache_entries_are_dropped(tmp_path, damage):
    from pipeline.core.cache import StageCache, content_key

    messages: list[str] = []
    cache = StageCache(tmp_path / "cache", log=messages.append)
    source = tmp_path / "albert.fp32.pte"
    source.write_bytes(bytes(range(256)) * 8)
    key = content_key("model-hash", 16, {"torch": "x"})
    entry = cache.put("executorch", key, {source.name: source}, {"file": source.name})
    assert cache.get("executorch", key) is not None and "cache hit" in messages[-1]
    cached = entry / source.name
    if damage == "flip_byte":
        data = bytearray(cached.read_bytes())
        data[100] ^= 0x01
        cached.write_bytes(bytes(data))
    elif damage == "truncate":
        cached.write_bytes(cached.read_bytes()[:-1])
    elif damage == "delete_file":
        cached.unlink()
    elif damage == "bad_entry_json":
        (entry / "entry.json").write_text('{"files": ')
    else:
        (entry / "entry.json").unlink()
    assert cache.get("executorch", key) is None
    assert not entry.exists(), "a corrupt entry must be removed"
    assert "corrupt entry" in messages[-1] and "rebuilding" in messages[-1], messages
    assert content_key("model-hash", 16, {"torch": "y"}) != key, "tool versions are part of the key"
