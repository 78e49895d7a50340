"""Latency against length and the "workload" figure, in one interleaved worker per thread setting.

- Candidates: every model file of the bench folder and, with `--static DIR`, every model file of a static-shape
  folder of the same model (the baseline of the targets below), all loaded in ONE process.
- Length sweep: 8, 16, 32, 64, 128 and each file's max_length (only lengths <= a file's max_length; a static
  file pads to it, so its row is flat). Synthetic rows ([CLS], random ids, [SEP]; ids inside the model's vocab).
  Each round runs every (file, length) pair once in a freshly shuffled order (seeded), so load changes on a
  shared machine hit every pair alike; medians are reported.
- Workload: the first N eval texts (small_fine_foods test, the model's own tokenizer) at their real lengths
  (capped at each file's max_length; a static file pads), every file once per text in shuffled order; the
  figure is the mean latency per text.
- Memory: peak RSS (one fresh process per file, as the main table) at 16 tokens and at the file's max_length:
  an ExecuTorch program plans its activations for max_length (the bound of its dynamic dim), so its short-text
  peak equals its long-text one; a dynamic .tflite resizes its tensors to the input.
- Targets (ratios from this one run): for each dynamic file with a static file of the same runtime and
  precision, workload <= 0.65 x the static file's workload, and latency at 16 tokens <= 0.25 x the static file
  at its own length (128 for the default build).
- `--compare DIR` folders join the sweep (role "compare"). When one holds a dynamic file of the same runtime and
  precision with another max_length, the larger build's latency at every sweep length both take must stay within
  1.10 x the smaller build's: a longer position limit must not cost short texts.
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.bench.candidates import artifact_candidates, compare_label, model_files, static_length
from pipeline.core.errors import PipelineError
from pipeline.core.shapes import synthetic_row, trim
from pipeline.core.tokenization import encode

SWEEP = (8, 16, 32, 64, 128)
MEMORY_SHORT = 16
WORKLOAD_TARGET = 0.65
SHORT_TARGET = 0.25
SHORT_LENGTH = 16
MAX_LENGTH_COST = 1.10  # a larger-max_length build vs a smaller one, at the lengths both take
CLOCKS = ("wall", "cpu")


def sweep_lengths(max_lengths: list[int], extra: list[int] | None = None) -> list[int]:
    """8..128 plus every file's max_length (and `extra`), each kept only if some file takes it."""
    top = max(max_lengths)
    return sorted({n for n in (*SWEEP, *max_lengths, *(extra or [])) if 1 <= n <= top})


def shapes_of(manifest: dict) -> str:
    return (manifest.get("shape_contract") or {}).get("shapes", "static")


def length_candidates(folder: Path, manifest: dict, params: int, static: tuple[Path, dict] | None,
                      compare: dict[Path, dict] | None = None) -> list[dict]:
    """The bench folder's files (role "artifact"), the --static folder's (role "static") and the --compare
    folders' (role "compare"); names of the others prefixed."""
    out = [{**c, "role": "artifact", "shapes": shapes_of(manifest), "max_length": static_length(manifest)}
           for c in artifact_candidates(folder, manifest, params)]
    if static:
        s_folder, s_manifest = static
        if shapes_of(s_manifest) != "static":
            raise PipelineError("--static takes a folder built with shapes = \"static\"", s_folder)
        s_params = int(s_manifest["model"].get("params") or params)
        out += [{**c, "name": f"static: {c['name']}", "role": "static", "shapes": "static",
                 "max_length": static_length(s_manifest), "origin": f"--static {s_folder}"}
                for c in artifact_candidates(s_folder, s_manifest, s_params)]
    for c_folder, c_manifest in (compare or {}).items():
        c_params = int(c_manifest["model"].get("params") or params)
        label = compare_label(c_folder, c_manifest)
        out += [{**c, "name": f"{label}: {c['name']}", "role": "compare", "shapes": shapes_of(c_manifest),
                 "max_length": static_length(c_manifest), "origin": f"--compare {c_folder}"}
                for c in artifact_candidates(c_folder, c_manifest, c_params)]
    return out


def _length_row(length: int, vocab_size: int, cls_id: int, sep_id: int) -> dict[str, np.ndarray]:
    """The bench's row at `length` (the worker knows the vocabulary's size, not the tokenizer)."""
    return synthetic_row(length, cls_id, sep_id, np.arange(5, max(6, min(vocab_size, 20000))),
                         np.random.default_rng(length))


