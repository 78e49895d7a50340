"""Export patching for the TFLite routes: the export model as the converters need it, as context managers
that restore the model however the export ends (after Optimum's ModelPatcher).

- `_GatherEmbeddings`: every embedding table read by a gather whose indices come from the graph inputs, so the
  exporters do not fold position + token-type into one [1, S, E] constant (onnx2tf mis-transposes it when
  S == E), and TFLite's dynamic-range quantization stores the position and type tables as int8.
- exact GELU -> `PolynomialGELU`: ONNX Erf has no TFLite builtin.
- `_Int8GatherEmbeddings` (litert-torch route): tables stored int8 with a per-row scale (PT2E leaves
  nn.Embedding fp32, which breaks the int8 size rule).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from pipeline.model.albert import PolynomialGELU

# Test hook that reproduces a known onnx2tf trap (never set it in a build): export the embeddings as
# ExportAlbert writes them (position + type folded into a constant).
FOLD_EMBEDDING_CONSTANTS = False


class _GatherEmbeddings(nn.Module):
    """ALBERT's embeddings with every table read by a gather whose indices come from the graph inputs.

    Same values as `AlbertEmbeddings`; it only keeps the exporters from folding position + token-type
    into one [1, S, E] constant (onnx2tf mis-transposes it when S == E) and lets TFLite's dynamic-range
    quantization store the position and type tables as int8.
    """

    def __init__(self, embeddings: nn.Module, max_length: int):
        super().__init__()
        self.inner = embeddings
        self.register_buffer("positions", torch.arange(max_length, dtype=torch.int64).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        e = self.inner
        zeros = input_ids * 0
        if token_type_ids is None:
            token_type_ids = zeros
        seq_len = input_ids.shape[1]
        words = e.word_embeddings(input_ids)
        positions = nn.functional.embedding(zeros + self.positions[:, :seq_len], e.position_embeddings.weight[:seq_len])
        types = e.token_type_embeddings(token_type_ids)
        return e.LayerNorm(words + positions + types)


class _Int8GatherEmbeddings(nn.Module):
    """Embeddings whose tables are stored as int8 (symmetric, one scale per row) and dequantized after the
    gather: PT2E int8 leaves nn.Embedding tables fp32, which breaks the int8 size rule."""

    def __init__(self, embeddings: nn.Module, max_length: int):
        super().__init__()
        self.inner = embeddings
        self.register_buffer("positions", torch.arange(max_length, dtype=torch.int64).unsqueeze(0), persistent=False)
        for name, table in (("word", embeddings.word_embeddings.weight),
                            ("position", embeddings.position_embeddings.weight[:max_length]),
                            ("type", embeddings.token_type_embeddings.weight)):
            table = table.detach().float()
            scale = table.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            self.register_buffer(f"{name}_q", torch.round(table / scale).clamp(-127, 127).to(torch.int8))
            self.register_buffer(f"{name}_scale", scale)

    def _lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, getattr(self, f"{name}_q")).to(torch.float32)
        return rows * nn.functional.embedding(ids, getattr(self, f"{name}_scale"))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        # No integer arithmetic here: PT2E would put observers on it (histogram of int64 fails). The
        # position (and absent token-type) rows are constants the converter may fold; they are small.
        positions = self._lookup("position", self.positions[:, : input_ids.shape[1]])
        if token_type_ids is None:
            types = (self.type_q[0:1].to(torch.float32) * self.type_scale[0:1]).unsqueeze(0)
        else:
            types = self._lookup("type", token_type_ids)
        return self.inner.LayerNorm(self._lookup("word", input_ids) + positions + types)


class _Exported(nn.Module):
    """The export model with the ONNX graph's argument list (2 or 3 inputs). `flat`: its 2-D batch-1 form
    (`ExportAlbert.classify_flat`), the graph onnx2tf converts with a dynamic sequence axis."""

    def __init__(self, model: nn.Module, three_inputs: bool, flat: bool = False):
        super().__init__()
        self.model = model
        self.three_inputs = three_inputs
        self.flat = flat

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        types = token_type_ids if self.three_inputs else None
        if self.flat:
            return self.model.classify_flat(input_ids, attention_mask, types)
        return self.model(input_ids, attention_mask, types)



def _layers(export_model: nn.Module) -> list[nn.Module]:
    return [layer for group in export_model.albert.encoder.albert_layer_groups for layer in group.albert_layers]


@contextlib.contextmanager
def patched_for_onnx(export_model: nn.Module, max_length: int, dynamic: bool = False) -> Iterator[nn.Module]:
    """The export model with gather embeddings (static shapes: `classify_flat` has its own, from the inputs)
    and polynomial GELU; restored on exit."""
    body = export_model.albert
    original = body.embeddings
    if not FOLD_EMBEDDING_CONSTANTS and not dynamic:
        body.embeddings = _GatherEmbeddings(original, max_length)
    layers = _layers(export_model)
    exact_gelu = {id(layer): layer.activation for layer in layers if isinstance(layer.activation, nn.GELU)}
    for layer in layers:
        if id(layer) in exact_gelu:
            layer.activation = PolynomialGELU()
    try:
        yield export_model
    finally:
        body.embeddings = original
        for layer in layers:
            if id(layer) in exact_gelu:
                layer.activation = exact_gelu[id(layer)]


@contextlib.contextmanager
def int8_gather_embeddings(export_model: nn.Module, max_length: int) -> Iterator[nn.Module]:
    """The export model with int8-stored embedding tables (litert-torch's int8 route); restored on exit."""
    body = export_model.albert
    original = body.embeddings
    body.embeddings = _Int8GatherEmbeddings(original, max_length)
    try:
        yield export_model
    finally:
        body.embeddings = original
