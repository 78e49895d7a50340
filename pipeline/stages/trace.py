"""Trace stage: torch.export of the export-friendly ALBERT at a static [1, max_length] shape.

Before anything is lowered, the export model is shown to match the float reference (HF eager) on real
encoded rows; a mismatch beyond `MATCH_TOLERANCE` stops the build.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.stages.reference import reference_logits
from pipeline.model.checkpoint import LoadedModel
from pipeline.tokenization import Encoded

MATCH_TOLERANCE = 1e-4  # max abs logit difference between the export model and the reference


@dataclass
class Traced:
    exported: torch.export.ExportedProgram
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    max_length: int
    reference_match: float  # max abs logit difference, export model vs reference, on the check rows


def input_names(use_token_type_ids: bool) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if use_token_type_ids else [])


def example_inputs(encoded: Encoded, names: list[str]) -> tuple[torch.Tensor, ...]:
    row = encoded.row(0)
    return tuple(torch.from_numpy(np.ascontiguousarray(row[name])) for name in names)


def trace(model: LoadedModel, check: Encoded, use_token_type_ids: bool = True) -> Traced:
    names = input_names(use_token_type_ids)
    example = example_inputs(check, names)
    max_length = example[0].shape[1]
    with torch.no_grad():
        exported = torch.export.export(model.export_model, example, strict=False)
        module = exported.module()
        reference = reference_logits(model, check)
        mine = np.concatenate(
            [module(*(torch.from_numpy(check.row(i)[n]) for n in names)).numpy() for i in range(len(check))]
        )
    difference = float(np.abs(mine - reference).max())
    if difference > MATCH_TOLERANCE:
        raise PipelineError(
            f"the export model differs from the reference by {difference:.2e} (limit {MATCH_TOLERANCE:.0e})",
            model.model_dir,
        )
    return Traced(exported, example, names, max_length, difference)