def write_workload(model, texts: list[str], max_lengths: set[int], scratch: Path) -> dict[int, str]:
    """The eval texts encoded (padded) at each max_length in play; the worker cuts them to their real length."""
    paths = {}
    for m in sorted(max_lengths):
        e = encode(model.tokenizer, texts, m)
        path = scratch / f"workload{m}.npz"
        np.savez(path, input_ids=e.input_ids, attention_mask=e.attention_mask, token_type_ids=e.token_type_ids)
        paths[m] = str(path)
    return paths


def write_length_inputs(length: int, vocab_size: int, cls_id: int, sep_id: int, path: Path) -> Path:
    """A one-row inputs file at `length` (for the memory worker)."""
    row = _length_row(length, vocab_size, cls_id, sep_id)
    np.savez(path, **row)
    return path


def sweep_worker(job: dict, runners: dict, gap_s: float) -> dict:
    """In the worker process: every (file, length) pair and the workload, interleaved; raw latencies back."""
    clock = time.process_time if job.get("clock") == "cpu" else time.perf_counter
    names = list(runners)
    maxima = {n: int(runners[n].max_length or job["max_lengths"][n]) for n in names}
    rows = {n: _length_row(n, job["vocab_size"], job["cls_id"], job["sep_id"]) for n in job["lengths"]}
    pairs = [(name, n) for name in names for n in job["lengths"] if n <= maxima[name]]
    for _ in range(int(job["warmup"])):
        for name, n in pairs:
            runners[name].run(rows[n])
    rng = random.Random(0)
    times: dict[str, dict[int, list[float]]] = {name: {} for name in names}
    for _ in range(int(job["runs"])):
        rng.shuffle(pairs)
        for name, n in pairs:
            inputs = rows[n]
            if gap_s:
                time.sleep(gap_s)
            began = clock()
            runners[name].run(inputs)
            times[name].setdefault(n, []).append(clock() - began)

    texts = {}
    for m, path in job["workload"].items():
        data = np.load(path)
        texts[int(m)] = [trim({k: data[k][i : i + 1] for k in ("input_ids", "attention_mask", "token_type_ids")})
                         for i in range(len(data["input_ids"]))]
    count = min(len(v) for v in texts.values()) if texts else 0
    workload: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    for i in range(count):
        rng.shuffle(order)
        for name in order:
            inputs = texts[job["max_lengths"][name]][i]
            if gap_s:
                time.sleep(gap_s)
            began = clock()
            runners[name].run(inputs)
            workload[name].append(clock() - began)
    tokens = [int(r["input_ids"].shape[1]) for r in texts[min(texts)]] if texts else []
    return {"times": {name: {str(n): v for n, v in t.items()} for name, t in times.items()}, "workload": workload,
            "workload_tokens": tokens, "maxima": maxima,
            "static": {n: bool(runners[n].static) if runners[n].static is not None else None for n in names}}


def length_rows(candidates: list[dict], got: dict, threads: int) -> list[dict]:
    """One row per (file, length) and one workload row per file, medians in ms."""
    out = []
    tokens = got["workload_tokens"]
    for c in candidates:
        name = c["name"]
        common = {"name": name, "role": c["role"], "runtime": c["runtime"], "precision": c["precision"],
                  "shapes": c["shapes"], "max_length": got["maxima"][name], "threads": threads}
        for n, values in sorted(got["times"][name].items(), key=lambda kv: int(kv[0])):
            ms = [v * 1000 for v in values]
            out.append({**common, "point": "length", "seq": int(n), "median_ms": round(statistics.median(ms), 4),
                        "p90_ms": round(float(np.percentile(ms, 90)), 4), "runs": len(ms)})
        if got["workload"][name]:
            ms = [v * 1000 for v in got["workload"][name]]
            out.append({**common, "point": "workload", "seq": None, "mean_ms": round(float(np.mean(ms)), 4),
                        "median_ms": round(statistics.median(ms), 4), "texts": len(ms),
                        "mean_tokens": round(float(np.mean([min(t, got["maxima"][name]) for t in tokens])), 2)})
    return out


def _point(rows: list[dict], name: str, threads: int, seq) -> dict | None:
    point = "workload" if seq == "workload" else "length"
    return next((r for r in rows if r["name"] == name and r["threads"] == threads and r["point"] == point
                 and (point == "workload" or r["seq"] == seq)), None)


