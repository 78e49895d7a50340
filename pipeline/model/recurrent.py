"""The recurrent front end from the project's source text: a GRU over the embeddings, before the encoder.

Standard ALBERT has none; here it is an optional variant so its cost and benefit can be measured.
It is residual with a zero-initialised output projection, so a freshly added GRU leaves the model's
function unchanged and distillation only adds what helps:  e' = e + W_out * GRU(e).

Eager training uses `nn.GRU` (fast); `torch.export` sees the same weights as an explicit loop over the
static sequence length (matmuls, sigmoid, tanh: all delegable), since ExecuTorch and TFLite have no
fused GRU op that the lowering paths accept. The GRU is unidirectional, so trailing padding never
changes the outputs at real token positions.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class GRUFrontEnd(nn.Module):
    force_unrolled = False  # set by `unrolled_recurrence` around exporters that do not mark themselves

    def __init__(self, size: int):
        super().__init__()
        self.gru = nn.GRU(size, size, batch_first=True)
        self.output = nn.Linear(size, size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """The GRU as explicit steps (torch's gate order: reset, update, new).

        Every tensor stays 3-D ([B, 1, *] per step: slices, not selects, and no unsqueeze) and the zero
        initial state is folded into step 0 (no `full` op), so XNNPACK takes the whole loop into the
        transformer's delegate; the weights are read by every step, so exporters store them once.
        """
        weight_ih, weight_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        bias_ih, bias_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        size = self.gru.hidden_size
        inputs = torch.nn.functional.linear(x, weight_ih, bias_ih)  # [B, S, 3H], all steps at once
        hidden = None
        outputs = []
        for step in range(x.shape[1]):
            gates_x = inputs[:, step : step + 1, :]  # [B, 1, 3H]
            # h_0 = 0, so step 0's recurrent gates are the bias alone
            gates_h = bias_hh if hidden is None else torch.nn.functional.linear(hidden, weight_hh, bias_hh)
            reset = torch.sigmoid(gates_x[..., :size] + gates_h[..., :size])
            update = torch.sigmoid(gates_x[..., size : 2 * size] + gates_h[..., size : 2 * size])
            new = torch.tanh(gates_x[..., 2 * size :] + reset * gates_h[..., 2 * size :])
            hidden = new - update * new if hidden is None else new + update * (hidden - new)
            outputs.append(hidden)
        return torch.cat(outputs, dim=1)

    def uses_unrolled(self) -> bool:
        """torch.export (is_exporting), the TorchScript ONNX exporter (is_tracing; it would otherwise emit an
        ONNX GRU op that onnx2tf turns into a TF while-loop), or an explicit `unrolled_recurrence`."""
        return torch.compiler.is_exporting() or torch.jit.is_tracing() or self.force_unrolled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_unrolled():
            recurrent = self.unrolled(x)
        else:
            recurrent, _ = self.gru(x)
        return x + self.output(recurrent)


@contextlib.contextmanager
def unrolled_recurrence(model: nn.Module) -> Iterator[None]:
    """Every GRUFrontEnd in `model` runs its explicit loop inside the block (e.g. around an exporter)."""
    fronts = [m for m in model.modules() if isinstance(m, GRUFrontEnd)]
    previous = [m.force_unrolled for m in fronts]
    for m in fronts:
        m.force_unrolled = True
    try:
        yield
    finally:
        for m, value in zip(fronts, previous):
            m.force_unrolled = value


def make_recurrent(kind: str, size: int) -> nn.Module:
    if kind == "gru":
        return GRUFrontEnd(size)
    raise ValueError(f"recurrent front end {kind!r} is not supported; supported: gru")
