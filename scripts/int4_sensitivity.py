"""Which linears to keep at 8 bits in a 4-bit file: top-1 agreement with the float model when one more linear is
kept at 8 bits, measured on reviews the eval table does not use (the last 1000 of small_fine_foods train).

    PYTHONPATH=. nice -n 10 python scripts/int4_sensitivity.py --runtime litert --float-tflite int4-table/float/albert.fp32.tflite
    PYTHONPATH=. nice -n 10 python scripts/int4_sensitivity.py --runtime executorch
    PYTHONPATH=. python scripts/int4_sensitivity.py --runtime litert --model M --texts T.csv --float-tflite F --out O

--model and --texts (a CSV with a `text` column) measure another checkpoint, e.g. the held-out 12-layer model of
scripts/albert_base_shaped.py on texts that neither its training nor its eval set holds.

litert: the real 4-bit .tflite (`quantize_tflite`) in LiteRT with XNNPACK, per module. executorch: the torchao-
quantized eager model (`quantize_int4`; on the test reviews it agreed with its .pte within 0.001 top-1 / 0.04 max
abs error, and a .pte lowering takes minutes), per module. Each line: the keep set, file bytes (litert), top-1
agreement, max abs error; written to <out>/sensitivity-<runtime>.jsonl.
"""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.config import default_int4_executorch, default_int4_litert

MAPPING = "embedding_hidden_mapping_in"
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=["litert", "executorch"], required=True)
    parser.add_argument("--float-tflite", help="the verified float .tflite (litert; scripts/int4_table.py makes one)")
    parser.add_argument("--out", default="int4-table")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--model", help="checkpoint folder (default: the embedded default model)")
    parser.add_argument("--texts", help="CSV with a text column (default: the last --rows small_fine_foods train reviews)")
    args = parser.parse_args()

    import torch

    from pipeline.core import metrics as numerics
    from pipeline.core.data import load_small_fine_foods
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.model.default import default_model_dir
    from pipeline.core.shapes import eval_rows, real_lengths
    from pipeline.lower.int4_executorch import linear_names, quantize_int4
    from pipeline.model.reference import reference_logits
    from pipeline.core.tokenization import encode

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(args.model or default_model_dir(), 128)
    if args.texts:
        with open(args.texts, newline="") as handle:
            texts = [row["text"] for row in csv.DictReader(handle)][:args.rows]
    else:
        texts = load_small_fine_foods("train").texts[-args.rows:]
    encoded = encode(model.tokenizer, texts, 128)
    reference = reference_logits(model, encoded)
    names = linear_names(model.export_model)
    base = default_int4_litert() if args.runtime == "litert" else default_int4_executorch()
    keeps = [[], [MAPPING]] + [[MAPPING, n] for n in names if not n.endswith(MAPPING)]
    results = out / f"sensitivity-{args.runtime}.jsonl"

    if args.runtime == "litert":
        from pipeline.runtimes import LiteRTRunner, run_rows
        from pipeline.lower.tflite.int4 import quantize_tflite

        if not args.float_tflite:
            parser.error("--float-tflite is required with --runtime litert")
        fp32 = Path(args.float_tflite).read_bytes()
        modules = dict(model.export_model.named_modules())
        linears = {n: modules[n].weight.detach().numpy() for n in names}
        rows = eval_rows(encoded, True, NAMES)

        def measure(recipe):
            data, _ = quantize_tflite(fp32, recipe, model.spec.vocab_size, linears)
            path = out / "sensitivity.tflite"
            path.write_bytes(data)
            logits, _ = run_rows(LiteRTRunner(path), rows)
            return logits, len(data)
    else:
        torch.set_num_threads(1)
        lengths = real_lengths(encoded.attention_mask)
        order = np.argsort(lengths, kind="stable")

        def measure(recipe):
            quantized = quantize_int4(model.export_model, recipe)
            logits = np.zeros_like(reference)
            with torch.no_grad():
                for start in range(0, len(order), 50):  # batches of one length band, cut to their longest row
                    batch = order[start:start + 50]
                    width = int(lengths[batch].max())
                    inputs = [torch.from_numpy(np.ascontiguousarray(a[batch, :width]))
                              for a in (encoded.input_ids, encoded.attention_mask, encoded.token_type_ids)]
                    logits[batch] = quantized(*inputs).numpy()
            return logits, None

    for keep in keeps:
        logits, size = measure(replace(base, keep_int8=keep))
        entry = {"runtime": args.runtime, "keep_int8": keep, "bytes": size, "rows": len(reference),
                 "top1_agreement": round(numerics.top1_agreement(logits, reference), 4),
                 "max_abs_error": round(numerics.max_abs_error(logits, reference), 4)}
        print(json.dumps(entry), flush=True)
        with open(results, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
