"""Latency against length, static vs dynamic, in ONE interleaved run (issue 14). Not part of `bench` yet (bench is
being split into a package): the lead can port it.

    python scripts/varlen_bench.py static128=/tmp/a/static/android dyn128=/tmp/a/dyn/android dyn512=/tmp/a/d512/android \
        --reps 15 --workload 200 --json out.json

Every artifact of every folder is loaded once; each repetition runs every (artifact, length) once, in a shuffled
order, so load changes on a shared machine hit all candidates alike. Medians are reported, and ratios against the
static artifact of the same runtime and precision (the first folder named static*). Workload: the first N eval
texts (small_fine_foods test, the project's tokenizer) at their real lengths (capped at each file's max_length;
a static file pads to it), mean latency per text, same interleaving. Peak memory: one subprocess per artifact
loads it and runs its longest input; VmHWM minus the process's VmRSS before loading.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LENGTHS = (8, 16, 32, 64, 128, 512)


def row(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed + length).integers(1000, 20000, (1, length))
    ids[0, 0] = 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def candidates(folders: dict[str, Path]) -> list[tuple[str, dict, Path]]:
    found = []
    for label, folder in folders.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        for entry in manifest["files"]:
            if entry["runtime"] in ("executorch", "litert"):
                found.append((f"{label}:{entry['path']}", entry, folder / entry["path"]))
    return found


def memory(path: Path, runtime: str, length: int) -> float:
    code = f"""
import re, numpy as np, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pipeline.runtimes import open_runner, set_threads
set_threads({{{runtime!r}}}, 2)
def rss(key):
    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))
import executorch.runtime, ai_edge_litert.interpreter, executorch.kernels.quantized
before = rss('VmRSS')
r = open_runner({str(path)!r}, {runtime!r})
ids = np.full((1, {length}), 7); r.run({{'input_ids': ids, 'attention_mask': ids * 0 + 1, 'token_type_ids': ids * 0}})
print((rss('VmHWM') - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", help="label=artifact folder")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--workload", type=int, default=200, help="eval texts for the workload figure")
    parser.add_argument("--json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time per inference (robust when the machine is shared; use --threads 1)")
    parser.add_argument("--memory", action="append",
                        help="measure peak memory only for artifacts whose label starts with this (repeatable)")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.runtimes import open_runner, set_threads

    set_threads({"executorch"}, args.threads)
    folders = dict(item.split("=", 1) for item in args.folders)
    folders = {k: Path(v) for k, v in folders.items()}
    items = candidates(folders)
    runners = {label: open_runner(path, entry["runtime"], [t["name"] for t in entry["inputs"]], args.threads)
               for label, entry, path in items}
    maxima = {label: runners[label].max_length for label, _, _ in items}

    # latency against length
    times: dict[tuple[str, int], list[float]] = {}
    jobs = [(label, n) for label, _, _ in items for n in LENGTHS if n <= maxima[label]]
    for label, n in jobs:  # warm-up
        runners[label].run(row(n))
    rng = random.Random(0)
    for _ in range(args.reps):
        rng.shuffle(jobs)
        for label, n in jobs:
            inputs = row(n)
            started = clock()
            runners[label].run(inputs)
            times.setdefault((label, n), []).append(clock() - started)

    # workload: eval texts at their real lengths
    from pipeline.data import load_small_fine_foods
    from pipeline.model.default import default_model_dir
    from pipeline.shapes import trim
    from pipeline.tokenization import encode, load_tokenizer

    texts = load_small_fine_foods("test").texts[: args.workload]
    tokenizer = load_tokenizer(default_model_dir())
    encoded = {m: encode(tokenizer, texts, m) for m in set(maxima.values())}
    rows = {m: [trim(e.row(i)) for i in range(len(e))] for m, e in encoded.items()}
    workload: dict[str, list[float]] = {label: [] for label, _, _ in items}
    order = [label for label, _, _ in items]
    for index in range(len(texts)):
        rng.shuffle(order)
        for label in order:
            inputs = rows[maxima[label]][index]
            started = clock()
            runners[label].run(inputs)
            workload[label].append(clock() - started)
    lengths = [r["input_ids"].shape[1] for r in rows[min(maxima.values())]]

    result = {"load_average": os.getloadavg(), "cpu_count": os.cpu_count(), "reps": args.reps,
              "threads": args.threads, "clock": args.clock,
              "workload_texts": len(texts), "workload_mean_tokens": float(np.mean(lengths)), "artifacts": {}}
    for label, entry, path in items:
        med = {n: statistics.median(times[(label, n)]) * 1000 for n in LENGTHS if (label, n) in times}
        result["artifacts"][label] = {
            "runtime": entry["runtime"], "precision": entry["precision"], "max_length": maxima[label],
            "static": runners[label].static, "bytes": entry["bytes"], "median_ms": med,
            "workload_mean_ms": float(np.mean(workload[label]) * 1000),
            "peak_rss_mb": (memory(path, entry["runtime"], maxima[label])
                            if not args.memory or any(label.startswith(m) for m in args.memory) else float("nan")),
        }
    static_label = next((k for k in folders if k.startswith("static")), None)
    lines = [f"load average {result['load_average'][0]:.1f} on {os.cpu_count()} cores; {args.threads} threads; "
             f"{args.clock} clock; {args.reps} reps; "
             f"workload {len(texts)} texts, mean {result['workload_mean_tokens']:.1f} tokens",
             "| artifact | " + " | ".join(f"{n}" for n in LENGTHS) + " | workload ms | vs static: 16 / workload | peak MB |",
             "|---|" + "---:|" * (len(LENGTHS) + 3)]
    for label, info in result["artifacts"].items():
        base = None
        if static_label:
            name = label.split(":", 1)[1]
            base = result["artifacts"].get(f"{static_label}:{name}")
        cells = [f"{info['median_ms'].get(n, float('nan')):.2f}" for n in LENGTHS]
        ratio = ""
        if base:
            ratio = (f"{info['median_ms'][16] / base['median_ms'][128]:.2f} / "
                     f"{info['workload_mean_ms'] / base['workload_mean_ms']:.2f}")
            info["ratio_16_vs_static128"] = info["median_ms"][16] / base["median_ms"][128]
            info["ratio_workload_vs_static"] = info["workload_mean_ms"] / base["workload_mean_ms"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {info['workload_mean_ms']:.2f} | {ratio} | "
                     f"{info['peak_rss_mb']:.0f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
