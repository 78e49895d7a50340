"""Quantize stage: PT2E int8 for ExecuTorch.

- linears: XNNPACKQuantizer, symmetric per-channel int8 weights; activations either dynamic (default:
  quantized per inference) or static (calibrated on real text; also quantizes bmm/add around them);
- the word-embedding table: int8 per-row weights (EmbeddingQuantizer), lowered to
  `quantized_decomposed::embedding_byte` (PT2E's default would leave the V x E table fp32, the bulk of the
  file);
- LayerNorm stays fp32 (quantizing its internals tripled the error, measured on static int8).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pipeline.core.config import QuantizeConfig
from pipeline.core.errors import PipelineError
from pipeline.core.shapes import trim
from pipeline.model.albert import LayerNorm, TanhGELU
from pipeline.model.checkpoint import LoadedModel
from pipeline.lower.trace import Traced
from pipeline.core.tokenization import Encoded

FLOAT_MODULE_TYPES = {"layernorm": LayerNorm, "gelu": (torch.nn.GELU, TanhGELU)}


@dataclass
class Quantized:
    exported: torch.export.ExportedProgram
    input_names: list[str]
    calibration_rows: int
    settings: dict = field(default_factory=dict)


def make_quantizer(config: QuantizeConfig, name_prefix: str = ""):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.embedding_quantizer import EmbeddingQuantizer

    if config.activations not in ("dynamic", "static"):
        raise PipelineError(f"quantize.activations must be 'dynamic' or 'static', not {config.activations!r}")
    dynamic = config.activations == "dynamic"
    xnnpack = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    for kind in config.keep_float:
        if kind not in FLOAT_MODULE_TYPES:
            raise PipelineError(f"quantize.keep_float: unknown module kind {kind!r}; known: {sorted(FLOAT_MODULE_TYPES)}")
        types = FLOAT_MODULE_TYPES[kind]
        for module_type in types if isinstance(types, tuple) else (types,):
            xnnpack.set_module_type(module_type, None)
    for name in config.keep_float_names:
        # set_module_name(name, None) asserts in executorch 1.5.1, but the annotator treats a None config as
        # "leave float" and the global config excludes every configured name: set the entry directly.
        xnnpack.module_name_config[name_prefix + name] = None
    parts = [EmbeddingQuantizer(), xnnpack] if config.quantize_embedding else [xnnpack]
    return ComposableQuantizer(parts)


def calibrate_and_convert(
    graph: torch.fx.GraphModule,
    calibration: Encoded,
    input_names: list[str],
    config: QuantizeConfig,
    name_prefix: str = "",
    dynamic: bool = False,
) -> torch.fx.GraphModule:
    """PT2E prepare -> calibrate on the first `config.calibration_samples` rows -> convert. The result runs
    eagerly in PyTorch (the gate's localization and fallback use it so); `quantize` re-exports it for lowering.
    `name_prefix`: prepended to `config.keep_float_names` when the graph wraps the model (the gate's probe).
    `dynamic`: the graph takes any length, and is calibrated on the rows cut to their real lengths (many lengths)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calibration) == 0:
        raise PipelineError("no calibration texts")
    with torch.no_grad():
        prepared = prepare_pt2e(graph, make_quantizer(config, name_prefix))
        for index in range(min(config.calibration_samples, len(calibration))):
            row = trim(calibration.row(index)) if dynamic else calibration.row(index)
            prepared(*(torch.from_numpy(np.ascontiguousarray(row[n])) for n in input_names))
        return convert_pt2e(prepared)


def quantize(
    model: LoadedModel,
    traced: Traced,
    calibration: Encoded,
    config: QuantizeConfig,
) -> Quantized:
    """PT2E prepare -> calibrate on `calibration` rows -> convert -> re-export."""
    if len(calibration) == 0:  # before the export, not after it
        raise PipelineError("no calibration texts")
    rows = min(config.calibration_samples, len(calibration))
    with torch.no_grad():
        shapes = traced.dynamic_shapes
        graph = torch.export.export(model.export_model, traced.example_inputs, dynamic_shapes=shapes, strict=False).module()
        converted = calibrate_and_convert(graph, calibration, traced.input_names, config, dynamic=traced.dynamic)
        exported = torch.export.export(converted, traced.example_inputs, dynamic_shapes=shapes, strict=False)
    settings = {
        "scheme": f"pt2e-{config.activations}",
        "weights": "int8 symmetric per-channel",
        "activations": f"int8 {config.activations}",
        "embedding": "int8 per-row" if config.quantize_embedding else "fp32",
        "kept_float": list(config.keep_float) + list(config.keep_float_names),
        "calibration_rows": rows,
        "recipe": asdict(config),
        "calibration_lengths": "real lengths (unpadded)" if traced.dynamic else "padded to max_length",
    }
    return Quantized(exported, traced.input_names, rows, settings)
