"""Trace stage: torch.export of the export-friendly ALBERT, at the static [1, max_length] shape or with a bounded
dynamic sequence length (`shapes="dynamic"`: `Dim("seq", min=1, max=max_length)` on every input).

Before anything is lowered, the export model is shown to match the float reference (HF eager) on real
encoded rows; a mismatch beyond `MATCH_TOLERANCE` stops the build.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.model.reference import reference_logits
from pipeline.model.checkpoint import LoadedModel
from pipeline.core.shapes import eval_rows, pad, trim
from pipeline.core.tokenization import Encoded

MATCH_TOLERANCE = 1e-4  # max abs logit difference between the export model and the reference


@dataclass
class Traced:
    exported: torch.export.ExportedProgram
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    max_length: int
    reference_match: float  # max abs logit difference, export model vs reference, on the check rows
    dynamic_shapes: tuple | None = None  # torch.export's dynamic_shapes (None: static)

    @property
    def dynamic(self) -> bool:
        return self.dynamic_shapes is not None


def input_names(use_token_type_ids: bool) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if use_token_type_ids else [])


def example_inputs(encoded: Encoded, names: list[str]) -> tuple[torch.Tensor, ...]:
    row = encoded.row(0)
    return tuple(torch.from_numpy(np.ascontiguousarray(row[name])) for name in names)


def dynamic_shapes_for(names: list[str], max_length: int) -> tuple:
    """One bounded symbolic length shared by every input."""
    seq = torch.export.Dim("seq", min=1, max=max_length)
    return tuple({1: seq} for _ in names)


def dynamic_example(check: Encoded, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Row 0 cut to its real length (at least 2: an example of length 1 would be specialized)."""
    row = trim(check.row(0))
    if row["input_ids"].shape[1] < 2:
        row = pad(row, 2)
    return tuple(torch.from_numpy(np.ascontiguousarray(row[name])) for name in names)


def trace(model: LoadedModel, check: Encoded, use_token_type_ids: bool = True, shapes: str = "static") -> Traced:
    names = input_names(use_token_type_ids)
    max_length = check.input_ids.shape[1]
    dynamic = shapes == "dynamic"
    example = dynamic_example(check, names) if dynamic else example_inputs(check, names)
    dynamic_shapes = dynamic_shapes_for(names, max_length) if dynamic else None
    with torch.no_grad():
        try:
            exported = torch.export.export(model.export_model, example, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as err:
            if not dynamic:
                raise
            raise PipelineError(f"torch.export with a dynamic length failed ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:300]}); use [build] shapes = \"static\"", model.model_dir) from None
        module = exported.module()
        reference = reference_logits(model, check)
        mine = np.concatenate(
            [module(*(torch.from_numpy(row[n]) for n in names)).numpy() for row in eval_rows(check, dynamic, names)]
        )
    difference = float(np.abs(mine - reference).max())
    if difference > MATCH_TOLERANCE:
        raise PipelineError(
            f"the export model differs from the reference by {difference:.2e} (limit {MATCH_TOLERANCE:.0e})",
            model.model_dir,
        )
    return Traced(exported, example, names, max_length, difference, dynamic_shapes)
