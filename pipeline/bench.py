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
- Sequence lengths: the artifacts are static-shape. At a length other than the folder's own, only eager
  and ONNX Runtime run, unless `rebuild_lengths` is set: then the artifacts are rebuilt with
  `pipeline.build` at that length into a temporary folder (the stage cache makes repeats cheap).

Outputs (in --out, default the artifact folder): bench.json, bench.md (table + target checks), bench.png.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.artifact import read_manifest
from pipeline.console import attach_from_env, child_progress, progress
from pipeline.errors import PipelineError
from pipeline.provenance import find_model_dir

Log = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_LENGTH = 128  # the targets are defined at sequence length 128
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
BENCH_TEXTS = 16  # real reviews cycled through as inputs
IDLE_GAP_S = 0.05  # between timed calls: lets spinning thread pools (ONNX Runtime, OpenMP) park; 3 ms was too short (see bench.md)
MEMORY_RUNS = 5
WORKER_TIMEOUT_S = 3600
ONNX_OPSET = 17

# Target checks (issue 6), evaluated at seq 128 on ratios from one run.
LATENCY_VS_EAGER = 0.5
PTE_FP32_VS_TFLITE_FP32 = 1.2
INT8_BYTES_PER_PARAM = 1.15


# --------------------------------------------------------------------------------------------------- parent side


def parse_int_list(text: str | int | None, what: str) -> list[int]:
    if text is None:
        return []
    if isinstance(text, int):
        return [text]
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise PipelineError(f"--{what} takes a comma list of positive integers, not {text!r}") from None
        if value < 1:
            raise PipelineError(f"--{what} values must be 1 or more, not {value}")
        values.append(value)
    if not values:
        raise PipelineError(f"--{what} is empty")
    return list(dict.fromkeys(values))


def model_files(manifest: dict) -> list[dict]:
    return [f for f in manifest["files"] if f.get("runtime") in ("executorch", "litert")]


def artifact_candidates(folder: Path, manifest: dict, params: int) -> list[dict]:
    out = []
    for entry in model_files(manifest):
        path = folder / entry["path"]
        if not path.is_file():
            raise PipelineError("model file named in manifest.json is missing", path)
        size = path.stat().st_size
        out.append({
            "name": entry["path"], "kind": entry["runtime"], "runtime": entry["runtime"],
            "precision": entry.get("precision", "?"), "path": str(path),
            "input_names": [t["name"] for t in entry.get("inputs", [])] or INPUT_NAMES,
            "bytes": size, "bytes_per_parameter": round(size / params, 4), "origin": "artifact",
        })
    return out


def static_length(manifest: dict) -> int:
    """The sequence length the folder's files were built for (0 if the manifest does not say)."""
    return int(manifest["model"].get("max_length") or manifest.get("tokenizer", {}).get("max_length") or 0)


def compared_candidates(folder: Path, manifest: dict, length: int) -> list[dict]:
    """`--compare`: another folder's model files (e.g. a model variant), run in the same interleaved rounds.
    Their rows are marked `compared` and never count for this folder's targets."""
    if static_length(manifest) != length:
        return []
    label = manifest["model"].get("name") or folder.name
    params = int(manifest["model"]["params"])
    return [{**c, "name": f"{label}: {c['name']}", "compared": True, "origin": f"--compare {folder}",
             "params": params} for c in artifact_candidates(folder, manifest, params)]


def export_input_names(manifest: dict) -> list[str]:
    for entry in model_files(manifest):
        if entry["runtime"] == "executorch" and entry.get("inputs"):
            return [t["name"] for t in entry["inputs"]]
    return list(INPUT_NAMES)


def export_onnx(model, length: int, names: list[str], path: Path) -> None:
    """A plain torch.onnx.export of the export model at [1, length] (what a user would do first)."""
    import warnings

    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            named = dict(zip(names, args))
            return self.inner(named["input_ids"], named["attention_mask"], named.get("token_type_ids"))

    args = tuple(torch.ones(1, length, dtype=torch.int64) if n == "attention_mask" else
                 torch.zeros(1, length, dtype=torch.int64) for n in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model.export_model.eval()), args, str(path), input_names=names,
                          output_names=["logits"], opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)


