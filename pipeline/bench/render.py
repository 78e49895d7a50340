"""bench.md, bench.png and the console summary of a bench run."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from pipeline.bench.lengths import render_lengths
from pipeline.bench.profile import OP_GROUPS
from pipeline.core.stage import tool_versions


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
    info["versions"] = {k: v for k, v in tool_versions().items()
                        if k in ("torch", "executorch", "ai-edge-litert", "onnxruntime", "transformers", "numpy")}
    return info



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
        f"Model `{result['model']['name']}`: {result['model']['params']:,} parameters, artifacts "
        f"{(result.get('shape_contract') or {}).get('shapes', 'static')} up to seq {result['model']['max_length']}. {result['created']}, {result['seconds']} s.",
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
    lines += render_lengths(result.get("lengths"))
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


