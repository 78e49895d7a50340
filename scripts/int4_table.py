"""Reproduce the 4-bit measurements of docs/int4.md on the default model and the full default eval set.

    PYTHONPATH=. nice -n 10 python scripts/int4_table.py --out int4-table            # every candidate
    PYTHONPATH=. nice -n 10 python scripts/int4_table.py --out int4-table --only pte-default tflite-default

For each candidate recipe (CANDIDATES below): make the file with the project's functions
(`pipeline.lower.int4_executorch.lower_int4_checked`, `pipeline.lower.tflite.int4.lower_int4_tflite` from the
verified float .tflite of `pipeline.lower.tflite.lower_tflite`), run every eval review at its own length
(dynamic files) in executorch.runtime / LiteRT with XNNPACK and, for .tflite, with LiteRT's builtin kernels
(no delegate; on `--builtin-rows` rows, all by default: the builtin 4-bit kernels take ~0.2 s a row, blockwise
ones ~14 s, so those run on 10), and compare with the float reference (HF eager fp32 logits,
pipeline/model/reference.py). One JSON line per (candidate, kernels) in <out>/results.jsonl (a candidate already
there is not measured again) and the markdown table in <out>/table.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.core.config import Int4Recipe, default_int4_executorch, default_int4_litert

MAPPING = "embedding_hidden_mapping_in"
# name -> (runtime, recipe, builtin rows cap or None). The chosen defaults are the "-default" rows.
CANDIDATES: dict[str, tuple[str, Int4Recipe, int | None]] = {
    "pte-g32-emb-g32": ("executorch", Int4Recipe("group", 32, 4, 32, keep_int8=[]), None),
    "pte-channel-emb-row": ("executorch", Int4Recipe("channel", 32, 4, 0, keep_int8=[]), None),
    "pte-default": ("executorch", default_int4_executorch(), None),
    "pte-default+dense": ("executorch", Int4Recipe("group", 32, 4, 32, keep_int8=[MAPPING, "attention.dense"]), None),
    "tflite-channel-emb-row": ("litert", Int4Recipe("channel", 32, 4, 0, keep_int8=[]), 200),
    "tflite-channel-emb8-row": ("litert", Int4Recipe("channel", 32, 8, 0, keep_int8=[]), 200),
    "tflite-g32-emb-row": ("litert", Int4Recipe("group", 32, 4, 0, keep_int8=[]), 10),
    "tflite-channel-emb-b32": ("litert", Int4Recipe("channel", 32, 4, 32, keep_int8=[]), 200),
    "tflite-emb-b32+mapping": ("litert", Int4Recipe("channel", 32, 4, 32, keep_int8=[MAPPING]), None),
    "tflite-emb-b32+mapping+dense": ("litert", Int4Recipe("channel", 32, 4, 32, keep_int8=[MAPPING, "attention.dense"]),
                                     200),
    "tflite-default": ("litert", default_int4_litert(), None),
}
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="int4-table")
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    parser.add_argument("--builtin-rows", type=int, default=None, help="cap on the no-XNNPACK rows of every .tflite")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from pipeline.core import metrics as numerics
    from pipeline.core.artifact import Artifact
    from pipeline.core.config import TFLiteConfig
    from pipeline.core.errors import PipelineError
    from pipeline.core.data import load_small_fine_foods
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.model.default import default_model_dir
    from pipeline.runtimes import open_runner, run_rows
    from pipeline.core.shapes import eval_rows
    from pipeline.model.reference import reference_logits
    from pipeline.core.tokenization import Encoded, encode

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {json.loads(line)["candidate"] for line in results_path.read_text().splitlines()} if results_path.exists() else set()
    model = load_checkpoint(default_model_dir(), args.max_length)
    texts = load_small_fine_foods("test")
    encoded = encode(model.tokenizer, texts.texts, args.max_length)
    labels = np.asarray(texts.labels)
    reference_path = out / "reference.npy"
    if reference_path.exists():
        reference = np.load(reference_path)
    else:
        reference = reference_logits(model, encoded)
        np.save(reference_path, reference)
    rows = eval_rows(encoded, True, NAMES)
    check = Encoded(encoded.input_ids[:8], encoded.attention_mask[:8], encoded.token_type_ids[:8], 0)
    float_accuracy = float((reference.argmax(1) == labels).mean())
    print(f"{model.num_parameters:,} parameters; float accuracy {float_accuracy:.3f} on {len(rows)} reviews", flush=True)

    def record(name: str, runtime: str, kernels: str, recipe: Int4Recipe, path: Path, logits: np.ndarray,
               latencies: list[float], seconds: float, size_rule: str, same_rows_xnnpack: np.ndarray | None = None) -> None:
        n = len(logits)
        np.save(out / f"{name}.{kernels.split()[0]}.logits.npy", logits)
        entry = {"candidate": name, "runtime": runtime, "kernels": kernels, "recipe": asdict(recipe),
                 "bytes": path.stat().st_size, "bytes_per_param": round(path.stat().st_size / model.num_parameters, 4),
                 "rows": n, "max_abs_error": round(numerics.max_abs_error(logits, reference[:n]), 4),
                 "cosine": round(numerics.cosine(logits, reference[:n]), 5),
                 "top1_agreement": round(numerics.top1_agreement(logits, reference[:n]), 4),
                 "accuracy": round(float((logits.argmax(1) == labels[:n]).mean()), 4),
                 "float_accuracy": round(float((reference[:n].argmax(1) == labels[:n]).mean()), 4),
                 "ms_median": round(float(np.median(latencies)) * 1000, 2), "make_seconds": round(seconds, 1),
                 "size_rule": size_rule}
        if same_rows_xnnpack is not None:  # the delegate's figures on the same rows, and how far the two differ
            entry["xnnpack_same_rows_top1_agreement"] = round(numerics.top1_agreement(same_rows_xnnpack, reference[:n]), 4)
            entry["xnnpack_same_rows_max_abs_error"] = round(numerics.max_abs_error(same_rows_xnnpack, reference[:n]), 4)
            entry["builtin_vs_xnnpack_max_abs"] = round(numerics.max_abs_error(logits, same_rows_xnnpack), 4)
        print(json.dumps(entry), flush=True)
        with open(results_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    traced = float_tflite = None
    for name, (runtime, recipe, builtin_cap) in CANDIDATES.items():
        if (args.only and name not in args.only) or name in done:
            continue
        started = time.perf_counter()
        if runtime == "executorch":
            from pipeline.lower.int4_executorch import lower_int4_checked
            from pipeline.lower.trace import trace

            traced = traced or trace(model, check, shapes="dynamic")
            try:
                artifact = lower_int4_checked(model, traced, out / f"{name}.pte", recipe)
                size_rule = "passed"
            except PipelineError as err:  # measured all the same: the table shows what the rule refused
                if "exceed" not in str(err):
                    raise
                artifact, size_rule = Artifact(out / f"{name}.pte", "executorch", "int4", [], []), "refused"
            made = time.perf_counter() - started
            runner = open_runner(artifact.path, "executorch", traced.input_names)
            logits, latencies = run_rows(runner, rows, desc=name)
            record(name, runtime, "xnnpack", recipe, artifact.path, logits, latencies, made, size_rule)
        else:
            from pipeline.runtimes import LiteRTRunner
            from pipeline.lower.tflite import Hooks, TFLiteJob, lower_tflite
            from pipeline.lower.tflite.int4 import lower_int4_tflite

            existing = out / "float" / "albert.fp32.tflite"
            if float_tflite is None and existing.exists():  # made (and verified) by an earlier run
                from pipeline.lower.tflite import _signature_specs

                float_tflite = Artifact(existing, "litert", "fp32", *_signature_specs(existing),
                                        details={"converter": "onnx2tf", "shapes": "dynamic"})
            if float_tflite is None:
                made_float = lower_tflite(TFLiteJob(model, TFLiteConfig(), args.max_length, check, check,
                                                    shapes="dynamic"), out / "float", Hooks(log=print))
                float_tflite = next(a for a in made_float if a.precision == "fp32")
            started = time.perf_counter()
            # the function's own check on 8 rows (both kernel sets); the table's figures on every row below
            path = out / f"{name}.tflite"
            try:
                lower_int4_tflite(float_tflite, model, recipe, rows[:8], reference[:8], out_path=path)
                size_rule = "passed"
            except PipelineError as err:  # refused by the size rule or by the check: measured all the same
                size_rule = "refused" if "exceed" in str(err) else "refused by the check: " + str(err).split(": ", 1)[-1][:120]
                path.with_name(path.name + ".rejected").replace(path)
            made = time.perf_counter() - started
            delegated, latencies = run_rows(LiteRTRunner(path), rows, desc=name)
            record(name, runtime, "xnnpack", recipe, path, delegated, latencies, made, size_rule)
            cap = min(c for c in (builtin_cap, args.builtin_rows, len(rows)) if c is not None)
            logits, latencies = run_rows(LiteRTRunner(path, delegates=False), rows[:cap],
                                                  desc=name + " builtin")
            record(name, runtime, "builtin (no XNNPACK)", recipe, path, logits, latencies, made, size_rule,
                   same_rows_xnnpack=delegated[:cap])
    write_table(results_path, out / "table.md", model.num_parameters)


def write_table(results_path: Path, table_path: Path, parameters: int) -> None:
    lines = ["| candidate | kernels | bytes | B/param | size rule | rows | max abs err | cosine | top-1 agree | acc | "
             "float acc | ms/row |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for line in results_path.read_text().splitlines():
        r = json.loads(line)
        same = (f" (XNNPACK on these rows: {r['xnnpack_same_rows_top1_agreement']:.3f})"
                if "xnnpack_same_rows_top1_agreement" in r else "")
        lines.append(f"| {r['candidate']} | {r['kernels']} | {r['bytes']:,} | {r['bytes_per_param']:.3f} | "
                     f"{_verdict(r.get('size_rule', ''))} | {r['rows']} | "
                     f"{r['max_abs_error']:.3f} | {r['cosine']:.4f} | {r['top1_agreement']:.3f}{same} | {r['accuracy']:.3f} | "
                     f"{r['float_accuracy']:.3f} | {r['ms_median']:.1f} |")
    table_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _verdict(rule: str) -> str:
    if rule.startswith("refused by the check"):
        return "**refused: builtin kernels wrong**" if "builtin" in rule else "refused by the check"
    return "refused (size rule)" if rule == "refused" else rule


if __name__ == "__main__":
    sys.exit(main())
