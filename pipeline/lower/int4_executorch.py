"""4-bit ExecuTorch file: the export model -> `<name>.int4.pte` (4-bit weights, int8 dynamic activations, XNNPACK).

How (torchao `quantize_`, not PT2E):
- linears: `Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4)`, per group of `group_size` inputs or
  per output channel (`Int4Recipe.weights`); XNNPACK runs them as dynamically quantized 4-bit GEMMs (qb4w / qc4w)
  inside one delegate. Linears named in `Int4Recipe.keep_int8` get int8 per-channel weights instead.
- the vocabulary table: `IntxWeightOnlyConfig` at 4 (or 8) bits, per row or per group; lowered with
  `ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True)`, which fuses the dequantize + gather into
  `quantized_decomposed::embedding_4bit` (`embedding_byte` at 8 bits) from the quantized kernel library (an app
  must link it; `import executorch.kernels.quantized` registers it in Python). Without that pass the table would be
  dequantized into a float constant at export and the file would hold it in float.
- the position and token-type tables (sliced, not looked up) and the LayerNorms stay float: 33 k parameters.
- `unwrap_tensor_subclass` before `torch.export`, so the program holds plain int8-valued tensors + scales that the
  XNNPACK partitioner recognises as quantized weights; the delegate packs them to 4 bits.

`quantize_int4` gives the quantized eager module (what the gate's localization could run); `lower_int4` makes the
.pte. The recipe is recorded in the artifact's details. Measurements: docs/int4.md.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pipeline.core.artifact import Artifact, TensorSpec, check_size
from pipeline.core.config import Int4Recipe, check_int4_recipe
from pipeline.core.errors import PipelineError
from pipeline.lower.executorch import delegation_report

VOCABULARY_TABLE = "albert.embeddings.word_embeddings"


def linear_names(model: nn.Module) -> list[str]:
    """Every nn.Linear of the model by module name (shared layers once: their modules are shared)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def kept_int8(name: str, keep: list[str]) -> bool:
    """A linear is kept at 8 bits when its name is one of `keep` or ends with ".<entry>"."""
    return any(name == k or name.endswith("." + k) for k in keep)


def check_keep_names(model: nn.Module, keep: list[str]) -> None:
    names = linear_names(model)
    unknown = [k for k in keep if not any(kept_int8(n, [k]) for n in names)]
    if unknown:
        raise PipelineError(f"[int4] keep_int8 names no linear of the model: {unknown}; linears: {names}")


def quantize_int4(export_model: nn.Module, recipe: Int4Recipe) -> nn.Module:
    """A quantized copy of the export model (the original is left float): linears and the vocabulary table as the
    recipe says, tensor subclasses unwrapped for torch.export."""
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.utils import unwrap_tensor_subclass

    check_int4_recipe(recipe)
    check_keep_names(export_model, recipe.keep_int8)
    model = copy.deepcopy(export_model).eval()
    table = dict(model.named_modules()).get(VOCABULARY_TABLE)
    if not isinstance(table, nn.Embedding):
        raise PipelineError(f"the model has no vocabulary table {VOCABULARY_TABLE}")
    rows = table.embedding_dim
    group = recipe.embedding_group_size
    if group and rows % group:
        raise PipelineError(f"[int4.executorch] embedding_group_size {group} does not divide the embedding size {rows}: "
                            "choose a divisor, or 0 for one scale per row")
    with torch.no_grad():
        granularity = PerAxis(0) if not group or group == rows else PerGroup(group)
        quantize_(model, IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{recipe.embedding_bits}"),
                                              granularity=granularity),
                  filter_fn=lambda m, fqn: fqn == VOCABULARY_TABLE)
        four = PerAxis(0) if recipe.weights == "channel" else PerGroup(recipe.group_size)
        for name in linear_names(model):
            linear = dict(model.named_modules())[name]
            if not kept_int8(name, recipe.keep_int8) and recipe.weights == "group" and linear.in_features % recipe.group_size:
                raise PipelineError(f"[int4.executorch] group_size {recipe.group_size} does not divide {name}'s "
                                    f"{linear.in_features} inputs; use weights = \"channel\"")
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and kept_int8(fqn, recipe.keep_int8))
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=four),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and not kept_int8(fqn, recipe.keep_int8))
        unwrap_tensor_subclass(model)
    return model


def recipe_details(recipe: Int4Recipe, model: nn.Module) -> dict:
    """What the manifest records about the quantization of a 4-bit file (both runtimes)."""
    names = linear_names(model)
    kept = [n for n in names if kept_int8(n, recipe.keep_int8)]
    weights = (f"int4 symmetric per group of {recipe.group_size}" if recipe.weights == "group"
               else "int4 symmetric per channel")
    group = recipe.embedding_group_size
    return {
        "scheme": "int4-weights-int8-dynamic-activations",
        "weights": weights,
        "activations": "int8 dynamic (per token / per inference)",
        "embedding": f"int{recipe.embedding_bits} " + (f"per group of {group}" if group else "per row"),
        "int4_linears": len(names) - len(kept),
        "int8_linears": kept,
        "kept_float": ["layernorm", "position and token-type tables"],
        "recipe": asdict(recipe),
    }


def lower_int4(export_model: nn.Module, traced, out_path: Path, recipe: Int4Recipe, num_labels: int) -> Artifact:
    """The float export model -> quantize_int4 -> torch.export (same dynamic length as the other files) ->
    XNNPACK -> `out_path` (the .pte), with the inputs and dynamic length of `traced` (pipeline/lower/trace.py).
    The size rule is the caller's (`lower_int4_checked` applies it)."""
    example_inputs, input_names, dynamic_shapes = traced.example_inputs, traced.input_names, traced.dynamic_shapes
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower


    quantized = quantize_int4(export_model, recipe)
    try:
        with torch.no_grad():
            exported = torch.export.export(quantized, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        report = delegation_report(edge.exported_program().graph_module)
        program = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
    except PipelineError:
        raise
    except Exception as err:
        raise PipelineError(f"int4 ExecuTorch lowering failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:300]})", out_path) from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(program.buffer)
    shape = list(example_inputs[0].shape)
    if dynamic_shapes is not None:
        shape[-1] = -1
    return Artifact(
        path=out_path,
        runtime="executorch",
        precision="int4",
        inputs=[TensorSpec(name, shape, "int64") for name in input_names],
        outputs=[TensorSpec("logits", [1, num_labels], "float32")],
        details={"backend": "xnnpack", "delegation": report, "shapes": "dynamic" if dynamic_shapes else "static",
                 "quantization": recipe_details(recipe, export_model),
                 "kernels": "XNNPACK + quantized_decomposed::embedding_4bit/embedding_byte (quantized ops library)"},
    )


def lower_int4_checked(model, traced, out_path: Path, recipe: Int4Recipe) -> Artifact:
    """`lower_int4` for a LoadedModel and its Traced export (pipeline/lower/trace.py), then the size rule."""
    artifact = lower_int4(model.export_model, traced, out_path, recipe, model.spec.num_labels)
    check_size(artifact, model.num_parameters, model.spec.num_hidden_layers)
    return artifact
