"""Target checks of a bench run, on ratios from one run (the targets are defined at seq 128, TARGET_LENGTH)."""
from __future__ import annotations

from pathlib import Path

from pipeline.bench.candidates import model_files

TARGET_LENGTH = 128
LATENCY_VS_EAGER = 0.5
PTE_FP32_VS_TFLITE_FP32 = 1.2
INT8_BYTES_PER_PARAM = 1.15


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