def length_targets(rows: list[dict], threads: list[int]) -> list[dict]:
    """The two targets of the module docstring as ratios, for every dynamic file of the bench folder, per thread
    setting."""
    checks = []
    files = list(dict.fromkeys((r["name"], r["runtime"], r["precision"], r["shapes"]) for r in rows
                               if r["role"] == "artifact"))
    statics = {(r["runtime"], r["precision"]): r for r in rows if r["role"] == "static" and r["point"] == "length"}
    for t in threads:
        for name, runtime, precision, shapes in files:
            for label, limit in ((f"{name} workload latency <= {WORKLOAD_TARGET} x static", WORKLOAD_TARGET),
                                 (f"{name} latency at {SHORT_LENGTH} tokens <= {SHORT_TARGET} x static", SHORT_TARGET)):
                base = {"target": label, "seq": SHORT_LENGTH if limit == SHORT_TARGET else None, "threads": t,
                        "limit_ratio": limit, "subject": name}
                static = statics.get((runtime, precision))
                if shapes == "static":
                    checks.append({**base, "status": "N/A", "detail": "a static file: the target is for dynamic files"})
                    continue
                if static is None:
                    checks.append({**base, "status": "N/A", "detail": f"no static {runtime} {precision} file in this run "
                                   "(pass --static DIR: a folder built with --shapes static)"})
                    continue
                s_len = static["max_length"]
                if limit == WORKLOAD_TARGET:
                    mine, other = _point(rows, name, t, "workload"), _point(rows, static["name"], t, "workload")
                    what = (f"mean over {mine['texts']} eval texts ({mine['mean_tokens']:.1f} tokens on average)"
                            if mine else "")
                    if mine and mine["max_length"] != s_len:
                        what += (f" (texts capped at {mine['max_length']} tokens here, at {s_len} in the static file:"
                                 " the long texts do more work here)")
                    a, b = (mine or {}).get("mean_ms"), (other or {}).get("mean_ms")
                else:
                    mine, other = _point(rows, name, t, SHORT_LENGTH), _point(rows, static["name"], t, s_len)
                    what = f"median at {SHORT_LENGTH} tokens vs the static file at its {s_len}"
                    a, b = (mine or {}).get("median_ms"), (other or {}).get("median_ms")
                if not a or not b:
                    checks.append({**base, "status": "N/A", "detail": "not measured in this run"})
                    continue
                ratio = a / b
                passed = ratio <= limit
                detail = f"{what}: {a:.3f} ms vs {static['name']} {b:.3f} ms: {ratio:.3f}x (limit {limit:g}x)"
                if not passed:
                    detail += f"; {(ratio / limit - 1) * 100:.1f}% over"
                checks.append({**base, "status": "PASS" if passed else "MISS", "ratio": round(ratio, 4),
                               "over_by_percent": None if passed else round((ratio / limit - 1) * 100, 1),
                               "detail": detail, "baseline": static["name"]})
    return checks


def max_length_checks(rows: list[dict], threads: list[int]) -> list[dict]:
    """The rule "a --max-length 512 build costs short texts no more than a 128 build": for every pair of dynamic
    files of one runtime and precision with different max_length, the larger's latency over the smaller's at each
    length both ran; the worst ratio must be <= MAX_LENGTH_COST."""
    checks = []
    dynamic = list(dict.fromkeys((r["name"], r["runtime"], r["precision"], r["max_length"]) for r in rows
                                 if r["shapes"] == "dynamic" and r["point"] == "length"))
    for t in threads:
        for big, runtime, precision, big_max in dynamic:
            for small, runtime2, precision2, small_max in dynamic:
                if (runtime2, precision2) != (runtime, precision) or small_max >= big_max:
                    continue
                ratios = {}
                for r in rows:
                    if r["name"] == small and r["threads"] == t and r["point"] == "length":
                        mine = _point(rows, big, t, r["seq"])
                        if mine and r["median_ms"]:
                            ratios[r["seq"]] = mine["median_ms"] / r["median_ms"]
                if not ratios:
                    continue
                seq, worst = max(ratios.items(), key=lambda kv: kv[1])
                passed = worst <= MAX_LENGTH_COST
                each = ", ".join(f"{n}: {v:.3f}" for n, v in sorted(ratios.items()))
                checks.append({"target": f"{big} (max {big_max}) costs texts <= {MAX_LENGTH_COST} x {small} (max "
                                         f"{small_max})", "seq": seq, "threads": t, "limit_ratio": MAX_LENGTH_COST,
                               "subject": big, "baseline": small, "ratio": round(worst, 4),
                               "status": "PASS" if passed else "MISS",
                               "detail": f"latency ratio per length ({each}); worst {worst:.3f}x at {seq} tokens "
                                         f"(limit {MAX_LENGTH_COST:g}x)"})
    return checks


