"""`--cost` on `validate` and `build`: a folder's aarch64 instructions per inference, recorded and gated like accuracy.

    prepare_cost   before any work: the counting environment (`python -m pipeline arm64-setup`), the options'
                   ranges and the baseline file                                         (else exit 2, one line)
    cost_folder    every .pte / .tflite of the folder counted under QEMU per CPU profile and length
                   (pipeline/verify/arm64/cost.py) on real token rows (the eval texts the manifest records, through
                   the folder's tokenizer, or the gate's own encoded rows); a file that cannot run on aarch64 is
                   exit 2 naming it; manifest.json `arm64_cost`, report.json `arm64_cost`, a table and ratios in
                   report.md, report_cost.png; with a baseline, a steady count over (1 + max_increase) x the
                   baseline's is exit 1 with one line per count (compare_costs); without one nothing is gated, and
                   the log says so

Counts are comparable only with counts (a file against its baseline, int8 against fp32, one length against
another): they are not latencies (docs/arm64_cost.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.artifact import Artifact, read_manifest
from pipeline.core.config import CostThresholds, check_fields
from pipeline.core.errors import DriftError, PipelineError
from pipeline.core.options import CostOptions
from pipeline.core.paths import replace_text
from pipeline.core.tokenization import encode, load_tokenizer
from pipeline.gate.folder import load_eval, model_entries
from pipeline.verify.arm64.cost import CostRun, compare_costs, count_costs
from pipeline.verify.arm64.cost_env import CountingEnv, find_counting_env

Log = Callable[[str], None]
COST_TEXTS = 64  # eval texts whose tokens make the counted rows (cycled up to the longest length)
RECORDED = ("qemu", "plugin", "threads", "steady_runs", "lengths", "hash_seed", "not_counted")


@dataclass
class CostGate:
    """What `cost_folder` needs, checked before any work: options, limit, environment, baseline."""

    options: CostOptions
    max_increase: float
    env: CountingEnv
    baseline: dict | None = None  # the baseline's `arm64_cost`
    baseline_name: str | None = None  # its file name (reports ship: no absolute path)


def prepare_cost(options: CostOptions, max_increase: float) -> CostGate:
    """Refuse what would fail after an hour of work: bad options, no counting environment, an unusable baseline."""
    check_fields(options, "cost")
    if not options.profiles or not options.lengths:
        raise PipelineError(f"--cost needs at least one CPU profile and one length, not {options.profiles} x "
                            f"{options.lengths}")
    check_fields(CostThresholds(max_increase), "thresholds.cost")  # its declared type and range
    env = find_counting_env()
    baseline = load_baseline(options.baseline) if options.baseline is not None else None
    name = Path(options.baseline).name if options.baseline is not None else None
    return CostGate(options, float(max_increase), env, baseline, name)


def load_baseline(path: str | Path) -> dict:
    """The `arm64_cost` of a manifest.json or report.json (or of the committed default baseline), checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        raise PipelineError(f"cannot read the cost baseline ({reason})", path) from None
    cost = data.get("arm64_cost") if isinstance(data, dict) else None
    if not isinstance(cost, dict):
        raise PipelineError("not a cost baseline: no `arm64_cost` (a manifest.json or report.json of `--cost`)", path)
    counts = cost.get("counts")
    try:
        ok = isinstance(counts, dict) and bool(counts) and all(
            isinstance(files, dict) and all(
                isinstance(lengths, dict) and all(
                    int(length) >= 1 and isinstance(value, dict) and isinstance(value.get("steady"), int)
                    and not isinstance(value.get("steady"), bool) and value["steady"] > 0
                    for length, value in lengths.items())
                for lengths in files.values())
            for files in counts.values())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PipelineError("not a cost baseline: `arm64_cost.counts` must map profile -> file -> length -> "
                            "{\"steady\": instructions > 0}", path)
    return cost


def cost_rows_of(folder: Path, manifest: dict):
    """Real token rows as the build had them: the manifest's eval texts through the folder's tokenizer."""
    texts = load_eval(manifest.get("eval_data"), None, list(manifest.get("label_names") or []))
    return encode(load_tokenizer(folder), texts.texts[:COST_TEXTS], int(manifest["model"]["max_length"]))


