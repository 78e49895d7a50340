"""`pipeline bench`: size, load time, latency and peak memory of every artifact in a target folder, measured
in one run side by side with eager PyTorch fp32 and ONNX Runtime (fp32 and dynamic int8) of the same model.

How the numbers are taken (see docs/on_device_benchmarks.md):

- Candidates: every model file of the folder's manifest.json; eager PyTorch fp32 twice (transformers'
  AlbertForSequenceClassification, the float reference, and the project's export model); ONNX Runtime fp32
  on a `torch.onnx.export` of the export model, and ONNX Runtime dynamic int8
  (`quant_pre_process` + `quantize_dynamic` of that file, every linear int8): the route a user would otherwise pick.
- Latency: one child process per thread setting (ExecuTorch's Python runtime takes its thread count only
  before the first program loads). It loads every candidate, runs warm-up calls (not counted), then
  `runs` rounds in which each candidate runs once, round-robin with a rotating start, so machine noise hits
  all alike. A short idle gap between timed calls lets spinning worker threads (ONNX Runtime, OpenMP)
  park, so one runtime's spin never lands on the next one's clock. Inputs cycle over real encoded reviews.
- Memory: one fresh child process per candidate. After its runtime is imported and the inputs are made,
  the kernel's peak-RSS counter is reset (/proc/self/clear_refs) and the baseline RSS read; the candidate
  is loaded and run; the reported peak is the peak RSS minus that baseline.
- Op profiles (at seq 128, or the folder's own length, with the largest thread count): each runtime's own
  profiler in one more child process: ExecuTorch's ETDump (XNNPACK's per-operator events) for every .pte,
  ONNX Runtime's node profile for both ORT files; LiteRT's Python interpreter has none.
- Sequence lengths (`--max-length`, the main table): inputs padded to that length. At a length other than the
  folder's own, only eager and ONNX Runtime run, unless `rebuild_lengths` is set: then the artifacts are rebuilt
  with `pipeline.build` at that length into a temporary folder (the stage cache makes repeats cheap).
- Latency against length (pipeline/bench/lengths.py): every file at 8, 16, 32, 64, 128 and its
  max_length, and the "workload" (eval texts at their real lengths), all files in one interleaved worker,
  beside a `--static DIR` folder's files; the variable-length targets as ratios; peak memory at 16 tokens and
  at max_length. `--lengths none` skips it.

Outputs (in --out, default the artifact folder): bench.json, bench.md (table + target checks), bench.png.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.artifact import Artifact, read_manifest, verify_files
from pipeline.bench.candidates import (BENCH_TEXTS, INPUT_NAMES, artifact_candidates, compared_candidates,
                                       eager_candidates, encode_rows, export_input_names, ort_candidates,
                                       rebuild_for_length, static_length)
from pipeline.bench.lengths import (CLOCKS, MEMORY_SHORT, length_candidates, shapes_of, length_rows, length_targets,
                                    max_length_checks, model_token_ids, planned_arena_bytes, sweep_lengths, write_length_inputs, write_workload)
from pipeline.bench.render import machine_info, plot, render_markdown, summary_lines
from pipeline.bench.targets import TARGET_LENGTH, check_targets, profile_hint
from pipeline.bench.worker import IDLE_GAP_S, PROFILE_RUNS, run_worker, summarize
from pipeline.core.config import PipelineConfig, check_fields
from pipeline.core.data import load_small_fine_foods
from pipeline.core.errors import PipelineError
from pipeline.core.options import BenchOptions
from pipeline.core.paths import check_output_folder
from pipeline.core.provenance import find_model_dir
from pipeline.core.tokenization import encode
from pipeline.runtimes.contained import run_contained
from pipeline.verify.validation import Evidence, file_job

Log = Callable[[str], None]
Rebuild = Callable[[PipelineConfig, Log], Path]  # a build of a config (pipeline.api passes pipeline.build.build)


def command_line(o: BenchOptions) -> str:
    parts = ["python -m pipeline bench", f"--artifacts {o.artifacts}", f"--threads {','.join(map(str, o.threads))}",
             f"--runs {o.runs}", f"--max-length {','.join(map(str, o.max_lengths))}"]
    if o.out:
        parts.append(f"--out {o.out}")
    if o.rebuild_lengths:
        parts.append("--rebuild-lengths")
    for other in o.compare:
        parts.append(f"--compare {other}")
    if o.static:
        parts.append(f"--static {o.static}")
    if not o.sweep:
        parts.append("--lengths none")
    elif o.lengths:
        parts.append(f"--lengths {','.join(map(str, o.lengths))}")
    if o.workload != 200:
        parts.append(f"--workload {o.workload}")
    if o.clock != "wall":
        parts.append(f"--clock {o.clock}")
    return " ".join(parts)


@dataclass
class BenchRun:
    """What every part of one bench run reads."""

    options: BenchOptions
    folder: Path
    manifest: dict
    model: object  # LoadedModel
    source: Path  # the checkpoint folder
    params: int
    warmup: int
    scratch: Path
    static: tuple[Path, dict] | None
    compare: dict[Path, dict]
    notes: list[str]
    log: Log


def length_sweep(run: BenchRun, inputs: Path, known_peak: dict[str, float]) -> tuple[dict, list[dict]]:
    """Latency against length, the workload figure and peak memory per file (pipeline/bench/lengths.py)."""
    o, folder, manifest, model, params = run.options, run.folder, run.manifest, run.model, run.params
    threads, runs, warmup, source, static, compare = o.threads, o.runs, run.warmup, run.source, run.static, run.compare
    scratch, log, notes = run.scratch, run.log, run.notes

    candidates = length_candidates(folder, manifest, params, static, compare)
    if static and static[1]["model"].get("source_sha256") != manifest["model"].get("source_sha256"):
        notes.append(f"--static {static[0]} was built from another checkpoint than {folder}: its ratios compare models too")
    extra = list(o.lengths or [])
    maxima = sorted({c["max_length"] for c in candidates})
    lengths = sweep_lengths(maxima, extra)
    count = o.workload
    texts = load_small_fine_foods("test").texts[:count] if count else []
    workload = write_workload(model, texts, set(maxima), scratch) if texts else {}
    vocab, cls_id, sep_id = model_token_ids(model)
    clock = o.clock
    try:
        load = [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:
        load = None
    rows: list[dict] = []
    for t in threads:
        log(f"[bench] latency against length {lengths} and workload ({len(texts)} texts) of {len(candidates)} files, "
            f"{t} thread(s), interleaved")
        got = run_worker({"mode": "lengths", "threads": t, "lengths": lengths, "runs": runs, "warmup": warmup,
                          "clock": clock, "vocab_size": vocab, "cls_id": cls_id, "sep_id": sep_id,
                          "max_lengths": {c["name"]: c["max_length"] for c in candidates},
                          "workload": {str(m): p for m, p in workload.items()}, "inputs": str(inputs),
                          "source": str(source), "candidates": candidates}, scratch, log)
        rows += length_rows(candidates, got, t)
    memory: dict[str, dict] = {}
    mem_threads = max(threads)
    log(f"[bench] peak memory at {MEMORY_SHORT} tokens and at max_length, one fresh process per file")
    for c in candidates:
        for label, n in ((str(MEMORY_SHORT), MEMORY_SHORT), ("max", c["max_length"])):
            if n > c["max_length"]:
                continue
            if label == "max" and c["role"] == "artifact" and known_peak.get(c["name"]) is not None:
                memory.setdefault(c["name"], {})[label] = known_peak[c["name"]]  # the main table's, at max_length
                continue
            path = write_length_inputs(n, vocab, cls_id, sep_id, scratch / f"mem{n}.npz")
            got = run_worker({"mode": "memory", "threads": mem_threads, "length": n, "inputs": str(path),
                              "source": str(source), "candidates": [c]}, scratch, log)
            memory.setdefault(c["name"], {})[label] = got["peak_delta_mb"]
    for c in candidates:
        if c["kind"] == "executorch":
            memory.setdefault(c["name"], {})["planned_bytes"] = planned_arena_bytes(c["path"])
    section = {"threads": threads, "lengths": lengths, "runs": runs, "warmup_runs": warmup, "clock": clock,
               "workload_texts": len(texts), "static": str(static[0]) if static else None, "load_average": load,
               "memory_threads": mem_threads, "memory": memory,
               "files": [{k: c[k] for k in ("name", "role", "runtime", "precision", "shapes", "max_length", "bytes")}
                         for c in candidates],
               "rows": rows}
    return section, length_targets(rows, threads) + max_length_checks(rows, threads)


def preflight(folders: dict[Path, dict], model, length: int, log: Log) -> None:
    """Every model file of the folders checked as `validate` checks it (listed, hashed, its inputs and outputs as
    its manifest entry says) and run once on real text in a contained child process before any timing: a file
    that is not what its manifest says, or that crashes or hangs its runtime, is one line naming it (exit 2)
    instead of a dead bench worker halfway through the rounds."""
    texts = ["this tea is great and i will buy it again"]
    count = 0
    for folder, manifest in folders.items():  # one child per folder: their files share names
        verify_files(folder, manifest)
        encoded = encode(model.tokenizer, texts, static_length(manifest) or length)
        evidence = Evidence(encoded, texts, np.zeros((1, 1), np.float32))
        jobs = [file_job(Artifact.from_dict(folder, e), evidence)
                for e in manifest["files"] if e.get("runtime") in ("executorch", "litert")]
        outputs = run_contained(jobs)
        for job in jobs:
            got = outputs.get(job.artifact.file_name)
            if got is None or got.error is not None:
                raise PipelineError(got.error if got is not None else "no outputs came back", job.artifact.path)
        count += len(jobs)
    log(f"[bench] {count} model files checked against their manifests and run once")


def bench(options: BenchOptions, log: Log = print, rebuild_with: Rebuild | None = None) -> int:
    """`rebuild_with` rebuilds the folder's artifacts at another length (api.bench passes the build)."""
    from pipeline.model.checkpoint import load_checkpoint

    check_fields(options, "bench")
    folder = Path(options.artifacts)
    manifest = read_manifest(folder)
    threads, lengths, runs = list(dict.fromkeys(options.threads)), list(dict.fromkeys(options.max_lengths)), options.runs
    if not threads or not lengths:
        raise PipelineError("--threads and --max-length need at least one value")
    out_dir = Path(options.out) if options.out else folder
    check_output_folder(out_dir, "bench output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rebuild = options.rebuild_lengths
    if rebuild and rebuild_with is None:
        raise PipelineError("rebuild_lengths needs a build to rebuild with (pipeline.api.bench passes it)")
    # read before anything runs: a bad folder is a clear error, not a failure halfway through
    compare = {Path(c): read_manifest(Path(c)) for c in options.compare}
    static = (Path(options.static), read_manifest(Path(options.static))) if options.static else None
    sweep = options.sweep
    own_length = static_length(manifest)
    source = find_model_dir(manifest["model"])
    started = time.perf_counter()
    log(f"bench: {folder} ({own_length} tokens, {shapes_of(manifest)}), lengths {lengths}, threads {threads}, {runs} runs")
    model = load_checkpoint(source)
    preflight({folder: manifest, **compare, **({static[0]: static[1]} if static else {})}, model, own_length, log)
    params = int(manifest["model"].get("params") or model.num_parameters)
    names = export_input_names(manifest)
    warmup = max(2, min(10, runs // 5))

    has_target_artifacts = TARGET_LENGTH in lengths and (TARGET_LENGTH == own_length or rebuild)
    profile_length = TARGET_LENGTH if has_target_artifacts else (own_length if own_length in lengths else None)
    op_profile: dict | None = None

    scratch = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    length_section: dict | None = None
    length_checks: list[dict] = []
    rows: list[dict] = []
    notes: list[str] = []
    twins = [f["path"] for f in manifest["files"] if f.get("runtime") == "mediapipe"]
    if twins:
        notes.append(f"not timed here: {', '.join(twins)} (MediaPipe TextClassifier, text in; the same graph as the "
                     "plain .tflite plus an int32 cast and a softmax)")
    length_sources: dict[int, str] = {}
    try:
        for length in lengths:
            candidates = []
            if length == own_length:
                candidates += artifact_candidates(folder, manifest, params)
                length_sources[length] = f"bundled artifacts of {folder}"
            elif rebuild:
                log(f"[bench] seq {length}: rebuilding the artifacts at this length (stage cache on)")
                rebuilt = rebuild_for_length(manifest, length, scratch / f"rebuild{length}", options.cache_dir,
                                             lambda config: rebuild_with(config, lambda m: log(f"  [rebuild seq {length}] {m}")))
                candidates += [{**c, "origin": f"rebuilt at seq {length}"}
                               for c in artifact_candidates(rebuilt, read_manifest(rebuilt), params)]
                length_sources[length] = f"artifacts rebuilt at seq {length} with default build settings"
            else:
                length_sources[length] = (f"no artifacts: they are static at seq {own_length}; only eager PyTorch and "
                                          "ONNX Runtime ran (pass rebuild_lengths to rebuild them)")
                notes.append(f"seq {length}: {length_sources[length]}")
            for other, other_manifest in compare.items():
                added = compared_candidates(other, other_manifest, length)
                if not added:
                    notes.append(f"seq {length}: --compare {other} has no artifacts at this length")
                candidates += added
            candidates += eager_candidates(model, source, params)
            log(f"[bench] seq {length}: exporting ONNX, quant_pre_process, quantize_dynamic")
            candidates += ort_candidates(model, length, names, scratch, params)
            inputs = encode_rows(model, length, scratch / f"inputs{length}.npz")
            for t in threads:
                log(f"[bench] seq {length}, {t} thread(s): latency of {len(candidates)} candidates, interleaved")
                latency = run_worker({"mode": "latency", "threads": t, "length": length, "runs": runs, "warmup": warmup,
                                      "inputs": str(inputs), "source": str(source), "candidates": candidates}, scratch, log)
                for c in candidates:
                    got = latency[c["name"]]
                    rows.append({**{k: v for k, v in c.items() if k != "input_names"}, "seq": length, "threads": t,
                                 "load_ms": got["load_ms"], **summarize(got["latencies_s"]),
                                 # another model's logits: no comparison with this model's
                                 "max_abs_diff_vs_export_model": None if c.get("compared")
                                 else got["max_abs_diff_vs_export_model"]})
            if length == profile_length:
                profiled = [c for c in candidates if c["kind"] in ("executorch", "ort") and not c.get("compared")]
                log(f"[bench] seq {length}: op-level profiles of {len(profiled)} candidates ({max(threads)} threads)")
                try:
                    op_profile = {"seq": length, "threads": max(threads), "runs": PROFILE_RUNS,
                                  "candidates": run_worker({"mode": "profile", "threads": max(threads), "length": length,
                                                            "inputs": str(inputs), "source": str(source),
                                                            "candidates": profiled}, scratch, log)}
                except PipelineError as err:  # diagnostics: never lose the measured numbers over them
                    notes.append(f"op profiles unavailable: {err}")
            mem_threads = max(threads)
            log(f"[bench] seq {length}: peak memory, one fresh process per candidate ({mem_threads} threads)")
            for c in candidates:
                if c.get("compared"):  # latency and size only: one process per candidate is costly
                    continue
                memory = run_worker({"mode": "memory", "threads": mem_threads, "length": length, "inputs": str(inputs),
                                     "source": str(source), "candidates": [c]}, scratch, log)
                for row in rows:
                    if row["name"] == c["name"] and row["seq"] == length:
                        row.update({"peak_rss_delta_mb": memory["peak_delta_mb"], "baseline_rss_mb": memory["baseline_mb"],
                                    "memory_method": memory["method"], "memory_threads": mem_threads})
        if sweep:
            inputs = encode_rows(model, own_length, scratch / "inputs-lengths.npz")
            run = BenchRun(options, folder, manifest, model, source, params, warmup, scratch, static, compare, notes, log)
            length_section, length_checks = length_sweep(run, inputs, {r["name"]: r.get("peak_rss_delta_mb") for r in rows
                                                                       if r["seq"] == own_length and r["origin"] == "artifact"})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for row in rows:
        eager = next((r for r in rows if r["kind"] == "torch-hf" and r["seq"] == row["seq"] and r["threads"] == row["threads"]),
                     None) or next((r for r in rows if r["kind"] == "torch-export" and r["seq"] == row["seq"]
                                    and r["threads"] == row["threads"]), None)
        row["vs_eager"] = round(row["median_ms"] / eager["median_ms"], 4) if eager else None

    target_length = TARGET_LENGTH if any(r["seq"] == TARGET_LENGTH and r["origin"] != "checkpoint weights file"
                                         and r["kind"] in ("executorch", "litert") for r in rows) else own_length
    if target_length != TARGET_LENGTH:
        notes.append(f"the targets are defined at seq {TARGET_LENGTH}; no artifacts ran at that length in this run, "
                     f"so they were checked at seq {target_length}")
    targets = check_targets(rows, target_length, threads, params) + length_checks
    result = {
        "command": command_line(options),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "seconds": round(time.perf_counter() - started, 1),
        "artifacts": str(folder),
        "model": {k: manifest["model"].get(k) for k in ("name", "params", "source_sha256", "max_length")},
        "shape_contract": manifest.get("shape_contract") or {"shapes": "static"},
        "machine": machine_info(),
        "settings": {"threads": threads, "max_lengths": lengths, "runs": runs, "warmup_runs": warmup,
                     "idle_gap_ms": IDLE_GAP_S * 1000, "inputs": f"{BENCH_TEXTS} small_fine_foods test reviews, cycled",
                     "length_sources": {str(k): v for k, v in length_sources.items()}},
        "rows": rows,
        "targets": targets,
        "notes": notes,
    }
    if length_section:
        result["lengths"] = length_section
    if op_profile:
        result["op_profile"] = op_profile
    profile = profile_hint(manifest, folder, targets, model, target_length)
    if profile:
        result["profile"] = profile
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "bench.md").write_text(render_markdown(result))
    try:
        plot(result, out_dir / "bench.png")
    except Exception as err:  # a chart is a convenience; never lose the numbers over it
        log(f"[bench] no chart ({type(err).__name__}: {err})")
    for line in summary_lines(result):
        log(line)
    log(f"[bench] wrote {out_dir / 'bench.json'}, bench.md, bench.png")
    return 0



__all__ = ["bench", "check_targets", "render_markdown", "INPUT_NAMES", "ort_candidates"]