def render_lengths(section: dict | None) -> list[str]:
    if not section:
        return []
    rows = section["rows"]
    lengths = section["lengths"]
    memory = section.get("memory", {})
    lines = ["", f"## Latency against length ({section['clock']} clock)", "",
             f"One worker process per thread setting loads every file ({'this folder, the --static and --compare folders' if section.get('static') else 'this folder and any --compare folders'}); "
             f"{section['runs']} rounds after {section['warmup_runs']} warm-up, each running every (file, length) pair once in "
             f"a shuffled order; medians in ms. Inputs: synthetic rows of exactly that many tokens (a static file pads "
             f"them to its length). Workload: mean ms per text over {section['workload_texts']} small_fine_foods test "
             f"reviews at their real lengths (the model's tokenizer; capped at each file's max_length), same "
             f"interleaving. Peak RSS: one fresh process per file, at {MEMORY_SHORT} tokens and at its max_length. "
             f"Load average at the start: {section.get('load_average')}.", ""]
    for t in section["threads"]:
        lines += [f"Threads: {t}", "",
                  "| file | shapes | max | " + " | ".join(str(n) for n in lengths)
                  + " | workload ms | peak MB @16 | peak MB @max | planned MB |",
                  "|---|---|---:|" + "---:|" * (len(lengths) + 4)]
        names = list(dict.fromkeys(r["name"] for r in rows if r["threads"] == t))
        for name in names:
            first = next(r for r in rows if r["name"] == name)
            cells = []
            for n in lengths:
                r = _point(rows, name, t, n)
                cells.append(f"{r['median_ms']:.3f}" if r else "")
            w = _point(rows, name, t, "workload")
            mem = memory.get(name, {})
            workload = f"{w['mean_ms']:.3f}" if w else ""
            short, top = (f"{mem[k]:.1f}" if mem.get(k) is not None else "" for k in (str(MEMORY_SHORT), "max"))
            lines.append(f"| {name} | {first['shapes']} | {first['max_length']} | " + " | ".join(cells)
                         + f" | {workload} | {short} | {top} | "
                         + (f"{mem['planned_bytes'] / 1e6:.2f} |" if mem.get("planned_bytes") is not None else " |"))
        lines.append("")
    if memory:
        lines.append("Peak MB: peak RSS minus the RSS after imports. Planned MB: the activation arena an ExecuTorch "
                     "program plans ahead, sized for its upper bound (max_length) and allocated at load "
                     "whatever the text; XNNPACK's own workspace is outside it and follows the run's length. RSS "
                     "counts only the pages a run touches, so what a larger max_length costs a short text is the "
                     "difference of 'peak MB @16' between two builds. A dynamic .tflite resizes its tensors to "
                     "the input.")
    return lines


def planned_arena_bytes(path: str | Path) -> int | None:
    """The activation memory an ExecuTorch program plans ahead (its non-constant buffers, sized for the upper
    bound of a dynamic dimension); delegates (XNNPACK) keep their own workspace outside it. None if unreadable."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(Path(path).read_bytes())
        program = getattr(program, "program", program)
        return int(sum(sum(plan.non_const_buffer_sizes) for plan in program.execution_plan))
    except Exception:  # diagnostics only
        return None


def model_token_ids(model) -> tuple[int, int, int]:
    tok = model.tokenizer
    cls_id = tok.cls_token_id if tok.cls_token_id is not None else 2
    sep_id = tok.sep_token_id if tok.sep_token_id is not None else 3
    return int(model.spec.vocab_size), int(cls_id), int(sep_id)


__all__ = ["SWEEP", "length_candidates", "length_rows", "length_targets", "max_length_checks", "render_lengths", "sweep_lengths",
           "sweep_worker", "write_workload", "write_length_inputs", "model_files", "CLOCKS"]
