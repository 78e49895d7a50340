"""The ONNX side of the onnx2tf route: `torch.onnx.export` of the patched export model, and the graph passes
that keep onnx2tf's output right and the shared layers stored once.

- onnxslim un-shares ALBERT's shared layer weights (it folds per-call constants into them), and its Gemm
  fusions made onnx2tf transpose wrongly: the ONNX file goes to onnx2tf as exported (initializers
  deduplicated), with onnx2tf's own onnxsim off. `USE_ONNXSLIM` reproduces that trap in a test.
- onnx2tf's strict mode crashes on 0-d float constants (`_promote_scalar_constants`).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import LoadedModel
from pipeline.lower.tflite.patch import _Exported, patched_for_onnx

ONNX_OPSET = 17
# Test hook that reproduces a known onnx2tf trap (never set it in a build): onnxslim (Gemm fusions skipped).
USE_ONNXSLIM = False


def export_onnx(model: LoadedModel, max_length: int, path: Path, input_names: list[str], sample: dict,
                dynamic: bool = False) -> None:
    """torch.onnx.export (TorchScript exporter, which keeps shared weights as one initializer) at [1, max_length];
    `dynamic`: the sequence axis of every input is dynamic (`classify_flat`: 2-D hidden states, position ids from
    a cumsum of the inputs, so no table is sliced to a fixed length)."""
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in input_names)
    try:
        with patched_for_onnx(model.export_model.eval(), max_length, dynamic) as export_model, warnings.catch_warnings(), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Exported(export_model, len(input_names) == 3, flat=dynamic),
                args,
                str(path),
                input_names=input_names,
                output_names=["logits"],
                dynamic_axes={n: {1: "sequence"} for n in input_names} if dynamic else None,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter keeps shared weights as one initializer
            )
    except Exception as err:
        first_line = str(err).splitlines()[0][:300] if str(err) else ""
        raise PipelineError(f"torch.onnx.export failed ({type(err).__name__}: {first_line})", path) from None


def prepare_for_onnx2tf(path: Path) -> int:
    """The passes, in order; returns how many duplicate initializers were merged."""
    merged = dedupe_initializers(path)
    promote_scalar_constants(path)
    if USE_ONNXSLIM:
        slim(path)
    return merged


def dedupe_initializers(path: Path) -> int:
    """Make identical initializers one (shared layers must be stored once). Returns how many were merged."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    seen: dict[str, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        key = hashlib.sha256(
            f"{init.data_type}:{list(init.dims)}:".encode() + onnx.numpy_helper.to_array(init).tobytes()
        ).hexdigest()
        if key in seen:
            rename[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    onnx.save(graph_model, str(path))
    return len(rename)


ELEMENTWISE_OPS = ("Mul", "Add", "Sub", "Div")


def promote_scalar_constants(path: Path) -> int:
    """Give the 0-d float constants of elementwise ops the shape [1] (same broadcast result).

    onnx2tf's strict mode (taken when an output has two equal dims > 1, e.g. intermediate_size ==
    max_length) builds a validation model from the op's inputs and crashes when one is a Python float
    (`Output tensors of a Functional model must be ... Found: 0.5`); a [1] array takes its array path.
    """
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_elementwise(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(u.op_type in ELEMENTWISE_OPS for u in users)

    changed = 0
    for init in graph.initializer:
        if len(init.dims) == 0 and init.data_type == onnx.TensorProto.FLOAT and only_elementwise(init.name):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).reshape(1), init.name))
            changed += 1
    for node in graph.node:
        if node.op_type != "Constant" or not only_elementwise(node.output[0]):
            continue
        for attr in node.attribute:
            if attr.name == "value" and len(attr.t.dims) == 0 and attr.t.data_type == onnx.TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).reshape(1), attr.t.name))
                changed += 1
    if changed:
        onnx.save(graph_model, str(path))
    return changed


def slim(path: Path) -> None:
    import onnx
    import onnxslim

    slimmed = onnxslim.slim(str(path), skip_fusion_patterns=["FusionGemm", "FusionGemmMul", "FusionGemmAdd"])
    onnx.save(slimmed, str(path))