def ort_candidates(model, length: int, names: list[str], scratch: Path, params: int) -> list[dict]:
    """ONNX Runtime fp32 and dynamic int8 of the export model, by ONNX Runtime's documented route.

    `quant_pre_process` before `quantize_dynamic` is not optional here: the exporter feeds ALBERT's shared
    weights to layers 2..N through Identity nodes, and quantize_dynamic only quantizes a MatMul whose weight is
    an initializer, so without it 30 of 39 linears stayed fp32 (13.3 MB, 2.23 B/param instead of 6.2 MB).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = scratch / f"ort.seq{length}.fp32.onnx"
    prepared = scratch / f"ort.seq{length}.fp32-preprocessed.onnx"
    int8 = scratch / f"ort.seq{length}.int8.onnx"
    export_onnx(model, length, names, fp32)
    quant_pre_process(str(fp32), str(prepared))
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(prepared), str(int8), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    out = []
    for path, precision, label in ((fp32, "fp32", "onnxruntime fp32"), (int8, "int8-dynamic", "onnxruntime dynamic int8")):
        size = path.stat().st_size
        out.append({"name": label, "kind": "ort", "runtime": "onnxruntime", "precision": precision, "path": str(path),
                    "input_names": names, "bytes": size, "bytes_per_parameter": round(size / params, 4),
                    "origin": "torch.onnx.export" + (" + quant_pre_process + quantize_dynamic" if precision != "fp32" else "")})
    return out


def eager_candidates(model, source: Path, params: int) -> list[dict]:
    weights = next((source / n for n in ("model.safetensors", "pytorch_model.bin") if (source / n).is_file()), None)
    size = weights.stat().st_size if weights else 0
    common = {"runtime": "pytorch", "precision": "fp32", "path": str(source), "input_names": list(INPUT_NAMES),
              "bytes": size, "bytes_per_parameter": round(size / params, 4), "origin": "checkpoint weights file"}
    out = []
    if model.reference is not model.export_model:
        out.append({**common, "name": f"eager PyTorch fp32 ({model.reference_kind})", "kind": "torch-hf"})
    out.append({**common, "name": "eager PyTorch fp32 (export model)", "kind": "torch-export"})
    return out


def encode_rows(model, length: int, path: Path) -> Path:
    from pipeline.data import load_small_fine_foods
    from pipeline.tokenization import encode

    try:
        texts = load_small_fine_foods("test").texts[:BENCH_TEXTS]
    except PipelineError:
        texts = ["this tea is great and i will buy it again"] * BENCH_TEXTS
    encoded = encode(model.tokenizer, texts, length)
    np.savez(path, input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
             token_type_ids=encoded.token_type_ids)
    return path


def run_worker(job: dict, scratch: Path, log: Log) -> dict:
    """Run one job in a fresh interpreter; its result comes back through a JSON file."""
    job_path = Path(tempfile.mkstemp(dir=scratch, prefix="job-", suffix=".json")[1])
    result_path = job_path.with_suffix(".result.json")
    job["result_path"] = str(result_path)
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    threads = str(job["threads"])
    env["OMP_NUM_THREADS"] = threads  # torch's OpenMP pool; torch.set_num_threads is called as well
    progress_env, progress_fds = child_progress()  # the worker's rounds show progress on this console
    env.update(progress_env)
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench", str(job_path)], env=env, capture_output=True,
                          text=True, timeout=WORKER_TIMEOUT_S, pass_fds=progress_fds)
    if proc.returncode != 0 or not result_path.is_file():
        tail = " | ".join(line for line in (proc.stderr or "").strip().splitlines()[-3:])
        raise PipelineError(f"bench worker ({job['mode']}) failed with exit code {proc.returncode}: {tail[-600:]}")
    log(f"  worker {job['mode']} ({', '.join(c['name'] for c in job['candidates'])[:80]}): "
        f"{time.perf_counter() - began:.1f} s")
    return json.loads(result_path.read_text())


def rebuild_for_length(manifest: dict, length: int, out_root: Path, cache_dir: str | None, log: Log) -> Path:
    """The folder's artifacts rebuilt at another static length (default build settings, stage cache on)."""
    from pipeline.build import build
    from pipeline.config import PipelineConfig

    config = PipelineConfig()
    b = config.build
    b.model_dir = str(find_model_dir(manifest["model"]))
    b.out_dir = str(out_root)
    b.max_length = length
    b.target = manifest.get("target", "android")
    b.runtimes = sorted({f["runtime"] for f in model_files(manifest)})
    b.precisions = sorted({f["precision"].split("-")[0] for f in model_files(manifest)})
    b.eval_limit = 64
    b.copy_to_apps = False
    if cache_dir:
        b.cache_dir = cache_dir
    return build(config, lambda m: log(f"  [rebuild seq {length}] {m}"))