def cost_folder(folder: str | Path, gate: CostGate, report_dir: str | Path | None = None, encoded=None,
                log: Log = print) -> dict:
    """Count, record and gate the folder's cost (see the module doc): the recorded `arm64_cost`, or DriftError
    (exit 1) / PipelineError (exit 2) after recording."""
    folder = Path(folder)
    report_dir = Path(report_dir or folder)
    manifest = read_manifest(folder)
    artifacts = [Artifact.from_dict(folder, e) for e in model_entries(manifest)]
    max_length = int(manifest["model"]["max_length"])
    if encoded is None:
        encoded = cost_rows_of(folder, manifest)
    options = gate.options
    log(f"[cost] aarch64 instructions per inference: {', '.join(options.profiles)} x lengths "
        f"{', '.join(map(str, options.lengths))}")
    result = count_costs(artifacts, CostRun(options.profiles, options.lengths, max_length, options.steady_runs,
                                            env=gate.env), encoded=encoded, log=log)
    recorded = {"counts": result["counts"], **{k: result[k] for k in RECORDED},
                "profiles": {p: {k: r[k] for k in ("qemu_cpu", "description", "hwcaps", "marker_overhead",
                                                   "threads_alive")} for p, r in result["profiles"].items()}}
    gate_record = {"baseline": gate.baseline_name, "max_increase": gate.max_increase, "failures": [], "notes": []}
    if gate.baseline is not None:
        gate_record["failures"], gate_record["notes"] = compare_costs(result, gate.baseline, gate.max_increase)
    errors = [(p, name, why) for p, r in result["profiles"].items() for name, why in r["errors"].items()]
    write_cost(folder, report_dir, recorded, {**result, "gate": gate_record})
    for line in cost_table(recorded):
        log(line)
    if errors:
        profile, name, why = errors[0]
        raise PipelineError(f"cannot run on aarch64 ({profile}), so its cost cannot be counted: {why}", folder / name)
    for note in gate_record["notes"]:
        log(f"  {note}")
    if gate.baseline is None:
        log("  cost gate: NOT gated (no --cost-baseline): counts recorded in manifest.json and report.json only")
    elif gate_record["failures"]:
        log(f"cost gate FAILED: {len(gate_record['failures'])} count(s) over {1 + gate.max_increase:.4g} x baseline "
            f"{gate.baseline_name}; report in {report_dir}")
        raise DriftError(gate_record["failures"])
    else:
        log(f"  cost gate passed: every steady count within {1 + gate.max_increase:.4g} x baseline {gate.baseline_name}")
    return recorded


# ------------------------------------------------------------------------------------------------------ records

def write_cost(folder: Path, report_dir: Path, recorded: dict, result: dict) -> None:
    """manifest.json `arm64_cost`, report.json `arm64_cost` (with timings and the gate), report.md, report_cost.png;
    each written to a temporary file and renamed."""
    try:
        path = folder / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["arm64_cost"] = recorded
        replace_text(path, json.dumps(manifest, indent=2) + "\n")
        report_dir.mkdir(parents=True, exist_ok=True)
        report = report_dir / "report.json"
        data = json.loads(report.read_text()) if report.is_file() else {}
        data["arm64_cost"] = result
        if result["gate"]["failures"]:
            data["passed"] = False
        replace_text(report, json.dumps(data, indent=2, default=float) + "\n")
        md = report_dir / "report.md"
        replace_text(md, (md.read_text() if md.is_file() else "") + "\n" + cost_markdown(recorded, result["gate"]))
        plot_costs(recorded, report_dir / "report_cost.png")
    except OSError as err:
        raise PipelineError(f"cannot write the cost records ({err.strerror or err})", err.filename or report_dir) from None


def _lengths(counts: dict) -> list[int]:
    return sorted({int(n) for files in counts.values() for per in files.values() for n in per})


def _steady(counts: dict, profile: str, name: str, length: int) -> int | None:
    per = counts.get(profile, {}).get(name, {})
    value = per.get(length, per.get(str(length)))
    return value["steady"] if value else None


