"""The candidates of a bench run: the folder's model files (and --compare folders'), eager PyTorch fp32 from the
checkpoint, ONNX Runtime fp32 and dynamic int8 of the export model; the encoded input rows."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.data import load_small_fine_foods
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import find_model_dir
from pipeline.core.tokenization import encode

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
BENCH_TEXTS = 16  # real reviews cycled through as inputs
ONNX_OPSET = 17
Log = object


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


def compare_label(folder: Path, manifest: dict) -> str:
    """The `<label>: ` prefix of a --compare folder's files in every bench table."""
    return manifest["model"].get("name") or folder.name


def compared_candidates(folder: Path, manifest: dict, length: int) -> list[dict]:
    """`--compare`: another folder's model files (e.g. a model variant), run in the same interleaved rounds.
    Their rows are marked `compared` and never count for this folder's targets."""
    if static_length(manifest) != length:
        return []
    label = compare_label(folder, manifest)
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
    try:
        texts = load_small_fine_foods("test").texts[:BENCH_TEXTS]
    except PipelineError:
        texts = ["this tea is great and i will buy it again"] * BENCH_TEXTS
    encoded = encode(model.tokenizer, texts, length)
    np.savez(path, input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
             token_type_ids=encoded.token_type_ids)
    return path


def rebuild_for_length(manifest: dict, length: int, out_root: Path, cache_dir: str | None,
                       build: Callable[[PipelineConfig], Path]) -> Path:
    """The folder's artifacts rebuilt at another static length (default build settings, stage cache on)."""
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
    return build(config)