def summarize(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4),
            "max_ms": round(float(ms.max()), 4), "runs": int(ms.size)}


def command_line(args) -> str:
    parts = ["python -m pipeline bench", f"--artifacts {args.artifacts}", f"--threads {args.threads}",
             f"--runs {args.runs}", f"--max-length {args.max_length}"]
    if getattr(args, "out", None):
        parts.append(f"--out {args.out}")
    if getattr(args, "rebuild_lengths", False):
        parts.append("--rebuild-lengths")
    for other in getattr(args, "compare", None) or []:
        parts.append(f"--compare {other}")
    return " ".join(parts)


def bench(args, log: Log = print) -> int:
    from pipeline.model.checkpoint import load_checkpoint

    folder = Path(args.artifacts)
    manifest = read_manifest(folder)
    threads = parse_int_list(args.threads, "threads")
    lengths = parse_int_list(args.max_length, "max-length")
    runs = int(args.runs)
    if runs < 1:
        raise PipelineError(f"--runs must be 1 or more, not {runs}")
    out_dir = Path(args.out) if getattr(args, "out", None) else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    rebuild = bool(getattr(args, "rebuild_lengths", False))
    # read before anything runs: a bad folder is a clear error, not a failure halfway through
    compare = {Path(c): read_manifest(Path(c)) for c in (getattr(args, "compare", None) or [])}
    own_length = static_length(manifest)
    source = find_model_dir(manifest["model"])
    started = time.perf_counter()
    log(f"bench: {folder} ({own_length} tokens, static), lengths {lengths}, threads {threads}, {runs} runs")
    model = load_checkpoint(source)
    params = int(manifest["model"].get("params") or model.num_parameters)
    names = export_input_names(manifest)
    warmup = max(2, min(10, runs // 5))

    has_target_artifacts = TARGET_LENGTH in lengths and (TARGET_LENGTH == own_length or rebuild)
    profile_length = TARGET_LENGTH if has_target_artifacts else (own_length if own_length in lengths else None)
    op_profile: dict | None = None

    scratch = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    rows: list[dict] = []
    notes: list[str] = []
    length_sources: dict[int, str] = {}
    try:
        for length in lengths:
            candidates = []
            if length == own_length:
                candidates += artifact_candidates(folder, manifest, params)
                length_sources[length] = f"bundled artifacts of {folder}"
            elif rebuild:
                log(f"[bench] seq {length}: rebuilding the artifacts at this length (stage cache on)")
                rebuilt = rebuild_for_length(manifest, length, scratch / f"rebuild{length}",
                                             getattr(args, "cache_dir", None), log)
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
    targets = check_targets(rows, target_length, threads, params)
    result = {
        "command": command_line(args),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "seconds": round(time.perf_counter() - started, 1),
        "artifacts": str(folder),
        "model": {k: manifest["model"].get(k) for k in ("name", "params", "source", "max_length")},
        "machine": machine_info(),
        "settings": {"threads": threads, "max_lengths": lengths, "runs": runs, "warmup_runs": warmup,
                     "idle_gap_ms": IDLE_GAP_S * 1000, "inputs": f"{BENCH_TEXTS} small_fine_foods test reviews, cycled",
                     "length_sources": {str(k): v for k, v in length_sources.items()}},
        "rows": rows,
        "targets": targets,
        "notes": notes,
    }
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


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "processor": platform.processor()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for package in ("torch", "executorch", "ai-edge-litert", "onnxruntime", "transformers", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


# ------------------------------------------------------------------------------------------------------ targets


def _pick(rows: list[dict], seq: int, threads: int, kind: str, precision: str) -> dict | None:
    for r in rows:
        if r.get("compared"):  # another model's files (--compare) never stand in for this folder's
            continue
        if r["seq"] == seq and r["threads"] == threads and r["kind"] == kind and r["precision"].startswith(precision):
            return r
    return None


def _latency_check(name: str, mine: dict | None, other: dict | None, factor: float, threads: int, seq: int) -> dict:
    check = {"target": name, "seq": seq, "threads": threads, "limit_ratio": factor}
    if mine is None or other is None:
        missing = [label for label, row in (("artifact", mine), ("baseline", other)) if row is None]
        return {**check, "status": "N/A", "detail": f"not measured in this run ({', '.join(missing)} missing)"}
    ratio = mine["median_ms"] / other["median_ms"]
    passed = ratio <= factor
    over = ratio / factor - 1.0
    detail = (f"{mine['name']} {mine['median_ms']:.3f} ms vs {other['name']} {other['median_ms']:.3f} ms: "
              f"{ratio:.3f}x (limit {factor:g}x)")
    detail += "" if passed else f"; {over * 100:.1f}% too slow, {mine['median_ms'] - factor * other['median_ms']:.3f} ms over"
    return {**check, "status": "PASS" if passed else "MISS", "ratio": round(ratio, 4),
            "over_by_percent": None if passed else round(over * 100, 1), "detail": detail,
            "subject": mine["name"], "baseline": other["name"]}


def check_targets(rows: list[dict], seq: int, threads: list[int], params: int) -> list[dict]:
    checks = []
    for t in threads:
        pte8 = _pick(rows, seq, t, "executorch", "int8")
        pte32 = _pick(rows, seq, t, "executorch", "fp32")
        tfl8 = _pick(rows, seq, t, "litert", "int8")
        tfl32 = _pick(rows, seq, t, "litert", "fp32")
        eager = _pick(rows, seq, t, "torch-hf", "fp32") or _pick(rows, seq, t, "torch-export", "fp32")
        ort8 = _pick(rows, seq, t, "ort", "int8")
        checks.append(_latency_check("int8 .pte latency <= 0.5 x eager PyTorch fp32", pte8, eager, LATENCY_VS_EAGER, t, seq))
        checks.append(_latency_check("int8 .pte latency <= ONNX Runtime dynamic int8", pte8, ort8, 1.0, t, seq))
        checks.append(_latency_check("int8 .tflite latency <= ONNX Runtime dynamic int8", tfl8, ort8, 1.0, t, seq))
        checks.append(_latency_check("fp32 .pte latency <= 1.2 x fp32 .tflite", pte32, tfl32, PTE_FP32_VS_TFLITE_FP32, t, seq))
    seen = set()
    for r in rows:
        if (r["kind"] not in ("executorch", "litert") or not r["precision"].startswith("int8") or r["name"] in seen
                or r.get("compared")):
            continue
        seen.add(r["name"])
        limit = INT8_BYTES_PER_PARAM * params
        passed = r["bytes"] <= limit
        detail = f"{r['bytes']:,} bytes for {params:,} parameters: {r['bytes'] / params:.3f} B/param (limit {INT8_BYTES_PER_PARAM})"
        if not passed:
            detail += f"; {r['bytes'] - limit:,.0f} bytes ({(r['bytes'] / limit - 1) * 100:.1f}%) over"
        checks.append({"target": f"{r['name']} bytes <= 1.15 x parameters", "seq": None, "threads": None,
                       "limit_ratio": INT8_BYTES_PER_PARAM, "ratio": round(r["bytes"] / params, 4),
                       "status": "PASS" if passed else "MISS",
                       "over_by_percent": None if passed else round((r["bytes"] / limit - 1) * 100, 1),
                       "detail": detail, "subject": r["name"]})
    if not seen:
        checks.append({"target": "every int8 artifact bytes <= 1.15 x parameters", "status": "N/A",
                       "detail": "no int8 artifact in this folder"})
    return checks


def profile_hint(manifest: dict, folder: Path, targets: list[dict], model, length: int) -> dict | None:
    """When a .pte latency target is missed: what stayed outside XNNPACK (from the manifest's delegation
    report) and where eager time goes op by op (torch.profiler of the export model)."""
    missed = [t for t in targets if t["status"] == "MISS" and ".pte" in str(t.get("subject", ""))
              and "latency" in t["target"]]
    if not missed:
        return None
    hint: dict = {"missed": list(dict.fromkeys(t["target"] for t in missed)), "pte_delegation": {}}
    for entry in model_files(manifest):
        if entry["runtime"] == "executorch":
            delegation = (entry.get("details") or {}).get("delegation")
            if delegation:
                hint["pte_delegation"][entry["path"]] = {k: delegation.get(k) for k in
                                                         ("delegates", "undelegated_ops")}
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        ids = torch.zeros(1, length, dtype=torch.int64)
        mask = torch.ones(1, length, dtype=torch.int64)
        with torch.no_grad():
            model.export_model(ids, mask, ids)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    model.export_model(ids, mask, ids)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        hint["export_model_top_ops"] = [
            {"op": e.key, "self_share": round(e.self_cpu_time_total / total, 4), "calls_per_run": e.count // 5}
            for e in events[:10]]
    except Exception as err:  # optional diagnostics
        hint["export_model_top_ops_error"] = f"{type(err).__name__}: {err}"
    return hint


# ------------------------------------------------------------------------------------------------------- output


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _opt(value, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def render_markdown(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        "# Benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Model `{result['model']['name']}`: {result['model']['params']:,} parameters, artifacts static at seq "
        f"{result['model']['max_length']}. {result['created']}, {result['seconds']} s.",
        f"Machine: {m.get('cpu', m.get('processor'))}, {m['cpu_count']} cores, load average "
        f"{m.get('load_average')}; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.",
        f"Method: {s['runs']} timed runs per candidate after {s['warmup_runs']} warm-up runs (not counted), interleaved "
        f"round-robin across all candidates in one process per thread setting, {s.get('idle_gap_ms', 0):g} ms idle "
        f"before each timed call (so one runtime's spinning threads never land on the next one's clock); inputs: "
        f"{s['inputs']}. Peak memory: "
        "peak RSS minus the RSS after imports, one fresh process per candidate. Eager load time is "
        "building the model from the checkpoint (weights cast to fp32).",
        "",
    ]
    for seq, text in s["length_sources"].items():
        lines.append(f"- seq {seq}: {text}")
    lines += ["", "| candidate | precision | seq | threads | size | B/param | load ms | median ms | p90 ms | vs eager | peak RSS Δ MB | max abs Δ logit |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['precision']} | {r['seq']} | {r['threads']} | {_fmt_bytes(r['bytes'])} | "
            f"{r['bytes_per_parameter']:.3f} | {r['load_ms']:.1f} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{_opt(r['vs_eager'], '{:.2f}x')} | {_opt(r.get('peak_rss_delta_mb'), '{:.1f}')} | "
            f"{_opt(r.get('max_abs_diff_vs_export_model'), '{:.1e}')} |")
    lines += ["", "Eager size is the checkpoint's weights file (it may be stored in fp16). ONNX Runtime files come from a "
              "plain `torch.onnx.export` of the export model (opset 17) and, for int8, ONNX Runtime's documented route: "
              "`quant_pre_process` then `quantize_dynamic` (QInt8 weights; every linear layer int8). \"max abs Δ logit\": one input row, each candidate against the eager export model (a sanity "
              "check that every candidate computes the same function)."]
    compared = sorted({r["origin"] for r in result["rows"] if r.get("compared")})
    if compared:
        lines += ["", f"Rows named `<model>: <file>` come from {', '.join(compared)}: another model, run in the same "
                  "interleaved rounds for a like-for-like latency comparison; their B/param is against their own "
                  "parameter count and they count for no target."]
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        where = "" if t.get("seq") is None else f" (seq {t['seq']}, {t['threads']} thread{'s' if t['threads'] != 1 else ''})"
        lines.append(f"- **{t['status']}** {t['target']}{where}: {t['detail']}")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += _op_profile_lines(result.get("op_profile"))
    profile = result.get("profile")
    if profile:
        lines += ["", "## Delegation of the .pte files, eager op shares", "", f"Missed: {'; '.join(profile['missed'])}.", ""]
        for name, d in profile.get("pte_delegation", {}).items():
            lines.append(f"- {name}: {d.get('delegates')} XNNPACK delegate(s); ops on portable kernels: "
                         f"{d.get('undelegated_ops') or 'none'}")
        if profile.get("export_model_top_ops"):
            lines += ["", "Eager export model, share of CPU time by op (torch.profiler; the .pte runs the same graph):", ""]
            lines += [f"- {o['op']}: {o['self_share'] * 100:.1f}% ({o['calls_per_run']} calls per run)"
                      for o in profile["export_model_top_ops"]]
    return "\n".join(lines) + "\n"


def _op_profile_lines(op_profile: dict | None) -> list[str]:
    if not op_profile:
        return []
    groups = [g for g, _ in OP_GROUPS] + ["other"]
    lines = ["", f"## Where the time goes (op-level profiles, seq {op_profile['seq']}, {op_profile['threads']} threads)", "",
             f"Each runtime's own profiler, {op_profile['runs']} runs after warm-up, median per op instance summed per op "
             "type: ExecuTorch's ETDump with XNNPACK's per-operator events for the .pte files, ONNX Runtime's node "
             "profile (enable_profiling). Run time is under the profiler. LiteRT's Python interpreter exposes no op "
             "profiler (on a phone: `benchmark_model --enable_op_profiling=true`, docs/on_device_benchmarks.md).", "",
             "| candidate | run ms | " + " | ".join(f"{g} ms" for g in groups) + " | top ops (ms) |",
             "|---|---:|" + "---:|" * len(groups) + "---|"]
    for name, p in op_profile["candidates"].items():
        top = "; ".join(f"{o['op']} {o['ms']:.2f}" for o in p["top_ops"][:4])
        lines.append(f"| {name} | {p['run_ms']:.2f} | "
                     + " | ".join(f"{p['groups_ms'].get(g, 0.0):.2f}" for g in groups) + f" | {top} |")
    return lines


def summary_lines(result: dict) -> list[str]:
    out = [f"  {r['name']:<48} seq {r['seq']:>4} t{r['threads']}  median {r['median_ms']:8.3f} ms  p90 {r['p90_ms']:8.3f} ms"
           for r in result["rows"]]
    out += [f"  {t['status']:<4} {t['target']}: {t['detail']}" for t in result["targets"]]
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    groups = sorted({(r["seq"], r["threads"]) for r in rows})
    seqs = sorted({r["seq"] for r in rows})
    fig, axes = plt.subplots(1, len(seqs) + 1, figsize=(5.5 * (len(seqs) + 1), 5.5), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        names = list(dict.fromkeys(r["name"] for r in rows if r["seq"] == seq))
        thread_values = sorted({t for s_, t in groups if s_ == seq})
        width = 0.8 / max(1, len(thread_values))
        for j, t in enumerate(thread_values):
            sel = [next((r for r in rows if r["seq"] == seq and r["threads"] == t and r["name"] == n), None) for n in names]
            xs = [i + j * width for i in range(len(names))]
            med = [r["median_ms"] if r else 0 for r in sel]
            err = [[0] * len(sel), [(r["p90_ms"] - r["median_ms"]) if r else 0 for r in sel]]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=f"{t} thread{'s' if t != 1 else ''}")
        ax.set_xticks([i + width * (len(thread_values) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("latency ms (bar: median, whisker: p90)")
        ax.set_title(f"seq {seq}")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    sizes = {r["name"]: r["bytes"] for r in rows}
    ax.bar(range(len(sizes)), [b / 1e6 for b in sizes.values()], color="gray")
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels(list(sizes), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("file size MB")
    ax.set_title(f"size ({result['model']['params']:,} parameters)")
    fig.suptitle(result["command"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- worker side


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class _PeakMeter:
    """Peak RSS since `start()`: the kernel's VmHWM after resetting it (clear_refs 5), else a sampling thread."""

    def start(self) -> None:
        import gc

        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs"
            self.baseline_kb = _status_kb("VmRSS")
            self._thread = None
        except OSError:
            import threading

            import psutil

            self.method = "psutil RSS sampled every 1 ms"
            proc = psutil.Process()
            self.baseline_kb = proc.memory_info().rss // 1024
            self._peak = self.baseline_kb
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss // 1024)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()

    def stop(self) -> tuple[float, float]:
        if self._thread is None:
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        return (peak - self.baseline_kb) / 1024.0, self.baseline_kb / 1024.0


class _OrtRunner:
    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {n: inputs[n] for n in self.names})[0]


class _TorchRunner:
    def __init__(self, module, hf: bool):
        import torch

        self.torch = torch
        self.module = module.eval()
        self.hf = hf

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        t = {k: self.torch.from_numpy(v) for k, v in inputs.items()}
        with self.torch.inference_mode():
            if self.hf:
                return self.module(**t).logits.numpy()
            return self.module(t["input_ids"], t["attention_mask"], t["token_type_ids"]).numpy()


def _import_runtimes(kinds: set[str], threads: int) -> None:
    """Import what the candidates need, and set every thread knob before anything is loaded."""
    if "executorch" in kinds:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)  # only valid before the first program loads
        import executorch.kernels.quantized  # noqa: F401
        import executorch.runtime  # noqa: F401
    if kinds & {"executorch", "torch-hf", "torch-export"}:
        import torch

        torch.set_num_threads(threads)
    if kinds & {"torch-hf", "torch-export"}:
        from transformers import AlbertConfig, AlbertForSequenceClassification  # noqa: F401  (lazy modules)

        from pipeline.model import albert, checkpoint  # noqa: F401
    if "litert" in kinds:
        import ai_edge_litert.interpreter  # noqa: F401
    if "ort" in kinds:
        import onnxruntime  # noqa: F401


def _load_eager(source: Path, kind: str):
    """One eager fp32 model from the checkpoint, as `load_checkpoint` builds it (weights cast to fp32)."""
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification

    from pipeline.model.albert import AlbertSpec, export_model_from_state
    from pipeline.model.checkpoint import _load_state

    state, _ = _load_state(source)
    prefixed = {k if k.startswith(("albert.", "classifier.", "recurrent.")) else f"albert.{k}": v.float()
                for k, v in state.items()}
    config = AlbertConfig.from_pretrained(str(source), local_files_only=True)
    if kind == "torch-export":
        return export_model_from_state(AlbertSpec.from_hf_config(config), prefixed).eval()
    model = AlbertForSequenceClassification(config)
    model.load_state_dict(prefixed, strict=False)
    return model.to(torch.float32).eval()


def _open_all(candidates: list[dict], threads: int, source: str) -> tuple[dict, dict]:
    from pipeline.runtimes import open_runner

    runners, load_ms = {}, {}
    for c in candidates:
        began = time.perf_counter()
        if c["kind"] in ("executorch", "litert"):
            runners[c["name"]] = open_runner(Path(c["path"]), c["kind"], c["input_names"], threads)
        elif c["kind"] == "ort":
            runners[c["name"]] = _OrtRunner(c["path"], threads)
        else:
            runners[c["name"]] = _TorchRunner(_load_eager(Path(source), c["kind"]), c["kind"] == "torch-hf")
        load_ms[c["name"]] = (time.perf_counter() - began) * 1000
    return runners, load_ms


# ------------------------------------------------------------------------------------------------ op profiles

PROFILE_RUNS = 10
PROFILE_WARMUP = 3
# Op groups of the profile summary, matched on the runtime's op names (XNNPACK via ETDump, ONNX Runtime node types).
OP_GROUPS = (("matrix multiply", ("fully connected", "matrix multiply", "matmul", "gemm")),
             ("(de)quantize", ("convert", "quantize")))
ETDUMP_WRAPPERS = {"Method::execute", "Method::init", "Program::load_method", "OPERATOR_CALL", "DELEGATE_CALL"}


def op_group(op: str) -> str:
    lowered = op.lower()
    return next((group for group, words in OP_GROUPS if any(w in lowered for w in words)), "other")


def _op_summary(per_op_ms: dict[str, float], total_ms: float) -> dict:
    groups: dict[str, float] = {}
    for op, ms in per_op_ms.items():
        group = op_group(op)
        groups[group] = groups.get(group, 0.0) + ms
    ops = sorted(per_op_ms.items(), key=lambda kv: -kv[1])
    return {"run_ms": round(total_ms, 3), "ops_ms": round(sum(per_op_ms.values()), 3),
            "groups_ms": {g: round(ms, 3) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": op, "ms": round(ms, 3), "share": round(ms / total_ms, 4) if total_ms else None}
                        for op, ms in ops[:8]]}


def _profile_executorch(candidate: dict, rows: list[dict[str, np.ndarray]], scratch: Path) -> dict:
    """XNNPACK's per-operator times from an ETDump of PROFILE_RUNS runs (median per op instance, summed per op type)."""
    import re
    import warnings

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch(candidate["path"], enable_etdump=True, debug_buffer_size=0)
    names = candidate["input_names"]
    for i in range(PROFILE_WARMUP + PROFILE_RUNS):
        row = rows[i % len(rows)]
        module.forward([torch.from_numpy(np.ascontiguousarray(row[n], dtype=np.int64)) for n in names])
    etdump = scratch / "profile.etdp"
    module.write_etdump_result_to_file(str(etdump))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no tensor data was asked for
        inspector = Inspector(etdump_path=str(etdump))
    per_op: dict[str, float] = {}
    total = 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None:
                continue
            median = float(np.median(event.perf_data.raw[-PROFILE_RUNS:]))
            if event.name == "Method::execute":
                total += median
            elif event.name not in ETDUMP_WRAPPERS:
                op = re.sub(r" #\d+$", "", event.name)
                op = f"{op[len('native_call_'):]} (portable kernel)" if op.startswith("native_call_") else op
                per_op[op] = per_op.get(op, 0.0) + median
    return _op_summary(per_op, total)


def _profile_ort(candidate: dict, rows: list[dict[str, np.ndarray]], threads: int, scratch: Path) -> dict:
    """ONNX Runtime's node profile (enable_profiling) of the last PROFILE_RUNS runs, summed per op type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "ort-profile")
    session = ort.InferenceSession(candidate["path"], options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for i in range(PROFILE_WARMUP + PROFILE_RUNS):
        session.run(None, {n: rows[i % len(rows)][n] for n in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    run_windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-PROFILE_RUNS:]
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= e["ts"] <= end for start, end in run_windows):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0 / len(run_windows)
    total = float(np.median([end - start for start, end in run_windows])) / 1000.0
    return _op_summary(per_op, total)


def _inputs(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    n = len(data["input_ids"])
    return [{k: np.ascontiguousarray(data[k][i : i + 1]) for k in INPUT_NAMES} for i in range(n)]


def worker(job: dict) -> dict:
    threads = int(job["threads"])
    candidates = job["candidates"]
    rows = _inputs(job["inputs"])
    _import_runtimes({c["kind"] for c in candidates}, threads)
    if job["mode"] == "memory":
        meter = _PeakMeter()
        meter.start()
        runners, _ = _open_all(candidates, threads, job["source"])
        for i in range(MEMORY_RUNS):
            for runner in runners.values():
                runner.run(rows[i % len(rows)])
        peak, baseline = meter.stop()
        return {"peak_delta_mb": round(peak, 2), "baseline_mb": round(baseline, 1), "method": meter.method}

    if job["mode"] == "profile":
        scratch = Path(tempfile.mkdtemp(prefix="profile-", dir=Path(job["result_path"]).parent))
        return {c["name"]: (_profile_executorch(c, rows, scratch) if c["kind"] == "executorch"
                            else _profile_ort(c, rows, threads, scratch)) for c in candidates}

    runners, load_ms = _open_all(candidates, threads, job["source"])
    names = [c["name"] for c in candidates]
    # Sanity: every candidate computes the same function (a wrong input binding would show here).
    outputs = {n: np.asarray(runners[n].run(rows[0]), dtype=np.float32).reshape(-1) for n in names}
    reference = next((outputs[c["name"]] for c in candidates if c["kind"] == "torch-export"), outputs[names[0]])
    for i in range(int(job["warmup"])):
        for name in names:
            runners[name].run(rows[i % len(rows)])
    latencies: dict[str, list[float]] = {n: [] for n in names}
    for r in progress(range(int(job["runs"])), desc=f"bench rounds, {threads} thread(s)", unit="round"):
        row = rows[r % len(rows)]
        shift = r % len(names)  # rotate who goes first: no candidate always follows the same neighbour
        for name in names[shift:] + names[:shift]:
            runner = runners[name]
            time.sleep(IDLE_GAP_S)
            began = time.perf_counter()
            runner.run(row)
            latencies[name].append(time.perf_counter() - began)
    return {n: {"latencies_s": latencies[n], "load_ms": round(load_ms[n], 2),
                "max_abs_diff_vs_export_model": round(float(np.abs(outputs[n] - reference).max()), 6)} for n in names}


def _worker_main(job_path: str) -> None:
    attach_from_env()
    job = json.loads(Path(job_path).read_text())
    result = worker(job)
    Path(job["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
