"""ExecuTorch lowering: an exported program -> an XNNPACK-delegated .pte, with a delegation report."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from pipeline.core.artifact import Artifact, TensorSpec, check_size
from pipeline.core.config import QuantizeConfig
from pipeline.core.errors import PipelineError
from pipeline.model.checkpoint import LoadedModel
from pipeline.lower.quantize import quantize
from pipeline.lower.trace import Traced
from pipeline.core.tokenization import Encoded

PRECISIONS = ("fp32", "int8")
# Ops that cannot be delegated to XNNPACK in this model, and why:
NOT_DELEGABLE = {
    "aten.embedding.default": "XNNPACK has no gather; the lookup runs on the portable kernel",
    "quantized_decomposed.embedding_byte.out": "int8 table lookup: XNNPACK has no gather",
    "quantized_decomposed.embedding_byte.default": "int8 table lookup: XNNPACK has no gather",
    "aten._to_copy.default": "int64 -> float cast of the attention mask before the delegate",
}


def delegation_report(graph_module: torch.fx.GraphModule) -> dict:
    """Which op types ran inside XNNPACK delegates and which stayed on portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    delegated, undelegated = Counter(), Counter()
    for op, row in info.delegation_by_operator.items():
        if row.delegated:
            delegated[op] += row.delegated
        if row.non_delegated:
            undelegated[op] += row.non_delegated
    return {
        "delegates": info.num_delegated_subgraphs,
        "delegated_ops": dict(sorted(delegated.items())),
        "undelegated_ops": dict(sorted(undelegated.items())),
    }


def lower_executorch(
    exported: torch.export.ExportedProgram,
    out_path: Path,
    precision: str,
    input_names: list[str],
    num_labels: int,
    dynamic: bool = False,
) -> Artifact:
    """to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch -> out_path."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.quant_fusion_pass import QuantFusionPass

    try:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        report = delegation_report(edge.exported_program().graph_module)
        passes = [QuantFusionPass()] if precision.startswith("int8") else []
        program = edge.to_executorch(ExecutorchBackendConfig(passes=passes))
    except Exception as err:
        raise PipelineError(f"ExecuTorch lowering failed ({type(err).__name__}: {str(err).splitlines()[0][:300]})", out_path) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(program.buffer)
    shape = list(exported.example_inputs[0][0].shape)
    if dynamic:
        shape[-1] = -1  # any length 1..max_length (memory planned for max_length)
    return Artifact(
        path=out_path,
        runtime="executorch",
        precision=precision,
        inputs=[TensorSpec(name, shape, "int64") for name in input_names],
        outputs=[TensorSpec("logits", [1, num_labels], "float32")],
        details={"backend": "xnnpack", "delegation": report, "shapes": "dynamic" if dynamic else "static"},
    )


def executorch_file(model: LoadedModel, traced: Traced, precision: str, recipe: QuantizeConfig, calibration: Encoded,
                    out: Path) -> Artifact:
    """`out`: the traced model as an XNNPACK .pte, fp32 or int8 by `recipe` calibrated on `calibration`; size-checked."""
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r} for ExecuTorch ({' or '.join(PRECISIONS)})")
    exported, settings = traced.exported, None
    if precision == "int8":
        quantized = quantize(model, traced, calibration, recipe)
        exported, settings = quantized.exported, quantized.settings
    artifact = lower_executorch(exported, out, precision, traced.input_names, model.spec.num_labels, dynamic=traced.dynamic)
    if settings is not None:
        artifact.details["quantization"] = settings
    check_size(artifact, model.num_parameters, model.spec.num_hidden_layers)
    return artifact