def cost_table(recorded: dict) -> list[str]:
    """file x profile x length: steady and first, in M instructions."""
    lines = ["| file | profile | tokens | steady (M instr.) | first (M instr.) |", "|---|---|---:|---:|---:|"]
    for profile, files in recorded["counts"].items():
        for name, per in sorted(files.items()):
            for length, value in sorted(per.items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {name} | {profile} | {length} | {value['steady'] / 1e6:.2f} | {value['first'] / 1e6:.2f} |")
    return lines


def _split(name: str) -> tuple[str, str, str] | None:
    """albert.int8.pte -> ("albert", "int8", "pte")."""
    parts = name.split(".")
    return (".".join(parts[:-2]), parts[-2], parts[-1]) if len(parts) >= 3 else None


def cost_ratios(recorded: dict) -> list[tuple[str, str, str, str]]:
    """(ratio, what, profile, value per length) of steady counts: each precision / fp32, shortest / longest length,
    each profile / cortex-a76, .tflite / .pte."""
    counts, lengths, rows = recorded["counts"], _lengths(recorded["counts"]), []
    names = sorted({n for files in counts.values() for n in files})

    def per_length(profile_a, a, profile_b, b) -> str | None:
        values = []
        for n in lengths:
            x, y = _steady(counts, profile_a, a, n), _steady(counts, profile_b, b, n)
            values.append(f"{x / y:.3f}" if x and y else "-")
        return " / ".join(values) if any(v != "-" for v in values) else None

    for profile in counts:
        for name in names:
            parts = _split(name)
            if parts and parts[1] != "fp32":
                twin = f"{parts[0]}.fp32.{parts[2]}"
                value = per_length(profile, name, profile, twin)
                if value:
                    rows.append((f"{parts[1]} / fp32", f"{name} / {twin}", profile, value))
        for name in names:
            parts = _split(name)
            if parts and parts[2] == "tflite":
                twin = f"{parts[0]}.{parts[1]}.pte"
                value = per_length(profile, name, profile, twin)
                if value:
                    rows.append((".tflite / .pte", f"{name} / {twin}", profile, value))
        if len(lengths) > 1:
            short, long = lengths[0], lengths[-1]
            for name in names:
                x, y = _steady(counts, profile, name, short), _steady(counts, profile, name, long)
                if x and y:
                    rows.append((f"{short} / {long} tokens", name, profile, f"{x / y:.3f}"))
    if "cortex-a76" in counts:
        for profile in [p for p in counts if p != "cortex-a76"]:
            for name in names:
                value = per_length(profile, name, "cortex-a76", name)
                if value:
                    rows.append((f"{profile} / cortex-a76", name, "-", value))
    return rows


def cost_markdown(recorded: dict, gate: dict) -> str:
    lengths = _lengths(recorded["counts"])
    lines = ["## Cost: aarch64 instructions per inference (QEMU, one thread)", "",
             f"Steady: the cheapest of {recorded['steady_runs']} inferences after the first; first: the first inference "
             f"after loading the file. {recorded['qemu']}; {recorded['plugin']}. Instruction counts, not latencies: "
             "no caches, memory stalls, clock or big.LITTLE scheduling (docs/arm64_cost.md).", "",
             *cost_table(recorded), ""]
    ratios = cost_ratios(recorded)
    if ratios:
        lines += [f"Ratios of steady counts (per length: {' / '.join(map(str, lengths))} tokens):", "",
                  "| ratio | files | profile | value |", "|---|---|---|---:|"]
        lines += [f"| {r} | {what} | {profile} | {value} |" for r, what, profile, value in ratios]
        lines.append("")
    for name, why in (recorded.get("not_counted") or {}).items():
        lines.append(f"- not counted: {name}: {why}")
    if gate["baseline"] is None:
        lines.append("- cost gate: not gated (no `--cost-baseline`)")
    else:
        lines.append(f"- cost gate: baseline {gate['baseline']}, max_increase {gate['max_increase']:g}: "
                     + ("FAILED" if gate["failures"] else "passed"))
        lines += [f"  - {line}" for line in gate["failures"] + gate["notes"]]
    lines.append("")
    lines.append("![steady cost against length](report_cost.png)")
    return "\n".join(lines) + "\n"


def plot_costs(recorded: dict, path: Path) -> None:
    """Steady cost against length, one line per file, one panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = recorded["counts"]
    if not counts:
        return
    fig, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 3.8), squeeze=False, sharey=True)
    for axis, (profile, files) in zip(axes[0], counts.items()):
        for name, per in sorted(files.items()):
            points = sorted((int(n), v["steady"] / 1e6) for n, v in per.items())
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
        axis.set_title(f"{profile}: steady instructions per inference", fontsize=9)
        axis.set_xlabel("tokens", fontsize=8)
        axis.set_ylabel("M instructions", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
