"""The precision trade-off of a built folder: bytes, accuracy, top-1 agreement and counted aarch64 instructions per
inference of every .pte / .tflite, as a markdown table and a plot (docs/int4.md).

    python -m pipeline build --target android --no-copy-to-apps --config PRECISIONS.toml --out OUT   # fp32, int8, int4
    python -m pipeline validate --artifacts OUT/android --cost                                        # arm64_cost
    python scripts/precision_tradeoff.py OUT/android docs/int4_tradeoff.png > table.md

Reads only the folder's manifest.json (its files' metrics and `arm64_cost`): nothing is re-measured here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(manifest: dict) -> list[dict]:
    counts = (manifest.get("arm64_cost") or {}).get("counts", {})
    found = []
    for entry in manifest["files"]:
        if entry["runtime"] == "mediapipe":
            continue
        metrics = entry["metrics"]
        cost = {profile: {int(n): v["steady"] for n, v in files.get(entry["path"], {}).items()}
                for profile, files in counts.items()}
        found.append({"file": entry["path"], "precision": entry["precision"], "bytes": entry["bytes"],
                      "per_param": entry["bytes_per_parameter"], "accuracy": metrics.get("accuracy"),
                      "delta": metrics.get("accuracy_delta"), "top1": metrics["top1_agreement"], "cost": cost,
                      "no_xnnpack": (entry.get("no_xnnpack") or {}).get("top1_agreement")})
    order = {"fp32": 0, "int8": 1, "int4": 2}
    return sorted(found, key=lambda r: (not r["file"].endswith(".pte"), order.get(r["precision"], 9)))


def table(found: list[dict]) -> str:
    profiles = sorted({p for r in found for p in r["cost"]})
    lengths = sorted({n for r in found for p in r["cost"].values() for n in p})
    head = ["file", "bytes", "B/param", "accuracy (Δ float)", "top-1 agree"]
    head += [f"{p} {n} tok (M instr.)" for p in profiles for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in found:
        top1 = f"{r['top1']:.3f}" + (f" (no XNNPACK {r['no_xnnpack']:.3f})" if r["no_xnnpack"] is not None else "")
        accuracy = f"{r['accuracy']:.3f} ({r['delta'] * 100:+.1f})" if r["accuracy"] is not None else "n/a"
        cells = [f"`{r['file']}`", f"{r['bytes']:,}", f"{r['per_param']:.3f}", accuracy, top1]
        cells += [f"{r['cost'][p][n] / 1e6:.1f}" if n in r["cost"].get(p, {}) else "-" for p in profiles for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(found: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = sorted({p for r in found for p in r["cost"]})
    longest = max(n for r in found for p in r["cost"].values() for n in p)
    fig, axes = plt.subplots(1, len(profiles) + 1, figsize=(4.2 * (len(profiles) + 1), 3.6))
    for r in found:
        marker = "o" if r["file"].endswith(".pte") else "s"
        axes[0].scatter(r["bytes"] / 1e6, r["top1"], marker=marker, s=40)
        axes[0].annotate(r["file"].replace("albert.", ""), (r["bytes"] / 1e6, r["top1"]), fontsize=7,
                         xytext=(4, 3), textcoords="offset points")
        for axis, profile in zip(axes[1:], profiles):
            if longest in r["cost"].get(profile, {}):
                axis.scatter(r["bytes"] / 1e6, r["cost"][profile][longest] / 1e6, marker=marker, s=40)
                axis.annotate(r["file"].replace("albert.", ""), (r["bytes"] / 1e6, r["cost"][profile][longest] / 1e6),
                              fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes[0].set(xlabel="file size (MB)", ylabel="top-1 agreement with float", title="size vs agreement")
    for axis, profile in zip(axes[1:], profiles):
        axis.set(xlabel="file size (MB)", ylabel=f"M aarch64 instructions ({longest} tokens)",
                 title=f"size vs counted cost, {profile}")
        axis.set_ylim(bottom=0)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    fig.suptitle("o .pte (ExecuTorch)   s .tflite (LiteRT)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python scripts/precision_tradeoff.py FOLDER PLOT.png", file=sys.stderr)
        return 2
    manifest = json.loads((Path(argv[0]) / "manifest.json").read_text())
    found = rows(manifest)
    print(table(found))
    plot(found, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
