"""Reports of a validation: report.json, report.md (fits a CI job summary), JUnit XML, PNG plot."""
from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from pipeline.verify.tokenizer_drift import markdown as drift_markdown
from pipeline.verify.validation import ArtifactResult

METRIC_LIMITS = (
    ("max_abs_error", "max_abs_error", "<="),
    ("cosine", "min_cosine", ">="),
    ("top1_agreement", "min_top1_agreement", ">="),
)


def result_dict(result: ArtifactResult) -> dict:
    artifact = result.artifact
    return {
        **artifact.to_dict(),
        "bytes": artifact.path.stat().st_size if artifact.path.is_file() else None,
        "metrics": result.metrics.to_dict(),
        "thresholds": vars(result.thresholds),
        "passed": result.passed,
        "failures": result.failures,
        **({"no_xnnpack": result.evidence["no_xnnpack"]} if result.evidence.get("no_xnnpack") else {}),
    }


def drift_table(results: list[ArtifactResult]) -> list[str]:
    lines = [
        "| artifact | runtime | MB | max abs err | cosine | top-1 agree | accuracy | Δ acc | ms (median) | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        m = r.metrics
        size = r.artifact.path.stat().st_size / 1e6 if r.artifact.path.is_file() else float("nan")
        accuracy = f"{m.accuracy:.4f}" if m.accuracy is not None else "n/a"
        delta = f"{m.accuracy_delta * 100:+.1f} pt" if m.accuracy_delta is not None else "n/a"
        lines.append(
            f"| {r.artifact.file_name} | {r.artifact.runtime} | {size:.2f} | {m.max_abs_error:.2e} | {m.cosine:.6f} | "
            f"{m.top1_agreement:.4f} | {accuracy} | {delta} | {m.latency_ms_median:.2f} | {'PASS' if r.passed else 'FAIL'} |"
        )
    return lines


def markdown(results: list[ArtifactResult], title: str, context: dict, drift: dict | None = None) -> str:
    lines = [f"# {title}", ""]
    for key, value in context.items():
        lines.append(f"- {key}: {value}")
    lines += ["", *drift_table(results), ""]
    if any(r.artifact.runtime == "mediapipe" for r in results):
        lines += ["MediaPipe rows (`*.mediapipe.tflite`): text in through MediaPipe's TextClassifier and its own tokenizer; "
                  "errors are on probabilities, vs the float reference's softmax.", ""]
    builtin = [(r.artifact.file_name, r.evidence["no_xnnpack"]) for r in results if r.evidence.get("no_xnnpack")]
    if builtin:
        lines += ["Again with LiteRT's builtin kernels only (no XNNPACK delegate)"
                  + (", gated like the file:" if all(e.get("gated") for _, e in builtin) else ":"), ""]
        lines += [f"- {name}: max abs err {e['max_abs_error']:.2e}, top-1 agree {e['top1_agreement']:.4f}"
                  + (f", cosine {e['cosine']:.6f}" if "cosine" in e else "") for name, e in builtin] + [""]
    failures = [f for r in results for f in r.failures]
    lines.append("All artifacts passed." if not failures else "Failures:\n" + "\n".join(f"- {f}" for f in failures))
    if drift:
        lines += ["", *drift_markdown(drift)]
    for r in results:
        delegation = r.artifact.details.get("delegation")
        if delegation:
            lines += ["", f"## {r.artifact.file_name}: XNNPACK delegation",
                      f"{delegation['delegates']} delegate(s). Not delegated: "
                      + (", ".join(f"{k} x{v}" for k, v in delegation["undelegated_ops"].items()) or "none")]
        if r.artifact.details.get("localization"):
            lines += ["", f"## {r.artifact.file_name}: where the error starts", r.artifact.details["localization"]]
        fallback = r.artifact.details.get("fallback")
        if fallback:
            lines += ["", f"## {r.artifact.file_name}: float fallback (mixed precision)", fallback_markdown(fallback)]
    return "\n".join(lines) + "\n"


def fallback_markdown(fallback: dict) -> str:
    """What `--auto-fallback` kept in float and what it cost (see gate/fallback.py)."""
    b0, b1 = fallback["bytes_before"], fallback["bytes_after"]
    l0, l1 = fallback["latency_ms_median_before"], fallback["latency_ms_median_after"]
    lines = [f"Kept in float: {', '.join(f'`{m}`' for m in fallback['kept_float']) or 'nothing'}",
             f"- size: {b0:,} -> {b1:,} bytes ({b1 - b0:+,}, {(b1 - b0) / max(b0, 1):+.1%})",
             f"- latency (median): {l0:.3f} -> {l1:.3f} ms ({l1 - l0:+.3f} ms)",
             f"- before: {'; '.join(fallback['failures_before']) or 'passed'}",
             f"- trials: {len(fallback.get('trials', []))} ({fallback.get('lowerings', 0)} lowered)"]
    return "\n".join(lines)


def junit_xml(results: list[ArtifactResult], suite: str = "pipeline.validate", drift: dict | None = None) -> str:
    """One test case per artifact and metric (tokenizer drift: one informational case per set, never failing)."""
    cases = []
    for name, s in ((drift or {}).get("sets") or {}).items():
        out = escape(f"{s['differ']}/{s['texts']} texts get other token ids on the device ({s['share']:.2%}); "
                     f"after app normalization {s['differ_after_app_normalization']}")
        cases.append(f'  <testcase classname={quoteattr(suite)} name={quoteattr(f"tokenizer_drift:{name}")}>'
                     f"<system-out>{out}</system-out></testcase>")
    for r in results:
        m, t = r.metrics, r.thresholds
        checks = [(metric, getattr(m, metric), getattr(t, limit), op) for metric, limit, op in METRIC_LIMITS]
        if m.accuracy_delta is not None:
            checks.append(("accuracy_drop", -m.accuracy_delta, t.max_accuracy_drop, "<="))
        for metric, value, limit, op in checks:
            ok = (value <= limit) if op == "<=" else (value >= limit)
            name = quoteattr(f"{r.artifact.file_name}:{metric}")
            body = "" if ok else f'<failure message={quoteattr(f"{metric} {value:.6g} {op} {limit} violated")}/>'
            cases.append(f'  <testcase classname={quoteattr(suite)} name={name}>{body}</testcase>')
    failures = sum("<failure" in c for c in cases)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name={quoteattr(suite)} tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def plot(results: list[ArtifactResult], reference: np.ndarray, path: Path) -> None:
    """Float reference logit vs each artifact's logit (class 0), one panel per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in results if r.logits is not None and r.artifact.runtime != "mediapipe"]  # those are probabilities
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for axis, r in zip(axes[0], panels):
        axis.scatter(reference[:, 0], r.logits[:, 0], s=3, alpha=0.5)
        low, high = float(reference[:, 0].min()), float(reference[:, 0].max())
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set_title(f"{r.artifact.file_name}\nmax err {r.metrics.max_abs_error:.1e}", fontsize=8)
        axis.set_xlabel("float reference logit[0]", fontsize=7)
        axis.set_ylabel("artifact logit[0]", fontsize=7)
        axis.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_errors(profiles: dict[str, list[dict]], path: Path) -> None:
    """Error per layer of the int8 model vs float (accumulated and local), one panel per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not profiles:
        return
    fig, axes = plt.subplots(len(profiles), 1, figsize=(9, 3.4 * len(profiles)), squeeze=False)
    for axis, (name, profile) in zip(axes[:, 0], profiles.items()):
        x = np.arange(len(profile))
        axis.plot(x, [e["relative_error"] for e in profile], marker="o", markersize=3, label="accumulated rel. error")
        axis.bar(x, [e["local_error"] for e in profile], alpha=0.4, color="tab:red", label="local rel. error (own int8 error)")
        axis.set_xticks(x)
        axis.set_xticklabels([e["label"] for e in profile], rotation=75, fontsize=6)
        axis.set_title(f"{name}: int8 vs float, per module call", fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(folder: Path, results: list[ArtifactResult], reference: np.ndarray, title: str, context: dict,
                  drift: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"context": context, "passed": all(r.passed for r in results), "artifacts": [result_dict(r) for r in results]}
    if drift is not None:
        data["tokenizer_drift"] = drift
    (folder / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(results, title, context, drift))
    (folder / "report.junit.xml").write_text(junit_xml(results, drift=drift))
    plot(results, reference, folder / "report_logits.png")


__all__ = ["write_reports", "drift_table", "junit_xml", "markdown", "result_dict", "escape", "plot_layer_errors",
           "fallback_markdown"]
