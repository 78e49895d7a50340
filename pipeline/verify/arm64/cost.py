"""Cost as a number that can be gated like accuracy: aarch64 instructions per inference, counted under QEMU.

Wall-clock time under emulation says nothing about a phone, and on a shared machine not even about the emulator.
The number of aarch64 instructions the runtime executes for one inference does: it is what the kernels the
runtime picked for that CPU (NEON dot-product, i8mm, ...) do with that model at that length, and it is exact and
repeatable. It is not a latency (no caches, no memory stalls, no out-of-order execution), so compare counts with
counts: a file against its baseline, int8 against fp32, one length against another.

How (see cost_plugin.c and cost_worker.py): one emulated CPython per CPU profile (arm64.PROFILES) runs under
Debian's dynamic qemu-aarch64 with the project's TCG plugin, imports the runtimes once and, for every file and
length, loads the file, runs the first inference and `steady_runs` more, each between two markers (a close() of an
impossible descriptor, recorded by the plugin with the number of instructions executed so far). One thread: the
counter is shared by all threads. Counted:
    first    the first inference after loading the file (LiteRT plans its tensors and applies the XNNPACK
             delegate there; ExecuTorch did that at load time), with the process's one-time set-up already
             paid by an unmarked warm-up run of every file
    steady   one inference after that: the cheapest of `steady_runs` (the runs differ by hundreds to a few
             thousand instructions: allocator and Python-binding paths; the first of them is usually the dearest)
What makes the counts host-independent: markers instead of whole-process totals (start-up, imports, address-space
layout and the environment's size are outside the marked intervals), one thread, Python's GC off while counting,
QEMU's guest randomness seeded (-seed), a fixed PYTHONHASHSEED, and a fixed /sys in the sysroot (cpu topology,
cache sizes: cost_env.py) besides the fixed /proc/cpuinfo, so that kernels are blocked for the same machine
whatever the host. Repeated steady counts agree within 0.01%, first counts within a few 1e-4 (tests/test_cost.py
checks it with another environment size, working directory, hash seed and CPU affinity; docs/arm64_cost.md).

    count_costs(artifacts, profiles, lengths, encoded=... | tokenizer=...) -> plain data (see count_costs)
    compare_costs(current, baseline, max_increase) -> (failures, notes)
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pipeline.core.artifact import Artifact
from pipeline.core.errors import PipelineError
from pipeline.verify.arm64.emulate import PROFILES, REPO_ROOT
from pipeline.verify.arm64.env import SETUP_COMMAND
from pipeline.verify.arm64.cost_env import CountingEnv, find_counting_env
from pipeline.core.shapes import is_dynamic, real_length, synthetic_row

Log = Callable[[str], None]

COUNTED_RUNTIMES = ("executorch", "litert")  # the runtimes with aarch64 builds in the emulated environment
DEFAULT_PROFILES = ("cortex-a76", "i8mm")
DEFAULT_LENGTHS = (16, 64, "max")  # "max": each file's max_length
STEADY_RUNS = 2
HASH_SEED = 0


# ----------------------------------------------------------------------------------------------------- inputs

def cost_rows(lengths: Iterable[int], encoded=None, tokenizer=None, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """One [1, L] row per length: [CLS] + ordinary token ids + [SEP], attention 1, token types 0.

    From `encoded` (an Encoded of real texts): its own [CLS]/[SEP] ids and the texts' tokens in order (cycled when
    the texts are shorter than L). Else from `tokenizer`: random ordinary ids of its vocabulary (shapes.synthetic_row),
    seeded per length."""
    lengths = sorted({int(n) for n in lengths})
    if encoded is not None and len(encoded):
        ids = np.asarray(encoded.input_ids)
        pool, cls_id, sep_id = [], int(ids[0, 0]), None
        for i in range(len(ids)):
            n = real_length(encoded.attention_mask[i])
            if n >= 2:
                sep_id = int(ids[i, n - 1]) if sep_id is None else sep_id
                pool.extend(int(t) for t in ids[i, 1:n - 1])
        if not pool or sep_id is None:
            raise PipelineError("the encoded texts hold no ordinary tokens to build cost inputs from")
        rows = {}
        for length in lengths:
            body = [pool[i % len(pool)] for i in range(max(length - 2, 0))]
            row = ([cls_id] + body + ([sep_id] if length >= 2 else []))[:length]
            x = np.asarray([row], dtype=np.int64)
            rows[length] = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        return rows
    if tokenizer is not None:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        vocab = [i for i in range(min(len(tokenizer), 30000)) if i not in special]
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else vocab[0]
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else vocab[0]
        return {n: synthetic_row(n, cls_id, sep_id, vocab, np.random.default_rng([seed, n])) for n in lengths}
    raise PipelineError("cost counting needs token ids: pass encoded texts or the model's tokenizer")


def file_max_length(artifact: Artifact, max_length: int | None) -> int | None:
    """The longest input of a file: its fixed length when static, else `max_length` (the manifest's)."""
    if not is_dynamic(artifact) and artifact.inputs:
        return int(artifact.inputs[0].shape[-1])
    return max_length or artifact.details.get("max_length")


def resolve_lengths(lengths: Iterable, max_length: int | None) -> list[int]:
    out = []
    for length in lengths:
        value = max_length if length == "max" else int(length)
        if value is not None and 1 <= value <= (max_length or value) and value not in out:
            out.append(value)
    return out


# ------------------------------------------------------------------------------------------------ measurement

def _worker_env(env: CountingEnv, hash_seed: int | None) -> dict:
    environ = env.arm64.environ([str(REPO_ROOT)])
    if hash_seed is not None:
        environ["PYTHONHASHSEED"] = str(hash_seed)
    return environ


def _marks(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    """The plugin's marker file: ({k: instructions executed so far}, {k: guest threads alive})."""
    marks, threads = {}, {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line and not line.startswith("#"):
            k, count, alive = line.split()
            marks[int(k)], threads[int(k)] = int(count), int(alive)
    return marks, threads


def _reap(proc: subprocess.Popen, timeout: float) -> float:
    """Wait for `proc` (TimeoutExpired after `timeout` s) and return ITS CPU seconds (wait4: other emulators running
    at the same time in this process are not counted, as RUSAGE_CHILDREN would)."""
    deadline = time.monotonic() + max(1.0, timeout)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.2)


@dataclass
class CostRun:
    """How instructions are counted: which CPU profiles and lengths, and the knobs that keep counts repeatable.
    lengths: token counts, "max" = each file's max_length; max_length: that of dynamic files (the manifest's);
    jobs: emulator processes at once (default: one per profile, at most 2; counts do not depend on it); workdir:
    where each emulator's job folder is made (its working directory); hash_seed: the guest's PYTHONHASHSEED."""

    profiles: Iterable[str] = DEFAULT_PROFILES
    lengths: Iterable = DEFAULT_LENGTHS
    max_length: int | None = None
    steady_runs: int = STEADY_RUNS
    jobs: int | None = None
    hash_seed: int | None = HASH_SEED
    env: CountingEnv | None = None
    workdir: str | Path | None = None


def count_profile(profile: str, run: CostRun, artifacts: list[Artifact], rows: dict[int, dict[str, np.ndarray]],
                  log: Log) -> dict:
    """One emulator process for one profile: {"counts": {file: {length: {"steady", "first"}}}, ...}."""
    env, lengths, max_length, steady_runs = run.env, list(run.lengths), run.max_length, run.steady_runs
    hash_seed, workdir = run.hash_seed, run.workdir
    qemu_cpu = PROFILES[profile][0]
    with tempfile.TemporaryDirectory(prefix=f"pipeline-cost-{profile}-", dir=workdir) as work:
        work = Path(work)
        np.savez(work / "in.npz", **{f"{key}_{n}": row[name] for n, row in rows.items()
                                     for key, name in (("ids", "input_ids"), ("mask", "attention_mask"),
                                                       ("types", "token_type_ids"))})
        files = []
        for a in artifacts:
            static = None if is_dynamic(a) else int(a.inputs[0].shape[-1])
            files.append({"name": a.file_name, "path": str(a.path.resolve()), "runtime": a.runtime,
                          "input_names": [t.name for t in a.inputs], "static_length": static,
                          "max_length": file_max_length(a, max_length)})
        job = {"inputs": str(work / "in.npz"), "steady_runs": steady_runs, "files": files, "lengths": list(lengths)}
        (work / "job.json").write_text(json.dumps(job))
        marks_path = work / "marks.txt"
        command = env.command(qemu_cpu, marks_path, ["-m", "pipeline.verify.arm64.cost_worker", str(work / "job.json")])
        started = time.perf_counter()
        timeout = 900 + 600 * len(files) * max(1, len(rows))
        tail: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work,
                              env=_worker_env(env, hash_seed)) as proc:
            try:
                for line in proc.stdout:
                    line = line.rstrip()
                    if line.startswith("worker: "):
                        log(f"    cost [{profile}] [{time.perf_counter() - started:5.0f} s] {line[8:]}")
                    elif line:
                        tail = (tail + [line])[-5:]
                cpu = _reap(proc, timeout - (time.perf_counter() - started))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                raise
        out_path = work / "job.out.json"
        if proc.returncode != 0 or not out_path.is_file():
            why = next((l for l in reversed(tail) if l.strip()), "no output")
            raise PipelineError(f"the emulated cost worker failed (qemu -cpu {qemu_cpu}, exit {proc.returncode}): "
                                f"{why[:300]}; re-provision with: {SETUP_COMMAND}")
        out = json.loads(out_path.read_text())
        marks, threads = _marks(marks_path)
    if len(marks) != out["markers"]:
        raise PipelineError(f"the counting plugin recorded {len(marks)} of {out['markers']} markers (qemu -cpu {qemu_cpu})")

    def span(pair) -> int:
        return marks[pair[1]] - marks[pair[0]]

    counts: dict[str, dict[int, dict[str, int]]] = {}
    spread = 0.0
    fed: dict[str, dict[int, int]] = {}
    runs: dict[str, dict[int, list[int]]] = {}
    for entry in out["plan"]:
        steady = sorted(span(p) for p in entry["steady"])
        counts.setdefault(entry["file"], {})[entry["length"]] = {"steady": steady[0], "first": span(entry["first"])}
        fed.setdefault(entry["file"], {})[entry["length"]] = entry["fed_length"]
        runs.setdefault(entry["file"], {})[entry["length"]] = [span(p) for p in entry["steady"]]
        if steady[0]:
            spread = max(spread, (steady[-1] - steady[0]) / steady[0])
    errors = {name: f["error"] for name, f in out["files"].items() if f.get("error")}
    alive = max(threads.values(), default=1)
    if alive > 1:  # counts are exact for one thread; idle threads add nothing, but nothing proves they were idle
        log(f"  cost [{profile}]: WARNING {alive} guest threads alive at a marker: another thread may have added "
            "to the counts")
    return {"counts": counts, "qemu_cpu": qemu_cpu, "description": PROFILES[profile][1], "hwcaps": out.get("hwcaps"),
            "errors": errors,
            "fed_lengths": fed, "steady_counts": runs, "threads_alive": alive, "steady_spread": spread, "marker_overhead": min(span(p) for p in out["empty"]),
            "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(cpu, 1)}


def count_costs(artifacts: list[Artifact], run: CostRun | None = None, *, encoded=None, tokenizer=None,
                log: Log = print) -> dict:
    """aarch64 instructions per inference of every .pte / .tflite in `artifacts`, per CPU profile and input length.

    lengths: token counts, "max" = each file's max_length (a static file's fixed length; `max_length` for dynamic
    files, normally the manifest's); lengths a file does not take are left out for it. A dynamic file gets [1, L],
    a static one is fed L real tokens padded to its fixed length (the count is then that of the fixed length).
    Inputs: `encoded` (real texts, preferred) or `tokenizer` (random ordinary ids), see cost_rows.
    jobs: emulator processes at once (default: one per profile, at most 2); counts do not depend on it.
    workdir: where each emulator's job folder (inputs, marker file) is made, and its working directory; default
    the system's temporary directory. hash_seed: the guest's PYTHONHASHSEED (None: the guest picks one).

    Returns plain data (JSON-ready but for the int length keys):
        {"counts": {profile: {file: {length: {"steady": int, "first": int}}}},
         "qemu": "qemu-aarch64 version ...", "plugin": "cost_plugin 1 <sha256 of cost_plugin.c, 12 hex>",
         "threads": 1, "steady_runs": n, "lengths": [...requested], "hash_seed": ...,
         "profiles": {profile: {"qemu_cpu", "description", "hwcaps", "errors": {file: why}, "fed_lengths": {file: {L: fed}},
                                "steady_counts": {file: {L: [each steady run]}},
                                "threads_alive": most guest threads alive at a marker (1 expected), "steady_spread": max relative spread of the steady runs, "marker_overhead": int,
                                "seconds", "cpu_seconds"}},
         "not_counted": {file: why}, "seconds": float}
    A file the aarch64 runtime cannot load or run is in profiles[p]["errors"] and absent from counts (for the caller
    to fail); MediaPipe files (no aarch64 runtime here) are in not_counted."""
    run = replace(run or CostRun(), profiles=list(dict.fromkeys((run or CostRun()).profiles)))
    run = replace(run, lengths=list(run.lengths), env=run.env or find_counting_env())
    profiles, lengths, max_length, steady_runs = run.profiles, run.lengths, run.max_length, run.steady_runs
    env, hash_seed = run.env, run.hash_seed
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise PipelineError(f"unknown CPU profile {unknown[0]!r}; choose from {', '.join(PROFILES)}")
    if steady_runs < 1:
        raise PipelineError("steady_runs must be at least 1")
    not_counted = {a.file_name: f"{a.runtime}: no aarch64 runtime here (its plain .tflite twin is counted)"
                   for a in artifacts if a.runtime not in COUNTED_RUNTIMES}
    artifacts = [a for a in artifacts if a.runtime in COUNTED_RUNTIMES]
    needed = set()
    for a in artifacts:
        limit = file_max_length(a, max_length)
        if limit is None and "max" in lengths:
            raise PipelineError(f"{a.file_name}: dynamic file of unknown max_length; pass max_length (the manifest's)")
        needed.update(resolve_lengths(lengths, limit))
    rows = cost_rows(needed, encoded=encoded, tokenizer=tokenizer) if needed else {}
    started = time.perf_counter()
    jobs = max(1, min(run.jobs or min(len(profiles), 2), len(profiles) or 1))
    log(f"  cost: {len(artifacts)} file(s) x {len(profiles)} profile(s) ({', '.join(profiles)}) x lengths "
        f"{sorted(needed)}, 1 thread, first + {steady_runs} steady inferences each, {jobs} emulator(s) at once")
    results: dict[str, dict] = {}
    failures: list[BaseException] = []

    def count(profile: str) -> None:
        try:
            results[profile] = count_profile(profile, run, artifacts, rows, log)
        except BaseException as err:  # noqa: BLE001  re-raised in the caller's thread
            failures.append(err)

    pending = list(profiles)
    while pending and not failures:
        batch, pending = pending[:jobs], pending[jobs:]
        threads = [threading.Thread(target=count, args=(p,)) for p in batch]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]
    seconds = round(time.perf_counter() - started, 1)
    for profile in profiles:
        r = results[profile]
        for name, why in r["errors"].items():
            log(f"  cost [{profile}]: {name}: cannot run on aarch64: {why}")
        log(f"  cost [{profile}]: {sum(len(v) for v in r['counts'].values())} counts in {r['seconds']:.0f} s "
            f"({r['cpu_seconds']:.0f} s CPU), steady runs agree within {r['steady_spread'] * 1e6:.0f} ppm")
    return {"counts": {p: results[p].pop("counts") for p in profiles}, "qemu": env.qemu_version,
            "plugin": env.plugin_version, "threads": 1, "steady_runs": steady_runs, "lengths": lengths,
            "hash_seed": hash_seed, "profiles": {p: results[p] for p in profiles}, "not_counted": not_counted,
            "seconds": seconds}


# ------------------------------------------------------------------------------------------------------ gating

def _counts_of(data: dict) -> dict:
    """The {profile: {file: {length: {...}}}} part of a count_costs result (or that mapping itself), with int
    length keys (JSON turns them into strings)."""
    counts = data.get("counts", data) if isinstance(data, dict) else {}
    return {profile: {name: {int(length): value for length, value in per_length.items()}
                      for name, per_length in files.items()}
            for profile, files in counts.items()}


def _millions(n: float) -> str:
    return f"{n / 1e6:.4g} M"


def compare_costs(current: dict, baseline: dict, max_increase: float) -> tuple[list[str], list[str]]:
    """Gate steady-state counts against a baseline: (failures, notes).

    A (profile, file, length) whose steady count exceeds (1 + max_increase) x the baseline's fails with one line:
        cost drift: albert.int8.pte [i8mm, 128 tokens]: 212.9 M instructions > 1.05 x baseline 202.6 M (+5.1%)
    Counts absent from the baseline (a new file, profile or length) are notes, never failures; so are baseline
    counts not measured now, counts that fell by more than max_increase (time to renew the baseline), and counts
    from another QEMU or plugin version (when both sides carry them: such counts may differ by themselves).
    `current` and `baseline` are count_costs results or their "counts" mappings (also after a JSON round trip)."""
    if not isinstance(current, dict) or not isinstance(baseline, dict):
        raise PipelineError("cost comparison needs count_costs results (or their \"counts\" mappings)")
    if max_increase is None or not max_increase >= 0:
        raise PipelineError(f"[thresholds.cost] max_increase must be a number >= 0, not {max_increase!r}")
    now, base = _counts_of(current), _counts_of(baseline)
    failures, notes = [], []
    for key in ("qemu", "plugin"):
        a, b = current.get(key), baseline.get(key)
        if a and b and a != b:
            notes.append(f"cost: counted with {key} {a!r}, the baseline with {b!r}: counts may differ by that alone")
    factor = 1 + max_increase
    for profile, files in now.items():
        for name, per_length in files.items():
            for length, value in sorted(per_length.items()):
                where = f"{name} [{profile}, {length} tokens]"
                steady = value["steady"]
                old = base.get(profile, {}).get(name, {}).get(length)
                if old is None:
                    notes.append(f"cost: {where}: {_millions(steady)} instructions, not in the baseline (not gated)")
                    continue
                reference = old["steady"]
                change = (steady - reference) / reference if reference else float("inf")
                if steady > factor * reference:
                    failures.append(f"cost drift: {where}: {_millions(steady)} instructions > {factor:.4g} x baseline "
                                    f"{_millions(reference)} ({change:+.1%})")
                elif steady * factor < reference:
                    notes.append(f"cost: {where}: {_millions(steady)} instructions, {change:+.1%} vs baseline "
                                 f"{_millions(reference)} (cheaper: the baseline can be renewed)")
    for profile, files in base.items():
        for name, per_length in files.items():
            for length in sorted(per_length):
                if length not in now.get(profile, {}).get(name, {}):
                    notes.append(f"cost: {name} [{profile}, {length} tokens]: in the baseline, not counted now")
    return failures, notes
